"""`model.init_from` warm-starts a run from released weights (issue 24): a tiny demo-style run started from a
transformers VJEPA2 folder takes its first step at the loss of the loaded model, computed apart from the
trainer (a JEPA built from `read_released`'s weights on the same clips and masks); a recipe that disagrees
with the weights is refused naming the key."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

transformers = pytest.importorskip("transformers", reason="transformers is not installed (requirements-extras.txt)")

from proc_helpers import free_port  # noqa: E402
from test_hf_parity import hf_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # DeepSpeed start-up in a fresh process

SCRIPT = textwrap.dedent("""
    import sys, json, copy
    import torch
    from engine.recipe import load_recipe
    from engine.train import Trainer
    from engine.training.step import mask_seed, train_step
    from engine.interop import read_released
    from engine.jepa import JEPA
    from engine.models import Predictor, VisionTransformer
    from engine.objectives.registry import resolve_variant

    recipe = load_recipe(sys.argv[1], [])
    trainer = Trainer(recipe, "none")
    trainer.setup()
    seen, next_batch = [], trainer.parts.next_batch
    trainer.parts.next_batch = lambda: seen.append(next_batch()) or seen[-1]
    row = train_step(trainer.parts, 0)

    # The loaded model, built apart from the trainer: the released weights, nothing else of the run's init.
    released = read_released(recipe.model.init_from)
    encoder = VisionTransformer(recipe.model)
    encoder.load_state_dict(released.encoder)
    predictor = Predictor(recipe.predictor, encoder.out_dim, recipe.model.grid, trainer.masks.num_mask_configs)
    missing = predictor.load_state_dict(released.predictor, strict=False).missing_keys
    assert sorted(missing) == ["proj_context.bias", "proj_context.weight"], missing  # no such head in VJEPA2Model
    jepa = JEPA(encoder, predictor, resolve_variant(recipe.objective.spec()), recipe.loss)
    video = seen[0]["video"]
    generator = torch.Generator().manual_seed(mask_seed(recipe.run.seed, 0, 0, 0))
    masks = trainer.masks(video.shape[0], recipe.model.grid, generator, video)
    with torch.no_grad():
        losses = jepa(video, masks, 0, target_encoder=copy.deepcopy(encoder))
    print(json.dumps({"run": row["loss"], "loaded": float(losses["total"]), "lambda": float(losses["lambda_ctx"])}))
    trainer.shutdown()
""")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from data_fixtures import FixtureSpec, write_dataset
    root = tmp_path_factory.mktemp("init_from")
    shards = write_dataset(root / "shards", FixtureSpec(dataset="tiny", num_samples=8, num_frames=16, height=32,
                                                        width=32, samples_per_shard=8))
    hf_model(seed=4).save_pretrained(root / "hf")  # 64 px / 8 frames in its config; the recipe's geometry rules
    recipe = {
        "run": {"name": "warm", "out_dir": str(root / "runs"), "seed": 3},
        "model": {"preset": "tiny", "depth": 2, "img_size": 32, "num_frames": 8, "patch_size": 8, "tubelet_size": 2,
                  "rope_style": "vjepa2", "out_layers": [1], "init_from": str(root / "hf")},
        "predictor": {"depth": 2, "width": 32, "num_heads": 2, "input_hidden_dim": 0, "rope_style": "vjepa2"},
        "objective": {"variant": "baseline"},
        # λ_ctx = 0 at step 0: the context head (which VJEPA2Model lacks) does not enter the first loss.
        "loss": {"context_loss": {"lambda_start": 5, "lambda_end": 10}},
        "data": {"datasets": [{"root": str(shards), "frame_step": 1}], "num_workers": 1, "num_threads": 1},
        "train": {"steps": 2, "global_batch": 2, "micro_batch": 2, "checkpoint_every": 100, "progress_bar": False},
        "parallel": {"zero_stage": 2, "cpu_threads": 1},
    }
    (root / "warm.yaml").write_text(yaml.safe_dump(recipe))
    return root, recipe


def _env():
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
            "MASTER_PORT": str(free_port())}


def test_step_zero_loss_is_the_loaded_models(demo):
    import json
    root, _ = demo
    (root / "check.py").write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(root / "check.py"), str(root / "warm.yaml")], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    assert losses["lambda"] == 0.0
    assert abs(losses["run"] - losses["loaded"]) <= 1e-5 * abs(losses["loaded"]), losses
    assert "model.init_from: " not in result.stdout and "encoder from" in result.stderr


def test_a_recipe_that_disagrees_with_the_weights_is_refused_naming_the_key(demo):
    root, recipe = demo
    recipe = {**recipe, "model": {**recipe["model"], "rope_style": "pairwise"}, "run": {**recipe["run"], "name": "bad"}}
    (root / "bad.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run([sys.executable, "-m", "engine.train", "--recipe", str(root / "bad.yaml")], cwd=REPO,
                            env=_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model.init_from ") and "model.rope_style" in last and "Traceback" not in result.stderr


def test_a_warm_started_run_resumes_without_its_source(demo, tmp_path):
    """A resume overwrites every warm-started weight from its checkpoint, so the source is not read again:
    moved away (or a hub id on an offline machine), `--resume auto` still continues. Before: the resume
    re-read `model.init_from` and failed on the missing folder."""
    import shutil
    root, recipe = demo
    source = tmp_path / "hf"
    shutil.copytree(root / "hf", source)
    recipe = {**recipe, "run": {**recipe["run"], "name": "moved", "out_dir": str(tmp_path / "runs")},
              "model": {**recipe["model"], "init_from": str(source)},
              "train": {**recipe["train"], "steps": 2, "checkpoint_every": 1}}
    path = tmp_path / "moved.yaml"
    path.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "engine.train", "--recipe", str(path)]
    first = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.rmtree(source)
    again = subprocess.run(command + ["--resume", "auto", "--set", "train.steps=3"], cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout + again.stderr
