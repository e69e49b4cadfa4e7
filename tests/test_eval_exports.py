"""`python -m engine.eval.evaluate` on exports as a user passes them (issue 24 item 6): an export folder
(runs/<run>/export) is accepted like an encoder.safetensors file, and results are named by the run the export
came from, so several exports evaluated into one --out keep their own results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_fixtures import write_benchmark_folder
from engine.eval.encoders import EncoderSource
from engine.eval.evaluate import main as evaluate_main
from engine.export_card import write_export_folder
from engine.models import VisionTransformer, model_preset

TINY = model_preset("tiny", img_size=16, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=24, depth=1, num_heads=4)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_benchmark_folder(root / "synth-ucf", train_clips=6, test_clips=4)
    return root


def _export(folder: Path, run: str, seed: int) -> Path:
    torch.manual_seed(seed)
    return write_export_folder(VisionTransformer(TINY), TINY, folder, trained_encoder="target_encoder", step=1,
                               run=run)


def _evaluate(export: Path, shards: Path, out: Path) -> None:
    argv = [str(export), "--benchmarks", "synth-ucf", "--shards", str(shards), "--out", str(out),
            "--probe-epochs", "1"]
    assert evaluate_main(argv) == 0


def _stored(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "evals").glob("*.json"))}


def test_an_export_folder_is_evaluated_under_its_run_name(shards, tmp_path, capsys):
    """Before: refused with 'no exported encoder here', naming the folder that held it."""
    folder = _export(tmp_path / "runs" / "demo_a" / "export", "demo_a", seed=1)
    _evaluate(folder, shards, tmp_path / "eval")
    stored = _stored(tmp_path / "eval")
    assert list(stored) == ["demo_a"] and stored["demo_a"]["encoder"]["path"] == str(folder.resolve())
    assert "synth-ucf" in stored["demo_a"]["benchmarks"]
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("synth-ucf")]
    assert [row[2] for row in rows if row[1] == "paper_attentive"] == ["demo_a"]  # the headline probe's row


@pytest.mark.slow  # five tiny evaluations: ~35 s on the shared 2-core machine
def test_exports_evaluated_into_one_out_keep_their_own_results(shards, tmp_path):
    """Before: every export folder's model.safetensors was named `export`, so each evaluation replaced the
    previous one's results. Two exports of runs with one name (two run roots) differ by a fingerprint."""
    out = tmp_path / "eval"
    first = _export(tmp_path / "one" / "runs" / "a" / "export", "a", seed=1)
    other_run = _export(tmp_path / "one" / "runs" / "b" / "export", "b", seed=2)
    same_name = _export(tmp_path / "two" / "runs" / "a" / "export", "a", seed=3)
    for folder in (first, other_run, same_name):
        _evaluate(folder / "model.safetensors", shards, out)  # the file path, as the model card used to say
    stored = _stored(out)
    fingerprint = EncoderSource(name="", kind="run", path=str(same_name / "model.safetensors")).fingerprint()
    assert sorted(stored) == sorted(["a", "b", f"a-{fingerprint[:8]}"])
    assert len({entry["fingerprint"] for entry in stored.values()}) == 3
    assert stored["a"]["encoder"]["path"] == str((first / "model.safetensors").resolve())
    # Each export finds its own results again (reused, not recomputed): by its path, or (the folder holding
    # the same weights file) by its weights
    _evaluate(first, shards, out)
    _evaluate(same_name / "model.safetensors", shards, out)
    assert _stored(out) == stored
    # A run name from an export's metadata is a file name in evals/, never a path
    from engine.eval.evaluate import result_name

    crafted = _export(tmp_path / "x" / "export", "../../outside", seed=4)
    name = result_name(EncoderSource(name="", kind="run", path=str(crafted)), out / "evals")
    assert "/" not in name and not name.startswith(".")
