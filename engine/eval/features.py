"""Frozen feature extraction and its fp16 on-disk cache, shared by every probe of a benchmark.

A cache folder holds `chunk-00000.safetensors, ...` (each: `features` fp16 [m, V, L, D], `labels`
int64 [m]) and `index.json` (keys in order, shapes, the extraction request). `index.json` is written
last and atomically, so a folder without it is an interrupted extraction and is redone; a folder whose
request differs (other encoder, frames, views, pooling) is redone too.

Clips and views: the loader delivers `num_clips * T` frames spread uniformly over the whole video and a
square centre crop; clip s is frames [s*T, (s+1)*T) (consecutive temporal segments), view v is a
`crop_size` window at the left/centre/right (or top/centre/bottom) of that crop. Per sample the tokens
of all clips of one view are concatenated (V-JEPA's "attend across segments"), so L = S * N tokens,
or L = 1 when the benchmark only needs the mean-pooled feature.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from engine.fields import field_doc

FORMAT_VERSION = 1
POOLINGS = ("tokens", "mean")


@dataclass(frozen=True)
class ExtractionSpec:
    """What one cache holds; two requests with equal specs and encoder ids share the cache."""

    num_frames: int = field_doc(16, "T, frames per clip fed to the encoder.")
    crop_size: int = field_doc(224, "Side of the square crop fed to the encoder.")
    num_clips: int = field_doc(1, "Temporal segments per video (the paper: 1).")
    num_views: int = field_doc(1, "Spatial views per clip (the paper: 1, the centre crop).")
    pooling: str = field_doc("tokens", "'tokens': keep all S*N tokens; 'mean': store only their mean [1, D].")
    chunk_size: int = field_doc(256, "Samples per safetensors chunk.")

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"ExtractionSpec.pooling={self.pooling!r}: use one of {POOLINGS}")
        if min(self.num_frames, self.crop_size, self.num_clips, self.num_views, self.chunk_size) < 1:
            raise ValueError(f"ExtractionSpec: every size must be >= 1, got {self}")

    @property
    def load_frames(self) -> int:
        """Frames the loader must sample uniformly over the whole video."""
        return self.num_frames * self.num_clips

    @property
    def load_crop(self) -> int:
        """Side of the loader's centre crop: larger than crop_size only when several views are cut from it
        (8/7, as 256 -> 224), rounded up to an even size."""
        if self.num_views == 1:
            return self.crop_size
        side = -(-self.crop_size * 8 // 7)
        return side + side % 2


@dataclass
class CachedFeatures:
    """One split's features in memory."""

    features: torch.Tensor  # fp16 [n, V, L, D]
    labels: torch.Tensor  # int64 [n]
    keys: list[str]
    meta: dict

    @property
    def num_views(self) -> int:
        return self.features.shape[1]

    @property
    def width(self) -> int:
        return self.features.shape[-1]


def split_clips_and_views(video: torch.Tensor, spec: ExtractionSpec) -> torch.Tensor:
    """[B, C, S*T, H', W'] loader clip -> [B * V * S, C, T, crop, crop] in (sample, view, clip) order."""
    batch, channels, frames, height, width = video.shape
    if frames != spec.load_frames or min(height, width) < spec.crop_size:
        raise ValueError(f"loader gave {frames} frames of {height}x{width}; the extraction needs "
                         f"{spec.load_frames} frames of at least {spec.crop_size}px (check the loader's eval mode)")
    clips = video.view(batch, channels, spec.num_clips, spec.num_frames, height, width)
    clips = clips.permute(0, 2, 1, 3, 4, 5)  # [B, S, C, T, H', W']
    views = []
    for offset_h, offset_w in _view_offsets(height, width, spec.crop_size, spec.num_views):
        views.append(clips[..., offset_h: offset_h + spec.crop_size, offset_w: offset_w + spec.crop_size])
    stacked = torch.stack(views, dim=1)  # [B, V, S, C, T, crop, crop]
    return stacked.reshape(-1, channels, spec.num_frames, spec.crop_size, spec.crop_size)


def _view_offsets(height: int, width: int, crop: int, num_views: int) -> list[tuple[int, int]]:
    """Evenly spaced crop origins along the longer side, centred on the shorter one."""
    centre_h, centre_w = (height - crop) // 2, (width - crop) // 2
    if num_views == 1:
        return [(centre_h, centre_w)]
    along_width = width >= height
    span = (width if along_width else height) - crop
    positions = [round(i * span / (num_views - 1)) for i in range(num_views)]
    return [(centre_h, p) if along_width else (p, centre_w) for p in positions]


@torch.no_grad()
def encode_batch(encode: Callable[[torch.Tensor], torch.Tensor], video: torch.Tensor, spec: ExtractionSpec) -> torch.Tensor:
    """Loader clip batch [B, C, S*T, H', W'] -> fp16 features [B, V, L, D] (L = S*N, or 1 for mean pooling)."""
    batch = video.shape[0]
    tokens = encode(split_clips_and_views(video, spec))  # [B*V*S, N, D]
    num_tokens, width = tokens.shape[1], tokens.shape[2]
    tokens = tokens.float().reshape(batch, spec.num_views, spec.num_clips * num_tokens, width)  # [B, V, S*N, D]
    if spec.pooling == "mean":
        tokens = tokens.mean(dim=2, keepdim=True)  # [B, V, 1, D]
    return tokens.to(torch.float16).cpu()


def _index_path(folder: Path) -> Path:
    return folder / "index.json"


def cache_is_complete(folder: str | Path, request: dict) -> bool:
    """True when `folder` holds a finished extraction made for exactly this request."""
    path = _index_path(Path(folder))
    if not path.exists():
        return False
    index = json.loads(path.read_text())
    return index.get("format") == FORMAT_VERSION and index.get("request") == request


def extract_to_cache(
    encode: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[dict],
    folder: str | Path,
    spec: ExtractionSpec,
    request: dict,
    total_batches: int | None = None,
    description: str = "extract",
) -> Path:
    """Encode every batch (`video`, `label`, `key`) and write the fp16 cache; a no-op when already complete.

    `request` identifies what was extracted (encoder id, dataset, split, spec) and is stored in index.json.
    Samples are kept in loader order; a key seen twice (a padded last batch) is kept once.
    """
    folder = Path(folder)
    request = {**request, "spec": asdict(spec)}
    if cache_is_complete(folder, request):
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    seen: set[str] = set()
    keys: list[str] = []
    pending_features: list[torch.Tensor] = []
    pending_labels: list[torch.Tensor] = []
    chunks: list[dict] = []
    shape: list[int] | None = None

    def flush(final: bool) -> None:
        """Write every full chunk of pending samples (and the remainder when final)."""
        if not pending_labels:
            return
        features, labels = torch.cat(pending_features), torch.cat(pending_labels)
        pending_features.clear()
        pending_labels.clear()
        start = 0
        while labels.shape[0] - start >= spec.chunk_size or (final and start < labels.shape[0]):
            stop = min(start + spec.chunk_size, labels.shape[0])
            name = f"chunk-{len(chunks):05d}.safetensors"
            save_file({"features": features[start:stop].contiguous(), "labels": labels[start:stop].contiguous()},
                      str(folder / name))
            chunks.append({"name": name, "count": stop - start})
            start = stop
        if start < labels.shape[0]:
            pending_features.append(features[start:])
            pending_labels.append(labels[start:])

    for batch in tqdm(batches, total=total_batches, desc=description, leave=False):
        fresh = [i for i, key in enumerate(batch["key"]) if key not in seen]
        if not fresh:
            continue
        features = encode_batch(encode, batch["video"], spec)[fresh]  # [b, V, L, D]
        shape = list(features.shape[1:])
        for i in fresh:
            seen.add(batch["key"][i])
            keys.append(batch["key"][i])
        pending_features.append(features)
        pending_labels.append(torch.as_tensor(batch["label"]).cpu().long()[fresh])
        if sum(int(t.shape[0]) for t in pending_labels) >= spec.chunk_size:
            flush(final=False)
    flush(final=True)
    if not keys:
        raise ValueError(f"{folder}: the loader yielded no samples; check the shard folder and split")
    index = {"format": FORMAT_VERSION, "request": request, "keys": keys, "num_samples": len(keys),
             "sample_shape": shape, "chunks": chunks}
    temporary = folder / "index.json.tmp"
    temporary.write_text(json.dumps(index))
    os.replace(temporary, _index_path(folder))
    return folder


def load_cache(folder: str | Path) -> CachedFeatures:
    """Read a complete cache into memory (fp16 features, int64 labels, keys in extraction order)."""
    folder = Path(folder)
    path = _index_path(folder)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no finished feature cache here; run the extraction first")
    index = json.loads(path.read_text())
    parts = [load_file(str(folder / chunk["name"])) for chunk in index["chunks"]]
    features = torch.cat([p["features"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    if features.shape[0] != index["num_samples"] or len(index["keys"]) != index["num_samples"]:
        raise ValueError(f"{folder}: chunks hold {features.shape[0]} samples, index.json says "
                         f"{index['num_samples']}; delete the folder to re-extract")
    return CachedFeatures(features=features, labels=labels, keys=list(index["keys"]), meta=index)
