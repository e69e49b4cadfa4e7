"""One encoder export file: the encoder's weights (safetensors) with its ModelConfig and which encoder it
is in the metadata. Written by `export_encoder`, read by `read_metadata`; engine.export builds modules
from it and engine.export_card wraps it in a folder others can load."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.models import ModelConfig

FORMAT = "vjepa-engine-encoder/1"


def export_encoder(encoder: torch.nn.Module, model_cfg: ModelConfig, path: str | Path, **info) -> Path:
    """Write the encoder's weights (fp32, contiguous) and its config; `info` goes into the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in encoder.state_dict().items()}
    metadata = {"format": FORMAT, "model_config": json.dumps(dataclasses.asdict(model_cfg))}
    metadata.update({k: json.dumps(v) for k, v in info.items()})
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict:
    """The export's metadata with JSON values decoded (model_config as a dict)."""
    with safe_open(str(path), framework="pt") as fh:
        raw = fh.metadata() or {}
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path}: not an encoder export of this engine (format {raw.get('format')!r}); fix: "
                         f"export it with engine.export.export_encoder")
    return {k: (v if k == "format" else json.loads(v)) for k, v in raw.items()}
