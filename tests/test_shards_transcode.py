"""The canonical clip contract, checked by decoding the output back with PyAV, and the reject reasons."""
from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

import fixtures_raw as raw
from shards.transcode import Encoded, Rejected, TranscodeSettings, capped_size, transcode_job


def decode(data: bytes) -> tuple[np.ndarray, list[int], dict]:
    """Frames [T, H, W, 3], the indices of keyframe packets, and stream facts."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames, keyframes = [], []
        for packet in container.demux(stream):
            if packet.size and packet.is_keyframe:
                keyframes.append(len(frames))
            frames.extend(frame.to_ndarray(format="rgb24") for frame in packet.decode())
        facts = {"codec": stream.codec_context.name, "fps": stream.average_rate, "audio": len(container.streams.audio),
                 "pix_fmt": stream.codec_context.pix_fmt}
    return np.stack(frames), keyframes, facts


@pytest.mark.parametrize("suffix, codec, container, fps", [
    (".avi", "vp9", "mp4", 25), (".webm", "vp9", "webm", Fraction(30000, 1001)), (".mp4", "h264", "mp4", 24)])
def test_clip_contract_frames_size_fps_gop_and_pixels(tmp_path, suffix, codec, container, fps):
    source = raw.moving_frames(40)
    path = tmp_path / f"clip{suffix}"
    path.write_bytes(raw.encode_video(source, suffix, fps=fps))
    result = transcode_job((str(path), "video", TranscodeSettings(codec=codec, container=container)))
    assert isinstance(result, Encoded), result
    frames, keyframes, facts = decode(result.data)
    assert frames.shape == (40, 24, 32, 3) and result.num_frames == 40
    assert (result.width, result.height, result.ext, result.codec) == (32, 24, container, codec)
    assert facts["codec"] == codec and facts["audio"] == 0 and facts["pix_fmt"] == "yuv420p"
    assert facts["fps"] == fps and result.fps == pytest.approx(float(fps))
    assert keyframes[0] == 0 and max(np.diff(keyframes + [40])) <= 16
    decoded_source, _, _ = decode(path.read_bytes())
    assert np.abs(frames.astype(np.int16) - decoded_source).mean() < 3.0


def test_short_side_cap_keeps_aspect_and_even_sides(tmp_path):
    path = tmp_path / "wide.mp4"
    raw.write_video(path, 8, height=36, width=64)
    result = transcode_job((str(path), "video", TranscodeSettings(short_side=16)))
    frames, _, _ = decode(result.data)
    assert (result.width, result.height) == (28, 16) == (frames.shape[2], frames.shape[1])
    assert capped_size(33, 25, 256, even=True) == (32, 24)  # never upscaled, odd sides rounded down


def test_same_input_gives_same_bytes(tmp_path):
    path = tmp_path / "clip.avi"
    raw.write_video(path, 20)
    first = transcode_job((str(path), "video", TranscodeSettings()))
    again = transcode_job((str(path), "video", TranscodeSettings()))
    assert first.data == again.data


def test_rejects_truncated_empty_zero_frame_and_missing(tmp_path):
    clip = raw.encode_video(raw.moving_frames(24), ".webm")
    (tmp_path / "cut.webm").write_bytes(clip[: len(clip) // 2])
    (tmp_path / "cut.avi").write_bytes(raw.encode_video(raw.moving_frames(24), ".avi")[:3000])
    (tmp_path / "empty.mp4").write_bytes(b"")
    raw.write_zero_frame_avi(tmp_path / "none.avi")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    reasons = {name: transcode_job((str(tmp_path / name), "video", TranscodeSettings()))
               for name in ("cut.webm", "cut.avi", "empty.mp4", "none.avi", "noise.mp4", "absent.mp4")}
    assert all(isinstance(result, Rejected) for result in reasons.values()), reasons
    assert reasons["cut.webm"].reason.startswith("truncated: decoded ")
    assert reasons["cut.avi"].reason.startswith("cannot open")
    assert reasons["empty.mp4"].reason == "empty file (0 bytes)"
    assert reasons["none.avi"].reason == "zero frames decoded"
    assert reasons["noise.mp4"].reason.startswith("cannot open")
    assert reasons["absent.mp4"].reason == "file not found"
    assert all("\n" not in result.reason for result in reasons.values())


def test_images_kept_as_jpeg_unless_too_large_or_not_jpeg(tmp_path):
    raw.write_image(tmp_path / "small.jpg", (40, 30))
    raw.write_image(tmp_path / "large.jpg", (400, 300))
    raw.write_image(tmp_path / "other.png", (40, 30), image_format="PNG")
    settings = TranscodeSettings(short_side=256)
    small = transcode_job((str(tmp_path / "small.jpg"), "image", settings))
    assert small.data == (tmp_path / "small.jpg").read_bytes() and (small.width, small.height) == (40, 30)
    large = transcode_job((str(tmp_path / "large.jpg"), "image", settings))
    png = transcode_job((str(tmp_path / "other.png"), "image", settings))
    for result, size in ((large, (341, 256)), (png, (40, 30))):
        assert (result.ext, result.codec, result.num_frames, result.fps) == ("jpg", "jpeg", 1, 0.0)
        with Image.open(io.BytesIO(result.data)) as image:
            assert image.format == "JPEG" and image.size == size == (result.width, result.height)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "large.jpg").read_bytes()[:600])
    assert transcode_job((str(tmp_path / "cut.jpg"), "image", settings)).reason.startswith("cannot decode image")


# Transcodes every file named on the command line in a fresh process whose FFmpeg is told the CPU has no SIMD
# at all (as tests/test_synth.py does for the generator) and prints their sha256 as JSON, in argument order.
_NO_SIMD_TRANSCODE = """
import ctypes, glob, hashlib, json, os, sys
import av
libavutil = glob.glob(os.path.join(os.path.dirname(av.__file__), os.pardir, "av.libs", "libavutil*.so*"))
ctypes.CDLL(libavutil[0]).av_force_cpu_flags(0)
from pathlib import Path
from shards.transcode import TranscodeSettings, transcode_video
print(json.dumps([hashlib.sha256(transcode_video(Path(path), TranscodeSettings(codec=codec, short_side=16)).data)
                  .hexdigest() for path in sys.argv[1:] for codec in ("vp9", "h264")]))
"""


def test_downscaled_clips_have_the_same_bytes_whatever_simd_ffmpeg_uses(tmp_path):
    """Scaling (swscale) rounded differently in its SIMD code: before the fix, 4 of these 6 clips scaled to a
    16-pixel short side had other bytes with FFmpeg's SIMD turned off, i.e. on another CPU (AVX2 machine)."""
    import hashlib
    import json
    import subprocess
    import sys
    from pathlib import Path

    from shards.synth import diving, media
    from shards.synth.scales import SCALES
    from shards.transcode import transcode_video

    if not list((Path(av.__file__).parent.parent / "av.libs").glob("libavutil*.so*")):
        pytest.skip("this PyAV build does not bundle its own libavutil")
    paths = []
    for job in diving.plan(SCALES["test"], 0)[:4]:  # 32x32 textured, noisy clips
        paths.append(tmp_path / Path(job.relpath).name)
        paths[-1].write_bytes(media.encode_video(diving.render_frames(job, SCALES["test"], 0), media.DIVING_MP4))
    for seed in range(2):
        paths.append(tmp_path / f"smooth{seed}.webm")
        raw.write_video(paths[-1], 12, seed=seed, height=36, width=48)
    with_simd = [hashlib.sha256(transcode_video(path, TranscodeSettings(codec=codec, short_side=16)).data).hexdigest()
                 for path in paths for codec in ("vp9", "h264")]
    result = subprocess.run([sys.executable, "-c", _NO_SIMD_TRANSCODE, *map(str, paths)], capture_output=True,
                            text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    without_simd = json.loads(result.stdout.strip().splitlines()[-1])
    differ = sorted({paths[i // 2].name for i, (a, b) in enumerate(zip(with_simd, without_simd)) if a != b})
    assert len(without_simd) == len(with_simd) and not differ, f"bytes depend on FFmpeg's SIMD: {differ}"
