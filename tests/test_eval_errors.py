"""`python -m engine.eval.evaluate` on bad input: one-line errors with the right fix, every benchmark's shards
and the export checked before any work."""
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine.eval.encoder_eval as encoder_eval
import engine.eval.evaluate as evaluate
from data_fixtures import write_benchmark_folder
from engine.export import export_encoder
from engine.models import VisionTransformer, model_preset

REPO = Path(__file__).resolve().parents[1]
TINY = model_preset("tiny", img_size=16, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=24, depth=1, num_heads=4)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "encoder.safetensors"
    return export_encoder(VisionTransformer(TINY), TINY, path, trained_encoder="target_encoder", step=1)


@pytest.fixture(scope="module")
def shards_root(tmp_path_factory):
    """A shards root holding only synth-diving (train and test merged as `shards.build` does)."""
    root = tmp_path_factory.mktemp("shards")
    write_benchmark_folder(root / "synth-diving", 3, 3, num_frames=8, height=16, width=16)
    return root


def run(capsys, *argv) -> tuple[int, str]:
    code = evaluate.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Any feature extraction or encoder load fails the test: the errors must come before either."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before every input was checked")
    monkeypatch.setattr(encoder_eval, "extract_to_cache", refuse)
    monkeypatch.setattr(evaluate.EncoderSource, "load", refuse)


def test_missing_or_foreign_export_is_one_line(shards_root, tmp_path, capsys, no_work):
    code, err = run(capsys, tmp_path / "runs" / "r" / "encoder.safetensors", "--shards", shards_root,
                    "--benchmarks", "synth-diving", "--out", tmp_path / "eval")
    line = one_line(err)
    assert code == 2 and "encoder.safetensors: no exported encoder" in line and "python -m engine.export" in line
    (tmp_path / "junk.safetensors").write_text("not a safetensors file")
    code, err = run(capsys, tmp_path / "junk.safetensors", "--shards", shards_root, "--benchmarks", "synth-diving")
    assert code == 2 and "junk.safetensors: not a safetensors file" in one_line(err)


def test_unknown_benchmark_is_one_line(export, shards_root, capsys, no_work):
    code, err = run(capsys, export, "--shards", shards_root, "--benchmarks", "synth-diving,ucf-101")
    assert code == 2 and "--benchmarks: unknown benchmark(s) ['ucf-101']" in one_line(err)


def test_every_benchmark_is_checked_before_any_work(export, shards_root, tmp_path, capsys, no_work):
    """synth-diving is there and first; ucf101's folder is missing: nothing may be extracted for synth-diving."""
    code, err = run(capsys, export, "--shards", shards_root, "--benchmarks", "synth-diving,ucf101",
                    "--out", tmp_path / "eval")
    line = one_line(err)
    assert code == 2 and f"{shards_root / 'ucf101' / 'index.parquet'}: missing" in line
    assert f"`python -m shards.build ucf101 --root RAW --out {shards_root / 'ucf101'} --ucf-split 1`" in line
    assert "synth" not in line.replace(str(shards_root), "")
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("benchmark, command", [
    ("ssv2", "python -m shards.build ssv2 --root RAW --out {root}/ssv2`"),
    ("imagenet100", "python -m shards.build imagenet100 --root RAW --out {root}/imagenet100`"),
    ("synth-ucf", "python -m shards.build synth --root data/raw --out {root} --scale demo`"),
])
def test_missing_folder_hint_is_the_build_command_of_that_dataset(export, tmp_path, capsys, no_work, benchmark,
                                                                  command):
    code, err = run(capsys, export, "--shards", tmp_path, "--benchmarks", benchmark)
    assert code == 2 and command.format(root=tmp_path) in one_line(err)


def test_a_missing_split_and_a_missing_shard_are_found_before_any_work(export, shards_root, tmp_path, capsys,
                                                                       no_work):
    broken = tmp_path / "shards"
    shutil.copytree(shards_root / "synth-diving", broken / "synth-diving")
    next((broken / "synth-diving").glob("test-*.tar")).unlink()
    code, err = run(capsys, export, "--shards", broken, "--benchmarks", "synth-diving")
    assert code == 2 and "benchmark synth-diving: shard missing" in one_line(err)
    index = pq.read_table(broken / "synth-diving" / "index.parquet")
    pq.write_table(index.filter(pa.compute.equal(index["split"], "train")), broken / "synth-diving" / "index.parquet")
    code, err = run(capsys, export, "--shards", broken, "--benchmarks", "synth-diving")
    line = one_line(err)
    assert code == 2 and "has no rows of split 'test'" in line and "shards.build synth" in line


def test_learning_curve_input_errors_are_one_line(tmp_path, capsys):
    """A run whose benchmark shards are missing: one line naming the folder, exit 2, before any probing."""
    from engine.eval import learning_curve
    from engine.recipe import load_recipe, recipe_yaml

    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    recipe = load_recipe("recipes/demo/ucf_baseline.yaml", check_files=False)
    (run_dir / "recipe.yaml").write_text(recipe_yaml(recipe))
    code = learning_curve.main([str(run_dir), "--benchmarks", "synth-ucf", "--shards", str(tmp_path / "none"),
                                "--fractions", "0", "--probe-seeds", "1"])
    err = capsys.readouterr().err  # the progress bar may have started; the error is its own last line
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: ") and "synth-ucf/index.parquet: missing" in err


def evaluate_cli(*argv) -> tuple[int, str]:
    """`python -m engine.eval.evaluate ARGV` in a fresh process, as a user runs it: (exit code, stderr)."""
    done = subprocess.run([sys.executable, "-m", "engine.eval.evaluate", *map(str, argv)], cwd=REPO, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                          capture_output=True, timeout=300)
    return done.returncode, done.stderr


@pytest.mark.parametrize("other", [{"embed_dim": 32, "num_heads": 4}, {"depth": 2}], ids=["shapes", "names"])
def test_an_export_whose_metadata_does_not_match_its_tensors_is_one_line(shards_root, tmp_path, other):
    """Before: the shards were checked, then loading the weights into the model_config's module raised a
    27-line traceback. Now the tensor names and shapes are checked against the model_config first."""
    path = tmp_path / "run" / "encoder.safetensors"
    export_encoder(VisionTransformer(TINY), dataclasses.replace(TINY, **other), path, step=1)
    code, err = evaluate_cli(path, "--shards", shards_root, "--benchmarks", "synth-diving", "--out", tmp_path / "eval")
    line = one_line(err)
    assert code == 2 and f"{path}: " in line and "model_config" in line and "python -m engine.export" in line
    assert not (tmp_path / "eval" / "features").exists()


def test_baselines_with_a_python_tag_in_the_recipe_beside_the_export_is_one_line(export, shards_root, tmp_path):
    """Before: yaml.safe_load's ConstructorError reached the user as a 41-line traceback."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(export, run / "encoder.safetensors")
    (run / "recipe.yaml").write_text("run:\n  name: r\n  seed: !!python/object/apply:os.getpid []\n")
    code, err = evaluate_cli(run / "encoder.safetensors", "--shards", shards_root, "--benchmarks", "synth-diving",
                             "--out", tmp_path / "eval", "--baselines")
    line = one_line(err)
    assert code == 2 and f"{run / 'recipe.yaml'}: line 3 not a plain YAML recipe" in line, line
    assert "python/object/apply:os.getpid" in line and "--baseline-seed" in line
