"""Recipe schema and the generic typed-YAML loader: composition, overrides, and one-line errors."""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from engine.objectives.registry import VARIANTS
from engine.recipe import dump_recipe, load_recipe
from engine.training import schedules
from engine.training.ds_config import build_ds_config
from engine.training.faults import NonFiniteGuard
from engine.fields import field_doc
from engine.training.typed_yaml import ConfigError, apply_overrides, build_dataclass, load_yaml_tree

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
sys.path.insert(0, str(Path(__file__).parent))


# -- the generic loader on its own dataclasses -------------------------------------------------------

@dataclasses.dataclass
class Inner:
    size: int = field_doc(3, "a size")
    ratio: float = field_doc(0.5, "a ratio")


@dataclasses.dataclass
class Outer:
    name: str
    inner: Inner = field_doc(factory=Inner, doc="nested")
    mode: Literal["a", "b"] = field_doc("a", "a choice")
    maybe: Optional[int] = field_doc(None, "optional int")
    sizes: list[int] = field_doc(factory=list, doc="list")
    pair: tuple[float, float] = field_doc((1.0, 2.0), "pair")
    flag: bool = field_doc(False, "flag")
    inners: tuple[Inner, ...] = field_doc((), "nested list")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _build(tmp_path, text, overrides=()):
    path = _write(tmp_path / "r.yaml", text)
    data, origin = load_yaml_tree(path)
    apply_overrides(data, origin, list(overrides))
    return build_dataclass(Outer, data, origin)


def test_loader_types_nesting_and_overrides(tmp_path):
    cfg = _build(tmp_path, "name: x\ninner: {size: 4}\nmode: b\nmaybe: 7\nsizes: [1, 2]\npair: [3, 4]\n"
                           "inners: [{size: 1}, {ratio: 2}]\n",
                 ["inner.ratio=0.25", "flag=true", "maybe=null", "name=123", "sizes=[5]"])
    assert cfg == Outer(name="123", inner=Inner(4, 0.25), mode="b", maybe=None, sizes=[5], pair=(3.0, 4.0),
                        flag=True, inners=(Inner(1, 0.5), Inner(3, 2.0)))
    assert isinstance(cfg.pair[0], float) and isinstance(cfg.name, str)


def test_base_inheritance_merges_sections_and_later_files_win(tmp_path):
    _write(tmp_path / "base" / "a.yaml", "name: a\ninner: {size: 1, ratio: 0.1}\nsizes: [1, 2, 3]\n")
    _write(tmp_path / "b.yaml", "base: base/a.yaml\ninner: {size: 2}\n")
    child = _write(tmp_path / "c.yaml", "base: [b.yaml]\nsizes: [9]\n")
    data, origin = load_yaml_tree(child)
    cfg = build_dataclass(Outer, data, origin)
    assert cfg.inner == Inner(2, 0.1) and cfg.sizes == [9] and cfg.name == "a"
    assert origin["inner.size"].endswith("b.yaml") and origin["inner.ratio"].endswith("a.yaml")


@pytest.mark.parametrize("text, overrides, expected", [
    ("name: x\ninnr: {size: 1}\n", (), r"r\.yaml: innr: unknown key; fix: did you mean 'inner'\?"),
    ("name: x\ninner: {size: 1.5}\n", (), r"r\.yaml: inner\.size: expected an integer, got 1\.5"),
    ("name: x\ninner: {ratio: '1e-3'}\n", (), r"inner\.ratio: expected a number, got '1e-3'"),
    ("name: x\nmode: c\n", (), r"mode: 'c' is not one of 'a', 'b'"),
    ("name: x\nflag: 1\n", (), r"flag: expected true/false"),
    ("inner: {}\n", (), r"r\.yaml: name: missing key"),
    ("name: x\npair: [1, 2, 3]\n", (), r"pair: expected 2 items, got 3"),
    ("name: x\ninners: [{size: x}]\n", (), r"inners\[0\]\.size: expected an integer"),
    ("name: x\n", ("inner.size=abc",), r"--set inner\.size=abc: inner\.size: expected an integer"),
    ("name: x\n", ("inner.nope=1",), r"--set inner\.nope=1: inner\.nope: unknown key"),
    ("name: x\n", ("inner",), r"--set inner: expected KEY=VALUE"),
    ("name: [x\n", (), r"r\.yaml: line \d+ invalid YAML"),
    ("base: r.yaml\nname: x\n", (), r"`base:` cycle"),
    ("base: missing.yaml\nname: x\n", (), r"missing\.yaml: file not found"),
])
def test_loader_errors_are_one_line_naming_key_file_and_fix(tmp_path, text, overrides, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        _build(tmp_path, text, overrides)
    assert "\n" not in str(info.value)


# -- the recipe ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    from data_fixtures import FixtureSpec, write_dataset
    return write_dataset(tmp_path_factory.mktemp("shards") / "a", FixtureSpec(dataset="a", num_samples=4))


def _recipe_text(shard_root, **sections):
    base = {"run": {"name": "t"}, "model": {"preset": "tiny", "img_size": 32, "num_frames": 8, "patch_size": 8},
            "predictor": {"preset": "tiny"}, "data": {"datasets": [{"root": str(shard_root)}]},
            "train": {"steps": 4, "global_batch": 4, "micro_batch": 2}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return yaml.safe_dump(base)


def test_recipe_presets_geometry_and_roundtrip(tmp_path, shard_root):
    path = _write(tmp_path / "r.yaml", _recipe_text(shard_root, objective={"variant": "fwm_hw_ld"}))
    recipe = load_recipe(path, ["model.depth=2", "optim.lr=1e-3"], world_size=1)
    assert (recipe.model.embed_dim, recipe.model.depth, recipe.predictor.width) == (64, 2, 64)
    assert (recipe.data.crop_size, recipe.data.num_frames) == (32, 8)  # taken from the model
    assert recipe.optim.lr == 1e-3 and recipe.objective.variant == "fwm_hw_ld"
    dump_recipe(recipe, tmp_path / "resolved.yaml")
    assert load_recipe(tmp_path / "resolved.yaml", world_size=1) == recipe


@pytest.mark.parametrize("sections, overrides, expected", [
    ({"model": {"img_size": 30}}, (), r"model\.img_size=30 is not divisible by model\.patch_size=8"),
    ({"model": {"num_frames": 7}}, (), r"model\.num_frames=7 is not divisible by model\.tubelet_size=2"),
    ({"data": {"datasets": [{"root": "/nonexistent/shards"}]}}, (),
     r"data\.datasets\[0\]\.root=/nonexistent/shards: no index\.parquet there; fix: build the shards"),
    ({"optim": {"lrr": 1.0}}, (), r"optim\.lrr: unknown key; fix: did you mean 'optim\.lr'\?"),
    ({"train": {"steps": "many"}}, (), r"train\.steps: expected an integer, got 'many'"),
    ({"objective": {"variant": "nope"}}, (), r"objective: variant='nope' is not registered"),
    ({"parallel": {"zero_stage": 3}}, (), r"zero_stage=3 is refused: ZeRO-3 partitions the parameters"),
    ({"parallel": {"precision": "fp16"}}, (), r"parallel\.precision: 'fp16' is not one of"),
    ({"train": {"global_batch": 6, "micro_batch": 4}}, (), r"global_batch=6 is not a multiple of micro_batch=4"),
    ({"data": {"batch_size": 3}}, (), r"data\.batch_size: set by train\.micro_batch; fix: remove it"),
    ({"data": {"crop_size": 64}}, (), r"data\.crop_size=64 differs from model\.img_size=32"),
    ({"model": {"preset": "gigantic"}}, (), r"model\.preset: unknown preset 'gigantic'"),
    ({}, ("train.micro_batch=4",), r"train\.global_batch=4 is not a multiple of train\.micro_batch x world size = 4 x 2"),
])
def test_invalid_recipes_give_one_line_errors(tmp_path, shard_root, sections, overrides, expected):
    path = _write(tmp_path / "r.yaml", _recipe_text(shard_root, **sections))
    with pytest.raises(ConfigError, match=expected) as info:
        load_recipe(path, list(overrides), world_size=2)
    message = str(info.value)
    assert "\n" not in message and ("r.yaml" in message or "--set" in message), message


def test_train_cli_reports_recipe_errors_in_one_line_before_heavy_work(tmp_path, shard_root, capsys):
    from engine.train import main
    path = _write(tmp_path / "r.yaml", _recipe_text(shard_root, model={"img_size": 30}))
    assert main(["--recipe", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "model.img_size=30" in err



@pytest.mark.parametrize("overrides, expected", [
    # the value is the flag's, though recipes/demo/base.yaml opens the optim: section
    (["optim.lr=-1e-4"], r"^--set optim\.lr=-1e-4: optim: lr=-0\.0001 must be > 0$"),
    (["ema.final_momentum=2"], r"^--set ema\.final_momentum=2: ema: final_momentum=2\.0 must lie in \[0, 1\]$"),
    # a section that only the flag creates is the flag's, not the recipe file's
    (["trian.steps=30"], r"^--set trian\.steps=30: trian: unknown key; fix: did you mean 'train'\?$"),
    # two keys involved, one from a file and one from the flag: the flag first
    (["train.micro_batch=3"], r"^--set train\.micro_batch=3, recipes/demo/\S*base\.yaml: train: global_batch=8 is "
                              r"not a multiple of micro_batch=3"),
])
def test_recipe_errors_name_the_set_flag_that_set_the_value(monkeypatch, overrides, expected):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=expected):
        load_recipe("recipes/demo/mixed_fwm.yaml", overrides, check_files=False)


def test_recipe_errors_name_the_file_that_set_the_value_not_the_base(tmp_path, shard_root):
    _write(tmp_path / "base.yaml", _recipe_text(shard_root, optim={"lr": 1.0e-3}))
    child = _write(tmp_path / "child.yaml", "base: base.yaml\noptim: {warmup_steps: -1}\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: optim: warmup_steps=-1 must be >= 0$"):
        load_recipe(child, world_size=1)


@pytest.mark.parametrize("overrides, refused", [
    (["model.depth=3"], "model.depth was 1 in "),
    (["model.tubelet_size=4"], "model.tubelet_size was 2 in "),
    (["model.img_size=64"], "model.img_size was 32 in "),
    (["predictor.depth=2"], "predictor.depth was 1 in "),
    (["objective.variant=fwm"], 'objective.variant was "baseline" in '),
    (["loss.context_loss.lambda_value=0.9"], "loss.context_loss.lambda_value was "),
    (["masking.name=multiblock"], "masking was null in "),
    (["train.steps=99", "optim.lr=1e-3", "train.micro_batch=1", "ema.momentum=0.5", "run.seed=4"], None),
])
def test_resume_refuses_changes_to_what_the_checkpoint_is_shaped_by(tmp_path, shard_root, overrides, refused):
    from engine.recipe import refuse_frozen_changes
    path = _write(tmp_path / "r.yaml", _recipe_text(shard_root, model={"depth": 1}, predictor={"depth": 1}))
    dump_recipe(load_recipe(path, world_size=1), tmp_path / "ckpt" / "recipe.yaml")
    resumed = load_recipe(path, overrides, world_size=1)
    if refused is None:
        refuse_frozen_changes(resumed, tmp_path / "ckpt" / "recipe.yaml", "auto")
        return
    with pytest.raises(ConfigError, match="^--resume auto: " + re.escape(refused)) as info:
        refuse_frozen_changes(resumed, tmp_path / "ckpt" / "recipe.yaml", "auto")
    assert "\n" not in str(info.value) and "cannot change on resume" in str(info.value)

# -- the shipped recipes --------------------------------------------------------------------------------

def _variants_in(folder: Path, regime: str) -> set[str]:
    return {p.stem[len(regime) + 1:] for p in folder.glob(f"{regime}_*.yaml")}


@pytest.mark.parametrize("folder", [RECIPES, RECIPES / "demo"], ids=["paper", "demo"])
def test_every_variant_has_a_recipe_in_both_regimes_and_each_loads(folder):
    for regime in ("ucf", "mixed"):
        assert _variants_in(folder, regime) == set(VARIANTS), f"{folder}: {regime} recipes differ from the registry"
        for path in sorted(folder.glob(f"{regime}_*.yaml")):
            recipe = load_recipe(path, check_files=False)
            assert recipe.objective.variant == path.stem[len(regime) + 1:]
            assert recipe.run.name == (path.stem if folder == RECIPES else f"demo_{path.stem}")
            assert len(recipe.data.datasets) == (1 if regime == "ucf" else 3)


def test_paper_recipe_matches_paper_spec():
    r = load_recipe(RECIPES / "mixed_fwm.yaml", check_files=False)
    assert (r.model.embed_dim, r.model.depth, r.model.patch_size, r.model.img_size, r.model.num_frames,
            r.model.tubelet_size) == (768, 12, 16, 224, 16, 2)
    assert r.model.out_layer_indices == (2, 5, 8, 11) and r.model.pos_embed == "rope"
    assert (r.predictor.depth, r.predictor.width, r.predictor.num_heads) == (8, 256, 8)
    assert (r.train.steps, r.train.global_batch) == (30_000, 32)
    assert (r.optim.lr, r.optim.start_lr, r.optim.final_lr, r.optim.warmup_steps) == (6e-4, 1e-4, 6e-4, 300)
    assert (r.optim.weight_decay, r.optim.final_weight_decay, r.optim.betas) == (0.04, 0.04, (0.9, 0.999))
    assert (r.ema.momentum, r.ema.final_momentum) == (0.99925, 0.99925)
    ctx = r.loss.context_loss
    assert (ctx.lambda_value, ctx.lambda_start, ctx.lambda_end, ctx.weight_distance) == (0.5, 15_000, 30_000, True)
    assert [d.weight for d in r.data.datasets] == [0.2, 0.6, 0.2]
    assert [d.frame_step for d in r.data.datasets] == [2, 2, 2]
    ucf = load_recipe(RECIPES / "ucf_baseline.yaml", check_files=False)
    assert ucf.data.datasets[0].target_fps == 16.0 and ucf.data.datasets[0].split == "train"


# -- schedules, DeepSpeed config, NaN guard --------------------------------------------------------

def test_schedules_follow_the_paper():
    lr = [schedules.warmup_cosine(s, start=1e-4, peak=6e-4, final=6e-4, warmup_steps=300, total_steps=30_000)
          for s in (0, 150, 300, 20_000, 29_999)]
    assert lr == pytest.approx([1e-4, 3.5e-4, 6e-4, 6e-4, 6e-4])
    decay = [schedules.warmup_cosine(s, start=0.0, peak=1.0, final=0.0, warmup_steps=0, total_steps=100)
             for s in (0, 50, 100)]
    assert decay == pytest.approx([1.0, 0.5, 0.0])
    assert schedules.linear(50, start=0.99, final=1.0, total_steps=100) == pytest.approx(0.995)
    ctx = load_recipe(RECIPES / "mixed_fwm.yaml", check_files=False).loss.context_loss
    assert [ctx.lambda_at(s) for s in (0, 14_999, 22_500, 30_000)] == pytest.approx([0, 0, 0.25, 0.5])


def test_ds_config_accumulation_and_precision():
    cfg = build_ds_config(global_batch=32, micro_batch=8, world_size=2, zero_stage=2, precision="bf16", grad_clip=1.0)
    assert cfg["gradient_accumulation_steps"] == 2 and cfg["train_batch_size"] == 32
    assert cfg["bf16"] == {"enabled": True, "check_grad_overflow": True} and cfg["zero_optimization"]["stage"] == 2
    assert "bf16" not in build_ds_config(global_batch=8, micro_batch=8, world_size=1, zero_stage=1,
                                         precision="fp32", grad_clip=0.0)
    with pytest.raises(ValueError, match="not a multiple"):
        build_ds_config(global_batch=10, micro_batch=4, world_size=1, zero_stage=2, precision="fp32", grad_clip=0)


def test_nonfinite_guard_stops_after_n_in_a_row():
    guard = NonFiniteGuard(max_in_row=3)
    verdicts = [guard.record(ok) for ok in (True, False, False, True, False, False, False)]
    assert verdicts == [False, False, False, False, False, False, True]
    assert guard.skipped_total == 5 and guard.in_row == 3
