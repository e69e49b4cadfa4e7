"""What the GPU check runs on: device, driver, versions, the optional packages, and two measured peaks.

    python -m benchmarks.gpu.devinfo --out info.json                   # CUDA: 1 GiB copy, 8192^3 bf16 matmul
    python -m benchmarks.gpu.devinfo --out info.json --copy-mib 4 --matmul 128     # tiny (the CPU dry run)

The measured peaks are what the other stages divide by besides the datasheet: the device-to-device copy
rate (bytes read + written, best of 20) for the kernels' bandwidth, and a large bf16 matmul (mean of 10
after 3 warm-ups) beside the datasheet bf16 peak that MFU uses (engine/training/metrics.py).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

# module -> distribution: versions are read from the installed metadata (importing DeepSpeed, DALI and
# friends would take seconds); whether they import is what the stages that use them find out.
OPTIONAL = {"triton": "triton", "numpy": "numpy", "nvidia.dali": "nvidia-dali-cuda130", "deepspeed": "deepspeed",
            "av": "av", "pyarrow": "pyarrow", "yaml": "pyyaml", "safetensors": "safetensors", "tqdm": "tqdm",
            "matplotlib": "matplotlib", "tensorboard": "tensorboard", "xformers": "xformers",
            "pydantic": "pydantic", "hjson": "hjson", "pytest": "pytest", "sklearn": "scikit-learn", "PIL": "pillow"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--copy-mib", type=int, default=None, help="MiB copied device-to-device (0 = skip; "
                   "default 1024 on CUDA, 64 on CPU)")
    p.add_argument("--matmul", type=int, default=None, help="n of the n x n x n matmul (0 = skip; default 8192 bf16 "
                   "on CUDA, 512 fp32 on CPU)")
    return p.parse_args(argv)


def gpu_slug(name: str | None) -> str:
    """A short file-name tag for a device name: 'NVIDIA H100 80GB HBM3' -> 'h100'; no GPU -> 'cpu'."""
    if not name:
        return "cpu"
    known = re.search(r"\b(GH200|GB200|B200|B100|H200|H100|H800|A100|A800|L40S|L40|A10G|A10|L4|V100|T4)\b", name)
    if known:
        return known.group(1).lower()
    rtx = re.search(r"RTX\s*(PRO\s*)?(\d{4})", name, re.I)
    if rtx:
        return "rtx" + rtx.group(2)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return re.sub(r"^nvidia-", "", slug)[:40] or "gpu"


def nvidia_smi() -> dict:
    """Name, driver, memory and clocks from nvidia-smi (no CUDA context is opened for this)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    fields = "name,driver_version,memory.total,clocks.max.sm,clocks.max.memory,power.limit"
    try:
        out = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    if not out:
        return {}
    values = [v.strip() for v in out[0].split(",")]
    return dict(zip(fields.split(","), values)) | {"count": len(out)}


def package_versions() -> dict:
    """Version of each optional package where its module is on the path, else 'absent'."""
    import importlib.metadata
    import importlib.util

    versions = {}
    for module, dist in OPTIONAL.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            versions[module] = "absent"
            continue
        try:
            versions[module] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[module] = "present (no metadata)"
    return versions


def shared_library(name: str) -> str | None:
    """Where the dynamic loader finds a library (e.g. the driver's libnvcuvid for NVDEC), or None."""
    try:
        ctypes.CDLL(name)
    except OSError:
        return None
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            if name.split(".so")[0] in line and "/" in line:
                return line.split()[-1]
    except OSError:
        pass
    return "found"


def measure(torch, device, copy_mib: int, matmul: int) -> dict:
    """The copy rate (GB/s, read + write) and a bf16 matmul rate (TFLOP/s) on `device`."""
    out = {}
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    if copy_mib > 0:
        n = copy_mib * 2**20
        src = torch.ones(n, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        dst.copy_(src)
        best = float("inf")
        for _ in range(20):
            sync()
            start = time.perf_counter()
            dst.copy_(src)
            sync()
            best = min(best, time.perf_counter() - start)
        out["copy_gbps"] = round(2 * n / best / 1e9, 1)
        out["copy_mib"] = copy_mib
        del src, dst
    if matmul > 0:
        dtype = torch.bfloat16 if cuda else torch.float32
        a = torch.randn(matmul, matmul, device=device, dtype=dtype)
        b = torch.randn(matmul, matmul, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        sync()
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        sync()
        seconds = (time.perf_counter() - start) / 10
        out["matmul_n"] = matmul
        out["matmul_dtype"] = str(dtype).replace("torch.", "")
        out["matmul_tflops"] = round(2 * matmul**3 / seconds / 1e12, 1)
        del a, b
    return out


def collect(args) -> dict:
    import torch

    info = {"time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
            "executable": sys.executable, "host_cpus": os.cpu_count(), "platform": platform.platform(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"), "packages": package_versions(),
            "nvidia_smi": nvidia_smi(), "libnvcuvid": shared_library("libnvcuvid.so.1"),
            "libcuda": shared_library("libcuda.so.1")}
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if not cuda:
        torch.set_num_threads(1)                          # CPU: a tiny matmul, no thread barriers
    if cuda:
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}",
                    sm_count=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                    l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
                    bf16=torch.cuda.is_bf16_supported())
        from engine.training.metrics import peak_flops
        peak = peak_flops(device)
        info["datasheet_bf16_tflops"] = None if peak is None else peak / 1e12
    else:
        info["gpu"] = None
    info["slug"] = gpu_slug(info["gpu"])
    copy_mib = args.copy_mib if args.copy_mib is not None else (1024 if cuda else 64)
    matmul = args.matmul if args.matmul is not None else (8192 if cuda else 512)
    info["measured"] = measure(torch, device, copy_mib, matmul)
    return info


def summary(info: dict) -> str:
    smi = info.get("nvidia_smi") or {}
    m = info.get("measured", {})
    lines = [f"device: {info.get('gpu') or 'no GPU'} (slug {info['slug']}), driver {smi.get('driver_version', '?')}, "
             f"{info.get('sm_count', '?')} SMs, {info.get('memory_gib', '?')} GiB, compute capability "
             f"{info.get('capability', '?')}",
             f"python {info['python']}, torch {info['torch']} (CUDA {info['torch_cuda']}), triton "
             f"{info['packages'].get('triton')}, numpy {info['packages'].get('numpy')}, TRITON_INTERPRET="
             f"{info['TRITON_INTERPRET']}",
             f"DALI {info['packages'].get('nvidia.dali')}, DeepSpeed {info['packages'].get('deepspeed')}, "
             f"PyAV {info['packages'].get('av')}; libnvcuvid {info['libnvcuvid'] or 'not found'}",
             f"measured: copy {m.get('copy_gbps', '-')} GB/s (read+write), {m.get('matmul_dtype', '')} matmul "
             f"{m.get('matmul_tflops', '-')} TFLOP/s; datasheet bf16 {info.get('datasheet_bf16_tflops', '-')} TFLOP/s"]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    info = collect(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info, indent=2) + "\n")
    print(summary(info), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
