"""Wheels (and the shards) for an offline GPU machine, in parts small enough to travel one per call.

Here (a machine with pip and the network):

    python benchmarks/gpu/wheels.py prepare          # download/build into .whl/files, cut .whl/parts/part-N.bin
    python benchmarks/gpu/wheels.py verify           # sha256 of every part and file, sizes under the limit
    python benchmarks/gpu/wheels.py plan             # the device calls: which part each one carries

There (no network; the suite does this itself, `benchmarks/gpu/run.sh` calls it on every run):

    python3 benchmarks/gpu/wheels.py stash           # copy the parts that came with this call to WORK/stash
    python3 benchmarks/gpu/wheels.py install         # reassemble, verify, pip install --no-deps --target WORK/site
    export PYTHONPATH=$WORK/site:$PYTHONPATH         # the image's torch/triton/numpy stay as they are

What is fetched is listed, pinned, in benchmarks/gpu/wheels.txt (group, requirement, wheel or sdist). All
files are concatenated, in that order, into one byte stream that is cut into parts of --part-mib MiB;
.whl/parts/MANIFEST.json gives every file's offset, size and sha256 and every part's sha256, so that a
file is usable as soon as the parts it spans are there, whatever arrived before. Only the standard library
is used here, so this file runs on the bare GPU image. Nothing named torch, triton or numpy is ever
installed, and a wheel whose distribution the image already has at the same or a newer version is skipped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIST = Path(__file__).resolve().parent / "wheels.txt"
DEFAULT_OUT = REPO / ".whl"
DEFAULT_WORK = Path(os.environ.get("VJEPA_GPU_WORK", "/tmp/vjepa-gpu"))
DEFAULT_SHARDS = REPO / "data" / "shards-gpu-mini"
SHARD_PARTS = ("synth-ucf", "synth-ssv2", "synth-in")   # the loader's synth mix (benchmarks/loader.py)
CARRY_LIMIT_MIB = 64                                     # what one device call may carry, working tree included
PART_MIB = 60
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
NEVER = {"torch", "triton", "numpy"}                    # the image's own builds stay
CHUNK = 1 << 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_list(path: Path = LIST) -> list[dict]:
    """wheels.txt rows: group, name, version, how (wheel | sdist), why."""
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        group, requirement, how, *why = line.split(None, 3)
        name, _, version = requirement.partition("==")
        if not version or how not in ("wheel", "sdist"):
            raise SystemExit(f"{path}: {line!r}: want 'group name==version wheel|sdist why'")
        if canonical(name) in NEVER:
            raise SystemExit(f"{path}: {name} must come from the image, never from here")
        rows.append({"group": group, "name": name, "version": version, "how": how, "why": " ".join(why)})
    return rows


def wheel_dist(filename: str) -> tuple[str, str]:
    """(canonical distribution name, version) of a wheel file name."""
    name, version = filename.split("-")[:2]
    return canonical(name), version


# ------------------------------------------------------------------------------------------- prepare (here)
def pip_download(row: dict, dest: Path) -> Path:
    """The one wheel (or, for an sdist-only package, a wheel built from it) of a pinned requirement."""
    existing = find_wheel(dest, row["name"], row["version"])
    if existing is not None:
        return existing
    requirement = f"{row['name']}=={row['version']}"
    if row["how"] == "sdist":
        # A pure-Python package with no wheel on PyPI (DeepSpeed): build it here, no ops precompiled.
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", row["name"], "-w", str(dest),
               requirement]
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", PYTHON_VERSION, "--implementation", "cp", "-d", str(dest), requirement]
        for platform_tag in PLATFORMS:
            cmd += ["--platform", platform_tag]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    found = find_wheel(dest, row["name"], row["version"])
    if found is None:
        raise SystemExit(f"pip produced no wheel for {requirement} in {dest}")
    if row["how"] == "sdist" and not found.name.endswith("-py3-none-any.whl"):
        raise SystemExit(f"{found.name}: the wheel built from the sdist is not py3-none-any; it would not install there")
    return found


def find_wheel(folder: Path, name: str, version: str) -> Path | None:
    for path in sorted(folder.glob("*.whl")):
        dist, ver = wheel_dist(path.name)
        if dist == canonical(name) and ver == version:
            return path
    return None


def pack_shards(shards: Path, dest: Path) -> Path:
    """A deterministic tar of the synth parts the loader reads (no raw sources: the benchmarks skip them)."""
    missing = [p for p in SHARD_PARTS if not (shards / p / "index.parquet").is_file()]
    if missing:
        raise SystemExit(f"{shards}: no shards for {', '.join(missing)}; build them first:\n"
                         f"  python -m shards.build synth --root data/raw-gpu-mini --out {shards} --scale gpu-mini")
    out = dest / f"{shards.name}.tar"

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    tmp = out.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for part in SHARD_PARTS:
            for path in sorted((shards / part).rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=str(Path(shards.name) / path.relative_to(shards)), filter=clean)
    os.replace(tmp, out)
    return out


def tree_mib() -> float:
    """What a device call carries besides the part: tracked + untracked-not-ignored files of this checkout."""
    try:
        names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                               check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return 0.0
    total = 0
    for name in names:
        if name:
            try:
                total += (REPO / os.fsdecode(name)).stat().st_size
            except OSError:
                pass
    return total / 2**20


def prepare(args) -> int:
    files_dir, parts_dir = args.out / "files", args.out / "parts"
    files_dir.mkdir(parents=True, exist_ok=True)
    rows = read_list(args.list)
    entries = []
    for row in rows:
        path = pip_download(row, files_dir) if not args.skip_download else find_wheel(files_dir, row["name"], row["version"])
        if path is None:
            raise SystemExit(f"{row['name']}=={row['version']}: not in {files_dir} (run without --skip-download)")
        entries.append({"group": row["group"], "kind": "wheel", "name": path.name, "path": path,
                        "dist": canonical(row["name"]), "version": row["version"], "why": row["why"]})
    if args.shards is not None:
        tar = pack_shards(args.shards, files_dir)
        # Required groups first (the shards beside them), `extra` last.
        first_extra = next((i for i, e in enumerate(entries) if e["group"] == "extra"), len(entries))
        entries.insert(first_extra, {"group": "shards", "kind": "data", "name": tar.name, "path": tar,
                                     "why": f"synth {', '.join(SHARD_PARTS)} shards for the loader stages"})
    part_bytes = int(args.part_mib * 2**20)
    tree = tree_mib()
    if args.part_mib + tree + 0.1 > CARRY_LIMIT_MIB:
        print(f"warning: a {args.part_mib} MiB part + this checkout's {tree:.1f} MiB exceed the {CARRY_LIMIT_MIB} MiB "
              f"a device call carries; use a smaller --part-mib", file=sys.stderr)
    if parts_dir.exists():
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True)
    offset = 0
    manifest_files = []
    for e in entries:
        size = e["path"].stat().st_size
        manifest_files.append({k: v for k, v in e.items() if k != "path"} | {"size": size, "offset": offset,
                                                                             "sha256": sha256(e["path"])})
        offset += size
    total = offset
    parts = []
    writer, written, index = None, 0, 0
    for e in entries:
        with open(e["path"], "rb") as src:
            for block in iter(lambda: src.read(CHUNK), b""):
                while block:
                    if writer is None or written == part_bytes:
                        if writer is not None:
                            writer.close()
                        index += 1
                        writer, written = open(parts_dir / f"part-{index}.bin", "wb"), 0
                    take = block[:part_bytes - written]
                    writer.write(take)
                    written += len(take)
                    block = block[len(take):]
    if writer is not None:
        writer.close()
    start = 0
    for i in range(1, index + 1):
        path = parts_dir / f"part-{i}.bin"
        size = path.stat().st_size
        parts.append({"name": path.name, "offset": start, "size": size, "sha256": sha256(path)})
        start += size
    groups = {}
    for f in manifest_files:
        g = groups.setdefault(f["group"], {"files": [], "bytes": 0, "required": f["group"] != "extra"})
        g["files"].append(f["name"])
        g["bytes"] += f["size"]
    for g in groups.values():
        covering = [p["name"] for p in parts
                    if any(p["offset"] < f["offset"] + f["size"] and f["offset"] < p["offset"] + p["size"]
                           for f in manifest_files if f["name"] in g["files"])]
        g["parts"] = covering
    manifest = {"format": 1, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": PYTHON_VERSION,
                "platforms": list(PLATFORMS), "part_bytes": part_bytes, "total_bytes": total,
                "files": manifest_files, "parts": parts, "groups": groups}
    (parts_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(describe(manifest, tree))
    return verify_dir(parts_dir)


def describe(manifest: dict, tree: float | None = None) -> str:
    lines = [f"{len(manifest['files'])} files, {manifest['total_bytes'] / 2**20:.1f} MiB, in {len(manifest['parts'])} "
             f"parts of at most {manifest['part_bytes'] / 2**20:.0f} MiB"
             + (f" (+ {tree:.1f} MiB of checkout per call)" if tree is not None else "")]
    for p in manifest["parts"]:
        lines.append(f"  {p['name']}: {p['size'] / 2**20:.1f} MiB  sha256 {p['sha256'][:16]}...")
    for name, g in manifest["groups"].items():
        lines.append(f"  group {name}{'' if g['required'] else ' (optional)'}: {len(g['files'])} files, "
                     f"{g['bytes'] / 2**20:.1f} MiB, in {', '.join(g['parts'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- both sides: verification
def load_manifest(folder: Path) -> dict:
    path = folder / "MANIFEST.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (prepare the parts first: python benchmarks/gpu/wheels.py prepare)")
    return json.loads(path.read_text())


def present_parts(manifest: dict, folder: Path, check: bool = True) -> dict[str, Path]:
    """The parts in `folder` whose size (and sha256, if check) match the manifest."""
    good = {}
    for p in manifest["parts"]:
        path = folder / p["name"]
        if path.is_file() and path.stat().st_size == p["size"] and (not check or sha256(path) == p["sha256"]):
            good[p["name"]] = path
    return good


def file_parts(manifest: dict, f: dict) -> list[dict]:
    return [p for p in manifest["parts"] if p["offset"] < f["offset"] + f["size"] and f["offset"] < p["offset"] + p["size"]]


def verify_dir(folder: Path) -> int:
    """Every part present and intact, every file reassembles to its sha256, parts under the carry limit."""
    manifest = load_manifest(folder)
    good = present_parts(manifest, folder)
    bad = [p["name"] for p in manifest["parts"] if p["name"] not in good]
    for f in manifest["files"]:
        if all(p["name"] in good for p in file_parts(manifest, f)):
            h = hashlib.sha256()
            for block in read_range(manifest, good, f["offset"], f["size"]):
                h.update(block)
            if h.hexdigest() != f["sha256"]:
                bad.append(f["name"])
    too_big = [p["name"] for p in manifest["parts"] if p["size"] > CARRY_LIMIT_MIB * 2**20]
    print(f"verify {folder}: {len(good)}/{len(manifest['parts'])} parts intact; "
          f"{'every file checks' if not bad else 'BAD: ' + ', '.join(bad)}"
          + (f"; over the carry limit: {', '.join(too_big)}" if too_big else ""))
    return 1 if bad or too_big else 0


def read_range(manifest: dict, parts: dict[str, Path], offset: int, size: int):
    """Bytes [offset, offset + size) of the stream, read from the parts that hold them."""
    end = offset + size
    for p in manifest["parts"]:
        lo, hi = max(offset, p["offset"]), min(end, p["offset"] + p["size"])
        if lo >= hi:
            continue
        with open(parts[p["name"]], "rb") as fh:
            fh.seek(lo - p["offset"])
            left = hi - lo
            while left:
                block = fh.read(min(CHUNK, left))
                if not block:
                    raise OSError(f"{p['name']} is shorter than its manifest entry")
                left -= len(block)
                yield block


# ------------------------------------------------------------------------------------- the device side
def stash(parts_dir: Path, work: Path) -> dict:
    """Copy the manifest and every intact part that came with this call into WORK/stash (kept across calls
    while the machine stays up); returns {"have": [...], "missing": [...], "new": [...]}."""
    store = work / "stash"
    store.mkdir(parents=True, exist_ok=True)
    if not (parts_dir / "MANIFEST.json").is_file() and not (store / "MANIFEST.json").is_file():
        return {"have": [], "missing": [], "new": [], "note": "no wheel parts here or stashed"}
    if (parts_dir / "MANIFEST.json").is_file():
        incoming = load_manifest(parts_dir)
        if (store / "MANIFEST.json").is_file() and load_manifest(store)["parts"] != incoming["parts"]:
            shutil.rmtree(store)                                 # parts of another preparation: start over
            store.mkdir(parents=True)
        shutil.copyfile(parts_dir / "MANIFEST.json", store / "MANIFEST.json")
    manifest = load_manifest(store)
    new = []
    for name, path in present_parts(manifest, parts_dir).items() if parts_dir.is_dir() else []:
        if not (store / name).is_file():
            shutil.copyfile(path, store / name)
            new.append(name)
    have = present_parts(manifest, store, check=False)
    missing = [p["name"] for p in manifest["parts"] if p["name"] not in have]
    status = {"have": sorted(have), "missing": missing, "new": new}
    print(f"wheel parts: new {new or '-'}, stashed {sorted(have) or '-'}, missing {missing or '-'}", flush=True)
    return status


def image_version(dist: str, site: Path) -> str | None:
    """Version of `dist` installed outside WORK/site (the image's own), None if it has none."""
    import importlib.metadata
    paths = [p for p in sys.path if not Path(p or ".").resolve().is_relative_to(site.resolve())]
    for found in importlib.metadata.distributions(path=paths):
        if canonical(found.metadata["Name"] or "") == dist:
            return found.version
    return None


def newer_or_same(have: str, want: str) -> bool:
    try:
        from packaging.version import Version
        return Version(have) >= Version(want)
    except Exception:  # noqa: BLE001 - no packaging or an odd version: only equality counts
        return have == want


def install(work: Path) -> dict:
    """Reassemble the complete files of the stash, verify them, install the wheels of every complete group
    into WORK/site and unpack the shards into WORK/data. Idempotent; returns what is usable."""
    store, site, data, files = work / "stash", work / "site", work / "data", work / "files"
    if not (store / "MANIFEST.json").is_file():
        return {"groups": {}, "site": None, "note": "nothing stashed"}
    manifest = load_manifest(store)
    have = present_parts(manifest, store, check=False)
    marker = site / ".vjepa-installed.json"
    done = json.loads(marker.read_text()) if marker.is_file() else {}
    if done.get("manifest") != [p["sha256"] for p in manifest["parts"]]:
        done = {"manifest": [p["sha256"] for p in manifest["parts"]], "groups": {}}
    files.mkdir(parents=True, exist_ok=True)
    complete = {}
    for name, g in manifest["groups"].items():
        complete[name] = all(all(p["name"] in have for p in file_parts(manifest, f))
                             for f in manifest["files"] if f["group"] == name)
    to_install, skipped = [], []
    for f in manifest["files"]:
        if not complete[f["group"]] or done["groups"].get(f["group"]) == "installed":
            continue
        out = files / f["name"]
        if not (out.is_file() and out.stat().st_size == f["size"] and sha256(out) == f["sha256"]):
            h = hashlib.sha256()
            with open(out, "wb") as fh:
                for block in read_range(manifest, have, f["offset"], f["size"]):
                    h.update(block)
                    fh.write(block)
            if h.hexdigest() != f["sha256"]:
                out.unlink()
                raise RuntimeError(f"{f['name']}: sha256 mismatch after reassembly; the parts are damaged")
        if f["kind"] == "data":
            data.mkdir(parents=True, exist_ok=True)
            with tarfile.open(out) as tar:
                try:
                    tar.extractall(data, filter="data")
                except TypeError:                                 # Python without extraction filters
                    tar.extractall(data)
            continue
        if f["dist"] in NEVER:
            raise RuntimeError(f"{f['name']}: refusing to install {f['dist']} over the image's")
        current = image_version(f["dist"], site)
        if current is not None and newer_or_same(current, f["version"]):
            skipped.append(f"{f['dist']} (image has {current})")
            continue
        to_install.append(out)
    if to_install:
        site.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, to_install)]
        print(f"installing {len(to_install)} wheels into {site}" + (f"; skipped {', '.join(skipped)}" if skipped else ""),
              flush=True)
        subprocess.run(cmd, check=True)
        init = site / "nvidia" / "__init__.py"
        if init.parent.is_dir():
            # One `nvidia` package across the target and the image (cu13 runtime, cuDNN, ...): extend, not shadow.
            init.write_text("__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n")
    for name, ok in complete.items():
        if ok:
            done["groups"][name] = "installed"
    site.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(done, indent=1) + "\n")
    status = {"groups": {name: ("installed" if done["groups"].get(name) == "installed" else "incomplete")
                         for name in manifest["groups"]},
              "site": str(site), "data": str(data), "skipped": skipped,
              "missing_parts": [p["name"] for p in manifest["parts"] if p["name"] not in have]}
    print(f"wheel groups: {status['groups']}", flush=True)
    return status


FIRST_CALL = 'bash benchmarks/gpu/run.sh "$OUT"'
STASH_CALL = 'bash benchmarks/gpu/run.sh "$OUT" --stash-only'
LAST_CALL = 'bash benchmarks/gpu/run.sh "$OUT" --name suite-data --stages info,data'


def plan(parts_dir: Path) -> str:
    """The device calls, in order: each carries the manifest and one part. The first runs the core stages
    (they need no wheels), the optional parts come before the last required one, whose call installs
    everything and runs the data stages."""
    manifest = load_manifest(parts_dir)
    rel = parts_dir.relative_to(REPO) if parts_dir.is_relative_to(REPO) else parts_dir
    names = [p["name"] for p in manifest["parts"]]
    required = [n for n in names if any(n in g["parts"] for g in manifest["groups"].values() if g["required"])]
    optional = [n for n in names if n not in required]
    order = [(required[0], FIRST_CALL + "   # core stages: info, step, kernels, pytest (about 6.5 min)")]
    order += [(n, STASH_CALL) for n in required[1:-1]]
    order += [(n, STASH_CALL + "   # optional: " + ", ".join(
        f["name"].split("-")[0] for f in manifest["files"] if n in [p["name"] for p in file_parts(manifest, f)]
        and f["group"] == "extra") + " (pytest_data needs PyAV)") for n in optional]
    if len(required) > 1:
        order.append((required[-1], LAST_CALL + "   # installs, then loader, deepspeed, pytest_data (about 4 min)"))
    lines = [f"{len(names)} parts of at most {manifest['part_bytes'] / 2**20:.0f} MiB; the required groups "
             f"({', '.join(n for n, g in manifest['groups'].items() if g['required'])}) are in {', '.join(required)}. "
             f"Issue each call within 30 s of the last one's answer (the machine stays warm that long; the stash "
             f"lives in /tmp/vjepa-gpu on it)."]
    for i, (name, what) in enumerate(order, 1):
        lines.append(f"call {i}: carry [\"{rel}/MANIFEST.json\", \"{rel}/{name}\"]  ->  {what}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="download/build the wheels, pack the shards, cut the parts (here)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--list", type=Path, default=LIST)
    p.add_argument("--part-mib", type=float, default=PART_MIB)
    p.add_argument("--shards", type=Path, default=DEFAULT_SHARDS, help="synth shards to carry (gpu-mini scale)")
    p.add_argument("--no-shards", dest="shards", action="store_const", const=None)
    p.add_argument("--skip-download", action="store_true", help="use what is already in OUT/files")
    v = sub.add_parser("verify", help="sha256 of every part and file")
    v.add_argument("--parts", type=Path, default=DEFAULT_OUT / "parts")
    pl = sub.add_parser("plan", help="print the device calls and what each carries")
    pl.add_argument("--parts", type=Path, default=DEFAULT_OUT / "parts")
    s = sub.add_parser("stash", help="keep the parts that came with this call (device)")
    s.add_argument("--parts", type=Path, default=DEFAULT_OUT / "parts")
    s.add_argument("--work", type=Path, default=DEFAULT_WORK)
    i = sub.add_parser("install", help="reassemble, verify and install what is complete (device)")
    i.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare(args)
    if args.command == "verify":
        return verify_dir(args.parts)
    if args.command == "plan":
        print(plan(args.parts.resolve()))
        return 0
    if args.command == "stash":
        stash(args.parts, args.work)
        return 0
    status = install(args.work)
    if status.get("site"):
        print(f"export PYTHONPATH={status['site']}:$PYTHONPATH")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
