"""Kernel microbenchmarks: every implementation of each kernel side by side in one run.

For each op: the original study's eager composite (benchmarks/_kernel_baselines.py), the PyTorch
reference in kernels/ (what the engine runs on CPU), torch.compile of that reference, and on CUDA the
Triton kernel. The motion mask is also timed against the per-sample Python loop of the original
collate function. Reported: median time, achieved GB/s over the bytes the op must move at least
(listed per op in the output), and on CUDA the fraction of the device-to-device copy bandwidth measured
in the same run (bytes read + written, the same count as the ops'), beside the driver's DRAM peak.
Implementations are timed round-robin so that load changes spread over all of them. On CUDA each
timed sample is `inner` back-to-back calls between two CUDA events (at least ~0.5 ms of work), so a
microsecond kernel is not timed as one host synchronisation.

    python -m benchmarks.kernels                                        # CPU, writes results/kernels-cpu.*
    python -m benchmarks.kernels --device cuda --dtype bfloat16 --batch 8 --tag h100 --machine "1x H100"
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as `python benchmarks/kernels.py`: Python put benchmarks/ first on sys.path, where this file would
    # shadow the `kernels` package it measures; import from the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import math
import os
import platform
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from benchmarks._kernel_baselines import (
    apply_masks_gather,
    apply_masks_mask_tokens,
    hw_loss_eager,
    motion_mask_python_loop,
)
from kernels import masked_gather, motion_mask, motion_scores, hard_weighted_loss, use_backend
from kernels._mask_sampling import sample_block_union
from kernels.reference import (
    block_mean_scores_reference,
    hard_weighted_loss_reference,
    masked_gather_reference,
    motion_scores_reference,
)

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--tubelet", type=int, default=2)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--embed-dim", type=int, default=768, help="width of the gathered tokens")
    p.add_argument("--target-dim", type=int, default=3072, help="width of predictions/targets in the loss")
    p.add_argument("--keep-ratio", type=float, default=0.25, help="context tokens kept, fraction of N")
    p.add_argument("--target-ratio", type=float, default=0.6, help="predicted tokens, fraction of N")
    p.add_argument("--block", type=int, nargs=3, default=(8, 5, 5), help="motion-mask block (t h w) in tokens")
    p.add_argument("--num-blocks", type=int, default=8)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per implementation")
    p.add_argument("--max-repeats", type=int, default=50)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    p.add_argument("--peak-gbps", type=float, default=0.0,
                   help="bandwidth peak to divide by (default: the measured copy peak on CUDA)")
    p.add_argument("--copy-peak-mib", type=int, default=None,
                   help="MiB copied device-to-device to measure the bandwidth peak (default 1024 on CUDA, "
                        "0 = off elsewhere)")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="cpu", help="results file stem: kernels-<tag>.json/.md")
    p.add_argument("--machine", default="2-core CPU, no GPU", help="machine description written with the results")
    return p.parse_args(argv)


@dataclass
class Impl:
    name: str
    run: Callable[[], None]
    times: list[float] = field(default_factory=list)
    first_call_s: float = 0.0
    inner: int = 1                      # calls per timed sample (CUDA: back to back between events)
    spent_s: float = 0.0                # wall time spent in timed calls
    error: str = ""                     # set when its first call raised (e.g. a kernel that does not compile)


GPU_SAMPLE_S = 5e-4                     # CUDA: a timed sample holds at least this much work
MAX_INNER = 200


@dataclass
class Case:
    op: str
    what: str
    min_bytes: int
    bytes_note: str
    impls: list[Impl]
    failed: list[Impl] = field(default_factory=list)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(impl: Impl, device: torch.device) -> float:
    """Seconds per call of one timed sample: `impl.inner` calls (CUDA events on CUDA, else one call)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        for _ in range(impl.inner):
            impl.run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / impl.inner
    synchronize(device)
    start = time.perf_counter()
    impl.run()
    synchronize(device)
    return time.perf_counter() - start


def time_case(case: Case, device: torch.device, min_time: float, max_repeats: int) -> None:
    """First call (includes compilation) timed apart; then round-robin repeats until min_time each.
    An implementation whose warm-up raises is recorded as failed and the others are timed without it."""
    for impl in list(case.impls):
        try:
            synchronize(device)
            start = time.perf_counter()
            impl.run()
            synchronize(device)
            impl.first_call_s = time.perf_counter() - start
            impl.run()                                                     # second warm-up (autotune, caches)
            if device.type == "cuda":
                one = timed_call(impl, device)
                impl.inner = max(1, min(MAX_INNER, math.ceil(GPU_SAMPLE_S / max(one, 1e-9))))
        except Exception as err:  # noqa: BLE001 - one broken implementation must not lose the others
            traceback.print_exc()
            impl.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:300]
            case.impls.remove(impl)
            case.failed.append(impl)
    if not case.impls:
        return
    rounds = 0
    while rounds < max_repeats and (rounds < 3 or min(i.spent_s for i in case.impls) < min_time):
        for impl in case.impls:
            seconds = timed_call(impl, device)
            impl.times.append(seconds)
            impl.spent_s += seconds * impl.inner
        rounds += 1
        # Slow implementations (the Python loop) cap the rounds for everyone at a few seconds.
        if rounds >= 3 and max(i.spent_s for i in case.impls) > 10 * min_time:
            break


def sorted_unique_indices(B: int, N: int, K: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, N, generator=g).argsort(-1)[:, :K].sort(-1).values.to(device)


def gather_cases(args, device, dtype, compile_ok: bool, on_gpu: bool) -> list[Case]:
    B, D = args.batch, args.embed_dim
    N = (args.frames // args.tubelet) * (args.img_size // args.patch) ** 2
    K = max(1, round(args.keep_ratio * N))
    Kt = max(1, round(args.target_ratio * N))
    size = torch.empty((), dtype=dtype).element_size()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, N, D, generator=g).to(device, dtype).requires_grad_(True)
    pos = torch.randn(N, D, generator=g).to(device, dtype).requires_grad_(True)
    token = torch.randn(1, 1, D, generator=g).to(device, dtype).requires_grad_(True)
    idx = sorted_unique_indices(B, N, K, device, 1)
    tgt_idx = sorted_unique_indices(B, N, Kt, device, 2)
    grad = torch.randn(B, K, D, generator=g).to(device, dtype)
    grad_t = torch.randn(B, Kt, D, generator=g).to(device, dtype)
    compiled = torch.compile(masked_gather_reference) if compile_ok else None

    def fwd_bwd(fn, leaves, index, upstream, backend=None):
        def run():
            for leaf in leaves:
                leaf.grad = None
            if backend is None:
                out = fn(index)
            else:
                with use_backend(backend):
                    out = fn(index)
            out.backward(upstream)
        return run

    def forward_only(fn, index, backend=None):
        def run():
            with torch.no_grad():
                if backend is None:
                    fn(index)
                else:
                    with use_backend(backend):
                        fn(index)
        return run

    ctx = {
        "eager composite (apply_masks)": (lambda i: apply_masks_gather(x, i, pos), None),
        "reference (CPU path)": (lambda i: masked_gather_reference(x, i, pos), None),
    }
    if compiled is not None:
        ctx["torch.compile(reference)"] = (lambda i: compiled(x, i, pos), None)
    if on_gpu:
        ctx["triton"] = (lambda i: masked_gather(x, i, pos), "triton")
    tok = {
        "eager composite (repeat token+pos, gather)": (lambda i: apply_masks_mask_tokens(token, i, pos), None),
        "reference (CPU path)": (lambda i: masked_gather_reference(token, i, pos), None),
    }
    if compiled is not None:
        tok["torch.compile(reference)"] = (lambda i: compiled(token, i, pos), None)
    if on_gpu:
        tok["triton"] = (lambda i: masked_gather(token, i, pos), "triton")

    rows_kd = B * K * D * size
    fwd_bytes = B * K * 8 + 3 * rows_kd                                    # idx, x rows, pos rows, out
    bwd_bytes = rows_kd + B * N * D * size + N * D * size                  # grad in, grad_x, grad_pos
    tok_kd = B * Kt * D * size
    return [
        Case("masked_gather", f"context gather fwd  x[{B},{N},{D}] idx[{B},{K}] +pos", fwd_bytes,
             "idx + x rows + pos rows + out",
             [Impl(name, forward_only(fn, idx, be)) for name, (fn, be) in ctx.items()]),
        Case("masked_gather", f"context gather fwd+bwd  x[{B},{N},{D}] idx[{B},{K}] +pos", fwd_bytes + bwd_bytes,
             "forward + grad out + grad_x [B,N,D] + grad_pos [N,D]",
             [Impl(name, fwd_bwd(fn, (x, pos), idx, grad, be)) for name, (fn, be) in ctx.items()]),
        Case("masked_gather", f"mask-token placement fwd+bwd  token[1,1,{D}] idx[{B},{Kt}] +pos",
             B * Kt * 8 + 2 * tok_kd + tok_kd + N * D * size,
             "idx + pos rows + out + grad out + grad_pos",
             [Impl(name, fwd_bwd(fn, (token, pos), tgt_idx, grad_t, be)) for name, (fn, be) in tok.items()]),
    ]


def loss_cases(args, device, dtype, compile_ok: bool, on_gpu: bool) -> list[Case]:
    B, D = args.batch, args.target_dim
    N = (args.frames // args.tubelet) * (args.img_size // args.patch) ** 2
    K = max(1, round(args.target_ratio * N))
    size = torch.empty((), dtype=dtype).element_size()
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(B, K, D, generator=g).to(device, dtype).requires_grad_(True)
    target = torch.nn.functional.layer_norm(torch.randn(B, K, D, generator=g), (D,)).to(device, dtype)
    compiled = torch.compile(hard_weighted_loss_reference) if compile_ok else None

    def fwd_bwd(fn, backend=None):
        def run():
            pred.grad = None
            if backend is None:
                loss = fn()
            else:
                with use_backend(backend):
                    loss = fn()
            loss.backward()
        return run

    impls = {
        "eager composite (several passes)": (lambda: hw_loss_eager(pred, target, 1.0), None),
        "reference (CPU path)": (lambda: hard_weighted_loss_reference(pred, target, 1.0), None),
    }
    if compiled is not None:
        impls["torch.compile(reference)"] = (lambda: compiled(pred, target, 1.0), None)
    if on_gpu:
        impls["triton"] = (lambda: hard_weighted_loss(pred, target, 1.0), "triton")
    return [Case("hard_weighted_loss", f"fwd+bwd  pred/target[{B},{K},{D}]", 3 * B * K * D * size,
                 "read pred + target, write grad_pred",
                 [Impl(name, fwd_bwd(fn, be)) for name, (fn, be) in impls.items()])]


def motion_cases(args, device, dtype, compile_ok: bool, on_gpu: bool) -> list[Case]:
    B, T, S = args.batch, args.frames, args.img_size
    size = torch.empty((), dtype=dtype).element_size()
    video = torch.randn(B, 3, T, S, S, generator=torch.Generator().manual_seed(4)).to(device, dtype)
    block, nb = tuple(args.block), args.num_blocks
    grid = (T // args.tubelet, S // args.patch, S // args.patch)
    strength, rate = 2.0, 0.1
    rng = np.random.default_rng(0)
    generator = torch.Generator(device=device).manual_seed(0)
    compiled_scores = torch.compile(motion_scores_reference) if compile_ok else None
    compiled_blocks = torch.compile(block_mean_scores_reference) if compile_ok else None

    def vectorised(score_fn, block_fn):
        def run():
            scores = score_fn(video, args.tubelet, args.patch)
            sample_block_union(block_fn(scores, block), grid, block, nb, strength, rate, generator)
        return run

    def triton_path():
        with use_backend("triton"):
            motion_mask(motion_scores(video, args.tubelet, args.patch), block, nb, strength, rate, generator)

    impls = [
        Impl("python loop (original collate)",
             lambda: motion_mask_python_loop(video, args.tubelet, args.patch, block, nb, strength, rate, rng)),
        Impl("reference (CPU path)", vectorised(motion_scores_reference, block_mean_scores_reference)),
    ]
    if compile_ok:
        impls.append(Impl("torch.compile(reference)", vectorised(compiled_scores, compiled_blocks)))
    if on_gpu:
        impls.append(Impl("triton", triton_path))
    return [Case("motion_mask", f"video[{B},3,{T},{S},{S}] -> {nb} blocks {block} on grid {grid}",
                 B * 3 * T * S * S * size, "read the clip once", impls)]


def dram_peak_gbps(device: torch.device) -> float:
    """The driver's DRAM peak (memory clock x bus width), 0 off CUDA or when triton cannot read it."""
    if device.type != "cuda":
        return 0.0
    try:
        import triton.testing

        return float(triton.testing.get_dram_gbps())
    except Exception:  # noqa: BLE001 - a missing figure is reported as such, not fatal
        return 0.0


def measure_copy_gbps(device: torch.device, mib: int, repeats: int = 20) -> float:
    """Best rate of a device-to-device copy of `mib` MiB, counting bytes read + written (as the ops do)."""
    n = mib * 2**20
    src = torch.ones(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - begin)
    del src, dst
    return 2 * n / best / 1e9


def bandwidth_peak(args, device: torch.device) -> tuple[float, str, float]:
    """(peak GB/s the rows are divided by, what it is, the driver's DRAM peak)."""
    dram = dram_peak_gbps(device)
    mib = args.copy_peak_mib if args.copy_peak_mib is not None else (1024 if device.type == "cuda" else 0)
    if args.peak_gbps:
        return args.peak_gbps, "given (--peak-gbps)", dram
    if mib > 0:
        return measure_copy_gbps(device, mib), f"measured device-to-device copy of {mib} MiB (read + write)", dram
    return dram, "driver DRAM peak" if dram else "none", dram


def machine_info(args, device: torch.device) -> dict:
    info = {
        "description": args.machine,
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def to_rows(cases: list[Case], peak: float, dram: float = 0.0) -> list[dict]:
    rows = []
    for case in cases:
        rows += [{"op": case.op, "case": case.what, "impl": impl.name, "error": impl.error} for impl in case.failed]
        if not case.impls:
            continue
        eager_ms = statistics.median(case.impls[0].times) * 1e3
        for impl in case.impls:
            ms = statistics.median(impl.times) * 1e3
            gbps = case.min_bytes / (ms * 1e-3) / 1e9
            rows.append({
                "op": case.op, "case": case.what, "impl": impl.name, "median_ms": round(ms, 4),
                "min_ms": round(min(impl.times) * 1e3, 4),
                "repeats": len(impl.times), "inner": impl.inner, "first_call_s": round(impl.first_call_s, 3),
                "min_bytes": case.min_bytes, "bytes": case.bytes_note, "gbps": round(gbps, 3),
                "fraction_of_peak": round(gbps / peak, 4) if peak else None,
                "fraction_of_dram_peak": round(gbps / dram, 4) if dram else None,
                "speedup_vs_first_row": round(eager_ms / ms, 2),
            })
    return rows


def write_markdown(path: Path, meta: dict, rows: list[dict]) -> None:
    m = meta["machine"]
    lines = [
        f"# Kernel microbenchmarks ({meta['tag']})",
        "",
        f"Machine: {m['description']} ({m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']}, "
        f"{m['torch_threads']} threads{', GPU ' + m['gpu'] if 'gpu' in m else ''}); device `{m['device']}`, "
        f"dtype {meta['dtype']}; 1-min load average at the end {meta['load_average']}.",
        meta["paths_note"],
        "GB/s = the bytes the op must move at least (listed below) / median time; × = median speed-up over "
        "the first row of the case (the original eager code). First call = the first timed call, which "
        "includes torch.compile's compilation. On a shared machine the min is the less noisy figure.",
        (f"% of peak = GB/s / {meta['peak_gbps']:.0f} GB/s, the {meta['peak_kind']}"
         + (f"; the driver's DRAM peak is {meta['dram_peak_gbps']:.0f} GB/s" if meta.get("dram_peak_gbps") else "")
         + ". On CUDA each timed sample is `inner` back-to-back calls between CUDA events."
         if meta.get("peak_gbps") else "No bandwidth peak on this device: the % of peak column is empty."),
        "",
        "| op | case | implementation | median ms | min ms | GB/s | % of peak | × first row | first call s | repeats |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['op']} | {r['case']} | {r['impl']} | failed: {r['error'][:160]} |" + " |" * 6)
            continue
        frac = f"{100 * r['fraction_of_peak']:.1f}" if r["fraction_of_peak"] is not None else "—"
        lines.append(f"| {r['op']} | {r['case']} | {r['impl']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} "
                     f"| {r['gbps']:.2f} | {frac} "
                     f"| {r['speedup_vs_first_row']:.2f} | {r['first_call_s']:.2f} | {r['repeats']} |")
    lines += ["", "Bytes counted per case:", ""]
    for case, note in dict((r["case"], r["bytes"]) for r in rows if "bytes" in r).items():
        lines.append(f"- {case}: {note}")
    goals = goal_rows(rows)
    if goals:
        lines += ["", f"Goals (issue 14): Triton >= {GOAL_SPEEDUP:g}x the eager composite and >= "
                      f"{100 * GOAL_PEAK_FRACTION:.0f}% of the bandwidth peak above.", "",
                  "| case | Triton × eager | goal met | % of peak | goal met |", "|---|---:|---|---:|---|"]
        for g in goals:
            frac = "—" if g["fraction_of_peak"] is None else f"{100 * g['fraction_of_peak']:.1f}"
            lines.append(f"| {g['case']} | {g['speedup']:.2f} | {'yes' if g['speedup_ok'] else 'no'} | {frac} | "
                         f"{'—' if g['peak_ok'] is None else ('yes' if g['peak_ok'] else 'no')} |")
    path.write_text("\n".join(lines) + "\n")


GOAL_SPEEDUP = 2.0
GOAL_PEAK_FRACTION = 0.7


def goal_rows(rows: list[dict]) -> list[dict]:
    """The Triton row of each case against the goals: >= 2x the eager composite, >= 70% of the peak."""
    out = []
    for r in rows:
        if r["impl"] != "triton":
            continue
        if r.get("error"):
            out.append({"case": r["case"], "speedup": 0.0, "speedup_ok": False, "fraction_of_peak": None,
                        "peak_ok": False, "error": r["error"]})
            continue
        frac = r["fraction_of_peak"]
        out.append({"case": r["case"], "speedup": r["speedup_vs_first_row"],
                    "speedup_ok": r["speedup_vs_first_row"] >= GOAL_SPEEDUP, "fraction_of_peak": frac,
                    "peak_ok": None if frac is None else frac >= GOAL_PEAK_FRACTION})
    return out


def write_results(args, device, on_gpu, peak, peak_kind, dram, rows, complete: bool) -> None:
    meta = {
        "tag": args.tag, "dtype": args.dtype, "machine": machine_info(args, device), "peak_gbps": peak or None,
        "peak_kind": peak_kind, "dram_peak_gbps": dram or None, "goals": goal_rows(rows), "complete": complete,
        "load_average": round(os.getloadavg()[0], 1), "args": vars(args),
        "paths_note": ("Triton rows are on the GPU." if on_gpu else
                       "No GPU: these are the CPU reference paths (eager, torch.compile) and the Python loop; "
                       "the Triton kernels are not timed (the CPU interpreter is not a performance path)."),
    }
    out = args.results_dir
    meta["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in meta["args"].items()}
    (out / f"kernels-{args.tag}.json").write_text(json.dumps({**meta, "results": rows}, indent=2) + "\n")
    write_markdown(out / f"kernels-{args.tag}.md", meta, rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    on_gpu = device.type == "cuda"
    compile_ok = not args.no_compile
    # The bandwidth peak first, and the files rewritten after every case: a run stopped at a time limit
    # keeps every case it finished.
    peak, peak_kind, dram = bandwidth_peak(args, device)
    print(f"bandwidth peak: {peak:.1f} GB/s ({peak_kind}); driver DRAM peak {dram:.1f} GB/s", flush=True)
    cases = (gather_cases(args, device, dtype, compile_ok, on_gpu)
             + loss_cases(args, device, dtype, compile_ok, on_gpu)
             + motion_cases(args, device, dtype, compile_ok, on_gpu))
    out = args.results_dir
    out.mkdir(parents=True, exist_ok=True)
    done: list[Case] = []
    for case in cases:
        print(f"[{case.op}] {case.what}", flush=True)
        time_case(case, device, args.min_time, args.max_repeats)
        done.append(case)
        rows = to_rows(done, peak, dram)
        write_results(args, device, on_gpu, peak, peak_kind, dram, rows, complete=len(done) == len(cases))
    for r in rows:
        if r.get("error"):
            print(f"{r['op']:18s} {r['impl']:44s} FAILED {r['error']}")
            continue
        print(f"{r['op']:18s} {r['impl']:44s} {r['median_ms']:10.3f} ms {r['gbps']:8.2f} GB/s "
              f"x{r['speedup_vs_first_row']:.2f}")
    print(f"wrote {out / f'kernels-{args.tag}.json'} and .md")


if __name__ == "__main__":
    main()
