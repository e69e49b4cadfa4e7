"""Encoding rendered frames into the real datasets' file formats, reproducibly and atomically.

Reproducible: the RGB -> YUV 4:2:0 conversion is done here in exact integer arithmetic, and the
encoders run one thread with FFmpeg's bit-exact flags on codec and muxer, x264 CPU-independent
(X264_REPRODUCIBLE in shards/transcode.py), so the same frames give the same bytes on any CPU and in any
process (no encoder version string, no creation time). Letting FFmpeg's swscale convert instead made the
bytes depend on which SIMD path it picked: the same RGB frame converts to different YUV bytes with and
without SIMD, and a one-level change in the input moves the lossy encoder's decisions by much more.
Atomic: each file is written under a temporary name in its final folder and renamed into place, so a
file that exists is complete.
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

from shards.safefiles import create_new
from shards.transcode import X264_REPRODUCIBLE

PARTIAL_SUFFIX = ".synth-partial"


@dataclass(frozen=True)
class VideoFormat:
    container: str           # FFmpeg muxer name
    codec: str               # FFmpeg encoder name
    fps: int
    options: dict            # encoder private options
    bits_per_pixel: float = 0.0  # > 0 sets a bitrate (for encoders driven by bitrate, not CRF)


# UCF-101 ships Xvid-style MPEG-4 Part 2 in AVI at 25 fps. The accurate integer DCT and the simple IDCT
# are named because FFmpeg's default ("auto") takes a SIMD transform whose output differs from the C one.
UCF_AVI = VideoFormat("avi", "mpeg4", 25, {"dct": "int", "idct": "simple"}, bits_per_pixel=1.0)
# SSv2 ships VP9 WebM at 12 fps. Realtime deadline keeps generation cheap; CRF keeps quality steady.
SSV2_WEBM = VideoFormat("webm", "libvpx-vp9", 12,
                        {"deadline": "realtime", "cpu-used": "8", "crf": "28", "b": "0", "row-mt": "0",
                         "threads": "1"})
# Diving-48 V2 ships H.264 MP4 at 25 fps. CPU-independent x264: its SIMD paths made the bytes differ
# between CPUs, and on AVX-512 between repeats of one encode in one process (issue 22).
DIVING_MP4 = VideoFormat("mp4", "libx264", 25, {"preset": "veryfast", "crf": "20", "threads": "1",
                                                **X264_REPRODUCIBLE})


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 RGB (H, W even) -> [H * 3 / 2, W] uint8 planar YUV 4:2:0 as FFmpeg lays out yuv420p.

    BT.601 limited range, the colour space the synth files are tagged with by default, in 8-bit fixed point
    (integers only, so every CPU gives the same bytes). Chroma is taken from the mean RGB of each 2x2 block."""
    height, width = rgb.shape[:2]
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))  # [H, W] each
    luma = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    # 2x2 block sums (4x the mean): the coefficients' shift grows by 2 to divide by 4.
    def block_sum(channel: np.ndarray) -> np.ndarray:
        return channel.reshape(height // 2, 2, width // 2, 2).sum(axis=(1, 3))  # [H/2, W/2]
    r4, g4, b4 = block_sum(r), block_sum(g), block_sum(b)
    cb = ((-38 * r4 - 74 * g4 + 112 * b4 + 512) >> 10) + 128
    cr = ((112 * r4 - 94 * g4 - 18 * b4 + 512) >> 10) + 128
    planes = [np.clip(luma, 16, 235), np.clip(cb, 16, 240), np.clip(cr, 16, 240)]
    return np.concatenate([plane.ravel() for plane in planes]).astype(np.uint8).reshape(height * 3 // 2, width)


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
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(pixels), format="yuv420p")
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
    with create_new(temporary) as handle:  # never writes through a link planted in the raw tree
        handle.write(data)
    os.replace(temporary, path)


def write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=1) + "\n")
