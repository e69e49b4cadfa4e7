"""Crop, flip and resize of decoded uint8 frames in PyTorch: the CPU path's alternative to DALI's resize.

On the CPU, DALI's resize of a random crop to 64x64 costs about half a decode per clip, PyTorch's uint8
bilinear kernel (AVX2, channels-last) about a tenth (benchmarks/results/loader-cpu.md); both resample
the same integer crop box with antialiasing on downscale, so either backend gives the same clips to
within rounding. The box comes from the sampler through the pipeline's `meta` output.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def crop_flip_resize_uint8(frames: torch.Tensor, box: np.ndarray, size: int) -> torch.Tensor:
    """[T, H, W, 3] uint8 -> [T, S, S, 3] uint8. `box` = (y0, x_from, y1, x_to); x_from > x_to flips."""
    y0, xa, y1, xb = (int(v) for v in box)
    flip = xa > xb
    x0, x1 = (xb, xa) if flip else (xa, xb)
    crop = frames[:, y0:y1, x0:x1].permute(0, 3, 1, 2)                        # [T, 3, h, w] channels-last view
    if flip:
        # Bilinear sampling is mirror-symmetric (align_corners=False), so flipping the crop before the
        # resize gives the same pixels as flipping after it, and the crop is never larger than the output.
        crop = crop.flip(-1)
    if crop.shape[-2:] != (size, size):
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return crop.permute(0, 2, 3, 1)                                           # [T, S, S, 3]


def crop_flip_resize_batch(samples, boxes: np.ndarray, num_frames: int, size: int,
                           dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Decoded samples (each [T, H, W, 3], an image [1, H, W, 3]) -> [B, T, S, S, 3] clips of `dtype`.

    With dtype=float32 each clip is converted while it is copied into the batch, which saves the loader
    a uint8 batch and a separate conversion pass (levels stay 0..255; normalisation comes after)."""
    clips = torch.empty((len(samples), num_frames, size, size, 3), dtype=dtype)
    for i, frames in enumerate(samples):
        clips[i].copy_(crop_flip_resize_uint8(frames, boxes[i], size))        # an image broadcasts over T
    return clips
