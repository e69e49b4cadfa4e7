"""What a user meets around a run's files (issue 13): a refused resume leaves the run untouched, a
checkpoint carries its own recipe and export reads it, DeepSpeed's zero_to_fp32.py works in a checkpoint as
shipped, a `deepspeed` launcher run compiles nothing and leaves nothing in /dev/shm, and SIGINT/SIGTERM
checkpoint and exit 130/143. Issue 18: a copy of its checkpoint with a crafted file, or from another machine,
is refused by `--resume` before anything runs or is written, and still exports without unpickling anything.

One 2-step `deepspeed --num_gpus 1` run of a one-block ViT is shared by the tests that read its files.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from proc_helpers import free_port, wait_gone, wait_until  # noqa: E402
from test_train import _deepspeed, _env, _kill_group, _metrics, _module_state, _run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # DeepSpeed start-up: several seconds of CPU per process


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from data_fixtures import FixtureSpec, write_dataset
    root = tmp_path_factory.mktemp("reliability")
    shards = write_dataset(root / "shards", FixtureSpec(dataset="tiny", num_samples=8, num_frames=16, height=32,
                                                        width=32, samples_per_shard=8))
    recipe = {
        "run": {"name": "tiny", "out_dir": str(root / "runs"), "seed": 3},
        "model": {"preset": "tiny", "img_size": 32, "num_frames": 8, "patch_size": 8, "tubelet_size": 2, "depth": 1},
        "predictor": {"preset": "tiny", "depth": 1},
        "objective": {"variant": "baseline"},
        "data": {"datasets": [{"root": str(shards), "frame_step": 1}], "num_workers": 1, "num_threads": 1},
        "train": {"steps": 2, "global_batch": 2, "micro_batch": 2, "checkpoint_every": 1, "keep_last": 3,
                  "progress_bar": False},
        "ema": {"momentum": 0.9, "final_momentum": 0.9},
        "parallel": {"zero_stage": 2, "cpu_threads": 1},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return root, path


def _shm_buffers(port: int) -> set[str]:
    """The shm buffers of the run on `port` (their names carry the master port: another suite's are not ours)."""
    return {p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*")}


@pytest.fixture(scope="module")
def launched(tiny):
    root, recipe = tiny
    extensions = root / "torch_extensions"  # empty: a JIT build would land here
    port = free_port()
    before = _shm_buffers(port)
    result = _run(_deepspeed() + ["--num_gpus", "1", "--master_port", str(port), str(REPO / "engine" / "train.py"),
                                  "--recipe", str(recipe)], TORCH_EXTENSIONS_DIR=str(extensions))
    left = _shm_buffers(port) - before
    for name in left:  # do not let a failing run litter the machine
        (Path("/dev/shm") / name).unlink(missing_ok=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "runs" / "tiny", result, left, extensions


def test_deepspeed_launcher_run_leaves_no_shm_buffer(launched):
    _, _, left, _ = launched
    assert not left, f"left in /dev/shm: {sorted(left)}"


def test_training_compiles_no_torch_extension(launched):
    _, result, _, extensions = launched
    built = sorted(p.name for p in extensions.iterdir()) if extensions.exists() else []
    assert built == [], built
    assert "built successfully" not in result.stdout + result.stderr


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_refused_resume_names_the_key_and_leaves_the_run_untouched(tiny, launched):
    _, recipe = tiny
    run_dir, _, _, _ = launched
    before = _snapshot(run_dir)
    result = _run([sys.executable, "-m", "engine.train", "--recipe", str(recipe), "--resume", "auto",
                   "--set", "model.depth=2"], timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    err = result.stderr.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("error: --resume auto: model.depth was 1 in ") and ", now 2;" in err, err
    assert "checkpoints/step_00000002/recipe.yaml" in err, err
    assert _snapshot(run_dir) == before


def test_checkpoint_carries_its_recipe_and_export_reads_it(tmp_path, launched):
    from engine.export import export_checkpoint, load_encoder, main as export_main
    run_dir, _, _, _ = launched
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    ckpt = run / "checkpoints" / "step_00000002"
    assert yaml.safe_load((ckpt / "recipe.yaml").read_text())["model"]["depth"] == 1
    # What a later run of the same name could leave in the run folder: export must not read it.
    (run / "recipe.yaml").write_text("model: {depth: 7}\n")
    encoder = load_encoder(export_checkpoint(ckpt, tmp_path / "enc.safetensors"))
    ema = torch.load(ckpt / "trainer.pt", weights_only=False)["ema_target"]
    assert len(encoder.blocks) == 1 and all(torch.equal(v, ema[k]) for k, v in encoder.state_dict().items())
    # A checkpoint without its own recipe (written before they carried one) is a one-line error naming --recipe.
    (ckpt / "recipe.yaml").unlink()
    assert export_main([str(ckpt), "--out", str(tmp_path / "x.safetensors")]) == 2


def test_shipped_zero_to_fp32_yields_the_online_weights_not_the_export(tmp_path, launched):
    run_dir, _, _, _ = launched
    ckpt = run_dir / "checkpoints" / "step_00000002"
    # Exactly as DeepSpeed documents it: from inside the checkpoint folder, no -t, default options.
    result = subprocess.run([sys.executable, "zero_to_fp32.py", ".", str(tmp_path / "fp32")], cwd=ckpt,
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = torch.load(tmp_path / "fp32" / "pytorch_model.bin", weights_only=False)
    online = _module_state(ckpt)
    assert {k.split(".")[0] for k in state} == {"encoder", "predictor"}  # the JEPA module (baseline: no heads)
    assert state.keys() == online.keys() and all(torch.equal(state[k], online[k]) for k in state)
    # ... which is the online encoder: the exported encoder (EMA target) is a different set of weights.
    ema = torch.load(ckpt / "trainer.pt", weights_only=False)["ema_target"]
    assert any(not torch.equal(state[f"encoder.{k}"], v) for k, v in ema.items())


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_checkpoints_then_exits_with_the_shells_status(tiny, sig, code):
    root, recipe = tiny
    name = f"signal_{sig.name}"
    run_dir = root / "runs" / name
    cmd = [sys.executable, "-m", "engine.train", "--recipe", str(recipe), "--set", f"run.name={name}",
           "--set", "train.steps=1000", "--set", "train.checkpoint_every=1000", "--set", "train.export_at_end=false"]
    log = root / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            # Start-up takes tens of seconds on a busy 2-core machine: 300 s bounds a hang, it is not a duration.
            try:
                wait_until(lambda: (run_dir / "metrics.csv").exists() and len(_metrics(run_dir)) >= 2, proc, 300,
                           "2 steps were logged", interval=0.2)
            except AssertionError as error:
                raise AssertionError(f"{error}; output: {log.read_text()[-3000:]}") from None
            # As Ctrl-C in a terminal (SIGINT) or `kill` from a scheduler: the whole process group.
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"still running 180 s after {sig.name}: {log.read_text()[-3000:]}") from None
        finally:
            _kill_group(proc)
    output = log.read_text()
    assert proc.returncode == code, output[-3000:]
    assert f"stopped by {sig.name} at step" in output and "Traceback" not in output, output[-3000:]
    last = int(_metrics(run_dir)[-1]["step"])
    assert 2 <= last < 1000
    assert (run_dir / "checkpoints" / f"step_{last:08d}" / "COMPLETE").is_file()


# -- checkpoints from elsewhere (issue 18): nothing unpickled, nothing created -------------------------------

class _CreatesFile:
    """Unpickling this calls open(path, "w"): the file exists afterwards iff something unpickled it."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _sent_copy(launched, tmp_path: Path) -> Path:
    """The run's last checkpoint as someone would send it: copied on its own into another folder."""
    run_dir, _, _, _ = launched
    return Path(shutil.copytree(run_dir / "checkpoints" / "step_00000002", tmp_path / "sent" / "step_00000002"))


@pytest.mark.parametrize("name", ["trainer.pt", "ds/mp_rank_00_model_states.pt"])
def test_resume_refuses_a_crafted_file_and_creates_nothing(tiny, launched, tmp_path, name):
    root, recipe = tiny
    sent = _sent_copy(launched, tmp_path)
    marker = tmp_path / "created-by-unpickling"
    torch.save({"format": 2, "ema_target": _CreatesFile(marker), "module": _CreatesFile(marker)}, sent / name)
    result = _run([sys.executable, "-m", "engine.train", "--recipe", str(recipe), "--resume", str(sent),
                   "--set", "run.name=crafted"], timeout=300)
    assert not marker.exists(), "the crafted file was unpickled"
    err = result.stderr.strip()
    assert result.returncode == 2 and err.count("\n") == 0, result.stdout[-2000:] + err[-3000:]
    assert err.startswith(f"error: {sent / name}: "), err
    assert not (root / "runs" / "crafted").exists()


def test_a_checkpoint_from_another_machine_exports_without_pickle_and_resume_refuses_it(tiny, launched, tmp_path,
                                                                                       monkeypatch):
    from engine.export import export_checkpoint, load_encoder
    root, recipe = tiny
    sent = _sent_copy(launched, tmp_path)
    result = _run([sys.executable, "-m", "engine.train", "--recipe", str(recipe), "--resume", str(sent),
                   "--set", "run.name=elsewhere"], timeout=300, VJEPA_CHECKPOINT_KEY=str(tmp_path / "other.key"))
    err = result.stderr.strip()
    assert result.returncode == 2 and err.count("\n") == 0, result.stdout[-2000:] + err[-3000:]
    assert f"{sent / 'ds.seal'}: sealed by another machine or key" in err and "--trust-legacy-pickle" in err, err
    assert not (root / "runs" / "elsewhere").exists()

    real_load = torch.load

    def weights_only_load(*args, **kwargs):
        assert kwargs.get("weights_only") is True, f"export unpickled {args[0]}"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", weights_only_load)
    encoder = load_encoder(export_checkpoint(sent, tmp_path / "enc.safetensors"))
    ema = real_load(sent / "trainer.pt", weights_only=True)["ema_target"]
    assert all(torch.equal(v, ema[k]) for k, v in encoder.state_dict().items())


# -- issue 22: the launcher's SIGTERM reaches the ranks, one live run per folder, setup errors before writing --

def _rank_of(runner_pid: int):
    """The rank under `deepspeed` -> `deepspeed.launcher.launch` (not the rank's own DALI worker children)."""
    import psutil
    launchers = [p for p in psutil.Process(runner_pid).children(recursive=True)
                 if "deepspeed.launcher.launch" in " ".join(p.cmdline())]
    assert len(launchers) == 1, launchers
    ranks = launchers[0].children()
    assert len(ranks) == 1, ranks
    return launchers[0], ranks[0]


def test_sigterm_to_the_deepspeed_runner_stops_the_rank_and_a_second_run_is_refused(tiny):
    """`kill <pid of deepspeed>`, as a scheduler does: the runner exits 143 at once and passes nothing on (one
    node), so the rank used to train on, unseen, while a `--resume auto` started next ran on the same folder.
    Now the rank checkpoints and exits 143 itself, and a second run is refused while the first lives."""
    from engine.training.run_lock import RunLock
    root, recipe = tiny
    name = "runner_sigterm"
    run_dir = root / "runs" / name
    sets = ["--set", f"run.name={name}", "--set", "train.steps=1000", "--set", "train.checkpoint_every=1000",
            "--set", "train.export_at_end=false"]
    cmd = _deepspeed() + ["--num_gpus", "1", "--master_port", str(free_port()), str(REPO / "engine" / "train.py"),
                          "--recipe", str(recipe), *sets]
    log = root / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            # Start-up takes tens of seconds on a busy 2-core machine: 300 s bounds a hang, it is not a duration.
            try:
                wait_until(lambda: (run_dir / "metrics.csv").exists() and len(_metrics(run_dir)) >= 2, proc, 300,
                           "2 steps were logged", interval=0.2)
            except AssertionError as error:
                raise AssertionError(f"{error}; output: {log.read_text()[-3000:]}") from None
            per_node, rank = _rank_of(proc.pid)

            # A second run on the folder while the first trains: one line naming the folder and the holder.
            second = _run([sys.executable, "-m", "engine.train", "--recipe", str(recipe), "--resume", "auto",
                           "--set", f"run.name={name}", "--set", "train.steps=3"], timeout=300)
            err = second.stderr.strip()
            assert second.returncode == 2 and err.count("\n") == 0, second.stdout[-2000:] + err[-3000:]
            assert err.startswith(f"error: {run_dir}: another run of this folder is still alive (pid {rank.pid} "), err
            assert rank.is_running() and proc.poll() is None

            proc.send_signal(signal.SIGTERM)  # the runner's PID only, not its process group
            assert proc.wait(timeout=60) == -signal.SIGTERM  # the shell's 143, at once (DeepSpeed's runner)
            assert wait_gone([rank.pid], 180) == [], f"the rank still runs 180 s after SIGTERM to the runner: " \
                                                     f"{log.read_text()[-3000:]}"
            assert wait_gone([per_node.pid], 60) == []  # it logs the rank's exit status, then exits
        finally:
            _kill_group(proc)
    output = log.read_text()
    assert "stopped by SIGTERM at step" in output and "Traceback" not in output, output[-3000:]
    assert "exits with return code = 143" in output, output[-3000:]  # the per-node launcher, on the rank's exit
    last = int(_metrics(run_dir)[-1]["step"])
    assert 2 <= last < 1000
    assert (run_dir / "checkpoints" / f"step_{last:08d}" / "COMPLETE").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", f"step_{last:08d}"]
    RunLock(run_dir).acquire().release()  # the stopped run left the folder free


@pytest.mark.parametrize("fault", ["split without rows", "missing tar"])
def test_resume_whose_data_fails_the_loaders_checks_is_one_line_and_writes_nothing(tiny, launched, tmp_path, fault):
    import json

    from test_train_input_errors import assert_one_line_refusal, broken_shards
    root, recipe = tiny
    run_dir, _, _, _ = launched
    runs = tmp_path / "runs"
    shutil.copytree(run_dir, runs / "tiny")
    dataset, named, phrase = broken_shards(root / "shards", tmp_path / "shards", fault)
    before = _snapshot(runs / "tiny")
    result = _run([sys.executable, "-m", "engine.train", "--recipe", str(recipe), "--resume", "auto",
                   "--set", f"run.out_dir={runs}", "--set", f"data.datasets=[{json.dumps(dataset)}]"], timeout=300)
    assert_one_line_refusal(result, named, phrase)
    assert _snapshot(runs / "tiny") == before  # recipe.yaml included
