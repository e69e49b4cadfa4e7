"""The index-driven sampler: which sample, which frames, which crop and flip, for every slot of every batch.

`ClipSampler.plan(step)` is a pure function of (seed, epoch, rank, step) and the set of samples known
to be undecodable. It holds no cursor and no RNG state, so the loader's whole resumable state is its
step counter (plus that skip set), and a worker process anywhere can compute any batch on its own.

Epoch layout (train): the epoch is a stream of `samples_per_epoch` global positions. The dataset of
each position is a shuffled, stratified assignment (each dataset gets round(weight * N) positions, so
the realised mix equals the weights per epoch, and is close to them over any long window). A dataset's
k-th position takes row `perm_c[k mod n]` of a fresh permutation per pass c, so rows are drawn without
replacement within a pass. Rank r's batch s is the block of positions starting at (s * world + r) * B,
so ranks are disjoint and all get `steps_per_epoch` full batches.

Epoch layout (eval): datasets are concatenated in order, every sample appears once; the last global
batch is padded with repeats marked `valid=False`, so every rank still gets the same number of batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.data.config import LoaderConfig
from engine.data.index import DatasetIndex

# Stream tags keep the RNG streams for different decisions independent of each other.
_MIX_STREAM, _PERM_STREAM, _AUG_STREAM, _SUBSTITUTE_STREAM = 11, 23, 37, 41


@dataclass
class BatchPlan:
    """Everything about one batch that is decided before any byte is read."""

    step: int                # global step (batches consumed by this rank since epoch 0)
    epoch: int
    position: np.ndarray     # int64 [B]   global position in the epoch's stream
    dataset_id: np.ndarray   # int64 [B]   index into LoaderConfig.datasets
    row: np.ndarray          # int64 [B]   row within that dataset's index
    valid: np.ndarray        # bool  [B]   False for eval padding and substitutes in eval
    is_image: np.ndarray     # bool  [B]
    frames: np.ndarray       # int32 [B, T] frame indices to decode (edge-padded)
    roi_start: np.ndarray    # float32 [B, 2] (y, x) in stored pixels; x > roi_end x means flipped
    roi_end: np.ndarray      # float32 [B, 2]
    flip: np.ndarray         # bool  [B]
    substituted: np.ndarray  # int64 [B]   row that was skipped for this slot, -1 if none


def clip_frame_step(spec_frame_step: int, target_fps: float | None, video_fps: float) -> int:
    """The recipe's step, or V-JEPA 2's fps rule `ceil(video_fps) // target_fps` (at least 1)."""
    if target_fps is None or video_fps <= 0:
        return spec_frame_step
    return max(1, math.ceil(video_fps) // int(round(target_fps)))


def train_frame_indices(rng: np.random.Generator, num_frames: int, clip_len: int, step: int) -> np.ndarray:
    """A random window of `clip_len` frames at `step`; short videos repeat their last frame."""
    span = (clip_len - 1) * step + 1
    start = int(rng.integers(0, max(num_frames - span, 0) + 1))
    return np.minimum(start + step * np.arange(clip_len), num_frames - 1).astype(np.int32)


def eval_frame_indices(num_frames: int, clip_len: int) -> np.ndarray:
    """`clip_len` frames spread uniformly from the first to the last (repeats when the video is short)."""
    return np.round(np.linspace(0, num_frames - 1, clip_len)).astype(np.int32)


def random_resized_crop(rng: np.random.Generator, height: int, width: int,
                        scale: tuple[float, float], aspect: tuple[float, float]) -> tuple[int, int, int, int]:
    """(y0, x0, h, w): area fraction uniform in `scale`, width/height log-uniform in `aspect`."""
    area = height * width
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * ratio)))
        h = int(round(math.sqrt(target_area / ratio)))
        if 0 < w <= width and 0 < h <= height:
            y0 = int(rng.integers(0, height - h + 1))
            x0 = int(rng.integers(0, width - w + 1))
            return y0, x0, h, w
    # Rejection failed (extreme frame shape): the largest centred crop whose aspect is in range.
    frame_ratio = width / height
    if frame_ratio < aspect[0]:
        w, h = width, int(round(width / aspect[0]))
    elif frame_ratio > aspect[1]:
        w, h = int(round(height * aspect[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def centre_square(height: int, width: int) -> tuple[int, int, int, int]:
    """Short-side resize to S then centre crop S x S == the centred square of side min(H, W), resized."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def stratified_counts(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to `total`, proportional to `weights` (largest remainder)."""
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    remainder = total - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
    return counts


class ClipSampler:
    """Plans batches for one rank. Picklable: DALI's worker processes each hold a copy."""

    def __init__(self, cfg: LoaderConfig, indexes: list[DatasetIndex], skipped: frozenset[tuple[int, int]] = frozenset()):
        self.cfg = cfg
        self.indexes = indexes
        self.skipped = frozenset(skipped)
        self.sizes = np.array([len(ix) for ix in indexes], np.int64)
        self.weights = np.array([s.weight for s in cfg.datasets], np.float64)
        self.weights /= self.weights.sum()
        self.global_batch = cfg.batch_size * cfg.world_size
        if cfg.mode == "eval":
            self.samples_per_epoch = int(self.sizes.sum())
            self.steps_per_epoch = -(-self.samples_per_epoch // self.global_batch)
        else:
            self.samples_per_epoch = int(cfg.samples_per_epoch or self.sizes.sum())
            self.steps_per_epoch = self.samples_per_epoch // self.global_batch
            if self.steps_per_epoch == 0:
                raise ValueError(f"an epoch of {self.samples_per_epoch} samples is less than one global batch "
                                 f"({cfg.batch_size} x {cfg.world_size} ranks)")
        self._offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self._epoch_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        usable = [int(n - sum(1 for d, _ in self.skipped if d == i)) for i, n in enumerate(self.sizes)]
        empty = [ix.name for ix, n in zip(indexes, usable) if n <= 0]
        if empty:
            raise ValueError(f"every sample of dataset {empty[0]} failed to decode")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_epoch_cache"] = {}
        return state

    # ---------------------------------------------------------------- which sample goes where
    def _epoch_assignment(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset_id [N], row [N]) for every global position of a train epoch."""
        if epoch in self._epoch_cache:
            return self._epoch_cache[epoch]
        seed, n_total = self.cfg.seed, self.samples_per_epoch
        counts = stratified_counts(self.weights, n_total)
        mix_rng = np.random.default_rng([seed, epoch, _MIX_STREAM])
        dataset_id = mix_rng.permutation(np.repeat(np.arange(len(self.sizes)), counts))
        row = np.empty(n_total, np.int64)
        for d, n in enumerate(self.sizes):
            where = np.flatnonzero(dataset_id == d)
            occurrence = np.arange(len(where))
            passes = occurrence // n
            for p in np.unique(passes):
                perm = np.random.default_rng([seed, epoch, _PERM_STREAM, d, int(p)]).permutation(n)
                in_pass = passes == p
                row[where[in_pass]] = perm[occurrence[in_pass] % n]
        if len(self._epoch_cache) > 2:  # workers only ever need the current and the next epoch
            self._epoch_cache.pop(min(self._epoch_cache))
        self._epoch_cache[epoch] = (dataset_id, row)
        return dataset_id, row

    def _substitute(self, epoch: int, position: int, dataset: int) -> int:
        """A decodable row of the same dataset, chosen deterministically for a skipped slot."""
        rng = np.random.default_rng([self.cfg.seed, epoch, _SUBSTITUTE_STREAM, position])
        while True:
            row = int(rng.integers(0, self.sizes[dataset]))
            if (dataset, row) not in self.skipped:
                return row

    # ---------------------------------------------------------------- the plan
    def sources(self, step: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(epoch, position, dataset_id, row, valid, substituted) of a batch: which samples, no augmentation."""
        cfg = self.cfg
        epoch, step_in_epoch = divmod(int(step), self.steps_per_epoch)
        first = (step_in_epoch * cfg.world_size + cfg.rank) * cfg.batch_size
        position = np.arange(first, first + cfg.batch_size, dtype=np.int64)
        if cfg.mode == "eval":
            valid = position < self.samples_per_epoch
            flat = position % self.samples_per_epoch
            dataset_id = (np.searchsorted(self._offsets, flat, side="right") - 1).astype(np.int64)
            row = flat - self._offsets[dataset_id]
        else:
            valid = np.ones(cfg.batch_size, bool)
            all_datasets, all_rows = self._epoch_assignment(epoch)
            dataset_id, row = all_datasets[position].copy(), all_rows[position].copy()

        substituted = np.full(cfg.batch_size, -1, np.int64)
        if self.skipped:
            for i in range(cfg.batch_size):
                if (int(dataset_id[i]), int(row[i])) in self.skipped:
                    substituted[i] = row[i]
                    row[i] = self._substitute(epoch, int(position[i]), int(dataset_id[i]))
                    valid[i] = valid[i] and cfg.mode != "eval"
        return epoch, position, dataset_id, row, valid, substituted

    def plan(self, step: int) -> BatchPlan:
        cfg = self.cfg
        epoch, position, dataset_id, row, valid, substituted = self.sources(step)
        t = cfg.num_frames
        frames = np.zeros((cfg.batch_size, t), np.int32)
        roi_start = np.zeros((cfg.batch_size, 2), np.float32)
        roi_end = np.zeros((cfg.batch_size, 2), np.float32)
        flip = np.zeros(cfg.batch_size, bool)
        is_image = np.zeros(cfg.batch_size, bool)
        for i in range(cfg.batch_size):
            d, r = int(dataset_id[i]), int(row[i])
            index, spec = self.indexes[d], cfg.datasets[d]
            is_image[i] = index.is_image[r]
            height, width, n = int(index.height[r]), int(index.width[r]), int(index.num_frames[r])
            rng = np.random.default_rng([cfg.seed, epoch, _AUG_STREAM, int(position[i])])
            if cfg.mode == "eval":
                if not is_image[i]:
                    frames[i] = eval_frame_indices(n, t)
                y0, x0, h, w = centre_square(height, width)
            else:
                if not is_image[i]:
                    k = clip_frame_step(spec.frame_step, spec.target_fps, float(index.fps[r]))
                    frames[i] = train_frame_indices(rng, n, t, k)
                y0, x0, h, w = random_resized_crop(rng, height, width, cfg.crop_scale, cfg.crop_aspect)
                flip[i] = rng.random() < cfg.flip_prob
            roi_start[i] = (y0, x0 + w if flip[i] else x0)
            roi_end[i] = (y0 + h, x0 if flip[i] else x0 + w)
        return BatchPlan(step=int(step), epoch=epoch, position=position, dataset_id=dataset_id, row=row,
                         valid=valid, is_image=is_image, frames=frames, roi_start=roi_start, roi_end=roi_end,
                         flip=flip, substituted=substituted)

    def keys(self, plan: BatchPlan) -> list[str]:
        return [str(self.indexes[d].keys[r]) for d, r in zip(plan.dataset_id, plan.row)]

    def realised_mix(self, first_step: int, num_steps: int) -> dict[str, float]:
        """Fraction of samples per dataset over `num_steps` batches of this rank (no decoding)."""
        counts = np.zeros(len(self.indexes), np.int64)
        for step in range(first_step, first_step + num_steps):
            _, _, dataset_id, _, valid, _ = self.sources(step)
            counts += np.bincount(dataset_id[valid], minlength=len(self.indexes))
        total = max(int(counts.sum()), 1)
        return {ix.name: float(c) / total for ix, c in zip(self.indexes, counts)}
