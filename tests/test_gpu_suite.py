"""benchmarks/gpu: the GPU check's dry run on CPU (every command built, the CPU parts run on tiny shapes), and
the wheel parts' round trip (cut here, stashed one call at a time there, reassembled, verified, installed)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.gpu import learn as learn_module
from benchmarks.gpu import suite, wheels
from benchmarks.gpu.devinfo import gpu_slug
from proc_helpers import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the step stage runs three variants and the learn stage renders clips and trains: tens of seconds
def test_dry_run_builds_every_stage_and_runs_the_cpu_parts(tmp_path):
    out = tmp_path / "out"
    # Its train_step stage runs `python -m engine.train` three times, one after the other: on a port free now
    # rather than the trainer's own 29500 + pid % 1000, which another suite's run can hold.
    env = dict(os.environ, PYTHON=sys.executable, MASTER_PORT=str(free_port()))
    env.pop("OUT", None)
    start = time.monotonic()
    result = subprocess.run(["bash", "benchmarks/gpu/run.sh", "--dry-run", str(out), "--max-files", "8"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = out / "benchmarks" / "results"
    record = json.loads((results / "suite-dryrun.json").read_text())
    assert set(record["stages"]) == {s.name for s in suite.STAGES}
    for name, entry in record["stages"].items():
        assert entry.get("args_checked"), (name, entry)
        assert entry["status"] == ("ok" if name in ("info", "step", "kernels", "learn") else "dry"), (name, entry)
    # The GPU commands run at paper scale and name the device in every file they write.
    step_argv = record["stages"]["step"]["argv"]
    assert "--recipe-dir" not in step_argv and "--deadline-s" in step_argv
    assert record["stages"]["kernels"]["argv"][-len(suite.PAPER_KERNEL_ARGS):] == suite.PAPER_KERNEL_ARGS
    assert "--paper" in record["stages"]["deepspeed"]["argv"]
    step = json.loads((results / "train_step-dryrun.json").read_text())
    measured = {r["variant"] for r in step["results"] if "step_s" in r}
    assert measured == {"baseline", "fwm_hw_ld", "motion_guided"}
    assert any(r["kernels"] == "triton" and r["status"] == "skipped" for r in step["results"])
    kernels = json.loads((results / "kernels-dryrun.json").read_text())
    assert {r["op"] for r in kernels["results"]} == {"masked_gather", "hard_weighted_loss", "motion_mask"}
    assert kernels["peak_gbps"] and kernels["peak_kind"].startswith("measured device-to-device copy")
    # The learning figure: the winning objective trained on rendered camera clips, probed beside its references.
    learn_argv = record["stages"]["learn"]["argv"]
    assert "--deadline-s" in learn_argv and learn_argv[learn_argv.index("--device") + 1] == "cuda"
    learn = json.loads((results / "learn-dryrun.json").read_text())
    assert learn_module.variant_name(learn["variant"]) == "sigreg_small" and "--eval-online" in learn["commands"][1]
    assert set(learn["summary"]["rows"]) == {"trained", "random init", "pixels"}
    assert learn["summary"]["rows"]["random init"]["step"] == 0 < learn["summary"]["rows"]["trained"]["step"]
    assert record["stages"]["learn"]["summary"]["verdict"] == learn["summary"]["verdict"]
    # At most 8 files come back from a call: the rest (the log first) travel in one bundle.
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8 and "suite-dryrun.md" in files and "suite-dryrun-more.tar.gz" in files, files
    with tarfile.open(results / "suite-dryrun-more.tar.gz") as tar:
        assert "benchmarks/results/suite-dryrun.log" in tar.getnames()
    print(f"dry run: {seconds:.1f} s")
    assert seconds < 120


def test_every_gpu_test_file_is_run_by_a_stage():
    assert suite.gpu_test_files() == set(suite.GPU_TEST_FILES)
    stages = {s.name for s in suite.STAGES}
    assert set(suite.GPU_TEST_FILES.values()) <= stages


def test_stage_selection_keeps_the_suite_order():
    assert suite.selected("pytest,info") == ["info", "pytest"] == suite.selected("pytest")
    assert suite.selected("core") == list(suite.GROUPS["core"])
    assert suite.selected("info,data")[0] == "info" and "deepspeed" in suite.selected("info,data")
    with pytest.raises(SystemExit):
        suite.selected("nope")
    total_caps = sum(s.cap_s for s in suite.STAGES if s.name in suite.GROUPS["core"])
    assert total_caps < 8 * 60 - 60      # the first call's stages fit the 8 minutes with room to spare
    assert suite.selected("learn") == ["info", "learn"]
    # The first call (every stage) still gives the learning figure when the core stages run to their caps,
    # and the whole budget fits one 10-minute device call with a minute to spare.
    learn = next(s for s in suite.STAGES if s.name == "learn")
    assert total_caps + learn.min_s + suite.REPORT_RESERVE_S <= suite.DEFAULT_BUDGET_S <= 9 * 60


@pytest.mark.parametrize("name,slug", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                       ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA GeForce RTX 4090", "rtx4090"),
                                       ("Some New GPU", "some-new-gpu"), (None, "cpu")])
def test_gpu_slug(name, slug):
    assert gpu_slug(name) == slug


def make_wheel(folder: Path, name: str, version: str, payload: int) -> Path:
    """A real (tiny) pure-Python wheel that pip installs: package `name` with a blob of `payload` bytes."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{name}/blob.bin": random.Random(name).randbytes(payload),
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in files.items():
            zf.writestr(n, data)
        zf.writestr(f"{info}/RECORD", record)
    return path


def test_wheel_parts_round_trip(tmp_path, capsys):
    out = tmp_path / "whl"
    (out / "files").mkdir(parents=True)
    make_wheel(out / "files", "vjgpu_alpha", "1.0", 30_000)
    make_wheel(out / "files", "vjgpu_beta", "2.0", 50_000)
    make_wheel(out / "files", "vjgpu_extra", "0.1", 40_000)
    listing = tmp_path / "wheels.txt"
    listing.write_text("# test list\nalpha vjgpu_alpha==1.0 wheel first\nalpha vjgpu_beta==2.0 wheel second\n"
                       "extra vjgpu_extra==0.1 wheel optional\n")
    shards = tmp_path / "shards-gpu-mini"
    for part in wheels.SHARD_PARTS:
        (shards / part).mkdir(parents=True)
        (shards / part / "index.parquet").write_bytes(b"index of " + part.encode())
    args = SimpleNamespace(out=out, list=listing, part_mib=0.03, shards=shards, skip_download=True)
    assert wheels.prepare(args) == 0
    manifest = wheels.load_manifest(out / "parts")
    parts = [p["name"] for p in manifest["parts"]]
    assert len(parts) >= 4 and all(p["size"] <= 0.03 * 2**20 + 1 for p in manifest["parts"])
    assert [f["group"] for f in manifest["files"]] == ["alpha", "alpha", "shards", "extra"]
    assert manifest["groups"]["extra"]["required"] is False

    # The device: each call brings the manifest and one part, in any order; a damaged part is refused.
    work = tmp_path / "work"
    incoming = tmp_path / "incoming"
    damaged = incoming / "damaged"
    damaged.mkdir(parents=True)
    (damaged / "MANIFEST.json").write_bytes((out / "parts" / "MANIFEST.json").read_bytes())
    bad = bytearray((out / "parts" / parts[0]).read_bytes())
    bad[10] ^= 0xFF
    (damaged / parts[0]).write_bytes(bytes(bad))
    assert wheels.stash(damaged, work)["have"] == []
    needed_for_alpha = set(manifest["groups"]["alpha"]["parts"])
    order = parts[1:] + parts[:1]
    for i, name in enumerate(order):
        call = incoming / f"call{i}"
        call.mkdir()
        for f in ("MANIFEST.json", name):
            (call / f).write_bytes((out / "parts" / f).read_bytes())
        have = set(wheels.stash(call, work)["have"])
        status = wheels.install(work)
        assert (status["groups"]["alpha"] == "installed") == (needed_for_alpha <= have)
    assert set(status["groups"].values()) == {"installed"}
    site = Path(status["site"])
    check = subprocess.run([sys.executable, "-c", "import vjgpu_alpha, vjgpu_beta, vjgpu_extra; "
                            "print(vjgpu_alpha.VERSION, vjgpu_beta.VERSION, vjgpu_extra.VERSION)"],
                           env=dict(os.environ, PYTHONPATH=str(site)), capture_output=True, text=True)
    assert check.stdout.split() == ["1.0", "2.0", "0.1"], check.stderr
    assert (work / "data" / "shards-gpu-mini" / "synth-in" / "index.parquet").read_bytes() == b"index of synth-in"
    assert wheels.verify_dir(out / "parts") == 0
    # A second install is a no-op; the plan names every part once.
    assert wheels.install(work)["groups"] == status["groups"]
    plan = wheels.plan(out / "parts")
    assert all(plan.count(f"/{p}\"") == 1 for p in parts)


def test_wheel_list_pins_everything_and_never_torch(tmp_path):
    rows = wheels.read_list()
    assert {r["group"] for r in rows} == {"deepspeed", "dali", "extra"}
    assert all(r["version"] for r in rows)
    assert {r["name"]: r["version"] for r in rows}["nvidia-dali-cuda130"] in (REPO / "requirements-cpu.txt").read_text()
    bad = tmp_path / "bad.txt"
    bad.write_text("core torch==2.11.0 wheel no\n")
    with pytest.raises(SystemExit):
        wheels.read_list(bad)


def test_learn_stage_is_skipped_in_one_line_without_scikit_learn(tmp_path, monkeypatch, capsys):
    """The learning figure needs scikit-learn and Pillow (the synth clips' digits and photos): where the GPU
    image lacks one, the suite skips the stage naming it, and learn.py alone says so in one line."""
    learn = learn_module
    stage = next(s for s in suite.STAGES if s.name == "learn")
    ctx = suite.Context(out=tmp_path, work=tmp_path, dry_run=False, budget_s=600,
                        info={"gpu": "NVIDIA H100 80GB HBM3", "packages": {"sklearn": "absent", "PIL": "12.0.0"}})
    assert suite.missing_needs(stage, ctx) == ["sklearn"]
    ctx.info["packages"]["sklearn"] = "1.9.1"
    assert suite.missing_needs(stage, ctx) == []
    real_find_spec = learn.importlib.util.find_spec
    monkeypatch.setattr(learn.importlib.util, "find_spec", lambda name: None if name == "sklearn" else real_find_spec(name))
    assert learn.main(["--out", str(tmp_path / "learn"), "--work", str(tmp_path / "work")]) == 2
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "scikit-learn missing" in printed[0], printed
    assert not (tmp_path / "work").exists() and not list(tmp_path.glob("learn*"))


def test_learn_summary_names_the_better_reference_and_the_verdict():
    learn = learn_module
    search = {"pixel": [[30.0], [32.0]],
              "evals": [{"step": 0, "top1": [[40.0], [42.0]], "rank": 20.0, "train_s": 0.0, "loss": None},
                        {"step": 900, "top1": [[60.0], [62.0]], "rank": 30.0, "train_s": 90.0, "loss": 0.5}]}
    s = learn.summarise(search, 980)
    assert s["better_reference"] == "random init" and s["difference"] == 20.0 and s["verdict"] == "learns"
    p = (0.61 * 980 + 2) / 984                            # Agresti-Coull: n + 4 clips, 2 more right
    assert abs(s["rows"]["trained"]["ci95"] - 196 * (p * (1 - p) / 984) ** 0.5) < 1e-9
    assert learn.interval(0.0, 20) > 0                     # a reference at 0% on few clips is not certain
    search["evals"][-1]["top1"] = [[41.0], [42.0]]
    assert learn.summarise(search, 980)["verdict"] == "no clear difference"
    assert learn.scaled_lr(64) == 2 * learn.SEARCH_LR
