"""Run tracking beyond TensorBoard: Weights & Biases and MLflow, switched on in the recipe's `log:` section.

    log:
      wandb:  {enabled: true, project: video-jepa, mode: offline}       # or online (WANDB_API_KEY)
      mlflow: {enabled: true, tracking_uri: http://mlflow.lab:5000}      # default: a file store in the run folder

TensorBoard stays the default (`log.tensorboard: true`). Each enabled tracker receives exactly the rows of
metrics.csv (the same keys and values, at the same steps: `MetricsWriter.write` hands every row to
`Trackers.log`), the resolved recipe (as config/params and as the recipe.yaml file), and at the end of the
run the export folder (model.safetensors, config.json, model card) as a model artifact.

Only rank 0 tracks. The trackers are opened by the MetricsWriter from the run folder's resolved recipe, so
the training loop needs no code of its own for them. A resumed run continues the same tracker run: its ids
are kept in `<run>/tracking.json`. The packages are optional: `pip install -e ".[tracking]"`; an enabled
tracker whose package is missing stops the run at its first metrics row with a one-line error.

Everything a tracker writes stays in the run folder: wandb's run files in <run>/wandb, and the copies of
logged artifacts it stages (which an offline run's `wandb sync` uploads later) in <run>/wandb/data instead
of ~/.local/share/wandb (WANDB_DATA_DIR, unless set); MLflow's default file store in <run>/mlruns, which
MLflow 3 reads back only with MLFLOW_ALLOW_FILE_STORE=true (the engine sets it for its own writes).
"""
from __future__ import annotations

import json
import os
import atexit
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from engine.fields import field_doc

STATE_NAME = "tracking.json"


@dataclass
class WandbConfig:
    """Weights & Biases."""

    enabled: bool = field_doc(False, "Log metrics, the resolved recipe and the exported encoder to wandb.")
    project: str = field_doc("vjepa-engine", "wandb project.")
    entity: Optional[str] = field_doc(None, "wandb entity (team or user); None = the account's default.")
    mode: Literal["online", "offline", "disabled"] = field_doc(
        "online", "offline writes the run under <run>/wandb for a later `wandb sync` (no network).")
    tags: list[str] = field_doc(factory=list, doc="Tags of the wandb run.")


@dataclass
class MlflowConfig:
    """MLflow."""

    enabled: bool = field_doc(False, "Log metrics, the resolved recipe and the exported encoder to MLflow.")
    tracking_uri: Optional[str] = field_doc(
        None, "Tracking server or store; None = $MLFLOW_TRACKING_URI, else a file store in <run>/mlruns.")
    experiment: str = field_doc("vjepa-engine", "MLflow experiment name.")


@dataclass
class LogConfig:
    """Where metrics go besides metrics.csv."""

    tensorboard: bool = field_doc(True, "TensorBoard events in <run>/tensorboard.")
    wandb: WandbConfig = field_doc(factory=WandbConfig, doc="Weights & Biases (optional extra `tracking`).")
    mlflow: MlflowConfig = field_doc(factory=MlflowConfig, doc="MLflow (optional extra `tracking`).")


def _flatten(tree, prefix: str = "") -> dict:
    out = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(tree, list) and tree and any(isinstance(v, (dict, list)) for v in tree):
        for i, value in enumerate(tree):
            out.update(_flatten(value, f"{prefix}.{i}"))
    else:
        out[prefix] = tree
    return out


def _numeric(row: dict) -> dict[str, float]:
    values = {}
    for key, value in row.items():
        if key == "step" or value in ("", None):
            continue
        try:
            values[key] = float(value)
        except (TypeError, ValueError):
            continue
    return values


class _Wandb:
    def __init__(self, cfg: WandbConfig, run_dir: Path, name: str, recipe: dict, run_id: str | None):
        try:
            import wandb
        except ImportError:
            raise RuntimeError("log.wandb.enabled: the wandb package is not installed; fix: pip install -e "
                               "\".[tracking]\" or set log.wandb.enabled=false") from None
        self.wandb = wandb
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=name, mode=cfg.mode, dir=str(run_dir),
                              config=recipe, tags=list(cfg.tags) or None, id=run_id, resume="allow" if run_id else None,
                              settings=wandb.Settings(silent=True, console="off"))
        self.id = self.run.id
        self.run_dir = Path(run_dir)

    def log(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def artifact(self, path: Path, name: str, kind: str) -> None:
        with self.staged_in_run():
            art = self.wandb.Artifact(name, type=kind)
            (art.add_dir if path.is_dir() else art.add_file)(str(path))
            self.run.log_artifact(art)

    @contextmanager
    def staged_in_run(self):
        """wandb copies an artifact's files into $WANDB_DATA_DIR/artifacts/staging when they are added (default
        ~/.local/share/wandb), where an offline run's `wandb sync` finds them later: keep them in the run
        folder, unless the user chose a place."""
        if "WANDB_DATA_DIR" in os.environ:
            yield
            return
        os.environ["WANDB_DATA_DIR"] = str((self.run_dir / "wandb" / "data").resolve())
        try:
            yield
        finally:
            os.environ.pop("WANDB_DATA_DIR", None)

    def finish(self) -> None:
        self.run.finish()


class _Mlflow:
    def __init__(self, cfg: MlflowConfig, run_dir: Path, name: str, recipe: dict, run_id: str | None):
        uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps its file store only on request; a store in the run folder is this engine's default.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise RuntimeError("log.mlflow.enabled: the mlflow package is not installed; fix: pip install -e "
                               "\".[tracking]\" or set log.mlflow.enabled=false") from None
        self.client = MlflowClient(uri)
        self.uri = uri
        if run_id is None:
            experiment = self.client.get_experiment_by_name(cfg.experiment)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(cfg.experiment)
            run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
            params = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in _flatten(recipe).items()}
            items = sorted(params.items())
            from mlflow.entities import Param
            for start in range(0, len(items), 100):  # the store takes at most 100 params per batch
                self.client.log_batch(run_id, params=[Param(k[:250], v[:6000]) for k, v in items[start:start + 100]])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.id = run_id

    def log(self, step: int, values: dict) -> None:
        import time

        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.id, metrics=metrics[start:start + 1000])

    def artifact(self, path: Path, name: str, kind: str) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.id, str(path), artifact_path=name)
        else:
            self.client.log_artifact(self.id, str(path))

    def finish(self) -> None:
        self.client.set_terminated(self.id)


class Trackers:
    """The enabled trackers of one run (possibly none); every call is a no-op without them."""

    def __init__(self, run_dir: Path, cfg: LogConfig, name: str, recipe: dict, recipe_path: Path | None = None):
        self.run_dir = Path(run_dir)
        self.state_path = self.run_dir / STATE_NAME
        state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        self.active: dict[str, object] = {}
        if cfg.wandb.enabled and cfg.wandb.mode != "disabled":
            self.active["wandb"] = _Wandb(cfg.wandb, self.run_dir, name, recipe, state.get("wandb"))
        if cfg.mlflow.enabled:
            self.active["mlflow"] = _Mlflow(cfg.mlflow, self.run_dir, name, recipe, state.get("mlflow"))
        if self.active:
            self.state_path.write_text(json.dumps({k: t.id for k, t in self.active.items()}, indent=1))
            if recipe_path is not None and recipe_path.is_file():
                for tracker in self.active.values():
                    tracker.artifact(recipe_path, "recipe", "recipe")

    def __bool__(self) -> bool:
        return bool(self.active)

    def log(self, row: dict) -> None:
        if self.active:
            values = _numeric(row)
            for tracker in self.active.values():
                tracker.log(int(float(row["step"])), values)

    def artifact(self, path: Path, name: str, kind: str = "model") -> None:
        for tracker in self.active.values():
            tracker.artifact(Path(path), name, kind)

    def finish(self) -> None:
        for tracker in self.active.values():
            tracker.finish()
        self.active = {}


def log_config_of(run_dir: Path) -> tuple[LogConfig, str, dict, Path] | None:
    """(log config, run name, plain resolved recipe, its path) from <run>/recipe.yaml; None without one."""
    import yaml

    recipe_path = Path(run_dir) / "recipe.yaml"
    if not recipe_path.is_file():
        return None
    plain = yaml.safe_load(recipe_path.read_text(encoding="utf-8")) or {}
    from engine.training.typed_yaml import build_dataclass
    cfg = build_dataclass(LogConfig, plain.get("log") or {}, {}, "log")
    return cfg, str((plain.get("run") or {}).get("name") or Path(run_dir).name), plain, recipe_path


_OPEN: dict[Path, Trackers] = {}


def open_trackers(run_dir: Path) -> Trackers | None:
    """The trackers the run folder's resolved recipe enables (None when it enables none). They stay open
    after the metrics writer closes, for the export at the end of the run (publish_artifact), and are
    finished then, or when the process exits."""
    key = Path(run_dir).resolve()
    if key in _OPEN:
        return _OPEN[key]
    found = log_config_of(run_dir)
    if found is None:
        return None
    cfg, name, plain, recipe_path = found
    if not (cfg.wandb.enabled and cfg.wandb.mode != "disabled") and not cfg.mlflow.enabled:
        return None
    trackers = _OPEN[key] = Trackers(run_dir, cfg, name, plain, recipe_path)
    return trackers


def close_trackers(run_dir: Path | None = None) -> None:
    """Finish the trackers of one run folder (every open one when None)."""
    keys = list(_OPEN) if run_dir is None else [Path(run_dir).resolve()]
    for key in keys:
        trackers = _OPEN.pop(key, None)
        if trackers is not None:
            trackers.finish()


atexit.register(close_trackers)


def tensorboard_enabled(run_dir: Path) -> bool:
    found = log_config_of(run_dir)
    return True if found is None else found[0].tensorboard


def publish_artifact(run_dir: Path, folder: Path, name: str, kind: str = "model") -> None:
    """Hand a folder (e.g. the run's export folder, engine.export_card) to the run's trackers, if any."""
    trackers = open_trackers(Path(run_dir))
    if trackers:
        try:
            trackers.artifact(Path(folder), name, kind)
        finally:
            close_trackers(run_dir)
