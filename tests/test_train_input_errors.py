"""Bad data met by a training run (issue 22 §3.2-3.3): a split with no rows in an existing shard folder, a tar
the index lists but the folder lacks, an index key or shard name pointing outside the folder. Each is one
stderr line naming the file at fault and the fix, exit 2, before DeepSpeed starts: a fresh run leaves no run
folder behind. (Before, the loader raised inside the trainer's setup: a 23-25 line traceback, exit 1, and the
run's recipe.yaml already written.) The same refusals on `--resume` leave an existing run untouched:
tests/test_train_reliability.py::test_resume_whose_data_fails_the_loaders_checks_is_one_line_and_writes_nothing.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_train import _run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

FAULTS = ("split without rows", "missing tar", "unsafe index key", "unsafe shard name")


def broken_shards(intact: Path, folder: Path, fault: str) -> tuple[dict, Path, str]:
    """A copy of the shard folder `intact` with one fault: (the recipe's dataset entry for it, the file the
    error must name, a phrase the error must hold)."""
    shutil.copytree(intact, folder)
    index = folder / "index.parquet"
    dataset = {"root": str(folder), "frame_step": 1}
    if fault == "split without rows":
        return {**dataset, "split": "val"}, index, "no rows for split 'val'"
    if fault == "missing tar":
        tar = folder / "train-000000.tar"
        tar.unlink()
        return dataset, tar, "shard missing"
    table = pq.read_table(index).to_pylist()
    column, crafted = ("key", "../evil") if fault == "unsafe index key" else ("shard", "../elsewhere/train-000000.tar")
    table[0][column] = crafted
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(index)), index)
    return dataset, index, f"{crafted!r} "


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from data_fixtures import FixtureSpec, write_dataset
    return write_dataset(tmp_path_factory.mktemp("input_errors") / "shards",
                         FixtureSpec(dataset="tiny", num_samples=4, num_frames=16, height=32, width=32,
                                     samples_per_shard=4))


def _recipe(path: Path, out_dir: Path, dataset: dict) -> Path:
    path.write_text(yaml.safe_dump({
        "run": {"name": "bad_data", "out_dir": str(out_dir)},
        "model": {"preset": "tiny", "img_size": 32, "num_frames": 8, "patch_size": 8, "tubelet_size": 2, "depth": 1},
        "predictor": {"preset": "tiny", "depth": 1},
        "data": {"datasets": [dataset], "num_workers": 1, "num_threads": 1},
        "train": {"steps": 2, "global_batch": 2, "micro_batch": 2, "progress_bar": False},
        "parallel": {"cpu_threads": 1},
    }))
    return path


def assert_one_line_refusal(result, named: Path, phrase: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == 2, f"exit {result.returncode}: {result.stdout[-2000:]}{err[-3000:]}"
    assert err.count("\n") == 0 and err.startswith("error: "), err
    assert str(named) in err and phrase in err and "fix:" in err, err
    return err


@pytest.mark.parametrize("fault", FAULTS)
def test_fresh_run_on_bad_data_is_one_line_and_creates_no_run_folder(shards, tmp_path, fault):
    dataset, named, phrase = broken_shards(shards, tmp_path / "shards", fault)
    recipe = _recipe(tmp_path / "recipe.yaml", tmp_path / "runs", dataset)
    result = _run([sys.executable, "-m", "engine.train", "--recipe", str(recipe)], timeout=300)
    err = assert_one_line_refusal(result, named, phrase)
    if fault.startswith("unsafe"):
        assert "pointing outside the shard folder" in err, err
    assert not (tmp_path / "runs").exists()
