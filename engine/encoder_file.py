"""One encoder export file: the encoder's weights (safetensors) with its ModelConfig and which encoder it
is in the metadata. Written by `export_encoder`, read by `read_metadata` and checked against its tensors by
`check_tensors`; engine.export builds modules from it and engine.export_card wraps it in a folder others can
load.

The bytes of an export depend on the weights and the metadata alone (same checkpoint, same file, in any
process): the sha256 of an export folder's config.json and the evaluation's fingerprint are taken from them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.models import ModelConfig

FORMAT = "vjepa-engine-encoder/1"
_HEADER_ALIGN = 8  # safetensors pads its JSON header so the tensor data starts 8-byte aligned


def export_encoder(encoder: torch.nn.Module, model_cfg: ModelConfig, path: str | Path, **info) -> Path:
    """Write the encoder's weights (fp32, contiguous) and its config; `info` goes into the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in encoder.state_dict().items()}
    metadata = {"format": FORMAT, "model_config": json.dumps(dataclasses.asdict(model_cfg), sort_keys=True)}
    metadata.update({k: json.dumps(v, sort_keys=True) for k, v in info.items()})
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    canonical_header(tmp)
    os.chmod(tmp, 0o666 & ~current_umask())  # safetensors creates its file 0600; an export is meant to be shared
    tmp.replace(path)
    return path


def canonical_header(path: Path) -> None:
    """Rewrite the JSON header of a safetensors file with sorted keys and no spaces, padded to 8 bytes.

    safetensors serialises its metadata from a Rust HashMap whose order is drawn anew in every process, so
    the same weights gave a different file (and sha256) per export. The tensor data and its offsets are left
    as they are: the library already lays tensors out in a fixed order (dtype, then name)."""
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        text += b" " * (-len(text) % _HEADER_ALIGN)
        if len(text) == length:  # the usual case: the same JSON in another order
            handle.seek(8)
            handle.write(text)
            return
    rewritten = path.with_name(path.name + ".header")  # a longer or shorter header moves the data: copy it
    with open(path, "rb") as source, open(rewritten, "wb") as target:
        source.seek(8 + length)
        target.write(struct.pack("<Q", len(text)) + text)
        shutil.copyfileobj(source, target, 1 << 20)
    os.replace(rewritten, path)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc/self/status, Linux >= 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_metadata(path: str | Path) -> dict:
    """The export's metadata with JSON values decoded (model_config as a dict)."""
    with safe_open(str(path), framework="pt") as fh:
        raw = fh.metadata() or {}
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path}: not an encoder export of this engine (format {raw.get('format')!r}); fix: "
                         f"export it with engine.export.export_encoder")
    try:
        return {k: (v if k == "format" else json.loads(v)) for k, v in raw.items()}
    except ValueError as error:
        raise ValueError(f"{path}: metadata is not valid JSON ({error}); fix: export it again with "
                         f"`python -m engine.export`") from None


def check_tensors(path: str | Path, model_config: dict, source: str | Path | None = None) -> ModelConfig:
    """The ModelConfig of `model_config`, once the tensors of `path` are exactly those it builds (names and
    shapes, read from the header without loading a tensor); else one line naming the first that differs.

    `source`: the file the config was read from (the export itself, or an export folder's config.json)."""
    from engine.models import VisionTransformer

    source = source or path
    fix = "export it again with `python -m engine.export` (the metadata and the weights are from different models)"
    try:
        cfg = ModelConfig(**model_config)
        with torch.device("meta"):  # shapes only: no memory, no init
            expected = {k: tuple(v.shape) for k, v in VisionTransformer(cfg).state_dict().items()}
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as error:
        raise ValueError(f"{source}: model_config does not build an encoder ({error}); fix: {fix}") from None
    with safe_open(str(path), framework="pt") as fh:
        found = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    for name in sorted(expected.keys() | found.keys()):
        if name not in found:
            raise ValueError(f"{path}: no tensor {name!r}, which the model_config of {source} needs; fix: {fix}")
        if name not in expected:
            raise ValueError(f"{path}: tensor {name!r} is not part of the model_config of {source}; fix: {fix}")
        if found[name] != expected[name]:
            raise ValueError(f"{path}: tensor {name!r} has shape {list(found[name])}, the model_config of {source} "
                             f"gives {list(expected[name])}; fix: {fix}")
    return cfg
