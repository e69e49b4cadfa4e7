"""`python -m engine.export ... --format hf` (issue 24): a folder `transformers.VJEPA2Model.from_pretrained` loads
in a fresh Python and that gives the engine's `forward_eval` outputs; configurations VJEPA2Model cannot
express are refused in one line naming the recipe key; the engine export's config.json states the width of
the features the encoder gives and their preprocessing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (requirements-extras.txt)")

from engine.interop import MappingError  # noqa: E402
from engine.interop.hf_export import write_hf_folder  # noqa: E402
from engine.models import ModelConfig, VisionTransformer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Multi-level training outputs and a modality vector, as the demo and paper recipes have: the export keeps
# the last level's LayerNorm and folds the video vector into the patch embedding's bias.
CFG = dict(img_size=32, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=64, depth=3, num_heads=4,
           out_layers=(1, 2), modality_embedding=True, rope_style="vjepa2")

HF_SCRIPT = """
import sys, torch
from transformers import VJEPA2Model
model = VJEPA2Model.from_pretrained(sys.argv[1]).eval()
video = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model.get_vision_features(video.permute(0, 2, 1, 3, 4)), sys.argv[3])
"""


def _encoder(**changes):
    torch.manual_seed(11)
    encoder = VisionTransformer(ModelConfig(**{**CFG, **changes})).eval()
    with torch.no_grad():
        for param in encoder.parameters():  # LayerNorms and the modality vector away from their init too
            param.add_(torch.randn_like(param) * 0.05)
    return encoder


def _hf_features(folder: Path, video: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    torch.save(video, tmp_path / "video.pt")
    result = subprocess.run([sys.executable, "-c", HF_SCRIPT, str(folder), str(tmp_path / "video.pt"),
                             str(tmp_path / "hf_out.pt")], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"})  # transformers alone
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / "hf_out.pt")


def _relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.slow  # a fresh Python importing transformers: ~10 s alone, minutes on a loaded machine
def test_hf_folder_loads_in_a_fresh_python_with_the_engines_outputs(tmp_path):
    encoder = _encoder()
    folder = write_hf_folder(encoder, encoder.cfg, tmp_path / "hf", run="tiny", step=3)
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    video = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = encoder.forward_eval(video)
    assert _relative(ours, _hf_features(folder, video, tmp_path)) <= 1e-5
    card = (folder / "README.md").read_text()
    assert "VJEPA2Model.from_pretrained" in card and "engine.features" in card and "folded" in card
    config = json.loads((folder / "config.json").read_text())
    assert config["vjepa_engine"]["preprocessing"]["crop"] == 32


@pytest.mark.parametrize("changes, key", [({"rope_style": "pairwise"}, "model.rope_style"),
                                          ({"eval_layers": (1, 2)}, "model.eval_layers"),
                                          ({"pos_embed": "sincos"}, "model.pos_embed")])
def test_configurations_transformers_cannot_hold_are_refused_naming_the_key(tmp_path, changes, key):
    encoder = _encoder(**changes)
    with pytest.raises(MappingError) as err:
        write_hf_folder(encoder, encoder.cfg, tmp_path / "hf")
    assert key in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "hf").exists()


def _checkpoint(tmp_path: Path, rope_style: str) -> Path:
    """A training checkpoint as the trainer writes it (recipe.yaml, trainer.json, the EMA target in trainer.pt)."""
    from engine.recipe import load_recipe, recipe_yaml

    import yaml
    data = tmp_path / "shards"
    data.mkdir(parents=True)
    (data / "index.parquet").write_bytes(b"")  # the recipe checks the root exists; nothing here reads clips
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "run": {"name": "tiny", "out_dir": str(tmp_path / "runs")},
        "model": {"preset": "tiny", "depth": 2, "img_size": 32, "num_frames": 8, "patch_size": 8,
                  "rope_style": rope_style, "modality_embedding": True},
        "predictor": {"preset": "tiny"}, "objective": {"variant": "baseline"},
        "data": {"datasets": [{"root": str(data)}]}}))
    recipe = load_recipe(path, [])
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoints" / "step_00000005"
    checkpoint.mkdir(parents=True)
    (checkpoint / "recipe.yaml").write_text(recipe_yaml(recipe))
    (checkpoint / "trainer.json").write_text(json.dumps({"trained_encoder": "target_encoder", "step": 5,
                                                         "run": "tiny"}))
    torch.manual_seed(2)
    target = VisionTransformer(recipe.model)
    torch.save({"ema_target": target.state_dict()}, checkpoint / "trainer.pt")
    return checkpoint


@pytest.mark.slow  # three fresh Pythons
def test_export_cli_format_hf_round_trip_and_refusal(tmp_path):
    checkpoint = _checkpoint(tmp_path, "vjepa2")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "engine.export", str(checkpoint), "--out", str(tmp_path / "hf"),
                             "--format", "hf"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    from engine.export import load_encoder
    engine_export = tmp_path / "engine.safetensors"
    subprocess.run([sys.executable, "-m", "engine.export", str(checkpoint), "--out", str(engine_export)], cwd=REPO,
                   env=env, check=True, capture_output=True, timeout=900)
    encoder = load_encoder(engine_export)
    video = torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = encoder.forward_eval(video)
    assert _relative(ours, _hf_features(tmp_path / "hf", video, tmp_path)) <= 1e-5
    # The engine reads the folder back too, with the same outputs.
    with torch.no_grad():
        assert _relative(load_encoder(tmp_path / "hf").forward_eval(video), ours) <= 1e-5

    refused = _checkpoint(tmp_path / "pairwise", "pairwise")
    result = subprocess.run([sys.executable, "-m", "engine.export", str(refused), "--out", str(tmp_path / "hf2"),
                             "--format", "hf"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 2 and not (tmp_path / "hf2").exists()
    assert result.stderr.strip().count("\n") == 0 and "model.rope_style" in result.stderr, result.stderr


def test_engine_export_config_states_the_feature_width_and_preprocessing(tmp_path):
    from engine.export_card import write_export_folder
    encoder = _encoder()
    folder = write_export_folder(encoder, encoder.cfg, tmp_path / "export", run="tiny")
    config = json.loads((folder / "config.json").read_text())
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        width = encoder.forward_eval(video).shape[-1]
    assert config["out_dim"] == width == 64 and config["train_out_dim"] == 128
    assert config["preprocessing"]["crop"] == 32 and config["preprocessing"]["num_frames"] == 4
