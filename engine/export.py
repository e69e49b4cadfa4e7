"""Export of the trained encoder to safetensors, and `load_encoder` to get it back as a module.

The file holds the encoder's state dict and, in the safetensors metadata, its ModelConfig (JSON) and
which encoder it is (`trained_encoder`: the EMA `target_encoder`, or the online `encoder` for runs whose
EMA was disabled; engine.jepa decides), so a probe never has to guess.

    from engine.export import load_encoder
    encoder = load_encoder("runs/demo_mixed_fwm/encoder.safetensors")   # VisionTransformer, eval mode
    feats = encoder.forward_eval(video)                                 # [B, N, D]

    python -m engine.export runs/<run>/checkpoints/step_00000200 --out encoder.safetensors
    python -m engine.export runs/<run>/checkpoints/step_00000200 --out export/   # folder + model card
    python -m engine.export runs/<run>/checkpoints/step_00000200 --out hf/ --format hf   # transformers VJEPA2

`load_encoder` also takes an export folder or a URL of one (engine.export_card).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from engine.encoder_file import FORMAT, check_tensors, export_encoder, read_metadata  # noqa: F401  (this module's API)
from engine.models import VisionTransformer


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> VisionTransformer:
    """The exported encoder as a VisionTransformer in eval mode with frozen parameters.

    `path`: an encoder .safetensors file, an export folder (model.safetensors + config.json, see
    engine.export_card), or the fsspec URL of either (https://, s3://, gs://, file://); or released V-JEPA 2
    weights: a transformers VJEPA2 folder or hub id, an original vjepa2 checkpoint (engine/interop)."""
    from engine.interop.released import is_released_source, read_released
    if is_released_source(path):
        return read_released(path).build_encoder(device)
    from shards.storage import is_url
    if is_url(path) or Path(path).is_dir():
        from engine.export_card import fetch_export, load_folder
        local = fetch_export(str(path)) if is_url(path) else Path(path)
        if local.is_dir():
            return load_folder(local, device)
        path = local
    meta = read_metadata(path)
    encoder = VisionTransformer(check_tensors(path, meta["model_config"]))  # one line if they do not fit
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    encoder.load_state_dict(state, strict=True)
    encoder.requires_grad_(False)
    return encoder.eval().to(device)


def _trainer_info(checkpoint: Path, fix: str) -> tuple[dict, dict | None]:
    """(step, run and which encoder was trained; trainer.pt if it was read for them): trainer.json, or in a
    checkpoint written before it existed, trainer.pt itself (read weights-only: those held plain data too)."""
    from engine.training.checkpoint import TRAINER_JSON, TRAINER_PT, CheckpointRefused, load_weights_only

    path = checkpoint / TRAINER_JSON
    trainer = None
    if path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointRefused(f"{path}: not valid JSON ({err}); fix: {fix}") from None
    else:
        path = checkpoint / TRAINER_PT
        info = trainer = load_weights_only(path, fix)
    missing = [key for key in ("trained_encoder", "step", "run") if not isinstance(info, dict) or key not in info]
    if missing:
        raise CheckpointRefused(f"{path}: no {', '.join(missing)}; fix: {fix}")
    return info, trainer


def _trained_state(checkpoint: Path, info: dict, trainer: dict | None, fix: str) -> dict:
    """The state dict of the trained encoder: the EMA target from trainer.pt, or for runs without EMA the
    encoder.* entries of DeepSpeed's model-states file (both read weights-only)."""
    from engine.training.checkpoint import DS_TAG, TRAINER_PT, load_weights_only

    if info["trained_encoder"] == "target_encoder":
        return (trainer or load_weights_only(checkpoint / TRAINER_PT, fix))["ema_target"]
    module = load_weights_only(checkpoint / DS_TAG / "mp_rank_00_model_states.pt",
                               "ask its author for an exported encoder.safetensors, or, if you trust whoever "
                               "wrote it, run its zero_to_fp32.py and take the encoder.* weights")["module"]
    return {k[len("encoder."):]: v for k, v in module.items() if k.startswith("encoder.")}


def export_checkpoint(checkpoint: str | Path, out: str | Path, recipe: str | Path | None = None) -> Path:
    """Export the trained encoder of a training checkpoint (no DeepSpeed needed: read its files).

    Reads weights only, never a pickle: trainer.json, then the EMA target from trainer.pt or, for runs
    without EMA, the module from DeepSpeed's model-states file, both with torch.load(weights_only=True). So
    a checkpoint copied from anyone exports without running code from it; a file that needs more is refused
    in one line naming it.

    The model config comes from the checkpoint's own recipe.yaml, never from the run folder's, which a later
    resume of the run rewrites. `recipe` names one for checkpoints written before they carried their own."""
    from engine.recipe import read_resolved_recipe

    checkpoint = Path(checkpoint)
    recipe_path = Path(recipe) if recipe is not None else checkpoint / "recipe.yaml"
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{checkpoint}: no recipe.yaml in the checkpoint (written before checkpoints carried "
                                f"their recipe); fix: pass --recipe with the recipe it was trained with, e.g. "
                                f"{checkpoint.parent.parent / 'recipe.yaml'} if no resume changed it since")
    fix = ("do not use this checkpoint: the engine writes trainer.pt as plain tensors and data, so this one was "
           "altered or not written by it (ask its author for an exported encoder.safetensors)")
    info, trainer = _trainer_info(checkpoint, fix)
    model_cfg = read_resolved_recipe(recipe_path).model
    encoder = VisionTransformer(model_cfg)
    state = _trained_state(checkpoint, info, trainer, fix)
    encoder.load_state_dict(state, strict=True)
    if not str(out).endswith(".safetensors"):  # a folder: weights, config.json and a model card
        from engine.export_card import write_export_folder
        return write_export_folder(encoder, model_cfg, out, recipe=read_resolved_recipe(recipe_path),
                                   trained_encoder=info["trained_encoder"], step=info["step"], run=info["run"])
    return export_encoder(encoder, model_cfg, out, trained_encoder=info["trained_encoder"],
                          step=info["step"], run=info["run"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the trained encoder of a checkpoint to safetensors.")
    parser.add_argument("checkpoint", help="a runs/<run>/checkpoints/step_XXXXXXXX folder")
    parser.add_argument("--out", required=True,
                        help="output .safetensors file, or a folder (model.safetensors, config.json, README.md)")
    parser.add_argument("--recipe", default=None,
                        help="the resolved recipe it was trained with; only for checkpoints without their own "
                             "recipe.yaml (written before checkpoints carried one)")
    parser.add_argument("--format", choices=("engine", "hf"), default="engine",
                        help="engine: this repository's export; hf: a folder transformers.VJEPA2Model.from_pretrained "
                             "loads (engine/interop/hf_export.py; needs model.rope_style: vjepa2)")
    args = parser.parse_args(argv)
    from engine.interop.hf_names import MappingError
    from engine.training.checkpoint import CheckpointRefused
    from engine.training.typed_yaml import ConfigError
    try:
        if args.format == "hf":
            from engine.interop.hf_export import export_checkpoint_hf
            print(export_checkpoint_hf(args.checkpoint, args.out, args.recipe, export_checkpoint, load_encoder))
        else:
            print(export_checkpoint(args.checkpoint, args.out, args.recipe))
    except (ConfigError, FileNotFoundError, CheckpointRefused, MappingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
