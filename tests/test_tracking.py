"""wandb (offline mode) and MLflow (a local file store) receive the metrics.csv rows, the resolved recipe and
the exported encoder (engine.training.tracking), through the MetricsWriter the training loop already uses;
a resumed run continues the same tracker runs; TensorBoard stays the default. No network."""
from __future__ import annotations

import csv
import glob
import json
import struct
from pathlib import Path

import pytest

from engine.recipe import dump_recipe, load_recipe
from engine.training.metrics import MetricsWriter
from engine.export_card import write_export_folder
from engine.training.tracking import close_trackers, publish_artifact

wandb = pytest.importorskip("wandb", reason="the tracking extra is not installed (pip install -e '.[tracking]')")
mlflow = pytest.importorskip("mlflow", reason="the tracking extra is not installed (pip install -e '.[tracking]')")


def _recipe(tmp_path: Path, **log):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps({
        "run": {"name": "tracked", "out_dir": str(tmp_path / "runs"), "seed": 1},
        "model": {"preset": "tiny", "img_size": 32, "num_frames": 4, "patch_size": 8, "tubelet_size": 2},
        "predictor": {"preset": "tiny"},
        "data": {"datasets": [{"root": str(tmp_path / "shards" / "synth-ucf")}]},
        "log": log}))
    return load_recipe(path, check_files=False)


def _rows(n0: int, n1: int) -> list[dict]:
    return [{"step": s, "loss": 1.0 / s + 1e-9 * s, "lr": 1e-3 * s, "time.wall": 0.25, "clips_per_s": 16.0 / s}
            for s in range(n0, n1 + 1)]


def _wandb_records(run_dir: Path):
    """Records of the offline runs' .wandb files (wandb's LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    for path in sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))):
        data = Path(path).read_bytes()
        assert data[:4] == b":W&B"
        pos, block, buf = 7, 32768, b""
        while pos + 7 <= len(data):
            left = block - pos % block
            if left < 7:
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if length == 0 and kind == 0:
                break
            buf += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a full record, or the last piece of one
                record = wandb_internal_pb2.Record()
                record.ParseFromString(buf)
                buf = b""
                yield record


def test_wandb_and_mlflow_get_the_same_rows_recipe_and_export(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where wandb would stage artifacts (~/.local/share/wandb)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("WANDB_DATA_DIR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = _recipe(tmp_path, wandb={"enabled": True, "mode": "offline", "project": "p"},
                     mlflow={"enabled": True, "experiment": "e"})
    run_dir = recipe.run_dir
    dump_recipe(recipe, run_dir / "recipe.yaml")
    writer = MetricsWriter(run_dir, enabled=True, resume_step=None)
    for row in _rows(1, 3):
        writer.write(row)
    writer.close()
    # a resume at step 2: the same tracker runs continue (wandb resumes its id, MLflow its run)
    ids = json.loads((run_dir / "tracking.json").read_text())
    close_trackers(run_dir)
    writer = MetricsWriter(run_dir, enabled=True, resume_step=2)
    for row in _rows(3, 4):
        writer.write(row)
    writer.close()
    assert json.loads((run_dir / "tracking.json").read_text()) == ids
    from engine.models import VisionTransformer
    folder = write_export_folder(VisionTransformer(recipe.model), recipe.model, run_dir / "export", recipe=recipe,
                                 weights=run_dir / "encoder.safetensors", step=4, trained_encoder="target_encoder",
                                 run="tracked")
    publish_artifact(run_dir, folder, "tracked-encoder")
    with open(run_dir / "metrics.csv", newline="") as handle:
        csv_rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    assert [row["step"] for row in csv_rows] == [1, 2, 3, 4]

    client = mlflow.tracking.MlflowClient((run_dir / "mlruns").resolve().as_uri())
    run = client.get_run(ids["mlflow"])
    assert run.info.status == "FINISHED" and run.data.params["model.embed_dim"] == str(recipe.model.embed_dim)
    assert run.data.params["data.datasets.0.root"] == str(tmp_path / "shards" / "synth-ucf")
    for key in ("loss", "lr", "time.wall", "clips_per_s"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(ids["mlflow"], key))
        expected = [(int(r["step"]), r[key]) for r in csv_rows]
        if key == "loss":  # step 3 was logged before and after the resume: the later value is the csv's
            assert [h for h in history if h[0] != 3] == [e for e in expected if e[0] != 3]
            assert (3, csv_rows[2]["loss"]) in history
        else:
            assert sorted(set(history)) == expected
    artifacts = {a.path for a in client.list_artifacts(ids["mlflow"])}
    assert "recipe.yaml" in artifacts and "tracked-encoder" in artifacts
    exported = {a.path for a in client.list_artifacts(ids["mlflow"], "tracked-encoder")}
    assert {"tracked-encoder/model.safetensors", "tracked-encoder/config.json", "tracked-encoder/README.md"} <= exported

    history, configs, artifact_files = {}, [], []
    for record in _wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history[int(items["_step"])] = items
        elif kind == "run":
            assert record.run.run_id == ids["wandb"]
            configs += [i.key for i in record.run.config.update]
        elif kind == "artifact":
            artifact_files += [m.path for m in record.artifact.manifest.contents]
    assert sorted(history) == [1, 2, 3, 4]
    for row in csv_rows:
        logged = history[int(row["step"])]
        assert all(logged[key] == row[key] for key in ("loss", "lr", "time.wall", "clips_per_s"))
    assert {"model", "data", "log"} <= set(configs)
    assert "recipe.yaml" in artifact_files and "model.safetensors" in artifact_files
    # what an offline `wandb sync` uploads later is kept with the run, not in the home folder
    assert not (tmp_path / "home" / ".local" / "share" / "wandb").exists()
    staged = [p.name for p in (run_dir / "wandb" / "data").rglob("*") if p.is_file()]
    assert len(staged) >= 2, staged  # the recipe's and the export's files


def test_tensorboard_stays_default_and_nothing_else_without_options(tmp_path):
    recipe = _recipe(tmp_path)
    dump_recipe(recipe, recipe.run_dir / "recipe.yaml")
    writer = MetricsWriter(recipe.run_dir, enabled=True, resume_step=None)
    writer.write(_rows(1, 1)[0])
    writer.close()
    assert writer.trackers is None and (recipe.run_dir / "tensorboard").is_dir()
    assert not (recipe.run_dir / "tracking.json").exists() and not (recipe.run_dir / "wandb").exists()
    off = _recipe(tmp_path / "off", tensorboard=False)
    dump_recipe(off, off.run_dir / "recipe.yaml")
    MetricsWriter(off.run_dir, enabled=True, resume_step=None).close()
    assert not (off.run_dir / "tensorboard").exists()


def _drawn_figure(monkeypatch, metrics_csv: Path, out_png: Path):
    """plot_losses' figure, as it was saved."""
    from matplotlib.figure import Figure

    from engine.training.metrics import plot_losses
    saved = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k))[1])
    plot_losses(metrics_csv, out_png)
    return saved[-1]


def test_loss_curve_shows_a_term_equal_to_the_total(tmp_path, monkeypatch):
    rows = [{"step": s, "loss": 1.0 / s, "loss.pred": 1.0 / s, "loss.ctx": 1.0 / s + 1e-4, "lr": 0.1}
            for s in range(1, 11)]
    metrics_csv = tmp_path / "run" / "metrics.csv"
    metrics_csv.parent.mkdir()
    with open(metrics_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    figure = _drawn_figure(monkeypatch, metrics_csv, tmp_path / "loss_curve.png")
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    lines = {line.get_label(): (ax, line) for ax in figure.axes for line in ax.get_lines()}
    total = next(label for label in lines if label.startswith("loss") and "." not in label)
    assert {total, "loss.pred", "loss.ctx"} == set(lines)
    for one, other in (("loss.pred", total), ("loss.pred", "loss.ctx")):  # equal or nearly equal curves
        (ax_a, a), (ax_b, b) = lines[one], lines[other]
        assert ax_a is not ax_b or a.get_linestyle() != b.get_linestyle(), f"{one} hides under {other}"


def test_progress_bar_shows_the_step_it_counts(monkeypatch):
    """At n/total the bar's postfix is step n's loss (it used to show step n-1's)."""
    import io
    import re
    from types import SimpleNamespace

    from tqdm import tqdm

    from engine.train import Trainer
    out = io.StringIO()
    trainer = SimpleNamespace(bar=tqdm(total=4, file=out, mininterval=0, miniters=1, ncols=200))
    for step in range(1, 5):
        row = {"step": step, "loss": step / 10, "lr": 1e-3, "clips_per_s": 1.0, "data_stall": 0.0, "step_applied": 1}
        Trainer.report(trainer, row, {})
    trainer.bar.close()
    shown = re.findall(r"(\d)/4 \[[^\]]*loss=([\d.]+)", out.getvalue())
    assert shown and all(float(loss) == int(n) / 10 for n, loss in shown), shown
    assert {int(n) for n, _ in shown} >= {1, 2, 3, 4}
