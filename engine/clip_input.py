"""A video as an encoder's input clip, made exactly as the evaluation makes its clips (engine/features.py
says which of the loader's functions each step calls). Imports only engine.data and engine.models, so the
export's config writer can state the preprocessing without importing the exporters."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from engine.models import ModelConfig


def preprocessing_spec(model: ModelConfig, frame_step: int | None = None) -> dict:
    """The preprocessing above as data (an export's config.json and model card state it)."""
    from engine.data.config import IMAGENET_MEAN, IMAGENET_STD
    return {"num_frames": model.num_frames,
            "frames": (f"{model.num_frames} frames {frame_step} apart from the first" if frame_step else
                       f"{model.num_frames} frames spread uniformly from the first to the last frame"),
            "crop": model.img_size, "resize": "centred square of side min(H, W), resized to the crop "
            "(= short-side resize + centre crop), bilinear with antialiasing",
            "colour": "RGB, BT.601 limited range", "scale": "0..255 levels", "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "normalise": "(levels / 255 - mean) / std",
            "layout": "[B, 3, T, H, W] (transformers' VJEPA2Model: [B, T, 3, H, W])",
            "code": "engine.clip_input.load_clip"}


def frame_count(path: str | Path) -> int:
    """Frames of the first video stream (the container's count, else the packets')."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size)


def select_frames(total: int, num_frames: int, frame_step: int | None) -> np.ndarray:
    from engine.data.sampler import eval_frame_indices
    if frame_step:
        return np.minimum(np.arange(num_frames) * frame_step, total - 1).astype(np.int32)
    return eval_frame_indices(total, num_frames)


def clip_from_frames(frames: torch.Tensor | np.ndarray, crop: int) -> torch.Tensor:
    """Decoded frames uint8 [T, H, W, 3] -> one normalised clip [1, 3, T, crop, crop] (float32)."""
    from engine.data.augment import crop_flip_resize_batch
    from engine.data.config import IMAGENET_MEAN, IMAGENET_STD
    from engine.data.loader import normalisation, normalise_clips
    from engine.data.sampler import centre_square

    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    y0, x0, h, w = (int(v) for v in centre_square(np.array([frames.shape[1]]), np.array([frames.shape[2]])))
    box = np.array([[y0, x0, y0 + h, x0 + w]])  # (y0, x_from, y1, x_to), as the sampler's ROI
    clips = crop_flip_resize_batch([frames], box, frames.shape[0], crop, dtype=torch.float32)  # [1, T, S, S, 3]
    scale, shift = normalisation(SimpleNamespace(mean=IMAGENET_MEAN, std=IMAGENET_STD), torch.device("cpu"))
    return normalise_clips(clips, scale, shift, torch.float32).contiguous()  # [1, 3, T, S, S]


def load_clip(path: str | Path, model: ModelConfig, frame_step: int | None = None) -> torch.Tensor:
    """A video file as the encoder's input clip [1, 3, T, crop, crop], as the evaluation makes it."""
    from engine.data.pyav_oracle import decode_video_frames
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    indices = select_frames(frame_count(path), model.num_frames, frame_step)
    return clip_from_frames(decode_video_frames(str(path), indices), model.img_size)
