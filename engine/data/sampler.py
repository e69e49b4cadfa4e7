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
    return int(clip_frame_steps(spec_frame_step, target_fps, np.array([video_fps]))[0])


# Draws per slot from its counter-based stream: 10 crop attempts (area, then aspect), crop y and x, frame
# window start, flip. A slot's draws depend on (seed, epoch, stream, position) only, whatever else is in
# its batch, and a whole batch costs a few vectorised hash rounds rather than a seeded Generator per slot:
# the plan runs in DALI's worker processes, which share the cores with the decoder.
_CROP_ATTEMPTS = 10
_U_AREA, _U_ASPECT = slice(0, _CROP_ATTEMPTS), slice(_CROP_ATTEMPTS, 2 * _CROP_ATTEMPTS)
_U_Y, _U_X, _U_START, _U_FLIP = range(2 * _CROP_ATTEMPTS, 2 * _CROP_ATTEMPTS + 4)
_DRAWS = 2 * _CROP_ATTEMPTS + 4
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wraps modulo 2**64 by design)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform_draws(seed: int, epoch: int, stream: int, positions: np.ndarray, count: int) -> np.ndarray:
    """float64 [len(positions), count] in [0, 1): draw j of each stream position, a pure function of
    (seed, epoch, stream, position, j). Counter-based (hashing), so any slot is computed on its own."""
    key = np.array([seed % 2**64], np.uint64)
    for word in (epoch, stream):
        key = _mix64(key ^ (np.array([word % 2**64], np.uint64) + _GOLDEN))
    slot = _mix64(key ^ (np.asarray(positions, np.int64).astype(np.uint64) + _GOLDEN))          # [B]
    draw = (np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)[None, :]                         # [1, count]
    bits = _mix64(slot[:, None] ^ draw)                                                          # [B, count]
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def clip_frame_steps(spec_frame_step: int, target_fps: float | None, video_fps: np.ndarray) -> np.ndarray:
    """`clip_frame_step` for an array of video frame rates: int64 [N]."""
    video_fps = np.asarray(video_fps, np.float64)
    if target_fps is None:
        return np.full(video_fps.shape, spec_frame_step, np.int64)
    by_fps = np.maximum(1, np.ceil(video_fps).astype(np.int64) // int(round(target_fps)))
    return np.where(video_fps > 0, by_fps, spec_frame_step).astype(np.int64)


def train_frame_indices(u: np.ndarray, num_frames: np.ndarray, clip_len: int, step: np.ndarray) -> np.ndarray:
    """int32 [B, clip_len]: a window of `clip_len` frames at `step`, its start uniform (u [B] in [0, 1))
    over the video; short videos repeat their last frame."""
    num_frames, step = np.asarray(num_frames, np.int64), np.asarray(step, np.int64)
    span = (clip_len - 1) * step + 1
    start = np.floor(u * (np.maximum(num_frames - span, 0) + 1)).astype(np.int64)
    frames = start[:, None] + step[:, None] * np.arange(clip_len)
    return np.minimum(frames, num_frames[:, None] - 1).astype(np.int32)


def eval_frame_indices(num_frames, clip_len: int) -> np.ndarray:
    """`clip_len` frames spread uniformly from the first to the last (repeats when the video is short);
    [clip_len] for one video, [B, clip_len] for an array of frame counts."""
    stop = np.asarray(num_frames, np.float64) - 1
    return np.round(np.linspace(np.zeros_like(stop), stop, clip_len, axis=-1)).astype(np.int32)


def random_resized_crop(u: np.ndarray, height: np.ndarray, width: np.ndarray,
                        scale: tuple[float, float], aspect: tuple[float, float]) -> tuple[np.ndarray, ...]:
    """(y0, x0, h, w) int64 arrays [B]: area fraction uniform in `scale`, width/height log-uniform in
    `aspect`; the first of 10 attempts that fits the frame wins. `u` holds each slot's draws [B, _DRAWS]."""
    height, width = np.asarray(height, np.float64), np.asarray(width, np.float64)
    target_area = (height * width)[:, None] * (scale[0] + (scale[1] - scale[0]) * u[:, _U_AREA])   # [B, 10]
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    ratio = np.exp(log_lo + (log_hi - log_lo) * u[:, _U_ASPECT])
    w = np.rint(np.sqrt(target_area * ratio))
    h = np.rint(np.sqrt(target_area / ratio))
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = fits.argmax(axis=1)
    rows = np.arange(len(u))
    found = fits[rows, first]
    w, h = w[rows, first], h[rows, first]
    # Rejection failed (extreme frame shape): the largest centred crop whose aspect is in range.
    frame_ratio = width / np.maximum(height, 1)
    fallback_w = np.where(frame_ratio > aspect[1], np.rint(height * aspect[1]), width)
    fallback_h = np.where(frame_ratio < aspect[0], np.rint(width / aspect[0]), height)
    w, h = np.where(found, w, fallback_w), np.where(found, h, fallback_h)
    y0 = np.where(found, np.floor(u[:, _U_Y] * (height - h + 1)), (height - h) // 2)
    x0 = np.where(found, np.floor(u[:, _U_X] * (width - w + 1)), (width - w) // 2)
    return y0.astype(np.int64), x0.astype(np.int64), h.astype(np.int64), w.astype(np.int64)


def centre_square(height: np.ndarray, width: np.ndarray) -> tuple[np.ndarray, ...]:
    """Short-side resize to S then centre crop S x S == the centred square of side min(H, W), resized."""
    side = np.minimum(height, width).astype(np.int64)
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
        # Each video's frame step (the recipe's, or the fps rule's), once per row instead of once per draw.
        self._frame_steps = [clip_frame_steps(spec.frame_step, spec.target_fps, ix.fps)
                             for ix, spec in zip(indexes, cfg.datasets)]
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
        b, t = cfg.batch_size, cfg.num_frames
        is_image, height, width = np.zeros(b, bool), np.zeros(b, np.int64), np.zeros(b, np.int64)
        num_frames, frame_step = np.ones(b, np.int64), np.ones(b, np.int64)
        for d in np.unique(dataset_id):
            here = dataset_id == d
            rows = row[here]
            index = self.indexes[d]
            is_image[here], height[here], width[here] = index.is_image[rows], index.height[rows], index.width[rows]
            num_frames[here], frame_step[here] = index.num_frames[rows], self._frame_steps[d][rows]
        frames = np.zeros((b, t), np.int32)
        video = ~is_image
        flip = np.zeros(b, bool)
        if cfg.mode == "eval":
            frames[video] = eval_frame_indices(num_frames[video], t)
            y0, x0, h, w = centre_square(height, width)
        else:
            u = uniform_draws(cfg.seed, epoch, _AUG_STREAM, position, _DRAWS)                      # [B, _DRAWS]
            frames[video] = train_frame_indices(u[video, _U_START], num_frames[video], t, frame_step[video])
            y0, x0, h, w = random_resized_crop(u, height, width, cfg.crop_scale, cfg.crop_aspect)
            flip = u[:, _U_FLIP] < cfg.flip_prob
        # A flipped crop is encoded as a reversed x range (roi_start x > roi_end x).
        roi_start = np.stack([y0, np.where(flip, x0 + w, x0)], axis=1).astype(np.float32)
        roi_end = np.stack([y0 + h, np.where(flip, x0, x0 + w)], axis=1).astype(np.float32)
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
