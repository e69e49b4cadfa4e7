"""The training loop end to end on CPU under DeepSpeed: loss goes down with 1 and 2 processes, a killed
run resumes bit-exactly, a kill while a checkpoint is being written leaves the previous one usable, a NaN
step is skipped and counted, SIGTERM checkpoints and exits cleanly, and the export loads back.

Four single-process runs and one two-process run share a tiny recipe (ViT 64-d, 64 tokens):
  A  `deepspeed --num_gpus 1`: 20 steps straight, NaN injected into step 7.
  B  `python`: the same run, SIGKILLed while writing its step-15 checkpoint (after step 10's completed).
  C  `python --resume auto`: continues B from step 10 to 20.       A and B+C must agree bit for bit.
  D  `deepspeed --num_gpus 2`: SIGTERM to the launcher mid-run -> checkpoint, clean exit; loss went down.
  E  `python`: NaN from step 3 on -> 3 in a row stop the run with a checkpoint of the last good weights.
  F  `deepspeed --num_gpus 2`: 6 steps straight; G the same SIGKILLed while writing its step-6 checkpoint;
     H G resumed from step 3 to 6.                                   F and G+H must agree bit for bit.
  I  `python` x 2 at once: a variant without EMA target (kinematic), with and without paper_compat: the
     export is the online encoder, or (paper_compat) the untouched EMA copy.
Every launch gets a free port (proc_helpers.free_port): two suites can run at once.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from proc_helpers import free_port, wait_until  # noqa: E402

pytestmark = pytest.mark.slow  # DeepSpeed start-up: ~4 s of CPU per process, much more wall time on a busy machine

STEPS = 20
NAN_STEP = 7  # 1-based, as in metrics.csv

# Runs engine.train.main with two test-only faults: a NaN loss at one step and a SIGKILL of this very
# process as soon as anything is written into a chosen checkpoint folder.
WRAPPER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    import torch
    from engine.jepa import JEPA
    import engine.train as train

    nan_spec = os.environ.get("TEST_NAN_STEP", "0")  # "7": step 7 only; "2-": every step from 2 on (1-based)
    nan_step = int(nan_spec.rstrip("-")) - 1
    real_forward = JEPA.forward
    def forward(self, video, masks, step, *args, **kwargs):
        losses = real_forward(self, video, masks, step, *args, **kwargs)
        if step == nan_step or (nan_spec.endswith("-") and step >= nan_step):
            losses["total"] = losses["total"] * float("nan")
        return losses
    JEPA.forward = forward

    kill_marker = os.environ.get("TEST_KILL_WRITING")
    if kill_marker:
        real_save = torch.save
        def save(obj, f, *args, **kwargs):
            if kill_marker in str(f):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)
        torch.save = save
    sys.exit(train.main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from data_fixtures import FixtureSpec, write_dataset
    root = tmp_path_factory.mktemp("train")
    shards = write_dataset(root / "shards", FixtureSpec(dataset="tiny", num_samples=16, num_frames=16,
                                                        height=32, width=32, samples_per_shard=8))
    recipe = {
        "run": {"name": "straight", "out_dir": str(root / "runs"), "seed": 3},
        "model": {"preset": "tiny", "img_size": 32, "num_frames": 8, "patch_size": 8, "tubelet_size": 2},
        "predictor": {"preset": "tiny"},
        "objective": {"variant": "fwm"},
        "loss": {"context_loss": {"lambda_start": 0, "lambda_end": 10}},
        "data": {"datasets": [{"root": str(shards), "frame_step": 1}], "num_workers": 1, "num_threads": 1},
        "train": {"steps": STEPS, "global_batch": 4, "micro_batch": 2, "checkpoint_every": 5, "keep_last": 3,
                  "progress_bar": False},
        "optim": {"lr": 3.0e-3, "start_lr": 1.0e-3, "final_lr": 3.0e-3, "warmup_steps": 3},
        "ema": {"momentum": 0.99, "final_momentum": 0.99},
        "parallel": {"zero_stage": 2, "cpu_threads": 1},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    wrapper = root / "wrapper.py"
    wrapper.write_text(WRAPPER.format(repo=str(REPO)))
    return root, path, wrapper


def _env(**extra):
    # MASTER_PORT: a plain `python -m engine.train` otherwise picks 29500 + pid % 1000, which a run of another
    # suite on the same machine can hold at the same time. The deepspeed launcher sets it from --master_port.
    env = dict(os.environ)
    env.update({"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                "MASTER_PORT": str(free_port())})
    env.update(extra)
    return env


def _start(cmd, **env):
    """Start in a process group of its own, output to temporary files; finish with _finish."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(**env), stdout=out, stderr=err, text=True,
                            start_new_session=True)
    return cmd, proc, out, err


def _finish(started, timeout=300) -> subprocess.CompletedProcess:
    """Wait for a started run; afterwards SIGKILL whatever of its group is left (DALI's reader worker
    processes outlive a SIGKILLed parent and would hold pipes open). A run past `timeout` fails with its
    output rather than a bare TimeoutExpired."""
    cmd, proc, out, err = started
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(proc)
    with out, err:
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    assert not timed_out, (f"{' '.join(map(str, cmd[:4]))} ... still running after {timeout} s (killed): "
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result


def _run(cmd, timeout=300, **env):
    """Run to the end (see _start and _finish)."""
    return _finish(_start(cmd, **env), timeout)


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait()


def _deepspeed():
    return [str(Path(sys.executable).parent / "deepspeed")]


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    import csv
    with open(run_dir / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _module_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint / "ds" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]


def _adam_steps(checkpoint: Path) -> int:
    optim = torch.load(checkpoint / "ds" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", map_location="cpu",
                       weights_only=False)["optimizer_state_dict"]
    steps = {int(s["step"]) for s in optim["base_optimizer_state"]["state"].values()}
    assert len(steps) == 1, steps
    return steps.pop()


@pytest.fixture(scope="module")
def straight(setup):
    root, recipe, wrapper = setup
    result = _run(_deepspeed() + ["--num_gpus", "1", "--master_port", str(free_port()), str(wrapper), "--recipe", str(recipe)],
                  TEST_NAN_STEP=str(NAN_STEP))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "runs" / "straight", result


def test_single_process_deepspeed_run_trains_and_skips_the_nan_step(straight):
    run_dir, result = straight
    rows = _metrics(run_dir)
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    applied = [int(r["step_applied"]) for r in rows]
    assert applied == [0 if s == NAN_STEP else 1 for s in range(1, STEPS + 1)]
    assert [int(r["skipped_steps"]) for r in rows] == [int(s >= NAN_STEP) for s in range(1, STEPS + 1)]
    assert "non-finite loss, step skipped (1 skipped so far" in result.stderr
    # The skipped step made no Adam update: 19 applied steps in the optimizer state.
    assert _adam_steps(run_dir / "checkpoints" / "step_00000020") == STEPS - 1
    losses = [float(r["loss.pred"]) for r in rows if r["step_applied"] == "1"]
    assert sum(losses[-4:]) / 4 < 0.9 * sum(losses[:4]) / 4, losses
    for column in ("loss", "loss.ctx", "loss.fwm_static", "loss.fwm_orth", "lambda_ctx", "lr", "time.data",
                   "time.compute", "time.optimizer", "time.ema", "time.wall", "clips_per_s", "tokens_per_s",
                   "data_stall", "collapse.rank", "collapse.within_share", "collapse.pooled_cosine",
                   "collapse.feature_std", "time.collapse"):
        assert column in rows[0], column
    # The collapse alarm measured steps 0-4 (its random-init reference) and 10 (collapse.every=10).
    assert [int(r["step"]) for r in rows if r["collapse.rank"]] == [1, 2, 3, 4, 5, 11]
    assert "collapse alarm: " in result.stdout  # the summary line (quiet, or its warnings)
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    assert (run_dir / "collapse.png").stat().st_size > 1000
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "recipe.yaml").is_file()
    # keep_last=3: checkpoints 10, 15, 20 remain.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "latest", "step_00000010", "step_00000015", "step_00000020"]


def test_kill_while_writing_then_resume_is_bit_exact(setup, straight):
    from engine.training.checkpoint import latest_checkpoint
    root, recipe, wrapper = setup
    straight_dir, _ = straight
    name = ["--set", "run.name=killed"]
    killed = _run([sys.executable, str(wrapper), "--recipe", str(recipe), *name],
                  TEST_NAN_STEP=str(NAN_STEP), TEST_KILL_WRITING="step_00000015.partial")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = root / "runs" / "killed"
    ckpts = run_dir / "checkpoints"
    # The kill hit the step-15 checkpoint mid-write; step 10 is the newest complete one, intact.
    assert (ckpts / "step_00000015.partial").is_dir() and not (ckpts / "step_00000015.partial" / "COMPLETE").exists()
    assert latest_checkpoint(ckpts) == ckpts / "step_00000010"
    assert (ckpts / "latest").read_text() == "step_00000010"

    resumed = _run([sys.executable, str(wrapper), "--recipe", str(recipe), *name, "--resume", "auto"],
                   TEST_NAN_STEP=str(NAN_STEP))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step_00000010 at step 10" in resumed.stderr

    # Same losses at every step (the CSV holds exact reprs), same weights, same EMA target, same export.
    columns = ("step", "loss", "loss.pred", "loss.ctx", "loss.fwm_static", "loss.fwm_orth", "lr", "step_applied")
    straight_rows = [tuple(r[c] for c in columns) for r in _metrics(straight_dir)]
    resumed_rows = [tuple(r[c] for c in columns) for r in _metrics(run_dir)]
    assert resumed_rows == straight_rows
    a, b = _module_state(straight_dir / "checkpoints" / "step_00000020"), _module_state(ckpts / "step_00000020")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ema_a = torch.load(straight_dir / "checkpoints" / "step_00000020" / "trainer.pt", weights_only=False)["ema_target"]
    ema_b = torch.load(ckpts / "step_00000020" / "trainer.pt", weights_only=False)["ema_target"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert not (ckpts / "step_00000015.partial").exists()  # the killed writer's leftovers were cleaned up

    from engine.export import export_checkpoint, load_encoder, read_metadata
    encoder = load_encoder(run_dir / "encoder.safetensors")
    from_checkpoint = load_encoder(export_checkpoint(ckpts / "step_00000020", root / "from_ckpt.safetensors"))
    assert all(torch.equal(p, from_checkpoint.state_dict()[k]) for k, p in encoder.state_dict().items())
    assert read_metadata(run_dir / "encoder.safetensors")["trained_encoder"] == "target_encoder"
    assert all(torch.equal(p, ema_b[k]) for k, p in encoder.state_dict().items())
    with torch.no_grad():
        feats = encoder.forward_eval(torch.randn(1, 3, 8, 32, 32))
    assert feats.shape == (1, 4 * 4 * 4, 64) and torch.isfinite(feats).all()


def test_two_process_deepspeed_run_trains_and_stops_cleanly_on_sigterm(setup):
    root, recipe, _ = setup
    run_dir = root / "runs" / "two"
    cmd = _deepspeed() + ["--num_gpus", "2", "--master_port", str(free_port()), str(REPO / "engine" / "train.py"),
                          "--recipe", str(recipe), "--set", "run.name=two", "--set", "train.steps=200",
                          "--set", "train.global_batch=4", "--set", "train.checkpoint_every=1000"]
    log = root / "two.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            # Start-up takes tens of seconds on a busy 2-core machine: 300 s bounds a hang, it is not a duration.
            try:
                wait_until(lambda: (run_dir / "metrics.csv").exists() and len(_metrics(run_dir)) >= 12, proc, 300,
                           "12 steps were logged", interval=0.2)
            except AssertionError as error:
                raise AssertionError(f"{error}; output: {log.read_text()[-3000:]}") from None
            # `kill <launcher>`: the per-node launcher forwards SIGTERM to every rank.
            import psutil
            launchers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                         if "deepspeed.launcher.launch" in " ".join(p.cmdline())]
            assert len(launchers) == 1, launchers
            launchers[0].send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"still running 180 s after SIGTERM: {log.read_text()[-3000:]}") from None
        finally:
            _kill_group(proc)
    output = log.read_text()
    assert "stopped by SIGTERM at step" in output, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    rows = _metrics(run_dir)
    last = int(rows[-1]["step"])
    assert 12 <= last < 200
    ckpt = run_dir / "checkpoints" / f"step_{last:08d}"
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "rank_00001.pt").is_file()
    assert (ckpt / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
    losses = [float(r["loss.pred"]) for r in rows]
    assert sum(losses[-4:]) / 4 < 0.9 * sum(losses[:4]) / 4, losses


def test_non_finite_losses_in_a_row_stop_the_run_with_a_checkpoint(setup):
    root, recipe, wrapper = setup
    result = _run([sys.executable, str(wrapper), "--recipe", str(recipe), "--set", "run.name=diverged",
                   "--set", "train.max_nonfinite_in_row=3"], TEST_NAN_STEP="3-")
    assert result.returncode == 3, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("stopped: 3 non-finite losses in a row at step 5"), last_line
    ckpt = root / "runs" / "diverged" / "checkpoints" / "step_00000005"
    assert (ckpt / "COMPLETE").is_file()
    assert _adam_steps(ckpt) == 2  # steps 3-5 were dropped: the checkpoint holds the last good weights


def _tensors(obj, path="") -> dict[str, torch.Tensor]:
    """Every tensor in a nested dict/list structure (a DeepSpeed state file), by its path."""
    if isinstance(obj, torch.Tensor):
        return {path: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    found = {}
    for key, value in items:
        found.update(_tensors(value, f"{path}/{key}"))
    return found


def _same_tensors(a: Path, b: Path) -> None:
    ta = _tensors(torch.load(a, map_location="cpu", weights_only=False))
    tb = _tensors(torch.load(b, map_location="cpu", weights_only=False))
    assert ta.keys() == tb.keys() and ta, (a.name, sorted(ta.keys() ^ tb.keys()))
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, (a.name, different[:5])


def test_two_process_kill_while_writing_then_resume_is_bit_exact(setup):
    """F, G, H: 6 steps on 2 ranks (ZeRO-2, so each rank holds its own optimizer partition), once straight and
    once SIGKILLed while writing the step-6 checkpoint then resumed from step 3 (mid-epoch: 4 steps an epoch)."""
    from engine.training.checkpoint import latest_checkpoint
    root, recipe, wrapper = setup

    def launch(name, *extra, **env):  # one at a time: two 2-rank runs at once only thrash 2 cores
        return _run(_deepspeed() + ["--num_gpus", "2", "--master_port", str(free_port()), str(wrapper),
                                    "--recipe", str(recipe), "--set", f"run.name={name}", "--set", "train.steps=6",
                                    "--set", "train.checkpoint_every=3", *extra], timeout=600, **env)

    straight = launch("two_straight")
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    killed = launch("two_killed", TEST_KILL_WRITING="step_00000006.partial")
    assert killed.returncode != 0, killed.stdout[-3000:] + killed.stderr[-3000:]
    ckpts = root / "runs" / "two_killed" / "checkpoints"
    assert (ckpts / "step_00000006.partial").is_dir() and not (ckpts / "step_00000006.partial" / "COMPLETE").exists()
    assert latest_checkpoint(ckpts) == ckpts / "step_00000003"
    resumed = launch("two_killed", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "step_00000003 at step 3" in resumed.stdout + resumed.stderr

    a, b = root / "runs" / "two_straight", root / "runs" / "two_killed"
    columns = ("step", "loss", "loss.pred", "loss.ctx", "loss.fwm_static", "loss.fwm_orth", "lr", "step_applied")
    assert [tuple(r[c] for c in columns) for r in _metrics(b)] == [tuple(r[c] for c in columns) for r in _metrics(a)]
    assert len(_metrics(a)) == 6
    ca, cb = a / "checkpoints" / "step_00000006", b / "checkpoints" / "step_00000006"
    # The module (the same on both ranks), each rank's ZeRO optimizer partition, the EMA target, and each
    # rank's loader position and RNG state.
    for name in ("ds/mp_rank_00_model_states.pt", "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                 "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt", "trainer.pt", "rank_00000.pt", "rank_00001.pt"):
        _same_tensors(ca / name, cb / name)
    for name in ("rank_00000.json", "rank_00001.json"):
        assert (ca / name).read_text() == (cb / name).read_text(), name
    assert not (ckpts / "step_00000006.partial").exists()


@pytest.fixture(scope="module")
def no_ema_runs(setup):
    """I: 2 steps of the kinematic variant (EMA target off, the online encoder trained), with and without
    paper_compat; both runs at once (one thread each)."""
    root, recipe, _ = setup
    started = {}
    for compat in (False, True):
        name = f"no_ema_compat_{str(compat).lower()}"
        started[compat] = _start([sys.executable, "-m", "engine.train", "--recipe", str(recipe),
                                  "--set", f"run.name={name}", "--set", "objective.variant=kinematic",
                                  "--set", f"loss.paper_compat={str(compat).lower()}", "--set", "model.depth=1",
                                  "--set", "train.steps=2", "--set", "train.checkpoint_every=2"])
    results = {compat: _finish(run) for compat, run in started.items()}
    for compat, result in results.items():
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {compat: root / "runs" / f"no_ema_compat_{str(compat).lower()}" for compat in results}


@pytest.mark.parametrize("paper_compat, expected", [(False, "encoder"), (True, "target_encoder")])
def test_export_of_a_run_without_ema_target(no_ema_runs, tmp_path, paper_compat, expected):
    """Without an EMA target the trained encoder is the online one: the run's export and an export of its
    checkpoint hold it. paper_compat reproduces the released evaluation, which took the untouched EMA copy."""
    import json

    from engine.export import export_checkpoint, load_encoder, read_metadata
    run_dir = no_ema_runs[paper_compat]
    ckpt = run_dir / "checkpoints" / "step_00000002"
    assert json.loads((ckpt / "trainer.json").read_text())["trained_encoder"] == expected
    online = {k[len("encoder."):]: v for k, v in _module_state(ckpt).items() if k.startswith("encoder.")}
    untouched = torch.load(ckpt / "trainer.pt", weights_only=True)["ema_target"]
    assert online.keys() == untouched.keys()
    assert not all(torch.equal(online[k], untouched[k]) for k in online)  # training moved the online encoder
    want = online if expected == "encoder" else untouched
    for path in (run_dir / "encoder.safetensors", export_checkpoint(ckpt, tmp_path / "from_checkpoint.safetensors")):
        assert read_metadata(path)["trained_encoder"] == expected
        state = load_encoder(path).state_dict()
        assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want), path.name
