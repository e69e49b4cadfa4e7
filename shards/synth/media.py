"""Encoding rendered frames into the real datasets' file formats, reproducibly and atomically.

Reproducible: one encoder thread and FFmpeg's bit-exact flags on codec and muxer, so the same frames
give the same bytes (no encoder version string, no creation time). Atomic: each file is written under a
temporary name in its final folder and renamed into place, so a file that exists is complete.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

PARTIAL_SUFFIX = ".synth-partial"


@dataclass(frozen=True)
class VideoFormat:
    container: str           # FFmpeg muxer name
    codec: str               # FFmpeg encoder name
    fps: int
    options: dict            # encoder private options
    bits_per_pixel: float = 0.0  # > 0 sets a bitrate (for encoders driven by bitrate, not CRF)


# UCF-101 ships Xvid-style MPEG-4 Part 2 in AVI at 25 fps.
UCF_AVI = VideoFormat("avi", "mpeg4", 25, {}, bits_per_pixel=1.0)
# SSv2 ships VP9 WebM at 12 fps. Realtime deadline keeps generation cheap; CRF keeps quality steady.
SSV2_WEBM = VideoFormat("webm", "libvpx-vp9", 12,
                        {"deadline": "realtime", "cpu-used": "8", "crf": "28", "b": "0", "row-mt": "0",
                         "threads": "1"})
# Diving-48 V2 ships H.264 MP4 at 25 fps.
DIVING_MP4 = VideoFormat("mp4", "libx264", 25, {"preset": "veryfast", "crf": "20", "threads": "1"})


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def encode_video(frames: np.ndarray, fmt: VideoFormat) -> bytes:
    """frames [T, H, W, 3] uint8 RGB -> the encoded file's bytes."""
    buffer = io.BytesIO()
    height, width = frames.shape[1:3]
    with av.open(buffer, "w", format=fmt.container, options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(fmt.codec, rate=fmt.fps, options=dict(fmt.options))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        if fmt.bits_per_pixel > 0:
            stream.codec_context.bit_rate = int(fmt.bits_per_pixel * width * height * fmt.fps)
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """image [H, W, 3] uint8 -> baseline JPEG bytes (Pillow writes no timestamps)."""
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(path)
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=1) + "\n")
