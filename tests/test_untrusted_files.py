"""Files someone else wrote run no code and reach no file outside their folder (issue 18): crafted checkpoint
files whose unpickling would create a file are refused by export and by resume and create nothing; shard
sets naming `../` or absolute paths (index keys, shard names, tar members, manifest entries) are refused
wherever they are read; a recipe's `base:` stays in its recipes tree.

Resume is exercised through CheckpointManager with a stand-in engine that loads ds/ the way DeepSpeed does
(torch.load(weights_only=False)), so no DeepSpeed run is needed; tests/test_train_reliability.py does the
same through `python -m engine.train --resume` on a real checkpoint.
"""
from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from engine.training import checkpoint as ckpt

KEY_ENV = "VJEPA_CHECKPOINT_KEY"  # engine.training.seal.KEY_ENV


def attempt(action) -> Exception | None:
    """Run `action`, returning what it raised. The crafted-file tests first assert that nothing was created,
    then what was refused: run against code that unpickles, they fail on the created file itself."""
    try:
        action()
    except Exception as err:  # noqa: BLE001 - inspected by the caller
        return err
    return None


class CreatesFile:
    """Unpickling this calls open(path, "w"): the file exists afterwards iff something unpickled it."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(autouse=True)
def machine_key(tmp_path, monkeypatch) -> Path:
    """This test's machine: its own key file, never the user's."""
    path = tmp_path / "machine.key"
    monkeypatch.setenv(KEY_ENV, str(path))
    return path


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# -- checkpoints ------------------------------------------------------------------------------------------

TINY_RECIPE = {"run": {"name": "tiny", "seed": 3},
               "model": {"preset": "tiny", "img_size": 32, "num_frames": 8, "patch_size": 8, "tubelet_size": 2,
                         "depth": 1},
               "predictor": {"preset": "tiny", "depth": 1}, "data": {"datasets": [{"root": "shards/tiny"}]}}


class FakeEngine:
    """What CheckpointManager needs of a DeepSpeed engine. Saves a module file; loads every ds/ file the way
    DeepSpeed's checkpoint engine does, with torch.load(weights_only=False)."""

    def __init__(self, module: dict[str, torch.Tensor]):
        self.module = module
        self.loaded: list[str] = []

    def save_checkpoint(self, folder: str, tag: str, save_latest: bool) -> None:
        (Path(folder) / tag).mkdir(parents=True, exist_ok=True)
        torch.save({"module": self.module, "ds_version": "fake"}, Path(folder) / tag / "mp_rank_00_model_states.pt")

    def load_checkpoint(self, folder: str, tag: str, **kwargs):
        for path in sorted((Path(folder) / tag).glob("*.pt")):
            torch.load(path, map_location="cpu", weights_only=False)
            self.loaded.append(path.name)
        return str(Path(folder) / tag), {}


@pytest.fixture
def written(tmp_path) -> Path:
    """A complete checkpoint of a tiny encoder, written by CheckpointManager.save on this machine."""
    from engine.models import VisionTransformer
    from engine.recipe import load_recipe, recipe_yaml

    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(TINY_RECIPE))
    recipe = load_recipe(recipe_path, check_files=False)
    torch.manual_seed(0)
    encoder = VisionTransformer(recipe.model)
    engine = FakeEngine({f"encoder.{k}": v for k, v in encoder.state_dict().items()})
    trainer_state = {"step": 4, "ema_target": encoder.state_dict(), "nonfinite": {"skipped_total": 1, "in_row": 0},
                     "collapse": None, "trained_encoder": "target_encoder", "run": "tiny"}
    rank_state = {"loader": {"format": 1, "step": 4, "skipped": [[0, 2, "k", "why"]]}, "step": 4}
    manager = ckpt.CheckpointManager(tmp_path / "run", keep_last=2)
    return manager.save(4, engine, trainer_state, rank_state, files={"recipe.yaml": recipe_yaml(recipe)})


def _copy(folder: Path, to: Path) -> Path:
    return Path(shutil.copytree(folder, to))


def test_checkpoint_state_round_trips_without_pickle(written, monkeypatch):
    real_load = torch.load

    def weights_only_load(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "the engine's own files must load weights-only"
        return real_load(*args, **kwargs)

    assert sorted(p.name for p in written.iterdir()) == [
        "COMPLETE", "ds", "ds.seal", "rank_00000.json", "rank_00000.pt", "recipe.yaml", "trainer.json", "trainer.pt"]
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt.restore_rng(ckpt.capture_rng())
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected

    monkeypatch.setattr(ckpt.torch, "load", weights_only_load)
    trainer = ckpt.read_trainer_state(written)
    assert trainer["step"] == 4 and trainer["nonfinite"] == {"skipped_total": 1, "in_row": 0}
    assert set(trainer["ema_target"]) and all(isinstance(v, torch.Tensor) for v in trainer["ema_target"].values())
    rank = ckpt.read_rank_state(written, 0)
    assert rank["loader"]["skipped"] == [[0, 2, "k", "why"]] and isinstance(rank["rng"]["torch"], torch.Tensor)


def test_resume_loads_a_checkpoint_this_machine_wrote(written):
    engine = FakeEngine({})
    trainer, rank = ckpt.CheckpointManager(written.parent.parent, 2).load(written, engine)
    assert engine.loaded == ["mp_rank_00_model_states.pt"] and trainer["step"] == rank["step"] == 4


@pytest.mark.parametrize("name", ["trainer.pt", "rank_00000.pt", "ds/mp_rank_00_model_states.pt"])
def test_resume_refuses_a_crafted_file_and_creates_nothing(written, tmp_path, name):
    folder = _copy(written, tmp_path / "sent" / "step_00000004")
    marker = tmp_path / "created-by-unpickling"
    torch.save({"format": 2, "step": 4, "ema_target": CreatesFile(marker), "module": CreatesFile(marker),
                "rng": CreatesFile(marker)}, folder / name)
    engine = FakeEngine({})
    refused = attempt(lambda: ckpt.CheckpointManager(folder.parent.parent, 2).load(folder, engine))
    assert not marker.exists() and engine.loaded == []
    assert type(refused).__name__ == "CheckpointRefused" and str(folder / name) in one_line(str(refused)), refused
    refused = attempt(lambda: ckpt.check_resumable(folder))
    assert not marker.exists() and type(refused).__name__ == "CheckpointRefused"


@pytest.mark.parametrize("layout", ["today", "legacy"])
def test_export_refuses_a_crafted_trainer_pt_and_creates_nothing(written, tmp_path, capsys, layout):
    from engine.export import main as export_main

    folder = _copy(written, tmp_path / "sent" / "step_00000004")
    marker = tmp_path / "created-by-unpickling"
    torch.save({"step": 4, "trained_encoder": "target_encoder", "run": "tiny", "ema_target": CreatesFile(marker)},
               folder / "trainer.pt")
    if layout == "legacy":  # written before trainer.json existed: export reads trainer.pt alone
        (folder / "trainer.json").unlink(missing_ok=True)
    out = tmp_path / "enc.safetensors"
    codes = []
    raised = attempt(lambda: codes.append(export_main([str(folder), "--out", str(out)])))
    assert not marker.exists() and not out.exists()
    line = one_line(capsys.readouterr().err)
    assert raised is None and codes == [2], raised
    assert line.startswith(f"error: {folder / 'trainer.pt'}: refused: loading it needs pickle"), line


def test_export_of_an_online_encoder_refuses_a_crafted_deepspeed_file(written, tmp_path, capsys):
    from engine.export import main as export_main

    folder = _copy(written, tmp_path / "sent" / "step_00000004")
    if (folder / "trainer.json").is_file():
        info = json.loads((folder / "trainer.json").read_text())
        (folder / "trainer.json").write_text(json.dumps({**info, "trained_encoder": "encoder"}))
    else:  # the layout before trainer.json
        info = torch.load(folder / "trainer.pt", weights_only=True)
        torch.save({**info, "trained_encoder": "encoder"}, folder / "trainer.pt")
    marker = tmp_path / "created-by-unpickling"
    torch.save({"module": CreatesFile(marker)}, folder / "ds" / "mp_rank_00_model_states.pt")
    codes = []
    raised = attempt(lambda: codes.append(export_main([str(folder), "--out", str(tmp_path / "enc.safetensors")])))
    assert not marker.exists()
    assert raised is None and codes == [2], raised
    assert "mp_rank_00_model_states.pt: refused" in one_line(capsys.readouterr().err)


def test_a_checkpoint_from_another_machine_exports_but_resumes_only_after_explicit_trust(written, tmp_path, capsys,
                                                                                        monkeypatch):
    from engine.export import load_encoder, main as export_main
    from engine.training.seal import CheckpointRefused

    monkeypatch.setenv(KEY_ENV, str(tmp_path / "other-machine.key"))
    assert export_main([str(written), "--out", str(tmp_path / "enc.safetensors")]) == 0
    assert set(load_encoder(tmp_path / "enc.safetensors").state_dict()) == set(
        ckpt.read_trainer_state(written)["ema_target"])
    engine = FakeEngine({})
    with pytest.raises(CheckpointRefused, match=r"ds\.seal: sealed by another machine or key.*--trust-legacy-pickle"):
        ckpt.CheckpointManager(written.parent.parent, 2).load(written, engine)
    assert engine.loaded == []
    assert ckpt.main([str(written)]) == 2 and "--trust-legacy-pickle" in one_line(capsys.readouterr().err)
    assert ckpt.main([str(written), "--trust-legacy-pickle"]) == 0
    ckpt.CheckpointManager(written.parent.parent, 2).load(written, engine)
    assert engine.loaded == ["mp_rank_00_model_states.pt"]


def test_a_checkpoint_written_before_is_refused_until_converted_once(written, capsys):
    """The format-1 layout: trainer.pt and rank_00000.pt pickles (numpy RNG state), no .json files, no seal."""
    from engine.training.seal import CheckpointRefused

    random.seed(5), np.random.seed(6), torch.manual_seed(7)
    legacy_rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    trainer = ckpt.read_trainer_state(written)
    rank = ckpt.read_rank_state(written, 0)
    for name in ("trainer.json", "rank_00000.json", "ds.seal"):
        (written / name).unlink()
    torch.save(trainer, written / "trainer.pt")
    torch.save({"loader": rank["loader"], "step": 4, "rng": legacy_rng}, written / "rank_00000.pt")

    with pytest.raises(CheckpointRefused, match="--trust-legacy-pickle"):
        ckpt.check_resumable(written)
    assert ckpt.main([str(written), "--trust-legacy-pickle"]) == 0
    assert "rank_00000.pt: converted" in capsys.readouterr().out
    ckpt.check_resumable(written)
    converted = ckpt.read_rank_state(written, 0)
    assert converted["loader"] == rank["loader"]
    ckpt.restore_rng(converted["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_conversion_never_unpickles_a_file_that_was_written_pickle_free(written, tmp_path, capsys):
    """--trust-legacy-pickle trusts old pickles only: a trainer.pt whose trainer.json says it is plain data
    but which needs pickle was altered, and stays refused."""
    marker = tmp_path / "created-by-unpickling"
    torch.save({"format": 2, "ema_target": CreatesFile(marker)}, written / "trainer.pt")
    code = ckpt.main([str(written), "--trust-legacy-pickle"])
    assert not marker.exists()
    line = one_line(capsys.readouterr().err)
    assert code == 2 and f"{written / 'trainer.pt'}: refused" in line and "altered" in line, line


# -- shards -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    """synth-diving with a train and a test split (one shard each), as `shards.build` merges them."""
    from data_fixtures import write_benchmark_folder

    root = tmp_path_factory.mktemp("shards")
    write_benchmark_folder(root / "synth-diving", 2, 2, num_frames=8, height=16, width=16)
    return root


def _copy_shards(shard_set: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shard_set, tmp_path / "shards", ignore=shutil.ignore_patterns("*.parts")))


def _rewrite_index(folder: Path, **column_values) -> None:
    """Replace the first row's value of each named column (other rows keep theirs)."""
    table = pq.read_table(folder / "index.parquet")
    rows = table.to_pylist()
    rows[0].update(column_values)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), folder / "index.parquet")


@pytest.mark.parametrize("column, value", [
    ("shard", "../outside.tar"), ("shard", "/ABS/outside.tar"), ("key", "../../evil"), ("key", "/etc/evil")],
    ids=["shard-dotdot", "shard-absolute", "key-dotdot", "key-absolute"])
def test_loader_index_refuses_names_outside_the_folder(shard_set, tmp_path, column, value):
    from engine.data import DatasetSpec
    from engine.data.index import load_dataset_index

    folder = _copy_shards(shard_set, tmp_path) / "synth-diving"
    first_shard = pq.read_table(folder / "index.parquet").to_pylist()[0]["shard"]
    outside = folder.parent / "outside.tar"  # a whole tar where the name points: only the name check can refuse
    shutil.copy(folder / first_shard, outside)
    value = value.replace("/ABS", str(folder.parent))
    _rewrite_index(folder, **{column: value})
    with pytest.raises(ValueError) as refused:
        load_dataset_index(DatasetSpec(root=str(folder), split="train"))
    line = one_line(str(refused.value))
    assert repr(value) in line and "pointing outside the shard folder" in line, line


def _rename_member(tar_path: Path, old: str, new: str) -> None:
    """Rename a ustar member in place (same offsets), fixing the header checksum, as a crafted tar would."""
    data = bytearray(tar_path.read_bytes())
    with tarfile.open(tar_path) as tar:
        offset = tar.getmember(old).offset
    header = data[offset:offset + 512]
    header[0:100] = new.encode().ljust(100, b"\0")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data[offset:offset + 512] = header
    tar_path.write_bytes(bytes(data))


@pytest.mark.parametrize("crafted", ["../../evil.mp4", "/tmp/evil.json"])
def test_evaluation_check_refuses_tar_members_outside_the_folder(shard_set, tmp_path, crafted):
    from engine.eval.eval_sets import BENCHMARKS, check_benchmark
    from engine.eval.errors import EvalInputError

    root = _copy_shards(shard_set, tmp_path)
    folder = root / "synth-diving"
    row = pq.read_table(folder / "index.parquet").to_pylist()[0]
    member = f"{row['key']}.{crafted.rsplit('.', 1)[1] if crafted.endswith('json') else row['media_ext']}"
    _rename_member(folder / row["shard"], member, crafted)
    with tarfile.open(folder / row["shard"]) as tar:
        assert crafted in tar.getnames()
    with pytest.raises(EvalInputError) as refused:
        check_benchmark(root, BENCHMARKS["synth-diving"])
    line = one_line(str(refused.value))
    assert f"tar member {crafted!r} is " in line and row["shard"] in line, line


def test_evaluation_check_passes_an_intact_shard_set(shard_set, tmp_path):
    from engine.eval.eval_sets import BENCHMARKS, check_benchmark

    assert check_benchmark(_copy_shards(shard_set, tmp_path), BENCHMARKS["synth-diving"]).split_check["train"] == 2


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    import fixtures_raw as raw

    root = tmp_path_factory.mktemp("raw") / "fold"
    raw.write_image(root / "train" / "cat" / "a.jpg")
    return root


@pytest.mark.parametrize("where", ["index key", "index shard", "manifest shard"])
def test_building_into_an_existing_folder_refuses_names_outside_it(image_tree, tmp_path, capsys, where):
    from shards.build import main as build_main
    from shards.catalog import INDEX_SCHEMA

    out = tmp_path / "out"
    out.mkdir()
    shard = "/etc/passwd" if where == "manifest shard" else "val-000000.tar"
    manifest = {"dataset": "fold", "classes": ["cat"], "format_version": 1, "build": {},
                "splits": {"val": {"count": 1, "rejects": [], "shards": [{"name": shard, "size": 0, "sha256": "",
                                                                             "count": 1}]}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    row = {name: None for name in INDEX_SCHEMA.names}
    row.update(key="../../evil" if where == "index key" else "val_cat_a", split="val",
               shard="../elsewhere/val-000000.tar" if where == "index shard" else "val-000000.tar",
               media_ext="jpg", media_offset=512, media_size=1, json_offset=1536, json_size=1, label=0)
    pq.write_table(pa.Table.from_pylist([row], schema=INDEX_SCHEMA), out / "index.parquet")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = build_main(["folder", "--root", str(image_tree), "--out", str(out), "--split", "train",
                       "--dataset-name", "fold", "--workers", "1", "--quiet"])
    line = one_line(capsys.readouterr().err)
    crafted = {"index key": "'../../evil'", "index shard": "'../elsewhere/val-000000.tar'",
               "manifest shard": "'/etc/passwd'"}[where]
    assert code == 2 and crafted in line and "pointing outside the shard folder" in line, line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# -- recipes ----------------------------------------------------------------------------------------------

def _recipes(tmp_path: Path) -> Path:
    recipes = tmp_path / "project" / "recipes"
    (recipes / "demo").mkdir(parents=True)
    data = "data: {datasets: [{root: shards/x}]}\n"
    (recipes / "base.yaml").write_text("train: {steps: 7}\n" + data)
    (tmp_path / "elsewhere.yaml").write_text("train: {steps: 9}\n" + data)
    return recipes


@pytest.mark.parametrize("base", ["../../../elsewhere.yaml", "ABS"])
def test_recipe_base_outside_the_recipes_tree_is_refused(tmp_path, capsys, base):
    from engine.recipe import load_recipe, main as recipe_main
    from engine.training.typed_yaml import ConfigError

    recipes = _recipes(tmp_path)
    base = str(tmp_path / "elsewhere.yaml") if base == "ABS" else base
    child = recipes / "demo" / "child.yaml"
    child.write_text(f"base: {base}\n")
    with pytest.raises(ConfigError) as refused:
        load_recipe(child, check_files=False)
    line = one_line(str(refused.value))
    assert line.startswith(f"{child}: `base: {base}` lies outside the recipes tree {recipes};"), line
    assert "--allow-base-outside-tree" in line
    assert load_recipe(child, check_files=False, allow_outside_base=True).train.steps == 9
    assert recipe_main([str(child)]) == 2 and "lies outside the recipes tree" in one_line(capsys.readouterr().err)


def test_recipe_base_inside_the_tree_and_the_shipped_recipes_load(tmp_path):
    from engine.recipe import load_recipe
    from engine.training.typed_yaml import load_yaml_tree

    child = _recipes(tmp_path) / "demo" / "child.yaml"
    child.write_text("base: ../base.yaml\n")
    assert load_recipe(child, check_files=False).train.steps == 7
    shipped = Path(__file__).resolve().parents[1] / "recipes"
    for recipe in sorted(shipped.rglob("*.yaml")):  # every base chain stays in recipes/
        load_yaml_tree(recipe)


def test_recipe_yaml_tags_that_build_python_objects_are_refused(tmp_path):
    """A regression guard (recipes were already parsed with yaml.safe_load): a tag never runs."""
    from engine.recipe import load_recipe
    from engine.training.typed_yaml import ConfigError

    marker = tmp_path / "created-by-yaml"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"run: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_recipe(recipe, check_files=False)
    assert not marker.exists()
