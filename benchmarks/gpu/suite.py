"""The GPU check, one command: device, compiled kernels, kernel and training-step benchmarks, NVDEC loader.

    bash benchmarks/gpu/run.sh OUT                 # every stage whose dependencies are here, in < 9 minutes
    bash benchmarks/gpu/run.sh OUT --stages core   # info, step, kernels, pytest: needs only torch + triton
    bash benchmarks/gpu/run.sh --dry-run OUT       # CPU: build every command, run the CPU parts on tiny shapes

Stages, in order (most important numbers first; each has a time cap, and the whole run a budget, default
540 s, that no stage may overrun; a stage that fails or times out is recorded and the next one runs):

    info         core  device, driver, versions, optional packages; measured copy GB/s and bf16 matmul TFLOP/s
    step         core  ViT-B/16 16x224^2 bf16 training step, baseline / fwm_hw_ld / motion_guided, kernels
                       on and off, synthetic batches on the GPU: step time, clips/s, tokens/s, TFLOP/s, MFU,
                       peak memory (benchmarks/gpu/step.py)
    kernels      core  benchmarks/kernels.py at paper shapes: eager vs reference vs torch.compile vs Triton,
                       GB/s and % of the copy peak measured in the same run
    pytest       core  pytest -m gpu tests/test_kernels_gpu.py tests/test_eval_probes_gpu.py, TRITON_INTERPRET=0
    learn        learn the winning small-scale recipe at GPU scale on synth-ucf's camera clips, probed beside
                       random init and pixels: does pretraining learn? (benchmarks/gpu/learn.py)
    loader       data  benchmarks/loader.py --device both: NVDEC (mixed) and CPU decode, loader / decode alone
    deepspeed    data  benchmarks/train_step.py --paper: the real loop (DeepSpeed + loader), data stall
    step_loader  data  the in-process step through the real loader, when DeepSpeed is absent
    pytest_data  data  pytest -m gpu tests/test_data_loader.py (NVDEC vs CPU decode), needs PyAV

Results go to OUT/benchmarks/results/: <stage files>-<gpu>.md/json, and the run's own summary
<name>-<gpu>.md/.json and log. Wheels that came with the call (benchmarks/gpu/wheels.py) are stashed and,
once complete, installed into WORK/site before anything runs; stages already done on this machine in an
earlier call are not rerun unless named in --stages.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.gpu import wheels  # noqa: E402
from benchmarks.gpu.devinfo import gpu_slug  # noqa: E402

RESULTS = Path("benchmarks") / "results"
DRY_RUN_STAGES = ("info", "step", "kernels", "learn")   # run on tiny CPU shapes by the dry run
DEFAULT_BUDGET_S = 540     # the core stages' caps and the learn stage's minimum, inside one 10-minute device call
REPORT_RESERVE_S = 5
GPU_TEST_FILES = {                                   # every test file with a `gpu` test, and the stage running it
    "tests/test_kernels_gpu.py": "pytest",
    "tests/test_eval_probes_gpu.py": "pytest",
    "tests/test_data_loader.py": "pytest_data",
}
GROUPS = {"core": ("info", "step", "kernels", "pytest"),
          "learn": ("learn",),
          "data": ("loader", "deepspeed", "step_loader", "pytest_data")}
PAPER_KERNEL_ARGS = ["--dtype", "bfloat16", "--batch", "8", "--frames", "16", "--img-size", "224", "--min-time", "0.2",
                     "--max-repeats", "20"]
TINY_KERNEL_ARGS = ["--dtype", "float32", "--batch", "1", "--frames", "4", "--img-size", "32", "--embed-dim", "16",
                    "--target-dim", "16", "--block", "2", "1", "1", "--num-blocks", "2", "--min-time", "0",
                    "--max-repeats", "2", "--no-compile", "--copy-peak-mib", "2"]
TINY_STEP_ARGS = ["--recipe-dir", "recipes/demo", "--steps", "1", "--warmup", "0", "--set", "train.global_batch=2",
                  "--set", "train.micro_batch=2", "--set", "model.img_size=32", "--set", "model.num_frames=4",
                  "--runs", "baseline:reference,fwm_hw_ld:reference,motion_guided:reference,baseline:triton"]


@dataclass
class Stage:
    name: str
    cap_s: int                      # the most this stage may run
    min_s: int                      # skipped when less than this is left
    needs: tuple[str, ...]          # cuda, shards, or module names
    what: str
    outputs: tuple[str, ...] = ()   # result stems under OUT/benchmarks/results (without -<gpu>)


STAGES = [
    Stage("info", 40, 10, (), "device, versions, measured copy and matmul peaks"),
    Stage("step", 160, 60, ("cuda",), "training step, synthetic batches, kernels on/off", ("train_step",)),
    Stage("kernels", 90, 40, ("cuda", "triton"), "kernel microbenchmarks at paper shapes", ("kernels",)),
    Stage("pytest", 90, 30, ("cuda", "triton", "pytest"), "compiled kernels vs references (pytest -m gpu)"),
    Stage("learn", 240, 120, ("cuda", "sklearn", "PIL"),
          "winning small-scale recipe at GPU scale, probed beside random init and pixels", ("learn",)),
    Stage("loader", 60, 30, ("cuda", "nvidia.dali", "shards"), "NVDEC and CPU decode, loader vs decode alone",
          ("loader",)),
    Stage("deepspeed", 100, 60, ("cuda", "nvidia.dali", "deepspeed", "shards"),
          "real training loop: DeepSpeed + loader, data stall", ("train_step-deepspeed",)),
    Stage("step_loader", 60, 30, ("cuda", "nvidia.dali", "shards", "!deepspeed"),
          "in-process step through the real loader (no DeepSpeed here)", ("train_step-loader",)),
    Stage("pytest_data", 45, 20, ("cuda", "nvidia.dali", "av", "pytest"), "NVDEC decode vs CPU decode (pytest -m gpu)"),
]


@dataclass
class Context:
    out: Path
    work: Path
    dry_run: bool
    budget_s: float
    start: float = field(default_factory=time.monotonic)
    info: dict = field(default_factory=dict)
    slug: str = "gpu"
    env: dict = field(default_factory=dict)
    shards: Path | None = None
    log: object = None
    timeout: float = 0.0            # of the stage being built (the step stage stops measuring before it)
    site: str | None = None         # installed wheels (WORK/site): on the path of info and the data stages only
    status: dict = field(default_factory=dict)   # stage -> status in this run

    @property
    def results(self) -> Path:
        return self.out / RESULTS

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def stem(self, base: str) -> Path:
        return self.results / f"{base}-{self.slug}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("out", type=Path, help="output folder (results under OUT/benchmarks/results)")
    p.add_argument("--dry-run", action="store_true", help="CPU: build every command, run the CPU parts on tiny shapes")
    p.add_argument("--stages", default="all", help="comma list of stages or groups (core, learn, data, all); info always runs")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help=f"seconds for the whole run (default {DEFAULT_BUDGET_S})")
    p.add_argument("--name", default="suite", help="stem of this run's summary files (default suite)")
    p.add_argument("--work", type=Path, default=wheels.DEFAULT_WORK,
                   help="stash, installed wheels, shards and state, kept across calls (default /tmp/vjepa-gpu)")
    p.add_argument("--parts", type=Path, default=wheels.DEFAULT_OUT / "parts", help="wheel parts that came with this call")
    p.add_argument("--shards", type=Path, default=None, help="synth shards (default: the carried gpu-mini shards)")
    p.add_argument("--stash-only", action="store_true", help="only keep the wheel parts that came with this call")
    p.add_argument("--rerun", action="store_true", help="also run stages done on this machine in an earlier call")
    p.add_argument("--max-files", type=int, default=None,
                   help="bundle result files beyond this many into one tar.gz (default: 8 when $OUT is this "
                        "folder, the device tool's limit; else no limit)")
    return p.parse_args(argv)


def selected(spec: str) -> list[str]:
    names = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "all":
            names += [s.name for s in STAGES]
        elif item in GROUPS:
            names += list(GROUPS[item])
        elif item in {s.name for s in STAGES}:
            names.append(item)
        else:
            raise SystemExit(f"--stages: unknown stage or group {item!r}; stages: {', '.join(s.name for s in STAGES)}; "
                             f"groups: {', '.join(GROUPS)}, all")
    names.append("info")                                 # every run starts with it: the device names the files
    return [s.name for s in STAGES if s.name in names]      # always in the suite's order


# ------------------------------------------------------------------------------------------ commands
def command(stage: str, ctx: Context, tiny: bool = False) -> list[str]:
    """The argv of a stage, exactly as it runs: paper shapes on a GPU; `tiny` = the dry run's CPU shapes
    (info, step, kernels and learn only; the dry run checks the GPU argv's arguments and runs the tiny one)."""
    py = sys.executable
    results = ctx.results
    info_path = ctx.work / "info.json"
    if stage == "info":
        return [py, "-m", "benchmarks.gpu.devinfo", "--out", str(info_path)] + (
            ["--copy-mib", "4", "--matmul", "64"] if tiny else [])
    if stage == "step":
        deadline = max(10, int((ctx.timeout or next(s.cap_s for s in STAGES if s.name == "step")) - 25))
        argv = [py, "-m", "benchmarks.gpu.step", "--out", str(ctx.stem("train_step")), "--label", "synthetic batches",
                "--deadline-s", str(deadline)]
        matmul = ctx.info.get("measured", {}).get("matmul_tflops")
        if matmul and not tiny:
            argv += ["--matmul-tflops", str(matmul)]
        return argv + (TINY_STEP_ARGS + ["--device", "cpu"] if tiny else [])
    if stage == "kernels":
        gpu = ctx.info.get("gpu") or "no GPU"
        argv = [py, "-m", "benchmarks.kernels", "--tag", ctx.slug, "--results-dir", str(results),
                "--machine", f"1x {gpu}, {os.cpu_count()} CPU cores"]
        return argv + (["--device", "cpu"] + TINY_KERNEL_ARGS if tiny else ["--device", "cuda"] + PAPER_KERNEL_ARGS)
    if stage in ("pytest", "pytest_data"):
        files = [f for f, s in GPU_TEST_FILES.items() if s == stage]
        return [py, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider", *files]
    if stage == "learn":
        # Training stops early enough for the last probe to end before the stage's cap.
        deadline = max(30, int((ctx.timeout or next(s.cap_s for s in STAGES if s.name == "learn")) - 10))
        argv = [py, "-m", "benchmarks.gpu.learn", "--out", str(ctx.stem("learn")), "--work", str(ctx.work / "learn"),
                "--machine", f"1x {ctx.info.get('gpu') or 'no GPU'}, {os.cpu_count()} CPU cores"]
        return argv + (["--device", "cpu", "--tiny", "--workers", "2"] if tiny else
                       ["--device", "cuda", "--deadline-s", str(deadline)])
    shards = str(ctx.shards or "SHARDS")
    if stage == "loader":
        return [py, "benchmarks/loader.py", "--shards", shards, "--device", "both", "--no-reference", "--crop", "224",
                "--frames", "16", "--batch-size", "8", "--workers", "4", "--threads", "4", "--batches", "10",
                "--rounds", "2", "--out", str(ctx.stem("loader"))]
    if stage == "deepspeed":
        return [py, "benchmarks/train_step.py", "--paper", "--recipe", "recipes/mixed_fwm_hw_ld.yaml", "--shards", shards,
                "--kernels", "triton", "--steps", "14", "--warmup", "4", "--out", str(ctx.stem("train_step-deepspeed"))]
    if stage == "step_loader":
        return [py, "-m", "benchmarks.gpu.step", "--data", "loader", "--shards", shards, "--runs", "fwm_hw_ld:triton",
                "--steps", "10", "--warmup", "3", "--label", "real loader (DALI), no DeepSpeed",
                "--out", str(ctx.stem("train_step-loader"))]
    raise KeyError(stage)


def check_command(argv: list[str]) -> None:
    """Dry run: the stage's own argument parser accepts the argv (a renamed flag fails here, not on the GPU),
    and the recipes the GPU commands train load with their overrides."""
    if argv[1] == "-m" and argv[2] == "pytest":
        for path in argv[3:]:
            if path.endswith(".py"):
                text = (REPO / path).read_text()
                if "pytest.mark.gpu" not in text:
                    raise AssertionError(f"{path} holds no `gpu` test")
        return
    module = argv[2] if argv[1] == "-m" else argv[1].removesuffix(".py").replace("/", ".")
    args = argv[3:] if argv[1] == "-m" else argv[2:]
    mod = importlib.import_module(module)
    parsed = mod.build_parser().parse_args(args) if hasattr(mod, "build_parser") else mod.parse_args(args)
    from engine.recipe import load_recipe
    if module == "benchmarks.gpu.step":
        extra = mod.dataset_overrides(parsed.shards) if parsed.data == "loader" else []
        for spec in parsed.runs.split(","):
            run = mod.parse_run(spec)
            load_recipe(Path(parsed.recipe_dir) / f"{parsed.regime}_{run['variant']}.yaml",
                        list(parsed.overrides) + extra, check_files=False)
    if module == "benchmarks.train_step":
        from benchmarks.gpu.step import dataset_overrides
        load_recipe(parsed.recipe, dataset_overrides(parsed.shards) + list(parsed.overrides), check_files=False)


def gpu_test_files() -> set[str]:
    """Test files that hold a `gpu`-marked test (so a new one cannot be left out of the suite)."""
    return {f"tests/{p.name}" for p in (REPO / "tests").glob("test_*.py")
            if re.search(r"pytest\.mark\.gpu\b", p.read_text())}


# ------------------------------------------------------------------------------------------ running
def child_env(ctx: Context, site: str | None) -> dict:
    env = dict(os.environ)
    paths = [str(REPO)] + ([site] if site else []) + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    if not ctx.dry_run:
        env["TRITON_INTERPRET"] = "0"                     # compiled kernels; the interpreter is a CPU tool
        env.pop("DS_ACCELERATOR", None)                   # DeepSpeed picks CUDA
    libs = []
    if site:
        libs += [str(Path(site) / "nvidia" / sub) for sub in ("cu13/lib", "nvimgcodec", "nvjpeg/lib")
                 if (Path(site) / "nvidia" / sub).is_dir()]
    libs += driver_lib_dirs()
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]))
    return env


def driver_lib_dirs() -> list[str]:
    """Folders holding the driver's libnvcuvid (NVDEC) that the dynamic loader may not search by itself."""
    dirs = []
    for folder in ("/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib64"):
        if any(Path(folder).glob("libnvcuvid.so*")):
            dirs.append(folder)
    return dirs


def stage_env(stage: str, ctx: Context) -> dict:
    """The core stages run on the image alone (nothing carried can shadow what torch imports); info and
    the data stages see the installed wheels too."""
    return child_env(ctx, ctx.site if stage == "info" or stage in GROUPS["data"] else None)


def run_stage(argv: list[str], timeout: float, ctx: Context, env: dict | None = None) -> tuple[int, float, str]:
    """Run argv in its own process group, output to the log and stdout; kill the group at the timeout."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env=env or ctx.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1, start_new_session=True)
    tail: list[str] = []

    def pump():
        for line in proc.stdout:
            ctx.log.write(line)
            sys.stdout.write(line)
            tail.append(line)
            del tail[:-60]
        ctx.log.flush()
        sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        rc = 124
    reader.join(timeout=5)
    return rc, time.monotonic() - start, "".join(tail)


def missing_needs(stage: Stage, ctx: Context) -> list[str]:
    packages = ctx.info.get("packages", {})
    missing = []
    for need in stage.needs:
        negate = need.startswith("!")
        name = need.lstrip("!")
        if name == "cuda":
            have = bool(ctx.info.get("gpu"))
        elif name == "shards":
            have = ctx.shards is not None and all((ctx.shards / p / "index.parquet").is_file() for p in wheels.SHARD_PARTS)
        elif negate and name == "deepspeed" and name in ctx.status:
            have = ctx.status[name] == "ok"                 # the DeepSpeed loop ran here: its fallback is not needed
        else:
            have = not str(packages.get(name, "absent")).startswith("absent")
        if have == negate:
            missing.append(f"{name} is here (its own stage runs instead)" if negate else name)
    return missing


def summarise_stage(name: str, ctx: Context, tail: str) -> dict:
    """The headline figures of a finished stage, read from its result JSON (or its pytest summary line)."""
    try:
        if name == "info":
            return {}
        if name in ("pytest", "pytest_data"):
            found = (re.findall(r"=+ (\d+ \w+.*? in [\d.]+s.*?) =+", tail)
                     or re.findall(r"^(\d+ \w+.* in [\d.]+s.*|no tests ran.*)$", tail, re.M))
            return {"pytest": found[-1] if found else tail.strip().splitlines()[-1:]}
        if name in ("step", "step_loader"):
            stem = "train_step" if name == "step" else "train_step-loader"
            report = json.loads(ctx.stem(stem).with_suffix(".json").read_text())
            return {"runs": [{k: r.get(k) for k in ("id", "status", "error", "step_s", "clips_per_s", "tokens_per_s",
                                                    "tflops_per_s", "mfu", "peak_memory_gib", "data_stall")}
                             for r in report["results"]]}
        if name == "kernels":
            report = json.loads(ctx.stem("kernels").with_suffix(".json").read_text())
            return {"peak_gbps": report.get("peak_gbps"), "peak_kind": report.get("peak_kind"), "goals": report.get("goals")}
        if name == "loader":
            report = json.loads(ctx.stem("loader").with_suffix(".json").read_text())
            return {device: {"loader_clips_per_s": run["a_loader"]["clips_per_s"],
                             "decode_clips_per_s": run["c_decode_only"]["clips_per_s"], "a_over_c": run["a_over_c"]}
                    for device, run in report["runs"].items()}
        if name == "learn":
            report = json.loads(ctx.stem("learn").with_suffix(".json").read_text())["summary"]
            return {"top1": {k: round(v["top1"], 1) for k, v in report["rows"].items()},
                    "steps": report["rows"]["trained"]["step"], "difference": round(report["difference"], 1),
                    "difference_ci95": round(report["difference_ci95"], 1), "verdict": report["verdict"]}
        if name == "deepspeed":
            report = json.loads(ctx.stem("train_step-deepspeed").with_suffix(".json").read_text())
            return {k: {m: v.get(m) for m in ("step_s", "clips_per_s", "tokens_per_s", "tflops_per_s", "mfu", "data_stall")}
                    for k, v in report["results"].items()}
    except (OSError, ValueError, KeyError) as err:
        return {"summary_error": f"{type(err).__name__}: {err}"}
    return {}


def load_state(ctx: Context) -> dict:
    path = ctx.work / "state.json"
    return json.loads(path.read_text()) if path.is_file() and not ctx.dry_run else {"stages": {}}


def save_state(ctx: Context, state: dict) -> None:
    if not ctx.dry_run:
        (ctx.work / "state.json").write_text(json.dumps(state, indent=1) + "\n")


# ------------------------------------------------------------------------------------------ report
def pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def write_report(ctx: Context, name: str, record: dict) -> list[Path]:
    ctx.results.mkdir(parents=True, exist_ok=True)
    stem = ctx.results / f"{name}-{ctx.slug}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    info = record.get("device") or {}
    smi = info.get("nvidia_smi") or {}
    pk = info.get("packages") or {}
    m = info.get("measured") or {}
    lines = [f"# GPU check `{name}` on {info.get('gpu') or 'no GPU'}" + (" (dry run)" if ctx.dry_run else ""), "",
             f"Device: {info.get('gpu') or 'none'}, driver {smi.get('driver_version', '?')}, "
             f"{info.get('sm_count', '?')} SMs, {info.get('memory_gib', '?')} GiB; python {info.get('python', '?')}, torch "
             f"{info.get('torch', '?')} (CUDA {info.get('torch_cuda', '?')}), triton {pk.get('triton', '?')}, DALI "
             f"{pk.get('nvidia.dali', '?')}, DeepSpeed {pk.get('deepspeed', '?')}, PyAV {pk.get('av', '?')}; "
             f"libnvcuvid {info.get('libnvcuvid') or 'not found'}.",
             f"Measured here: device-to-device copy {m.get('copy_gbps', '—')} GB/s (read + write), "
             f"{m.get('matmul_dtype', 'bf16')} {m.get('matmul_n', '')}^3 matmul {m.get('matmul_tflops', '—')} TFLOP/s; "
             f"datasheet dense bf16 {info.get('datasheet_bf16_tflops', '—')} TFLOP/s (the MFU denominator).",
             f"Run: `{record['command']}`, budget {record['budget_s']:.0f} s, took {record['wall_s']:.0f} s. Wheels: "
             f"{record.get('wheels', {}).get('groups') or 'none carried'}.", "",
             "| stage | status | seconds | cap | what | figures |", "|---|---|---:|---:|---|---|"]
    for s in STAGES:
        r = record["stages"].get(s.name)
        if r is None:
            continue
        lines.append(f"| {s.name} | {r['status']} | {r.get('seconds', 0):.0f} | {r.get('cap_s', s.cap_s)} | {s.what} | "
                     f"{headline(s.name, r)} |")
    lines += ["", "Goals (issue 14), recorded whatever they are: kernels >= 2x the eager composite and >= 70% of the "
                  "measured copy bandwidth; ViT-B/16 JEPA step >= 40% MFU in bf16; data stall < 5% through the real "
                  "loader; the paper's original ran about 8 clips/s per A100.", "",
              "Each stage's own files (`*-" + ctx.slug + ".md/json` beside this one) hold the full tables; the log holds "
              "every command's output."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return [stem.with_suffix(".json"), stem.with_suffix(".md")]


def headline(stage: str, r: dict) -> str:
    s = r.get("summary") or {}
    if r["status"] in ("skipped", "not run"):
        return r.get("reason", "")
    if stage in ("step", "step_loader") and s.get("runs"):
        parts = []
        for run in s["runs"]:
            if run.get("step_s") is None:
                parts.append(f"{run['id']}: {run.get('status')} {str(run.get('error') or '')[:60]}")
            else:
                parts.append(f"{run['id']}: {run['clips_per_s']:.1f} clips/s, MFU {pct(run.get('mfu'))}"
                             + (f", {run['peak_memory_gib']:.0f} GiB" if run.get("peak_memory_gib") else "")
                             + (f", stall {pct(run.get('data_stall'))}" if stage == "step_loader" else ""))
        return "; ".join(parts)
    if stage == "kernels" and s.get("goals") is not None:
        return "; ".join(f"{g['case'].split('  ')[0]}: failed ({g['error'][:80]})" if g.get("error") else
                         f"{g['case'].split('  ')[0]}: {g['speedup']:.2f}x eager, {pct(g['fraction_of_peak'])} of "
                         f"copy peak" for g in s["goals"]) or "no Triton rows (no GPU)"
    if stage in ("pytest", "pytest_data"):
        return str(s.get("pytest", ""))
    if stage == "learn" and s.get("top1"):
        t = s["top1"]
        return (f"top-1 trained {t['trained']:.1f}% after {s['steps']} steps, random init {t['random init']:.1f}%, "
                f"pixels {t['pixels']:.1f}%: {s['difference']:+.1f} ± {s['difference_ci95']:.1f} ({s['verdict']})")
    if stage == "loader" and s and "summary_error" not in s:
        return "; ".join(f"{d}: loader {v['loader_clips_per_s']} clips/s, decode alone {v['decode_clips_per_s']}, "
                         f"a/c {v['a_over_c']}" for d, v in s.items())
    if stage == "deepspeed" and s and "summary_error" not in s:
        return "; ".join(f"{k}: {v['clips_per_s']:.1f} clips/s, MFU {pct(v.get('mfu'))}, data stall {pct(v.get('data_stall'))}"
                         for k, v in s.items())
    return str(s.get("summary_error", r.get("reason", "")))


def bundle_overflow(ctx: Context, name: str, max_files: int | None) -> None:
    """Keep at most max_files files under OUT (the device tool returns 8): the rest go into one tar.gz."""
    if not max_files:
        return
    files = sorted(p for p in ctx.out.rglob("*") if p.is_file())
    if len(files) <= max_files:
        return
    keep_first = [f"{name}-{ctx.slug}.json", f"{name}-{ctx.slug}.md"]

    def rank(p: Path):                                   # lower = keep; logs and .md pages go first
        return (p.name in keep_first) * -10 + (p.suffix == ".json") * -2 + (p.suffix == ".log") * 2

    ordered = sorted(files, key=rank)
    keep, extra = ordered[:max_files - 1], ordered[max_files - 1:]
    bundle = ctx.results / f"{name}-{ctx.slug}-more.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        for p in extra:
            tar.add(p, arcname=str(p.relative_to(ctx.out)))
    for p in extra:
        p.unlink()
    print(f"bundled {len(extra)} files into {bundle} (at most {max_files} files come back)", flush=True)


def flush(ctx: Context, name: str, record: dict) -> None:
    """The summary and the log, as they stand, into OUT."""
    record["wall_s"] = time.monotonic() - ctx.start
    ctx.log.flush()
    ctx.results.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ctx.work / f"{name}.log", ctx.results / f"{name}-{ctx.slug}.log")
    write_report(ctx, name, record)


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    work = args.work if not args.dry_run else Path(tempfile.mkdtemp(prefix="vjepa-gpu-dryrun-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=out, work=work.resolve(), dry_run=args.dry_run, budget_s=args.budget)
    record = {"command": " ".join(["run.sh"] + (argv if argv is not None else sys.argv[1:])), "budget_s": args.budget,
              "dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "stages": {}}

    # -- wheels that came with this call: stash, and install what is complete -------------------------
    site = None
    if not args.dry_run:
        record["wheels"] = {"stash": wheels.stash(args.parts, ctx.work)}
        if args.stash_only:
            print(json.dumps(record["wheels"]["stash"]))
            return 0
        try:
            status = wheels.install(ctx.work)
        except Exception as err:  # noqa: BLE001 - a broken payload must not stop the core stages
            status = {"error": f"{type(err).__name__}: {err}", "groups": {}}
            print(f"wheel install failed: {status['error']}", flush=True)
        record["wheels"].update(status)
        if status.get("groups") and any(v == "installed" for v in status["groups"].values()):
            site = status["site"]
    ctx.shards = args.shards or next((p for p in (ctx.work / "data" / "shards-gpu-mini",) if p.is_dir()), None)
    ctx.site = site
    ctx.env = child_env(ctx, site)
    names = selected(args.stages)
    state = load_state(ctx)
    explicit = args.stages != "all"
    ctx.log = open(ctx.work / f"{args.name}.log", "w", encoding="utf-8")

    for stage in STAGES:
        if stage.name not in names:
            continue
        entry = {"cap_s": stage.cap_s}
        record["stages"][stage.name] = entry
        if stage.name != "info" and not explicit and not args.rerun and stage.name in state["stages"]:
            entry.update(status="not run", reason=f"done on this machine in an earlier call ({state['stages'][stage.name]})")
            continue
        if stage.name != "info" and not ctx.info:
            entry.update(status="skipped", reason="no device information (the info stage failed)")
            continue
        missing = missing_needs(stage, ctx) if stage.name != "info" else []
        if missing and not ctx.dry_run:
            entry.update(status="skipped", reason="; ".join(
                ["missing " + ", ".join(m for m in missing if " is here" not in m)] * any(" is here" not in m for m in missing)
                + [m for m in missing if " is here" in m]))
            continue
        left = ctx.left() - REPORT_RESERVE_S
        if left < stage.min_s:
            entry.update(status="skipped", reason=f"out of budget ({left:.0f} s left, needs {stage.min_s})")
            continue
        ctx.timeout = timeout = min(stage.cap_s, left)
        argv = command(stage.name, ctx)
        entry["argv"] = argv
        if ctx.dry_run:
            try:
                check_command(argv)
            except (SystemExit, Exception) as err:  # noqa: BLE001 - any rot in a command is a dry-run failure
                entry.update(status="failed", reason=f"argument check: {type(err).__name__}: {err}")
                continue
            entry["args_checked"] = True
            if stage.name not in DRY_RUN_STAGES:
                entry.update(status="dry", reason="command built, arguments and recipes checked; runs on a GPU")
                continue
            argv = entry["argv_run"] = command(stage.name, ctx, tiny=True)
        header = f"\n==== [{stage.name}] {stage.what} (timeout {timeout:.0f} s)\n$ {' '.join(argv)}\n"
        ctx.log.write(header)
        print(header, end="", flush=True)
        env = stage_env(stage.name, ctx)
        rc, seconds, tail = run_stage(argv, timeout, ctx, env)
        if stage.name == "step" and rc == 3 and ctx.left() - REPORT_RESERVE_S > 30:
            # The CUDA context broke in one run: the rest continue in a fresh process.
            rc, more, tail = run_stage(argv + ["--append"], min(stage.cap_s - seconds, ctx.left() - REPORT_RESERVE_S),
                                       ctx, env)
            seconds += more
        entry.update(status="ok" if rc == 0 else ("timeout" if rc == 124 else f"failed (rc {rc})"), seconds=seconds, rc=rc)
        if stage.name == "info":
            try:
                ctx.info = json.loads((ctx.work / "info.json").read_text())
            except (OSError, ValueError):
                ctx.info = {}
            ctx.slug = "dryrun" if ctx.dry_run else ctx.info.get("slug") or gpu_slug(smi_gpu_name())
            record["device"] = ctx.info
            ctx.env = child_env(ctx, site)
        else:
            entry["summary"] = summarise_stage(stage.name, ctx, tail)
        state["stages"][stage.name] = ctx.status[stage.name] = entry["status"]
        save_state(ctx, state)
        flush(ctx, args.name, record)              # a run stopped from outside keeps every finished stage
    if not ctx.info:
        ctx.slug = "dryrun" if ctx.dry_run else gpu_slug(smi_gpu_name())
    flush(ctx, args.name, record)
    ctx.log.close()
    max_files = args.max_files
    if max_files is None and os.environ.get("OUT") and Path(os.environ["OUT"]).resolve() == out:
        max_files = 8
    bundle_overflow(ctx, args.name, max_files)
    print(f"\nwrote {ctx.results}/{args.name}-{ctx.slug}.md (.json, .log); {record['wall_s']:.0f} s of {args.budget:.0f}")
    print((ctx.results / f"{args.name}-{ctx.slug}.md").read_text())
    if args.dry_run:
        shutil.rmtree(ctx.work, ignore_errors=True)
    failed = [n for n, e in record["stages"].items() if e["status"].startswith(("failed", "timeout"))]
    return 1 if failed else 0


def smi_gpu_name() -> str | None:
    from benchmarks.gpu.devinfo import nvidia_smi
    return nvidia_smi().get("name")


if __name__ == "__main__":
    raise SystemExit(main())
