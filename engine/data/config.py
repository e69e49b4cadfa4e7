"""Typed loader configuration, validated before any shard is opened or any pipeline is built."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from engine.data.remote import RemoteConfig
from engine.fields import above, at_least, between, check_fields, field_doc, one_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODES = ("train", "eval")
DECODE_DEVICES = ("auto", "cpu", "mixed")
RESIZE_BACKENDS = ("auto", "dali", "torch")
DTYPES = ("float32", "float16", "bfloat16")


def resize_in_graph(resize_backend: str, decode_device: str) -> bool:
    """Whether the crop/flip/resize runs in the DALI graph, for a resolved decode device ('cpu'/'mixed')."""
    if resize_backend == "torch" and decode_device == "mixed":
        raise ValueError("resize_backend: 'torch' is the CPU path's resize; with decode_device='mixed' (or "
                         "'auto' on a GPU) use 'dali' or 'auto' (the resize then runs in DALI on the GPU)")
    return resize_backend == "dali" or (resize_backend == "auto" and decode_device == "mixed")


@dataclass
class DatasetSpec:
    """One shard folder taking part in the loader's mix."""

    root: str = field_doc(doc="Folder written by `python -m shards.build` (holds index.parquet, manifest.json "
                              "and the tars), or its fsspec URL (s3://, gs://, https://, file://; see `remote`).")
    split: str = field_doc("train", "Which split's rows of index.parquet to read.")
    weight: float = field_doc(1.0, "Mixing weight (normalised over all datasets); the paper's mixed regime is "
                                   "0.2/0.6/0.2.", valid=between(0.0, math.inf, low_open=True, high_open=True))
    frame_step: int = field_doc(2, "Training clips take every `frame_step`-th frame (paper mixed regime: 2). "
                                   "Ignored when `target_fps` is set.", valid=at_least(1))
    target_fps: float | None = field_doc(None, "If set, the step is `ceil(video_fps) // target_fps` per video, as "
                                               "V-JEPA 2 does (paper UCF regime: 16).", valid=above(0))
    name: str | None = field_doc(None, "Name used in logs and reports; defaults to the folder name.")

    @property
    def display_name(self) -> str:
        return self.name or Path(self.root).name

    def validate(self, where: str) -> None:
        if not self.root:
            raise ValueError(f"{where}.root: empty path")
        check_fields(self, f"{where}.")


@dataclass
class LoaderConfig:
    """Everything the loader needs; the recipe's `data:` section maps onto these fields."""

    datasets: list[DatasetSpec] = field_doc(doc="Datasets in order; a batch's `dataset_id` indexes this list.")
    batch_size: int = field_doc(8, "Clips per batch on this rank.", valid=at_least(1))
    num_frames: int = field_doc(16, "T, frames per clip; an image becomes T identical frames.", valid=at_least(1))
    crop_size: int = field_doc(224, "Output height and width in pixels.", valid=at_least(1))
    mode: str = field_doc("train", "`train`: weighted mix, random window, random resized crop, flip. `eval`: every "
                                   "sample once, in order, T frames uniformly over the whole video, centre crop, "
                                   "no flip.", valid=one_of(*MODES))
    seed: int = field_doc(0, "Root seed; every sample and augmentation parameter is a pure function of (seed, "
                             "epoch, rank, step).")
    rank: int = field_doc(0, "This process's rank among `world_size`.", valid=at_least(0))
    world_size: int = field_doc(1, "Number of ranks; each gets the same number of batches per epoch.",
                                valid=at_least(1))
    samples_per_epoch: int | None = field_doc(
        None, "Train mode: samples in one epoch over all ranks (default: the datasets' total size). Eval mode "
        "ignores it: an eval epoch is every sample once.", valid=at_least(1))
    infinite: bool = field_doc(False, "Never stop at an epoch end (step-based training); epochs still refresh the "
                                      "mix and order.")
    decode_device: str = field_doc(
        "auto", "`mixed` decodes on the GPU (NVDEC) and hands CUDA tensors to PyTorch; `cpu` decodes VP9/VP8/MJPEG "
        "on the CPU; `auto` picks `mixed` when CUDA is available.", valid=one_of(*DECODE_DEVICES))
    resize_backend: str = field_doc(
        "auto", "Where the crop, flip and resize run. `dali`: one resize in the DALI graph, after the decoder. "
        "`torch`: DALI only decodes; PyTorch crops, flips and resizes the uint8 frames (bilinear, antialiased) on "
        "the CPU, sample by sample. `auto`: `dali` on the GPU, `torch` on the CPU, where DALI's CPU resize costs "
        "half a decode and PyTorch's a tenth (benchmarks/results/loader-cpu.md).", valid=one_of(*RESIZE_BACKENDS))
    device_id: int | None = field_doc(None, "CUDA device for `mixed`; default: the LOCAL_RANK environment variable "
                                            "or 0.", valid=at_least(0))
    num_threads: int = field_doc(2, "DALI operator threads.", valid=at_least(1))
    num_workers: int = field_doc(2, "Python worker processes that read member bytes from the tars "
                                    "(external_source parallel=True); 0 reads in the main process.",
                                 valid=at_least(0))
    prefetch: int = field_doc(2, "Batches DALI prepares ahead of the one being consumed.", valid=at_least(1))
    dtype: str = field_doc("float32", "dtype of `video` in the batch: the model's dtype.", valid=one_of(*DTYPES))
    crop_scale: tuple[float, float] = field_doc(
        (0.3, 1.0), "Random resized crop: range [low, high] of the crop's area as a fraction of the frame.",
        valid=between(0.0, 1.0, low_open=True))
    crop_aspect: tuple[float, float] = field_doc(
        (0.75, 1.35), "Random resized crop: range [low, high] of width/height, sampled log-uniformly.",
        valid=above(0))
    flip_prob: float = field_doc(0.5, "Probability of a horizontal flip (train mode).", valid=between(0.0, 1.0))
    mean: tuple[float, float, float] = field_doc(IMAGENET_MEAN, "Per-channel mean on the [0, 1] scale (ImageNet).")
    std: tuple[float, float, float] = field_doc(IMAGENET_STD, "Per-channel std on the [0, 1] scale (ImageNet).",
                                                valid=above(0))
    max_recoveries: int = field_doc(8, "Pipeline errors tolerated in a row before the loader gives up (each one "
                                       "isolates bad samples).", valid=at_least(0))
    remote: RemoteConfig = field_doc(factory=RemoteConfig, doc="Reads from dataset roots that are URLs: "
                                     "concurrency, coalescing, retries, local cache (engine.data.remote).")

    @classmethod
    def from_dict(cls, mapping: dict, where: str = "data") -> "LoaderConfig":
        """Build from a recipe section (`datasets` as a list of dicts); unknown keys are one-line errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        spec_keys = {f.name for f in fields(DatasetSpec)}
        datasets = []
        for i, entry in enumerate(mapping.get("datasets") or []):
            if not isinstance(entry, dict):
                raise ValueError(f"{where}.datasets[{i}]: expected a mapping, got {type(entry).__name__}")
            bad = sorted(set(entry) - spec_keys)
            if bad:
                raise ValueError(f"{where}.datasets[{i}]: unknown key {bad[0]!r} (known: {', '.join(sorted(spec_keys))})")
            datasets.append(DatasetSpec(**entry))
        values = {k: v for k, v in mapping.items() if k != "datasets"}
        if isinstance(values.get("remote"), dict):
            values["remote"] = RemoteConfig(**values["remote"])
        for name in ("crop_scale", "crop_aspect", "mean", "std"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(datasets=datasets, **values).validate()

    def validate(self) -> "LoaderConfig":
        if not self.datasets:
            raise ValueError("datasets: at least one DatasetSpec is needed")
        for i, spec in enumerate(self.datasets):
            if not isinstance(spec, DatasetSpec):
                raise ValueError(f"datasets[{i}]: expected DatasetSpec, got {type(spec).__name__}")
            spec.validate(f"datasets[{i}]")
        check_fields(self)
        if self.rank >= self.world_size:
            raise ValueError(f"rank: must be in [0, world_size={self.world_size}), got {self.rank}")
        if self.decode_device != "auto":   # `auto` is checked once the loader has resolved it
            resize_in_graph(self.resize_backend, self.decode_device)
        for name in ("crop_scale", "crop_aspect"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: need low <= high, got {getattr(self, name)}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < self.batch_size * self.world_size:
            raise ValueError(f"samples_per_epoch: {self.samples_per_epoch} is less than one global batch "
                             f"({self.batch_size} x {self.world_size} ranks)")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean/std: need three values each")
        self.remote.validate()
        return self
