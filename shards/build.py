"""Turn a raw dataset in its published layout into WebDataset shards + index.parquet + manifest.json.

    python -m shards.build <source> --root RAW --out OUT [--split ...] [--workers N] ...

Every layout check runs before any media work; a structural problem prints one line and exits 2.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

from shards import remote_out
from shards.catalog import check_out_compatible, keys_of_other_splits, read_index, split_missing_parts
from shards.errors import LayoutError
from shards.items import SourceListing, safe_key
from shards.executors import executor_pool
from shards.pipeline import ShardLimits, SplitSummary, build_split, split_fingerprint
from shards.safefiles import refuse_links
from shards.sources import ADAPTERS, AdapterOptions
from shards.transcode import MAX_GOP, TranscodeSettings

SOURCES = [*ADAPTERS, "synth"]

EPILOG = """\
sources and the layout each expects under --root:
  ucf101       UCF-101/<Class>/*.avi + ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt
               splits: train, test (of official split --ucf-split 1|2|3)
  ssv2         20bn-something-something-v2/<id>.webm + labels/{labels,train,validation}.json
               splits: train, val (validation.json)
  imagenet100  train/<wnid>/*.JPEG, val/<wnid>/*.JPEG + Labels.json or imagenet100.txt (or --class-list)
               splits: train, val
  diving48     rgb/<vid_name>.mp4 + Diving48_V2_{train,test}.json + Diving48_vocab.json
               splits: train, test
  folder       <split>/<class>/<video or image files>; splits: the sub-folders of --root
  synth        generates the synth suite's four raw trees under --root (skipped when already there),
               then builds OUT/synth-ucf, OUT/synth-ssv2, OUT/synth-in, OUT/synth-diving

examples:
  python -m shards.build ucf101 --root /data/ucf101 --out /data/shards/ucf101 --ucf-split 1
  python -m shards.build ssv2 --root /data/ssv2 --out /data/shards/ssv2 --split train --workers 16
  python -m shards.build imagenet100 --root /data/in100 --out /data/shards/in100 --class-list /data/in100.txt
  python -m shards.build folder --root /data/mine --out /data/shards/mine --dataset-name mine
  python -m shards.build synth --root data/raw --out data/shards --scale demo --seed 0

OUT receives <split>-000000.tar ..., index.parquet and manifest.json (docs/contracts.md section 1).
Building another split into the same OUT merges; rerunning an interrupted build with the same
arguments finishes it. Clips become VP9 (DALI decodes it on CPU and GPU; --codec h264 only for
GPU-only fleets), keyframe every <= 16 frames, constant frame rate, short side <= --short-side.
Sources that cannot be used (missing, broken, a video under 4 frames, a split-file entry with a space
in its name) are rejected with a reason in manifest.json; a class left with no sample in a split is
a warning, or an error with --strict.
Exit status: 0 built (rejected sources are listed in manifest.json), 1 --strict and a class has no
samples, 2 bad arguments or layout (--strict: also a class with no file on disk), 130/143 interrupted
by SIGINT/SIGTERM (rerun the same command to finish).
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shards.build", description=__doc__.splitlines()[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", choices=SOURCES, help="layout of the raw data (see below)")
    parser.add_argument("--root", type=Path, required=True, metavar="RAW", help="folder holding the raw dataset")
    parser.add_argument("--out", type=remote_out.out_location, required=True, metavar="OUT",
                        help="folder receiving shards and index, or an fsspec URL (s3://, gs://: built in a local "
                             "staging folder, then uploaded; shards/remote_out.py)")
    parser.add_argument("--staging", metavar="DIR", help="local staging folder for an --out URL (default: under "
                                                         "~/.cache/vjepa-engine/staging)")
    parser.add_argument("--split", action="append", metavar="NAME",
                        help="split to build; repeat or comma-separate (default: every official split)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), metavar="N",
                        help="transcoding processes (default: all cores, %(default)s here)")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="where transcoding runs: local processes (default) or a Ray cluster (shards/executors.py; "
                             "same output bytes)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="--executor ray: cluster to join, e.g. auto or ray://head:10001 (default: $RAY_ADDRESS, "
                             "else a local Ray cluster with --workers CPUs)")
    parser.add_argument("--ray-ship-inputs", action="store_true",
                        help="--executor ray: send each source's bytes with its task (nodes without the raw tree "
                             "mounted at the same path)")
    parser.add_argument("--dataset-name", metavar="NAME",
                        help="dataset name in the index (default: the source name; folder: the root's name)")
    media = parser.add_argument_group("canonical clip")
    media.add_argument("--codec", choices=["vp9", "h264"], default="vp9",
                       help="vp9 (default, decodes on CPU and GPU) or h264 (GPU/NVDEC decode only)")
    media.add_argument("--container", choices=["mp4", "webm"], default="mp4", help="video container (default mp4)")
    media.add_argument("--short-side", type=int, default=256, metavar="PX",
                       help="cap on the shorter side; smaller inputs are not upscaled (default 256)")
    media.add_argument("--gop", type=int, default=MAX_GOP, metavar="FRAMES",
                       help=f"keyframe interval, 1..{MAX_GOP} (default {MAX_GOP})")
    media.add_argument("--crf", type=int, metavar="Q", help="quality (default: 30 for vp9, 23 for h264; lower = better)")
    media.add_argument("--jpeg-quality", type=int, default=90, metavar="Q",
                       help="quality of images that must be re-encoded (default 90)")
    sharding = parser.add_argument_group("shards")
    sharding.add_argument("--shard-size-mb", type=float, default=256.0, metavar="MB",
                          help="target tar size (default 256)")
    sharding.add_argument("--shard-max-samples", type=int, default=0, metavar="N",
                          help="also close a shard after N samples (default 0: no cap)")
    sharding.add_argument("--overwrite", action="store_true",
                          help="rebuild a split that OUT already holds from other arguments")
    sharding.add_argument("--quiet", action="store_true", help="no progress bar")
    sharding.add_argument("--strict", action="store_true",
                          help="fail when a class has no samples in a split (before any work if it has no "
                               "file on disk; after the build if rejects emptied it); default: a warning")
    specific = parser.add_argument_group("source-specific")
    specific.add_argument("--ucf-split", type=int, default=1, choices=[1, 2, 3],
                          help="ucf101: which official train/test split (default 1)")
    specific.add_argument("--class-list", type=Path, metavar="FILE",
                          help="imagenet100: class list file, if not found under RAW")
    specific.add_argument("--scale", choices=["demo", "gpu", "gpu-mini", "test"], default="demo",
                          help="synth: suite size: demo (CPU minutes), gpu (large), gpu-mini (a sliver of gpu "
                               "that travels to an offline GPU machine), test (tiny) (default demo)")
    specific.add_argument("--seed", type=int, default=0, help="synth: generator seed (default 0)")
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise LayoutError(f"--workers {args.workers}: expected 1 or more")
    if not 1 <= args.gop <= MAX_GOP:
        raise LayoutError(f"--gop {args.gop}: expected 1..{MAX_GOP} (the loader seeks to keyframes)")
    if args.short_side < 16:
        raise LayoutError(f"--short-side {args.short_side}: expected 16 or more pixels")
    if args.codec == "h264" and args.container == "webm":
        raise LayoutError("--codec h264 --container webm: WebM holds VP9 only; use --container mp4")
    if args.shard_size_mb <= 0 or args.shard_max_samples < 0:
        raise LayoutError("--shard-size-mb must be > 0 and --shard-max-samples >= 0")
    if not 1 <= args.jpeg_quality <= 95:
        raise LayoutError(f"--jpeg-quality {args.jpeg_quality}: expected 1..95")
    if args.crf is not None and not 0 <= args.crf <= 63:
        raise LayoutError(f"--crf {args.crf}: expected 0..63")


def requested_splits(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def transcode_settings(args: argparse.Namespace) -> TranscodeSettings:
    return TranscodeSettings(codec=args.codec, container=args.container, short_side=args.short_side,
                             gop=args.gop, crf=args.crf, jpeg_quality=args.jpeg_quality)


def output_arguments(args: argparse.Namespace, source: str, root: Path, dataset: str) -> dict:
    """The arguments that decide the output bytes (recorded in the manifest; workers do not matter)."""
    return {"source": source, "root": str(root.resolve()), "dataset": dataset, "codec": args.codec,
            "container": args.container, "short_side": args.short_side, "gop": args.gop, "crf": args.crf,
            "jpeg_quality": args.jpeg_quality, "shard_size_mb": args.shard_size_mb,
            "shard_max_samples": args.shard_max_samples, "ucf_split": args.ucf_split if source == "ucf101" else None,
            "class_list": str(args.class_list) if args.class_list and source == "imagenet100" else None}


def plan_dataset(source: str, root: Path, out: Path, dataset: str, splits: list[str] | None,
                 args: argparse.Namespace) -> tuple[SourceListing, list[str], dict]:
    """All checks, no work: the listing, the splits that need building, and the output arguments."""
    refuse_links(out)  # nothing is ever written through a link planted in OUT
    options = AdapterOptions(ucf_split=args.ucf_split, class_list=args.class_list, exclude=out)
    listing = ADAPTERS[source].scan(root, splits, options)
    listing = replace(listing, dataset=dataset)
    build_args = output_arguments(args, source, root, dataset)
    manifest = check_out_compatible(out, listing.dataset, listing.classes)
    seen: dict[str, str] = {}
    to_build = []
    for split, items in listing.splits.items():
        other_keys = keys_of_other_splits(out, split)
        for item in items:
            if item.key in other_keys or seen.get(item.key, split) != split:
                raise LayoutError(f"{root / item.source}: sample key {item.key!r} already belongs to another split "
                                  f"of {out}; keys must be unique within OUT")
            seen[item.key] = split
        built = (manifest or {}).get("splits", {}).get(split)
        journal = out / f".building-{split}"
        if built is not None and not journal.exists():
            if built.get("build") == split_fingerprint(build_args, split, items, listing.rejects.get(split, [])):
                missing = split_missing_parts(out, split, built, tars_here=getattr(args, "staged_url", None) is None)
                if missing is None:
                    print(f"{dataset}/{split}: already built in {out} with these arguments; nothing to do")
                    continue
                print(f"{dataset}/{split}: in {out / 'manifest.json'} but not whole ({missing}); building it again")
            elif not args.overwrite:
                raise LayoutError(f"{out / 'manifest.json'}: split {split!r} was built from other arguments or "
                                  "other source files; pass --overwrite to rebuild it or use a new --out")
        to_build.append(split)
    if args.strict:
        check_classes_on_disk(listing, root, to_build)
    return listing, to_build, build_args


def check_classes_on_disk(listing: SourceListing, root: Path, splits: list[str]) -> None:
    """--strict, before any work: every class needs at least one listed file that exists."""
    for split in splits:
        present = {item.label for item in listing.splits[split] if item.path.is_file()}
        missing = [name for label, name in enumerate(listing.classes) if label not in present]
        if missing:
            names = ", ".join(repr(name) for name in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise LayoutError(f"{root}: --strict: {len(missing)} class(es) have no file on disk in split "
                              f"{split!r} ({names}); add their files, fix the split list, or drop --strict")


MAX_CLASS_WARNINGS = 10


def empty_classes(listing: SourceListing, out: Path) -> list[tuple[str, str, int]]:
    """(split, class, sources listed) of each class with no sample in a split of this build, read from
    OUT's index, so a split built by an earlier run of the same command is checked too."""
    index = read_index(out)
    counts: Counter = Counter()
    if index is not None:
        counts.update(zip(index.column("split").to_pylist(), index.column("label").to_pylist()))
    empty = []
    for split, items in listing.splits.items():
        listed = Counter(item.label for item in items)
        empty += [(split, name, listed[label]) for label, name in enumerate(listing.classes)
                  if counts[(split, label)] == 0]
    return empty


def check_classes(planned: list[tuple[SourceListing, list[str], dict, Path]], strict: bool) -> bool:
    """Warn about each class left with no samples (one line each, up to MAX_CLASS_WARNINGS per split);
    with --strict, one error line instead. False when --strict fails."""
    failures = []
    for listing, _, _, out in planned:
        empty = empty_classes(listing, out)
        failures += [f"{listing.dataset}/{split} {name!r}" for split, name, _ in empty]
        if strict:
            continue
        shown: Counter = Counter()
        for split, name, listed in empty:
            shown[split] += 1
            if shown[split] <= MAX_CLASS_WARNINGS:
                why = f"all {listed} listed sources rejected" if listed else "no source listed"
                print(f"warning: {listing.dataset}/{split}: class {name!r} has no samples ({why}; "
                      f"see rejects in {out / 'manifest.json'})", file=sys.stderr)
        for split, count in shown.items():
            if count > MAX_CLASS_WARNINGS:
                print(f"warning: {listing.dataset}/{split}: {count - MAX_CLASS_WARNINGS} more classes have no "
                      "samples", file=sys.stderr)
    if strict and failures:
        names = ", ".join(failures[:5]) + (", ..." if len(failures) > 5 else "")
        print(f"error: --strict: {len(failures)} class(es) have no samples ({names}); fix the sources rejected "
              "in manifest.json and rerun, or drop --strict", file=sys.stderr)
        return False
    return True


def human_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def report(summary: SplitSummary, out: Path) -> None:
    resumed = " (resumed an interrupted build)" if summary.status == "resumed" else ""
    print(f"{summary.dataset}/{summary.split}: {summary.count} samples in {summary.shards} shards "
          f"({human_bytes(summary.bytes)}) -> {out}{resumed}; {len(summary.rejects)} rejected")
    if summary.count == 0 and summary.rejects:
        print(f"  warning: every source of {summary.dataset}/{summary.split} was rejected; check the files below")
    for reject in summary.rejects[:5]:
        print(f"  rejected {reject['source']}: {reject['reason']}")
    if len(summary.rejects) > 5:
        print(f"  ... {len(summary.rejects) - 5} more in {out / 'manifest.json'}")


def build_planned(planned: list[tuple[SourceListing, list[str], dict, Path]], args: argparse.Namespace) -> list[SplitSummary]:
    settings = transcode_settings(args)
    limits = ShardLimits(int(args.shard_size_mb * 1_000_000), args.shard_max_samples)
    summaries = []
    with executor_pool(args) as pool:  # a local process pool, or Ray tasks (--executor ray)
        for listing, splits, build_args, out in planned:
            for split in splits:
                summary = build_split(out, listing, split, settings, limits, build_args, pool=pool,
                                      progress=not args.quiet)
                report(summary, out)
                summaries.append(summary)
    return summaries


def plan(args: argparse.Namespace) -> list[tuple[SourceListing, list[str], dict, Path]]:
    check_arguments(args)
    if args.source == "synth":
        try:  # the generator (and what it draws with) is imported only when asked for
            from shards.synth.plan import plan_synth
        except ImportError as error:
            raise LayoutError(f"the synth generator (shards.synth) cannot be imported: {error}") from None
        return plan_synth(args, plan_dataset)
    dataset = args.dataset_name or (safe_key(args.root.resolve().name) if args.source == "folder" else args.source)
    if safe_key(dataset) != dataset:
        raise LayoutError(f"--dataset-name {dataset!r}: expected letters, digits, '_' or '-'")
    listing, splits, build_args = plan_dataset(args.source, args.root, args.out, dataset,
                                               requested_splits(args.split), args)
    return [(listing, splits, build_args, args.out)]


def run(args: argparse.Namespace) -> list[SplitSummary]:
    return build_planned(plan(args), args)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that a terminated build stops like an interrupted one:
    the pool is stopped, the partial shard dropped, and one line said (no traceback from anyone)."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        staged = remote_out.stage(args)  # None unless --out is a URL
        planned = plan(args)
        build_planned(planned, args)
        if staged is not None:
            print(f"uploaded {len(staged.publish())} files to {staged.url}")
        return 0 if check_classes(planned, args.strict) else 1
    except (LayoutError, remote_out.storage.StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to finish the build", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated (SIGTERM); rerun the same command to finish the build", file=sys.stderr)
        return 143
    finally:
        if in_main_thread:  # None: the previous handler was not set from Python
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    sys.exit(main())
