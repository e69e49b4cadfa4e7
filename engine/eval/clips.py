"""Evaluation clips from the real loader: every sample of one split once, in index order.

engine.data's eval mode gives T frames uniformly over the whole video (repeated when short; an image
becomes T identical frames), the centred square of side min(H, W) resized to the crop (= short-side
resize + centre crop) and no flip. Slots padding the last batch, and samples the loader found
undecodable, come back with `valid` False and are dropped here, so each sample is encoded exactly once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from .features import ExtractionSpec


def eval_batches(folder: str | Path, split: str, spec: ExtractionSpec, batch_size: int = 16,
                 num_workers: int = 1, num_threads: int = 1) -> tuple[Iterator[dict], int]:
    """(iterator over {video, label, key} batches of valid samples, number of batches)."""
    from engine.data import DatasetSpec, LoaderConfig, VideoLoader

    config = LoaderConfig(
        datasets=[DatasetSpec(root=str(folder), split=split, name=Path(folder).name)],
        batch_size=batch_size,
        num_frames=spec.load_frames,
        crop_size=spec.load_crop,
        mode="eval",
        seed=0,
        num_workers=num_workers,
        num_threads=num_threads,
        dtype="float32",
    )
    loader = VideoLoader(config)

    def batches() -> Iterator[dict]:
        try:
            for batch in loader:
                # `valid` (beyond contracts §2) marks padding and substituted slots; without it every slot
                # counts and extraction's key de-duplication drops the padding.
                keep = batch["valid"].bool() if "valid" in batch else torch.ones(len(batch["key"]), dtype=torch.bool)
                if not keep.any():
                    continue
                index = keep.nonzero().flatten()
                yield {"video": batch["video"][index.to(batch["video"].device)],
                       "label": batch["label"][index],
                       "key": [batch["key"][i] for i in index.tolist()]}
        finally:
            loader.close()

    return batches(), len(loader)


def encoder_forward(encoder: torch.nn.Module, device: torch.device):
    """The function extraction calls: clips [B, C, T, H, W] -> eval tokens [B, N, D] on the encoder's device."""

    def encode(video: torch.Tensor) -> torch.Tensor:
        return encoder.forward_eval(video.to(device, torch.float32))

    return encode
