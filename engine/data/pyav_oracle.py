"""The PyAV oracle (tests and benchmarks only): the same clip as the DALI graph, decoded per file by FFmpeg.

Given a sampler's plan it reads the same member bytes, decodes the same frames with PyAV (FFmpeg),
applies the same crop box, flip, resize and normalisation in PyTorch, and returns tensors in the batch
layout. Tests compare it with the DALI output; the benchmark uses it as the per-file baseline.
"""
from __future__ import annotations

import io

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.data.config import LoaderConfig
from engine.data.index import read_member
from engine.data.sampler import BatchPlan, ClipSampler


def _upsample2(plane: np.ndarray, axis: int) -> np.ndarray:
    """Double one axis with centred linear interpolation (half-pixel taps 3/4, 1/4; edges clamped)."""
    n = plane.shape[axis]
    prev = np.take(plane, np.maximum(np.arange(n) - 1, 0), axis=axis)
    nxt = np.take(plane, np.minimum(np.arange(n) + 1, n - 1), axis=axis)
    even, odd = 0.75 * plane + 0.25 * prev, 0.75 * plane + 0.25 * nxt
    return np.stack([even, odd], axis=axis + 1).reshape(*plane.shape[:axis], 2 * n, *plane.shape[axis + 1:])


def yuv420_to_rgb(frame: "av.VideoFrame") -> np.ndarray:
    """[H, W, 3] uint8 with DALI's conversion: BT.601 limited range, bilinear chroma upsampling, rounding.

    FFmpeg's own rgb24 conversion differs from DALI by about 1.5 levels; this one by about 0.01, so a
    comparison with the DALI output measures frame selection and geometry, not colour maths."""
    h, w = frame.height, frame.width
    planes = frame.to_ndarray(format="yuv420p").astype(np.float32)          # [H * 3/2, W]
    luma = planes[:h]
    chroma = planes[h:].reshape(2, h // 2, w // 2)
    u, v = (_upsample2(_upsample2(c, 0), 1)[:h, :w] for c in chroma)
    y = (luma - 16.0) * (255.0 / 219.0)
    u, v = (u - 128.0) * (255.0 / 224.0), (v - 128.0) * (255.0 / 224.0)
    r = y + 1.402 * v
    b = y + 1.772 * u
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return np.clip(np.round(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8)


def decode_video_frames(source, frame_indices: np.ndarray, dali_colour: bool = True) -> np.ndarray:
    """[T, H, W, 3] uint8 RGB: the frames at `frame_indices` (presentation order) of a file path or bytes.

    `dali_colour=False` uses FFmpeg's own RGB conversion (what a plain per-file loader does)."""
    wanted = np.asarray(frame_indices, np.int64)
    last = int(wanted.max())
    opened = av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    decoded: list[np.ndarray] = []
    with opened as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            exact = dali_colour and frame.format.name == "yuv420p" and frame.height % 2 == 0 and frame.width % 2 == 0
            decoded.append(yuv420_to_rgb(frame) if exact else frame.to_ndarray(format="rgb24"))
            if len(decoded) > last:
                break
    if not decoded:
        raise ValueError("no frame could be decoded")
    # Frames past the end repeat the last decoded one, as the loader's edge padding does.
    picked = [decoded[min(i, len(decoded) - 1)] for i in wanted]
    return np.stack(picked)


def decode_image(source) -> np.ndarray:
    """[H, W, 3] uint8 RGB of a JPEG file path or bytes.

    Pillow (libjpeg-turbo), not FFmpeg's mjpeg decoder: DALI's CPU JPEG path uses libjpeg-turbo too, and
    FFmpeg's different IDCT and chroma upsampling alone differ from it by about 2 levels on sharp images."""
    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as image:
        return np.array(image.convert("RGB"))


def crop_flip_resize(frames: np.ndarray, roi_start: np.ndarray, roi_end: np.ndarray, size: int) -> torch.Tensor:
    """[T, H, W, 3] uint8 -> [T, 3, S, S] float32 in 0..255; a reversed x range in the ROI means flip."""
    y0, y1 = int(round(float(roi_start[0]))), int(round(float(roi_end[0])))
    xa, xb = int(round(float(roi_start[1]))), int(round(float(roi_end[1])))
    flip = xa > xb
    x0, x1 = (xb, xa) if flip else (xa, xb)
    crop = torch.from_numpy(np.ascontiguousarray(frames[:, y0:y1, x0:x1])).permute(0, 3, 1, 2).float()
    if flip:
        crop = crop.flip(-1)
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def normalise(clip: torch.Tensor, cfg: LoaderConfig) -> torch.Tensor:
    """[T, 3, S, S] in 0..255 -> [3, T, S, S] ImageNet-normalised (the contract's per-sample layout)."""
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(cfg.std).view(1, 3, 1, 1) * 255.0
    return ((clip - mean) / std).permute(1, 0, 2, 3).contiguous()


def oracle_sample(cfg: LoaderConfig, source, is_image: bool, frames: np.ndarray, roi_start: np.ndarray,
                     roi_end: np.ndarray, dali_colour: bool = True) -> torch.Tensor:
    """One clip [3, T, S, S] from a file path or the member bytes, following one slot of a plan."""
    if is_image:
        clip = crop_flip_resize(decode_image(source)[None], roi_start, roi_end, cfg.crop_size)
        clip = clip.expand(cfg.num_frames, -1, -1, -1)
    else:
        clip = crop_flip_resize(decode_video_frames(source, frames, dali_colour), roi_start, roi_end, cfg.crop_size)
    return normalise(clip, cfg)


def oracle_batch(sampler: ClipSampler, plan: BatchPlan) -> dict:
    """The batch the DALI loader yields for `plan`, decoded with PyAV from the same shard members."""
    clips, labels, keys = [], [], []
    for i in range(len(plan.row)):
        d, r = int(plan.dataset_id[i]), int(plan.row[i])
        index = sampler.indexes[d]
        encoded = read_member(index.shard_paths[index.shard_id[r]], int(index.media_offset[r]), int(index.media_size[r]))
        clips.append(oracle_sample(sampler.cfg, encoded, bool(plan.is_image[i]), plan.frames[i],
                                      plan.roi_start[i], plan.roi_end[i]))
        labels.append(int(index.label[r]))
        keys.append(str(index.keys[r]))
    return {"video": torch.stack(clips), "label": torch.tensor(labels, dtype=torch.int64),
            "dataset_id": torch.from_numpy(plan.dataset_id.copy()), "key": keys}
