"""An export folder that others can load without this repository's run folders: weights, config, model card.

    runs/<run>/export/
      model.safetensors   the encoder's weights (fp32), with the same metadata as encoder.safetensors
      config.json         everything needed to rebuild the module: architecture, ModelConfig, which encoder
                          of the run it is, step, the weights' sha256, the engine commit
      README.md           the model card: recipe, data, commit, probe results once evaluated

`engine.export.load_encoder(path_or_url)` reads such a folder from a path or any fsspec URL (https://,
s3://, gs://, file://), as well as a single `.safetensors` export; a remote folder is copied into the local
cache first. config.json's `weights` must be a plain file name in the folder, and every load, local or
remote, checks the weights against its `weights_sha256`.

    python -m engine.export_card runs/<run>/export --eval eval_out/evals/<run>.json   # add probe results
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from engine.models import ModelConfig, VisionTransformer
from shards import storage

WEIGHTS_NAME, CONFIG_NAME, CARD_NAME = "model.safetensors", "config.json", "README.md"
CONFIG_FORMAT = "vjepa-engine-encoder-folder/1"
REPO = Path(__file__).resolve().parents[1]


def engine_commit() -> str:
    """The commit of the engine that wrote the export ('+dirty' when the tree had changes), or 'unknown'."""
    if os.environ.get("VJEPA_ENGINE_COMMIT"):
        return os.environ["VJEPA_ENGINE_COMMIT"]
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")



def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_export_folder(encoder: torch.nn.Module, model_cfg: ModelConfig, folder: str | Path, *,
                        recipe=None, weights: str | Path | None = None, **info) -> Path:
    """Write `folder` (model.safetensors, config.json, README.md). `weights`: an existing export of the same
    encoder (e.g. the run's encoder.safetensors) to hard-link instead of writing the tensors twice."""
    from engine.encoder_file import export_encoder
    from engine.clip_input import preprocessing_spec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / WEIGHTS_NAME
    if weights is not None and Path(weights).is_file():
        temporary = target.with_name(target.name + ".tmp")
        temporary.unlink(missing_ok=True)
        try:
            os.link(weights, temporary)
        except OSError:
            temporary.write_bytes(Path(weights).read_bytes())
        os.replace(temporary, target)
    else:
        export_encoder(encoder, model_cfg, target, **info)
    config = {"format": CONFIG_FORMAT, "architecture": "VisionTransformer", "library": "vjepa-engine",
              "loader": "engine.export.load_encoder", "model_config": dataclasses.asdict(model_cfg),
              "weights": WEIGHTS_NAME, "weights_sha256": storage.sha256_file(target), "engine_commit": engine_commit(),
              # out_dim: the width of forward_eval's features (what a user gets); the training features'
              # width (all out_layers) is train_out_dim. preprocessing: the evaluation's (engine/features.py).
              "embed_dim": model_cfg.embed_dim, "out_dim": model_cfg.eval_dim, "train_out_dim": model_cfg.out_dim,
              "preprocessing": preprocessing_spec(model_cfg), **info}
    _write_text(folder / CONFIG_NAME, json.dumps(config, indent=1, sort_keys=False) + "\n")
    recipe_text = None
    if recipe is not None:
        from engine.recipe import recipe_yaml
        recipe_text = recipe_yaml(recipe)
        _write_text(folder / "recipe.yaml", recipe_text)
    _write_text(folder / CARD_NAME, model_card(config, recipe, evaluation=None))
    return folder


def _data_lines(recipe) -> list[str]:
    lines = []
    for spec in recipe.data.datasets:
        counts = ""
        manifest = storage.join(spec.root, "manifest.json")
        try:
            info = json.loads(storage.read_bytes(manifest))
            split = info.get("splits", {}).get(spec.split, {})
            counts = f", {split.get('count', '?')} clips, {len(info.get('classes', []))} classes"
        except Exception:  # noqa: BLE001 - the counts are a courtesy; an unreachable root leaves them out
            pass
        lines.append(f"- `{spec.display_name}` (`{spec.root}`, split `{spec.split}`, weight {spec.weight:g}{counts})")
    return lines


def _evaluation_lines(evaluation: dict) -> list[str]:
    """One row per benchmark and probe: the protocol head's top-1 and top-5 (percent) and the sweep's best."""
    lines = ["| benchmark | probe | top-1 (%) | top-5 (%) | best head top-1 (%) |", "|---|---|---|---|---|"]
    for name, entry in sorted((evaluation.get("benchmarks") or {}).items()):
        for probe, result in sorted((entry.get("probes") or {}).items()):
            heads = result.get("heads") or [{}]
            best = heads[result.get("best_index", 0)] if len(heads) > result.get("best_index", 0) else heads[0]
            lines.append(f"| {name} | {probe} | {heads[0].get('top1', float('nan')):.1f} | "
                         f"{heads[0].get('top5', float('nan')):.1f} | {best.get('top1', float('nan')):.1f} |")
    return lines


def model_card(config: dict, recipe=None, evaluation: dict | None = None) -> str:
    """The README.md of an export folder (markdown, a few dozen lines)."""
    cfg = config["model_config"]
    name = config.get("run") or "encoder"
    lines = [f"# {name}: a Video-JEPA encoder", "",
             f"A ViT video encoder ({cfg['depth']} blocks, width {cfg['embed_dim']}, {cfg['num_heads']} heads, "
             f"{cfg['num_frames']} frames of {cfg['img_size']} px, tubelets {cfg['tubelet_size']}x"
             f"{cfg['patch_size']}x{cfg['patch_size']}) pretrained with vjepa-engine. It is the "
             f"`{config.get('trained_encoder', '?')}` of the run (the weights that were trained and that "
             f"evaluation probes), at step {config.get('step', '?')}.", "",
             "## Use", "", "```python", "from engine.export import load_encoder",
             "encoder = load_encoder(\"<this folder or its URL>\")   # eval mode, frozen",
             "feats = encoder.forward_eval(video)                   # video [B, 3, T, H, W] -> [B, N, D]",
             "```", "",
             "Input: ImageNet mean/std normalised RGB clips, made as the evaluation makes them (config.json "
             "`preprocessing`); `python -m engine.features <this folder> clip.mp4 --out feats.npy` does it all "
             "(`--pooled` for one vector). `config.json` rebuilds the module "
             "(`VisionTransformer(ModelConfig(**config['model_config']))`); `model.safetensors` holds its "
             "state dict.", "",
             "For `transformers`: `python -m engine.export <checkpoint> --out <folder> --format hf` writes a folder "
             "`VJEPA2Model.from_pretrained` loads (runs trained with `model.rope_style: vjepa2`; it refuses "
             "other configurations, naming the key).", "", "## Recipe", ""]
    if recipe is not None:
        lines += [f"- variant `{config.get('variant') or recipe.objective.variant}`, {recipe.train.steps} steps, "
                  f"global batch {recipe.train.global_batch}, lr {recipe.optim.lr:g}, seed {recipe.run.seed}",
                  "- the full resolved recipe: `recipe.yaml` in this folder", "", "## Data", ""]
        lines += _data_lines(recipe)
    else:
        lines += [f"- variant `{config.get('variant', '?')}` (no recipe was given to the export)"]
    lines += ["", "## Provenance", "", f"- engine commit `{config.get('engine_commit', 'unknown')}`",
              f"- weights sha256 `{config.get('weights_sha256', '?')}`", "", "## Evaluation", ""]
    if evaluation:
        lines += ["Frozen-backbone probes (`engine.eval.evaluate`):", ""] + _evaluation_lines(evaluation)
    else:
        lines += ["Not evaluated yet: `python -m engine.eval.evaluate <folder> ...`, then "
                  "`python -m engine.export_card <folder> --eval <results json>`."]
    return "\n".join(lines) + "\n"


def add_evaluation(folder: str | Path, evaluation_json: str | Path) -> Path:
    """Rewrite the card of `folder` with the probe results of an engine.eval.evaluate results file."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    evaluation = json.loads(Path(evaluation_json).read_text(encoding="utf-8"))
    recipe = None
    if (folder / "recipe.yaml").is_file():
        from engine.recipe import read_resolved_recipe
        recipe = read_resolved_recipe(folder / "recipe.yaml")
    _write_text(folder / CARD_NAME, model_card(config, recipe, evaluation))
    return folder / CARD_NAME


# ----------------------------------------------------------------------------------------------- loading

def weights_name(config: dict, source: str | Path) -> str:
    """config.json's `weights`: a plain file name, so the weights are read (and, from a URL, written) inside
    the export folder and nowhere else; one line naming `source` (its config.json) otherwise."""
    name = config.get("weights", WEIGHTS_NAME)
    if not (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name):
        raise ValueError(f"{source}: weights {name!r} is not a plain file name inside the export folder; fix: "
                         f"set \"weights\": \"{WEIGHTS_NAME}\" and keep the weights in that folder")
    return name


def weights_sha256(config: dict, source: str | Path) -> str:
    """config.json's `weights_sha256` (64 hex digits), which every load checks the weights against."""
    expected = config.get("weights_sha256")
    if not (isinstance(expected, str) and len(expected) == 64 and all(c in "0123456789abcdef" for c in expected)):
        raise ValueError(f"{source}: no valid weights_sha256 ({expected!r}), so the weights cannot be checked; fix: "
                         f"export the folder again with `python -m engine.export <checkpoint> --out <folder>`")
    return expected


def read_config(config_path: Path, source: str | Path | None = None) -> dict:
    """An export folder's config.json, checked: this format, a plain weights name and a weights sha256.
    `source`: what the one-line errors name (the URL it was copied from; `config_path` by default)."""
    source = source or config_path
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path.parent}: no {CONFIG_NAME}; expected an export folder "
                                f"(model.safetensors, config.json) or an encoder .safetensors file")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{source}: not valid JSON ({error}); fix: export the folder again") from None
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise ValueError(f"{source}: format {found!r}, expected {CONFIG_FORMAT!r}")
    weights_name(config, source)
    weights_sha256(config, source)
    return config


def weights_file(folder: str | Path) -> tuple[Path, dict]:
    """(weights file, config) of a local export folder: the file config.json names, inside the folder."""
    config = read_config(Path(folder) / CONFIG_NAME)
    return Path(folder) / weights_name(config, Path(folder) / CONFIG_NAME), config


def checked_weights(folder: str | Path) -> tuple[Path, dict]:
    """(weights file, config) of a local export folder, once the file's sha256 is config.json's: weights
    swapped into the folder (even of the same architecture) are refused in one line."""
    folder = Path(folder)
    weights, config = weights_file(folder)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing; fix: copy the export folder again (config.json names it)")
    if storage.sha256_file(weights) != weights_sha256(config, folder / CONFIG_NAME):
        raise ValueError(f"{weights}: sha256 differs from weights_sha256 in {folder / CONFIG_NAME} (the weights were "
                         f"replaced or damaged); fix: copy the export folder again, or export it anew")
    return weights, config


def fetch_export(url: str, cache_dir: str | Path | None = None) -> Path:
    """A local copy of a remote export (a folder, or one .safetensors file); reused when already complete.

    The folder's config.json is checked before anything else is written: its weights name must be a plain
    file name, so the download lands in the cache folder and nowhere else."""
    local = storage.cache_folder(url, "exports", cache_dir)
    if url.rstrip("/").endswith(".safetensors"):
        target = local / storage.basename(url)
        if not target.is_file():
            storage.get_file(url, target)
        return target
    config_path = storage.get_file(storage.join(url, CONFIG_NAME), local / CONFIG_NAME)
    config = read_config(config_path, storage.join(url, CONFIG_NAME))
    name, expected = weights_name(config, config_path), weights_sha256(config, config_path)
    weights = local / name
    if not (weights.is_file() and storage.sha256_file(weights) == expected):
        storage.get_file(storage.join(url, name), weights)
        if storage.sha256_file(weights) != expected:
            weights.unlink()
            raise ValueError(f"{url}: {weights.name} does not match the sha256 in its config.json; fix: re-export "
                             f"the folder or upload both files again")
    return local


def load_folder(folder: Path, device: str | torch.device = "cpu") -> VisionTransformer:
    """An export folder as a VisionTransformer: built from config.json, weights from model.safetensors,
    checked against config.json's sha256 and shapes first."""
    from safetensors.torch import load_file

    from engine.encoder_file import check_tensors

    weights, config = checked_weights(folder)
    cfg = check_tensors(weights, config.get("model_config"), folder / CONFIG_NAME)
    encoder = VisionTransformer(cfg)
    encoder.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    encoder.requires_grad_(False)
    return encoder.eval().to(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Refresh an export folder's model card with probe results.")
    parser.add_argument("folder", help="an export folder (model.safetensors, config.json, README.md)")
    parser.add_argument("--eval", required=True, help="results JSON written by engine.eval.evaluate")
    args = parser.parse_args(argv)
    try:
        print(add_evaluation(args.folder, args.eval))
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
