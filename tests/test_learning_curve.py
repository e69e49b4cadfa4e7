"""Reference rows and the learning curve, end to end on tiny fixtures: the pixel baseline is the random
init's patch embedding without blocks; `evaluate --baselines --probe-seeds` prints the encoder beside
both references with intervals; `learning_curve` trains nothing, picks a real tiny run's checkpoints,
exports and probes them, writes its CSV and plot, and reuses every result when rerun."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from data_fixtures import write_benchmark_folder
from engine.eval.clips import eval_batches
from engine.eval.encoders import pixel_encoder, random_encoder
from engine.eval.encoder_eval import EvalConfig
from engine.eval.evaluate import main as evaluate_main
from engine.eval.learning_curve import choose_points, learning_curve
from engine.eval.learning_curve import main as learning_curve_main
from engine.export import export_encoder, load_encoder
from engine.models import model_preset
from proc_helpers import free_port

REPO = Path(__file__).resolve().parents[1]
TINY = model_preset("tiny", img_size=16, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=24, depth=2, num_heads=4)
PROBE = EvalConfig(benchmarks=("synth-ucf",), probe_epochs=2, probe_batch_size=4)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """<root>/synth-ucf with disjoint train (9 clips) and test (6 clips) splits, as `shards.build` merges them."""
    root = tmp_path_factory.mktemp("lc_shards")
    write_benchmark_folder(root / "synth-ucf", train_clips=9, test_clips=6)
    return root


def test_pixel_baseline_is_the_random_init_patch_embedding_without_blocks():
    config = asdict(TINY)
    random_source, pixel_source = random_encoder("r", config, seed=3), pixel_encoder("p", config, seed=3)
    assert random_source.fingerprint() != pixel_source.fingerprint()
    encoder, pixels = random_source.load(torch.device("cpu")), pixel_source.load(torch.device("cpu"))
    assert torch.equal(pixels.encoder.patch_embed.weight, encoder.patch_embed.weight)
    video = torch.randn(2, 3, 4, 16, 16)
    patches = torch.nn.functional.conv3d(video, encoder.patch_embed.weight, encoder.patch_embed.bias, stride=(2, 8, 8))
    expected = torch.nn.functional.layer_norm(patches.flatten(2).transpose(1, 2), (24,), eps=TINY.norm_eps)
    torch.testing.assert_close(pixels.forward_eval(video), expected)  # a random linear map + norm, nothing else
    assert not torch.allclose(encoder.forward_eval(video), expected, atol=1e-3)


def test_evaluate_prints_the_encoder_beside_random_init_and_pixels(shards, tmp_path, capsys):
    run = tmp_path / "myrun"
    export_encoder(random_encoder("x", asdict(TINY), seed=7).load(torch.device("cpu")), TINY,
                   run / "encoder.safetensors", trained_encoder="target_encoder", step=1)
    (run / "recipe.yaml").write_text("run: {name: myrun, seed: 7}\n")
    argv = [str(run / "encoder.safetensors"), "--benchmarks", "synth-ucf", "--shards", str(shards), "--out",
            str(tmp_path / "eval"), "--probe-epochs", "2", "--baselines", "--probe-seeds", "2"]
    assert evaluate_main(argv) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("synth-ucf")]
    lines = [line for line in table if line.split()[1] == "paper_attentive"]  # the headline probe's rows
    assert [line.split()[2] for line in lines] == ["myrun", "random", "pixel"]
    assert [line.split()[2] for line in table if line.split()[1] == "knn_k20"] == ["myrun", "random", "pixel"]
    assert "random init (seed 7)" in lines[1] and "pixel baseline (seed 7)" in lines[2]
    # The export is a seed-7 random init: the encoder row and the random-init row are the same numbers.
    assert lines[0].split()[3:] == lines[1].split()[6:]
    assert all(len(line.split(" / ")) == 2 and "[" in line for line in lines)  # 2 seeds and an interval
    evals = sorted(p.name for p in (tmp_path / "eval" / "evals").iterdir())
    assert "myrun.json" in evals and "myrun.probe_seed1.json" in evals and len(evals) == 6


def test_nearest_checkpoints_are_chosen():
    checkpoints = [(40, Path("a")), (80, Path("b")), (120, Path("c"))]
    points = choose_points([0.0, 0.1, 0.5, 1.0], 120, checkpoints)
    assert [(p.target_step, p.step) for p in points] == [(0, 0), (12, 40), (60, 40), (120, 120)]
    assert points[0].checkpoint is None and points[-1].checkpoint == Path("c")
    with pytest.raises(FileNotFoundError, match="train.checkpoint_every"):
        choose_points([0.5], 120, [])


def _train_tiny_run(shards: Path, root: Path) -> Path:
    """4 steps of a tiny run, checkpoints at steps 2 and 4. The EMA is off, so the trained encoder is the
    online one and the checkpoint's EMA target is the untouched init: the fraction-0 point can be checked."""
    recipe = {
        "run": {"name": "tiny_lc", "out_dir": str(root / "runs"), "seed": 5},
        "model": {k: getattr(TINY, k) for k in ("img_size", "num_frames", "patch_size", "tubelet_size", "embed_dim",
                                                 "depth", "num_heads")},
        "predictor": {"preset": "tiny", "width": 24, "depth": 1},
        "objective": {"variant": "baseline"},
        "loss": {"disable_ema": True},
        "data": {"datasets": [{"root": str(shards / "synth-ucf"), "frame_step": 1}], "num_workers": 1,
                 "num_threads": 1},
        "train": {"steps": 4, "global_batch": 2, "micro_batch": 2, "checkpoint_every": 2, "keep_last": 5,
                  "progress_bar": False},
        "optim": {"lr": 1.0e-3, "start_lr": 1.0e-3, "final_lr": 1.0e-3, "warmup_steps": 0},
        "parallel": {"cpu_threads": 1},
    }
    path = root / "tiny_lc.yaml"
    path.write_text(yaml.safe_dump(recipe))
    # MASTER_PORT: free now, rather than the trainer's own 29500 + pid % 1000, which another suite's run can hold.
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "MASTER_PORT": str(free_port())}
    proc = subprocess.Popen([sys.executable, "-m", "engine.train", "--recipe", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        try:  # DALI's reader workers can outlive the trainer and hold the pipe open
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, output[-3000:]
    return root / "runs" / "tiny_lc"


@pytest.mark.slow  # a DeepSpeed start-up for the tiny run: ~20-60 s on the shared 2-core machine
def test_learning_curve_end_to_end_and_reused(shards, tmp_path):
    run = _train_tiny_run(shards, tmp_path)
    loads = []

    def counting_loader(folder, split, spec, batch_size):
        loads.append(split)
        return eval_batches(folder, split, spec, batch_size=batch_size)

    args = (run, PROBE, [0.0, 0.5, 1.0], 2, shards, tmp_path / "curve", tmp_path / "features")
    csv_path, png = learning_curve(*args, batch_source=counting_loader)
    rows = list(csv.DictReader(open(csv_path, newline="")))
    assert [(r["kind"], r["step"]) for r in rows] == [
        ("random init", ""), ("pixel baseline", ""), ("init", "0"), ("checkpoint", "2"), ("checkpoint", "4")]
    assert all(r["benchmark"] == "synth-ucf" and r["probe"] == "paper_attentive" and r["probe_seeds"] == "2"
               for r in rows)
    for row in rows:
        low, mean, high = float(row["top1_low"]), float(row["top1_mean"]), float(row["top1_high"])
        assert 0.0 <= mean <= 100.0 and low <= mean <= high and not math.isnan(low)
    assert rows[2]["top1_per_seed"] == rows[0]["top1_per_seed"]  # fraction 0 is the random-init reference
    assert png.stat().st_size > 5000
    assert len(loads) == 2 * 4  # train and test splits of 4 distinct encoders, once each

    # Fraction 0, as the curve built it, is exactly the run's starting point: the untouched EMA copy of its
    # initial encoder.
    init = torch.load(run / "checkpoints" / "step_00000004" / "trainer.pt", weights_only=False)["ema_target"]
    used = json.loads((tmp_path / "curve" / "evals" / f"{rows[2]['encoder']}.json").read_text())["encoder"]
    fresh = random_encoder("r", used["model_config"], used["seed"]).load(torch.device("cpu")).state_dict()
    assert init.keys() == fresh.keys() and all(torch.equal(init[k], fresh[k]) for k in init)
    # The step-4 point is the trained (online) encoder the run exported itself.
    final = load_encoder(tmp_path / "curve" / "exports" / "step_00000004.safetensors").state_dict()
    exported = load_encoder(run / "encoder.safetensors").state_dict()
    assert all(torch.equal(final[k], exported[k]) for k in final)
    assert not all(torch.equal(final[k], fresh[k]) for k in final)

    first = csv_path.read_text()
    learning_curve(*args, batch_source=counting_loader)
    assert len(loads) == 8 and csv_path.read_text() == first  # every result and feature cache reused
    assert learning_curve_main([str(run), "--benchmarks", "synth-ucf", "--shards", str(shards), "--fractions",
                                "0,0.5,1", "--probe-seeds", "2", "--probe-epochs", "2", "--out",
                                str(tmp_path / "curve"), "--cache", str(tmp_path / "features")]) == 0
