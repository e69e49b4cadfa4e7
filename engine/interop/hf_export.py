"""A Hugging Face folder of a trained encoder: `transformers.VJEPA2Model.from_pretrained(folder)` loads it and
gives the engine's `forward_eval` outputs (tests/test_hf_export.py checks it in a fresh Python).

    python -m engine.export runs/<run>/checkpoints/step_00000200 --out hf/ --format hf

    hf/
      model.safetensors   VJEPA2Model's encoder.* tensors (q/k/v split, the last level's LayerNorm)
      config.json         VJEPA2Config, plus `vjepa_engine`: the engine config, provenance, preprocessing
      README.md           the model card: how to load it, the input it expects, what was left out

Only configurations VJEPA2Model can express are written (`hf_refusal` names the recipe key otherwise), above
all `model.rope_style: vjepa2`. A modality embedding is folded into the patch embedding's bias (the video
vector; VJEPA2Model takes video only). The LayerNorms of the other training output levels are training-only
and left out; so is the predictor, which transformers then initialises at random (use
`get_vision_features` or `skip_predictor=True`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch

from engine.models import ModelConfig

from .hf_names import MappingError, encoder_to_hf, hf_config_dict, hf_refusal

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"


def write_hf_folder(encoder: torch.nn.Module, model_cfg: ModelConfig, folder: str | Path, **info) -> Path:
    """Write `folder` (model.safetensors, config.json, README.md) or raise MappingError naming the key."""
    from safetensors.torch import save_file

    refusal = hf_refusal(model_cfg)
    if refusal:
        raise MappingError(f"cannot write a transformers VJEPA2 folder: {refusal}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in encoder.state_dict().items()}
    tensors = {k: v.contiguous() for k, v in encoder_to_hf(state, model_cfg).items()}
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, folder / WEIGHTS)
    config = hf_config_dict(model_cfg)
    from engine.clip_input import preprocessing_spec
    config["vjepa_engine"] = {"model_config": dataclasses.asdict(model_cfg), "preprocessing": preprocessing_spec(model_cfg),
                              "features": f"last_hidden_state [B, N, {model_cfg.embed_dim}]", **info}
    _write(folder / CONFIG, json.dumps(config, indent=1) + "\n")
    _write(folder / CARD, hf_card(config))
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def hf_card(config: dict) -> str:
    engine = config["vjepa_engine"]
    cfg, prep = engine["model_config"], engine["preprocessing"]
    name = engine.get("run") or "encoder"
    folded = " Its video modality vector is folded into the patch embedding's bias." if cfg.get("modality_embedding") else ""
    return "\n".join([
        f"# {name}: a Video-JEPA encoder in transformers' VJEPA2 format", "",
        f"A ViT video encoder ({cfg['depth']} blocks, width {cfg['embed_dim']}, {cfg['num_heads']} heads, "
        f"{cfg['num_frames']} frames of {cfg['img_size']} px, tubelets {cfg['tubelet_size']}x{cfg['patch_size']}x"
        f"{cfg['patch_size']}, V-JEPA 2 RoPE) pretrained with vjepa-engine"
        + (f", step {engine['step']}" if "step" in engine else "") + f".{folded}", "",
        "## Load it", "", "```python", "import torch", "from transformers import VJEPA2Model",
        'model = VJEPA2Model.from_pretrained("<this folder>").eval()',
        "video = ...  # [B, T, 3, H, W] float, preprocessed as below",
        "feats = model.get_vision_features(video)   # [B, N, D], the engine's forward_eval",
        "```", "",
        "Or with the engine: `engine.export.load_encoder(\"<this folder>\")`, and features of a video file in one call:",
        "`python -m engine.features <this folder> clip.mp4 --out feats.npy`.", "",
        "The predictor is not included: transformers initialises it at random (it says so when loading); use "
        "`get_vision_features` or `skip_predictor=True`.", "",
        "## Input", "", preprocessing_text(prep), "",
        "## Provenance", "", f"- engine commit `{engine.get('engine_commit', 'unknown')}`",
        f"- run `{engine.get('run', '?')}`, its `{engine.get('trained_encoder', '?')}`", ""])


def preprocessing_text(prep: dict) -> str:
    return (f"{prep['colour']} clips: {prep['frames']}; the {prep['resize']} to {prep['crop']}x{prep['crop']}; "
            f"{prep['scale']} normalised as {prep['normalise']} with mean {prep['mean']} and std {prep['std']}; "
            f"layout {prep['layout']}. `{prep['code']}` (and `python -m engine.features`) does exactly this: "
            f"it is the evaluation's own preprocessing.")


def export_checkpoint_hf(checkpoint: str | Path, out: str | Path, recipe: str | Path | None,
                         export_checkpoint, load_encoder) -> Path:
    """`python -m engine.export <checkpoint> --out <folder> --format hf`: the trained encoder of a checkpoint
    as a transformers VJEPA2 folder, read through the engine's own export (engine.export passes its
    `export_checkpoint` and `load_encoder`), so the weights are the ones the engine export holds."""
    from engine.encoder_file import read_metadata
    from engine.export_card import engine_commit

    with tempfile.TemporaryDirectory() as tmp:
        path = export_checkpoint(checkpoint, Path(tmp) / "encoder.safetensors", recipe)
        meta = read_metadata(path)
        encoder = load_encoder(path)
    info = {k: meta[k] for k in ("trained_encoder", "step", "run") if k in meta}
    return write_hf_folder(encoder, encoder.cfg, out, engine_commit=engine_commit(), **info)
