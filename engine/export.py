"""Export of the trained encoder to safetensors, and `load_encoder` to get it back as a module.

The file holds the encoder's state dict and, in the safetensors metadata, its ModelConfig (JSON) and
which encoder it is (`trained_encoder`: the EMA `target_encoder`, or the online `encoder` for runs whose
EMA was disabled; engine.jepa decides), so a probe never has to guess.

    from engine.export import load_encoder
    encoder = load_encoder("runs/demo_mixed_fwm/encoder.safetensors")   # VisionTransformer, eval mode
    feats = encoder.forward_eval(video)                                 # [B, N, D]

    python -m engine.export runs/<run>/checkpoints/step_00000200 --out encoder.safetensors
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.models import ModelConfig, VisionTransformer

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


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> VisionTransformer:
    """The exported encoder as a VisionTransformer in eval mode with frozen parameters."""
    meta = read_metadata(path)
    cfg = ModelConfig(**meta["model_config"])
    encoder = VisionTransformer(cfg)
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    encoder.load_state_dict(state, strict=True)
    encoder.requires_grad_(False)
    return encoder.eval().to(device)


def export_checkpoint(checkpoint: str | Path, out: str | Path, recipe: str | Path | None = None) -> Path:
    """Export the trained encoder of a training checkpoint (no DeepSpeed needed: read its files).

    The model config comes from the checkpoint's own recipe.yaml, never from the run folder's, which a later
    resume of the run rewrites. `recipe` names one for checkpoints written before they carried their own."""
    from engine.recipe import read_resolved_recipe

    checkpoint = Path(checkpoint)
    recipe_path = Path(recipe) if recipe is not None else checkpoint / "recipe.yaml"
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{checkpoint}: no recipe.yaml in the checkpoint (written before checkpoints carried "
                                f"their recipe); fix: pass --recipe with the recipe it was trained with, e.g. "
                                f"{checkpoint.parent.parent / 'recipe.yaml'} if no resume changed it since")
    trainer = torch.load(checkpoint / "trainer.pt", map_location="cpu", weights_only=False)
    model_cfg = read_resolved_recipe(recipe_path).model
    encoder = VisionTransformer(model_cfg)
    if trainer["trained_encoder"] == "target_encoder":
        state = trainer["ema_target"]
    else:
        module = torch.load(checkpoint / "ds" / "mp_rank_00_model_states.pt", map_location="cpu",
                            weights_only=False)["module"]
        state = {k[len("encoder."):]: v for k, v in module.items() if k.startswith("encoder.")}
    encoder.load_state_dict(state, strict=True)
    return export_encoder(encoder, model_cfg, out, trained_encoder=trainer["trained_encoder"],
                          step=trainer["step"], run=trainer["run"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the trained encoder of a checkpoint to safetensors.")
    parser.add_argument("checkpoint", help="a runs/<run>/checkpoints/step_XXXXXXXX folder")
    parser.add_argument("--out", required=True, help="output .safetensors path")
    parser.add_argument("--recipe", default=None,
                        help="the resolved recipe it was trained with; only for checkpoints without their own "
                             "recipe.yaml (written before checkpoints carried one)")
    args = parser.parse_args(argv)
    from engine.training.typed_yaml import ConfigError
    try:
        print(export_checkpoint(args.checkpoint, args.out, args.recipe))
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
