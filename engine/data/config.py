"""Typed loader configuration, validated before any shard is opened or any pipeline is built."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from engine.data.remote import RemoteConfig

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

    root: str
    """Folder written by `python -m shards.build` (holds index.parquet, manifest.json and the tars), or its
    fsspec URL (s3://, gs://, https://, file://; see `remote`)."""
    split: str = "train"
    """Which split's rows of index.parquet to read."""
    weight: float = 1.0
    """Mixing weight (normalised over all datasets); the paper's mixed regime is 0.2/0.6/0.2."""
    frame_step: int = 2
    """Training clips take every `frame_step`-th frame (paper mixed regime: 2). Ignored when `target_fps` is set."""
    target_fps: float | None = None
    """If set, the step is `ceil(video_fps) // target_fps` per video, as V-JEPA 2 does (paper UCF regime: 16)."""
    name: str | None = None
    """Name used in logs and reports; defaults to the folder name."""

    @property
    def display_name(self) -> str:
        return self.name or Path(self.root).name

    def validate(self, where: str) -> None:
        if not self.root:
            raise ValueError(f"{where}.root: empty path")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"{where}.weight: must be a positive number, got {self.weight!r}")
        if int(self.frame_step) != self.frame_step or self.frame_step < 1:
            raise ValueError(f"{where}.frame_step: must be an integer >= 1, got {self.frame_step!r}")
        if self.target_fps is not None and not self.target_fps > 0:
            raise ValueError(f"{where}.target_fps: must be > 0 or None, got {self.target_fps!r}")


@dataclass
class LoaderConfig:
    """Everything the loader needs; the recipe's `data:` section maps onto these fields."""

    datasets: list[DatasetSpec]
    """Datasets in order; a batch's `dataset_id` indexes this list."""
    batch_size: int = 8
    """Clips per batch on this rank."""
    num_frames: int = 16
    """T, frames per clip; an image becomes T identical frames."""
    crop_size: int = 224
    """Output height and width in pixels."""
    mode: str = "train"
    """`train`: weighted mix, random window, random resized crop, flip. `eval`: every sample once, in
    order, T frames uniformly over the whole video, centre crop, no flip."""
    seed: int = 0
    """Root seed; every sample and augmentation parameter is a pure function of (seed, epoch, rank, step)."""
    rank: int = 0
    """This process's rank among `world_size`."""
    world_size: int = 1
    """Number of ranks; each gets the same number of batches per epoch."""
    samples_per_epoch: int | None = None
    """Train mode: samples in one epoch over all ranks (default: the datasets' total size). Eval mode
    ignores it: an eval epoch is every sample once."""
    infinite: bool = False
    """Never stop at an epoch end (step-based training); epochs still refresh the mix and order."""
    decode_device: str = "auto"
    """`mixed` decodes on the GPU (NVDEC) and hands CUDA tensors to PyTorch; `cpu` decodes VP9/VP8/MJPEG
    on the CPU; `auto` picks `mixed` when CUDA is available."""
    resize_backend: str = "auto"
    """Where the crop, flip and resize run. `dali`: one resize in the DALI graph, after the decoder.
    `torch`: DALI only decodes; PyTorch crops, flips and resizes the uint8 frames (bilinear, antialiased)
    on the CPU, sample by sample. `auto`: `dali` on the GPU, `torch` on the CPU, where DALI's CPU resize
    costs half a decode and PyTorch's a tenth (benchmarks/results/loader-cpu.md)."""
    device_id: int | None = None
    """CUDA device for `mixed`; default: the LOCAL_RANK environment variable or 0."""
    num_threads: int = 2
    """DALI operator threads."""
    num_workers: int = 2
    """Python worker processes that read member bytes from the tars (external_source parallel=True)."""
    prefetch: int = 2
    """Batches DALI prepares ahead of the one being consumed."""
    dtype: str = "float32"
    """dtype of `video` in the batch: the model's dtype."""
    crop_scale: tuple[float, float] = (0.3, 1.0)
    """Random resized crop: range of the crop's area as a fraction of the frame."""
    crop_aspect: tuple[float, float] = (0.75, 1.35)
    """Random resized crop: range of width/height, sampled log-uniformly."""
    flip_prob: float = 0.5
    """Probability of a horizontal flip (train mode)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel mean on the [0, 1] scale (ImageNet)."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel std on the [0, 1] scale (ImageNet)."""
    max_recoveries: int = 8
    """Pipeline errors tolerated in a row before the loader gives up (each one isolates bad samples)."""
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    """Reads from dataset roots that are URLs: concurrency, coalescing, retries, local cache (engine.data.remote)."""

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
        for name in ("batch_size", "num_frames", "crop_size", "world_size", "num_threads", "prefetch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers: must be an integer >= 0, got {self.num_workers!r}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank: must be in [0, world_size={self.world_size}), got {self.rank}")
        if self.mode not in MODES:
            raise ValueError(f"mode: must be one of {MODES}, got {self.mode!r}")
        if self.decode_device not in DECODE_DEVICES:
            raise ValueError(f"decode_device: must be one of {DECODE_DEVICES}, got {self.decode_device!r}")
        if self.resize_backend not in RESIZE_BACKENDS:
            raise ValueError(f"resize_backend: must be one of {RESIZE_BACKENDS}, got {self.resize_backend!r}")
        if self.decode_device != "auto":   # `auto` is checked once the loader has resolved it
            resize_in_graph(self.resize_backend, self.decode_device)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {DTYPES}, got {self.dtype!r}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale: need 0 < low <= high <= 1, got {self.crop_scale}")
        lo, hi = self.crop_aspect
        if not 0 < lo <= hi:
            raise ValueError(f"crop_aspect: need 0 < low <= high, got {self.crop_aspect}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob: must be in [0, 1], got {self.flip_prob}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < self.batch_size * self.world_size:
            raise ValueError(f"samples_per_epoch: {self.samples_per_epoch} is less than one global batch "
                             f"({self.batch_size} x {self.world_size} ranks)")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean/std: need three values each, std > 0")
        self.remote.validate()
        return self
