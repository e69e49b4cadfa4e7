"""The typed recipe: what one pretraining run is, loaded from YAML and validated before any heavy work.

A recipe composes sections that the other folders define (`model:` is engine.models.ModelConfig,
`predictor:` PredictorConfig, `loss:` engine.jepa.JEPAConfig, `masking:` engine.masking.MaskingConfig,
`data:` engine.data.LoaderConfig, `collapse:` engine.training.collapse.CollapseConfig; `objective:` names a
variant of engine.objectives' registry) with the trainer's own (`run:`, `train:`, `optim:`, `ema:`,
`parallel:`). Files inherit with `base:` (the shipped recipes are base/vitb16.yaml <- regimes/<regime>.yaml
<- <regime>_<variant>.yaml, and the same under demo/); the command line overrides with `--set key=value`.

    recipe = load_recipe("recipes/mixed_fwm.yaml", ["train.steps=100"])
    python -m engine.recipe recipes/mixed_fwm.yaml --set train.steps=100   # prints the resolved recipe
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import yaml

from engine.data.config import DatasetSpec, LoaderConfig
from engine.fields import Described, above, at_least, between, check_fields, describe_fields, field_doc, one_of
from engine.jepa import JEPAConfig
from engine.masking.config import MaskingConfig
from engine.objectives.base import Variant, parse_params
from engine.objectives.registry import TERM_KINDS, VARIANTS
from engine.models.config import MODEL_PRESETS, PREDICTOR_PRESETS, ModelConfig, PredictorConfig
from engine.training.collapse import CollapseConfig
from engine.training.tracking import LogConfig
from engine.training.typed_yaml import (
    ConfigError,
    apply_overrides,
    build_dataclass,
    blame,
    load_yaml_tree,
    to_plain,
)

ALLOW_OUTSIDE_HELP = ("let the recipe's `base:` files lie outside its recipes tree (the nearest enclosing folder "
                      "named recipes, else the recipe's own folder); only for recipes you trust")

# Loader fields that the trainer sets (from train:, run: and the launcher); a recipe must not set them.
TRAINER_OWNED_DATA_KEYS = {
    "batch_size": "train.micro_batch",
    "rank": "the launcher (RANK)",
    "world_size": "the launcher (WORLD_SIZE)",
    "seed": "run.seed",
    "mode": "the trainer (always 'train')",
    "infinite": "the trainer (always true: training is step-based)",
    "dtype": "parallel.precision (the model's dtype)",
}


@dataclass
class RunConfig:
    """Naming and placement of the run."""

    name: str = field_doc("run", "Run folder name under out_dir; also the TensorBoard run name.")
    out_dir: str = field_doc("runs", "Parent folder of run folders (relative to the working directory).")
    seed: int = field_doc(0, "Root seed of the model init, the loader's sampling and the masks.")

    def __post_init__(self):
        check_fields(self)


@dataclass
class TrainConfig:
    """Length, batch geometry, logging and checkpointing of the loop."""

    steps: int = field_doc(30_000, "Optimizer steps of the whole run (paper: 100 epochs x 300 = 30,000).",
                           valid=at_least(1))
    global_batch: int = field_doc(32, "Clips per optimizer step over all ranks (paper: 32).", valid=at_least(1))
    micro_batch: int = field_doc(8, "Clips per forward on one rank; accumulation = global / (micro x world).",
                                 valid=at_least(1))
    log_every: int = field_doc(1, "Write a metrics row every N steps (CSV, TensorBoard).", valid=at_least(1))
    checkpoint_every: int = field_doc(1000, "Write a checkpoint every N steps (and always at the end).",
                                      valid=at_least(1))
    keep_last: int = field_doc(3, "Complete checkpoints kept on disk; older ones are deleted.", valid=at_least(1))
    max_nonfinite_in_row: int = field_doc(5, "NaN/Inf losses in a row that stop the run (with a checkpoint).",
                                          valid=at_least(1))
    export_at_end: bool = field_doc(True, "Export the trained encoder to <run>/encoder.safetensors at the end.")
    progress_bar: bool = field_doc(True, "Show a tqdm bar on rank 0.")

    def __post_init__(self):
        check_fields(self)
        if self.global_batch % self.micro_batch:
            raise ValueError(f"global_batch={self.global_batch} is not a multiple of micro_batch="
                             f"{self.micro_batch}; pick a micro batch that divides it")


@dataclass
class OptimConfig:
    """AdamW with a warmup-then-cosine learning rate and a cosine weight decay, set on param groups."""

    lr: float = field_doc(6e-4, "Peak learning rate, reached at the end of warmup (paper: 6e-4).", valid=above(0))
    start_lr: float = field_doc(1e-4, "Learning rate at step 0 (paper: 1e-4).", valid=at_least(0))
    final_lr: float = field_doc(6e-4, "Learning rate at the last step (paper: 6e-4, i.e. constant after warmup).",
                                valid=at_least(0))
    warmup_steps: int = field_doc(300, "Steps of the linear warmup from start_lr to lr (paper: 300 = 1 epoch).",
                                  valid=at_least(0))
    weight_decay: float = field_doc(0.04, "Weight decay at step 0 (paper: 0.04) of the parameters the model "
                                          "decays (JEPA.param_groups: not biases, norms, tokens).",
                                    valid=at_least(0))
    final_weight_decay: float = field_doc(0.04, "Weight decay at the last step (cosine; paper: constant 0.04).",
                                          valid=at_least(0))
    betas: tuple[float, float] = field_doc((0.9, 0.999), "AdamW betas.", valid=between(0.0, 1.0, high_open=True))
    eps: float = field_doc(1e-8, "AdamW epsilon.", valid=above(0))
    grad_clip: float = field_doc(0.0, "Global gradient-norm clip; 0 disables it.", valid=at_least(0))

    def __post_init__(self):
        # Names the one field at fault: the recipe loader reports the file or --set that set it.
        check_fields(self)


@dataclass
class EmaConfig:
    """The EMA target encoder (fp32, outside the DeepSpeed engine)."""

    momentum: float = field_doc(0.99925, "EMA momentum at step 0 (paper: 0.99925).", valid=between(0.0, 1.0))
    final_momentum: float = field_doc(0.99925, "EMA momentum at the last step (linear ramp; paper: constant).",
                                      valid=between(0.0, 1.0))

    def __post_init__(self):
        check_fields(self)


@dataclass
class ParallelConfig:
    """Hardware and parallelism choices; the model code knows nothing of them."""

    zero_stage: int = field_doc(2, "DeepSpeed ZeRO stage: 1 (optimizer states) or 2 (+ gradients) sharded.",
                                valid=one_of(1, 2))
    precision: Literal["auto", "bf16", "fp32"] = field_doc(
        "auto", "auto = bf16 on CUDA, fp32 on CPU; the EMA target stays fp32 either way.")
    kernels: Literal["auto", "triton", "reference"] = field_doc(
        "auto", "Kernel backend: auto = Triton on CUDA, the PyTorch reference on CPU.")
    activation_checkpointing: bool = field_doc(False, "Recompute encoder blocks in backward to save memory.")
    comm_backend: Literal["auto", "nccl", "gloo"] = field_doc("auto", "auto = nccl on CUDA, gloo on CPU.")
    cpu_threads: int = field_doc(0, "torch intra-op threads per rank; 0 = cores / local ranks - 1 (one core "
                                    "left to the loader), at least 1.", valid=at_least(0))

    def __post_init__(self):
        if self.zero_stage == 3:
            raise ValueError(
                "zero_stage=3 is refused: ZeRO-3 partitions the parameters, so the fp32 EMA update and the "
                "exact-resume weight checks would need a gather of every parameter on every step, and the "
                "paper's ViT-B (86M) fits in memory many times over with stage 2; use zero_stage 1 or 2")
        if self.zero_stage not in (1, 2):
            raise ValueError(f"zero_stage={self.zero_stage}: use 1 or 2 (stage 0 has no NaN-gradient step skip "
                             f"in DeepSpeed, which the loop relies on)")
        check_fields(self)


@dataclass
class ObjectiveConfig:
    """The objective variant: a row of the study by name, or terms listed directly."""

    variant: str = field_doc("baseline", "Name in engine.objectives.registry.VARIANTS (e.g. fwm_hw_ld, ld, "
                                         "motion_guided); ignored when `custom` is set.", valid=one_of(*VARIANTS))
    custom: Optional[Variant] = field_doc(None, "Instead of `variant`: the terms listed directly (null = use "
                                                "`variant`).")

    def __post_init__(self):
        if self.custom is None and self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r} is not registered; use one of {sorted(VARIANTS)}")
        check_fields(self)
        for i, term in enumerate(self.custom.terms if self.custom is not None else ()):
            # Each term's kind and parameters are checked now, not when the model is built minutes later.
            if term.name not in TERM_KINDS:
                raise ValueError(f"custom.terms[{i}].name={term.name!r} is not a term kind; use one of "
                                 f"{sorted(TERM_KINDS)}")
            try:
                check_fields(parse_params(TERM_KINDS[term.name].Params, term.params, term.name))
            except (TypeError, ValueError) as err:
                raise ValueError(f"custom.terms[{i}].params: {err}") from None

    def spec(self):
        """What engine.jepa.JEPA takes as its variant."""
        return self.custom if self.custom is not None else self.variant


@dataclass
class Recipe:
    """One pretraining run."""

    run: RunConfig = field_doc(factory=RunConfig, doc="Run name, output folder and seed.")
    model: ModelConfig = field_doc(factory=ModelConfig, doc="Encoder (engine.models.ModelConfig); `preset:` allowed.")
    predictor: PredictorConfig = field_doc(factory=PredictorConfig, doc="Predictor (engine.models.PredictorConfig); `preset:` allowed.")
    objective: ObjectiveConfig = field_doc(factory=lambda: ObjectiveConfig(), doc="Which variant of the study (engine.objectives registry).")
    loss: JEPAConfig = field_doc(factory=JEPAConfig, doc="Context-loss schedule, EMA switch, paper_compat (engine.jepa.JEPAConfig).")
    masking: Optional[MaskingConfig] = field_doc(None, "Mask generators (engine.masking); null, or no masking.name/masks, "
                                                       "= the variant's own.")
    data: LoaderConfig = field_doc(factory=lambda: LoaderConfig(datasets=[DatasetSpec(root="data/shards/synth-ucf")]),
                                   doc="Loader (engine.data.LoaderConfig); batch/rank/seed are set by the trainer.")
    train: TrainConfig = field_doc(factory=TrainConfig, doc="Loop length, batch, logging, checkpoints.")
    optim: OptimConfig = field_doc(factory=OptimConfig, doc="AdamW and its schedules.")
    ema: EmaConfig = field_doc(factory=EmaConfig, doc="EMA target momentum.")
    parallel: ParallelConfig = field_doc(factory=ParallelConfig, doc="ZeRO stage, precision, kernels.")
    collapse: CollapseConfig = field_doc(factory=CollapseConfig, doc="Collapse alarm on the target features "
                                         "(engine.training.collapse): how often, and its thresholds.")
    log: LogConfig = field_doc(factory=LogConfig, doc="TensorBoard (default), wandb and MLflow tracking "
                                                      "(engine.training.tracking).")

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name


# The geometry keys of `data:` that a recipe may give, but that default to (and must equal) the model's.
DATA_GEOMETRY = {"crop_size": "model.img_size", "num_frames": "model.num_frames"}


def describe_recipe() -> list[Described]:
    """Exactly the keys a recipe may set, each with its type, default, valid range and doc: the dataclass
    fields (less the loader fields the trainer sets), the `preset:` shorthands, and each term kind's
    parameters for `objective.custom`."""
    hidden = frozenset(f"data.{key}" for key in TRAINER_OWNED_DATA_KEYS)
    rows, presets = [], {"model": MODEL_PRESETS, "predictor": PREDICTOR_PRESETS}
    for row in describe_fields(Recipe, hidden=hidden):
        section = row.key.partition(".")[0]
        if section in presets:  # the shorthand first, then the keys it fills
            rows.append(_preset_row(section, presets.pop(section)))
        if row.key.removeprefix("data.") in DATA_GEOMETRY:
            model_key = DATA_GEOMETRY[row.key.removeprefix("data.")]
            row = dataclasses.replace(row, default=model_key, doc=f"{row.doc} Defaults to {model_key}; "
                                                                      f"if given, it must equal it.")
        rows.append(row)
        if row.key == "objective.custom.terms[].params":
            for name, kind in TERM_KINDS.items():
                rows.extend(describe_fields(kind.Params, f"objective.custom.terms[{name}].params."))
    return rows


def _preset_row(section: str, table: dict[str, dict]) -> Described:
    return Described(f"{section}.preset", "str", "(none)", "one of " + ", ".join(repr(n) for n in table),
                     f"A named size ({', '.join(next(iter(table.values())))}); keys given beside it win.")


def _expand_presets(data: dict, origin: dict) -> None:
    """`model: {preset: base, depth: 6}` -> the preset's fields under the explicit ones."""
    for section, table in (("model", MODEL_PRESETS), ("predictor", PREDICTOR_PRESETS)):
        node = data.get(section)
        if not isinstance(node, dict) or "preset" not in node:
            continue
        name = str(node.pop("preset"))
        where = origin.get(f"{section}.preset", "<recipe>")
        if name not in table:
            raise ConfigError(f"{where}: {section}.preset: unknown preset {name!r}; fix: use one of {sorted(table)}")
        for key, value in table[name].items():
            if key not in node:
                node[key] = value
                origin[f"{section}.{key}"] = where


def _check_data_section(data: dict, origin: dict) -> None:
    node = data.get("data")
    if not isinstance(node, dict):
        return
    for key, owner in TRAINER_OWNED_DATA_KEYS.items():
        if key in node:
            raise ConfigError(f"{origin.get(f'data.{key}', '<recipe>')}: data.{key}: set by {owner}; fix: "
                              f"remove it from the recipe")


def _fill_data_geometry(data: dict, origin: dict) -> None:
    """The clip geometry is the model's: data.crop_size / data.num_frames default to model.img_size /
    model.num_frames and must agree with them when given."""
    model = data.get("model") or {}
    node = data.setdefault("data", {})
    if not isinstance(node, dict):
        return
    for data_key, model_key, default in (("crop_size", "img_size", 224), ("num_frames", "num_frames", 16)):
        model_value = model.get(model_key, default)
        if data_key not in node:
            node[data_key] = model_value
            origin[f"data.{data_key}"] = origin.get(f"model.{model_key}", "<defaults>")
        elif str(node[data_key]) != str(model_value):
            raise ConfigError(f"{origin.get(f'data.{data_key}', '<recipe>')}: data.{data_key}={node[data_key]} differs "
                              f"from model.{model_key}={model_value}; fix: set only model.{model_key}")


def validate(recipe: Recipe, origin: dict[str, str], world_size: int | None = None) -> Recipe:
    """Cross-section checks that need no heavy work: geometry, shards on disk, batch vs world size."""
    def where(key: str) -> str:
        probe = key
        while probe and probe not in origin:
            probe = probe.rpartition(".")[0]
        return origin.get(probe, "<recipe>")

    model = recipe.model
    if model.img_size % model.patch_size:
        raise ConfigError(f"{blame(origin, 'model.img_size', 'model.patch_size')}: model.img_size={model.img_size} is not divisible by "
                          f"model.patch_size={model.patch_size}; fix: use a crop that is a multiple of the patch")
    if model.num_frames % model.tubelet_size:
        raise ConfigError(f"{blame(origin, 'model.num_frames', 'model.tubelet_size')}: model.num_frames={model.num_frames} is not divisible "
                          f"by model.tubelet_size={model.tubelet_size}; fix: use a multiple of the tubelet")
    from shards.storage import is_file, join
    for i, spec in enumerate(recipe.data.datasets):
        try:
            present = is_file(join(spec.root, "index.parquet"))  # a path or an fsspec URL (engine.data.remote)
        except OSError as err:
            raise ConfigError(f"{where('data.datasets')}: data.datasets[{i}].root={spec.root}: {err}") from None
        if not present:
            raise ConfigError(f"{where(f'data.datasets')}: data.datasets[{i}].root={spec.root}: no index.parquet "
                              f"there; fix: build the shards (python -m shards.build ... --out {spec.root}) or "
                              f"correct the path")
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    per_step = recipe.train.micro_batch * world
    if recipe.train.global_batch % per_step:
        raise ConfigError(f"{blame(origin, 'train.global_batch', 'train.micro_batch')}: train.global_batch={recipe.train.global_batch} is not a "
                          f"multiple of train.micro_batch x world size = {recipe.train.micro_batch} x {world}; fix: "
                          f"change train.micro_batch or the number of processes")
    try:
        recipe.data.validate()
    except ValueError as err:
        raise ConfigError(f"{where('data')}: data.{err}; fix: correct the data section") from None
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None, *, check_files: bool = True,
                world_size: int | None = None, allow_outside_base: bool = False) -> Recipe:
    """Read, compose, type and validate a recipe; any problem is one ConfigError line. Its `base:` files
    must lie in its recipes tree (engine.training.typed_yaml.recipes_tree) unless allow_outside_base."""
    data, origin = load_yaml_tree(path, allow_outside_base=allow_outside_base)
    apply_overrides(data, origin, list(overrides or []))
    _expand_presets(data, origin)
    _check_data_section(data, origin)
    _fill_data_geometry(data, origin)
    recipe = build_dataclass(Recipe, data, origin)
    if check_files:
        validate(recipe, origin, world_size)
    return recipe


def recipe_yaml(recipe: Recipe) -> str:
    """The resolved recipe (every field, defaults included) as YAML text; it loads back to an equal Recipe."""
    plain = to_plain(recipe)
    for key in TRAINER_OWNED_DATA_KEYS:  # set at run time, not part of the recipe
        plain["data"].pop(key, None)
    return yaml.safe_dump(plain, sort_keys=False)


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(recipe_yaml(recipe), encoding="utf-8")
    os.replace(tmp, path)


def read_resolved_recipe(path: str | Path) -> Recipe:
    """A recipe written by `dump_recipe` (a run's or a checkpoint's), typed but not checked against the disk:
    its shards may be gone by the time its checkpoints are exported."""
    data, origin = load_yaml_tree(path)
    return build_dataclass(Recipe, data, origin)


# What a checkpoint's weights and optimizer state are shaped by, or what defines the experiment it is part
# of: a resumed run must keep these (prefixes of dotted keys). Everything else (length, schedules, logging,
# data mixing, parallelism) may change on resume.
FROZEN_ON_RESUME = ("model", "predictor", "masking", "objective", "loss", "data.crop_size", "data.num_frames")


def _first_difference(old, new, key: str):
    """(dotted key, old, new) of the first leaf where two plain recipe trees differ, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in [*new, *(k for k in old if k not in new)]:
            if k not in old or k not in new:
                return f"{key}.{k}", old.get(k, "(absent)"), new.get(k, "(absent)")
            found = _first_difference(old[k], new[k], f"{key}.{k}")
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            found = _first_difference(a, b, f"{key}[{i}]")
            if found:
                return found
        return None
    return None if old == new else (key, old, new)


def refuse_frozen_changes(recipe: Recipe, checkpoint_recipe: str | Path, resume: str) -> None:
    """Raise a one-line ConfigError if `recipe` changes a FROZEN_ON_RESUME key of the checkpoint's recipe.
    Called before the run writes anything, so a refused resume leaves the run folder as it was."""
    old, new = to_plain(read_resolved_recipe(checkpoint_recipe)), to_plain(recipe)
    for frozen in FROZEN_ON_RESUME:
        section, _, leaf = frozen.partition(".")
        a, b = old.get(section), new.get(section)
        if leaf:
            a, b = (a or {}).get(leaf), (b or {}).get(leaf)
        found = _first_difference(a, b, frozen)
        if found:
            key, was, now = found
            raise ConfigError(f"--resume {resume}: {key} was {json.dumps(was)} in {checkpoint_recipe}, now "
                              f"{json.dumps(now)}; it cannot change on resume (the checkpoint's weights and "
                              f"objective depend on it); fix: drop the change, or train a new run (another "
                              f"run.name)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a recipe and print it resolved, or list every key.")
    parser.add_argument("recipe", nargs="?", help="recipe YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--describe", action="store_true", help="list every key with its type, default and doc")
    parser.add_argument("--allow-base-outside-tree", action="store_true", help=ALLOW_OUTSIDE_HELP)
    args = parser.parse_args(argv)
    if args.describe or not args.recipe:
        print("\n".join(row.line() for row in describe_recipe()))
        return 0
    try:
        recipe = load_recipe(args.recipe, args.overrides, allow_outside_base=args.allow_base_outside_tree)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(to_plain(recipe), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
