"""The loader the training loop iterates: DALI batches as PyTorch tensors, epochs, state, bad samples.

    loader = VideoLoader(cfg)                 # checks every shard and codec before any work
    for batch in loader:                      # one epoch (the rest of it after a resume)
        batch["video"]                        # [B, C, T, H, W] normalised, model dtype, training device
    state = loader.state_dict()               # into the checkpoint
    loader.load_state_dict(state)             # a fresh loader continues with identical batches

Resume is exact because a batch is a pure function of (seed, epoch, rank, step): the state is the step
counter plus the set of samples found undecodable (they change which sample fills a slot).

Bad samples: DALI fails a whole batch when one video does not decode and the pipeline is unusable
afterwards, without naming the sample. The loader then decodes every sample of the batches that were
in flight one by one (DecodeProbe), adds the failing ones to the skip set (logged with their key,
counted), and rebuilds the pipeline at the same step; the sampler fills each skipped slot with another
sample of the same dataset. Nothing stops, nothing hangs, and the skip set travels in the state.
"""
from __future__ import annotations

import contextlib
import logging
import os

import numpy as np
import torch

from engine.data.augment import crop_flip_resize_batch
from engine.data.config import LoaderConfig, resize_in_graph
from engine.data.index import DatasetIndex, load_indexes, read_member
from engine.data.pipeline import (META_DATASET, META_ROI, META_ROW, META_STEP, META_SUBSTITUTED, META_VALID,
                                  DecodeProbe, build_pipeline, dense_to_torch)
from engine.data.sampler import ClipSampler

log = logging.getLogger(__name__)

STATE_FORMAT = 1
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_decode_device(requested: str) -> str:
    if requested == "auto":
        return "mixed" if torch.cuda.is_available() else "cpu"
    if requested == "mixed" and not torch.cuda.is_available():
        raise ValueError("decode_device='mixed' needs a CUDA GPU; use 'cpu' (VP9/VP8/MJPEG shards) or 'auto'")
    return requested


def normalisation(cfg: LoaderConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) [3] with (x - 255 mean) / (255 std) == x * scale + shift for 0..255 levels."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in cfg.std], dtype=torch.float32)
    shift = torch.tensor([-m / s for m, s in zip(cfg.mean, cfg.std)], dtype=torch.float32)
    return scale.to(device), shift.to(device)


def normalise_clips(clips: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [B, T, H, W, C] -> [B, C, T, H, W] `dtype`, normalised (0..255 float32 clips: in place).

    The result keeps the decoder's memory order (it is `torch.channels_last_3d`): a conversion and one
    in-place affine pass over it stream through memory, while writing channel-first planes measured
    4x slower on the CPU. Shape and values are the contract's; Conv3d (the patch embedding) takes this
    layout natively, and code that needs channel-first memory calls `.contiguous()`."""
    b, t, h, w, c = clips.shape
    video = clips if clips.dtype == torch.float32 else clips.to(torch.float32)           # [B, T, H, W, C]
    rows = video.view(b, t, h, w * c)
    # The per-channel affine tiled along a row: broadcasting over an inner dimension of 3 is 8x slower.
    torch.addcmul(shift.repeat(w), rows, scale.repeat(w), out=rows)
    video = video.permute(0, 4, 1, 2, 3)                                                  # [B, C, T, H, W]
    return video if dtype == torch.float32 else video.to(dtype)


@contextlib.contextmanager
def _one_torch_thread():
    """The CPU path's post-processing runs on one thread: DALI's threads hold the cores, and an OpenMP
    team waiting for them measured 5-10x slower than one thread on 2 busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class VideoLoader:
    """Index-driven DALI loader for one rank. See the module docstring for the protocol."""

    def __init__(self, cfg: LoaderConfig, indexes: list[DatasetIndex] | None = None):
        """`indexes`: what `load_indexes(cfg.datasets, ...)` returned for this machine's decode device, when
        the caller checked the data before anything else (the trainer does); loaded and checked here otherwise."""
        self.cfg = cfg.validate()
        self.decode_device = resolve_decode_device(cfg.decode_device)
        self.resize_in_graph = resize_in_graph(cfg.resize_backend, self.decode_device)
        self.device_id = cfg.device_id if cfg.device_id is not None else int(os.environ.get("LOCAL_RANK", 0))
        self.indexes = load_indexes(cfg.datasets, self.decode_device) if indexes is None else list(indexes)
        self.names = [ix.name for ix in self.indexes]
        self.step = 0
        self.skipped: dict[tuple[int, int], str] = {}   # (dataset_id, row) -> DALI's reason
        self.samples_seen = np.zeros(len(self.indexes), np.int64)
        self.substitutions = 0
        self.sampler = ClipSampler(cfg, self.indexes)
        self._pipe = None
        self._probe: DecodeProbe | None = None
        on_gpu = self.decode_device == "mixed"
        self._torch_device = torch.device("cuda", self.device_id) if on_gpu else torch.device("cpu")
        self._scale, self._shift = normalisation(cfg, self._torch_device)

    # ---------------------------------------------------------------- iteration
    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return self.sampler.steps_per_epoch

    @property
    def epoch(self) -> int:
        return self.step // self.sampler.steps_per_epoch

    def __iter__(self):
        if self.cfg.infinite:
            while True:
                yield self.next_batch()
        end_of_epoch = (self.epoch + 1) * self.sampler.steps_per_epoch
        while self.step < end_of_epoch:
            yield self.next_batch()

    def next_batch(self) -> dict:
        failures_here = 0
        for _ in range(self.cfg.max_recoveries + 1):
            if self._pipe is None:
                self._pipe = build_pipeline(self.sampler, self.step, self.decode_device, self.device_id,
                                            resize=self.resize_in_graph)
            try:
                outputs = self._pipe.run()
            except Exception as err:  # DALI raises RuntimeError for decode failures, others for worker errors
                self.close()
                if self._isolate_bad_samples() == 0:
                    failures_here += 1
                    if failures_here > 1:
                        raise RuntimeError(f"step {self.step}: pipeline failed and no single sample is to blame: "
                                           f"{str(err).strip().splitlines()[-1]}") from err
                continue
            batch = self._to_batch(outputs)
            self.step += 1
            return batch
        raise RuntimeError(f"step {self.step}: gave up after {self.cfg.max_recoveries} pipeline recoveries")

    def normalise(self, video_list, meta: np.ndarray) -> torch.Tensor:
        """The graph's uint8 output -> `video` [B, C, T, H, W], normalised, model dtype.

        With the resize in the graph the output is already [B, T, S, S, 3]; without it, each sample's
        decoded frames are cropped, flipped and resized here first (the box is in `meta`)."""
        if not self.resize_in_graph:
            # Views of DALI's output buffers, valid until the next run(); the resize copies them out.
            samples = [torch.from_numpy(np.asarray(video_list[i])) for i in range(len(video_list))]
            with _one_torch_thread():
                clips = crop_flip_resize_batch(samples, meta[:, META_ROI], self.cfg.num_frames, self.cfg.crop_size,
                                               dtype=torch.float32)                     # levels 0..255
                return normalise_clips(clips, self._scale, self._shift, _TORCH_DTYPES[self.cfg.dtype])
        stream = torch.cuda.current_stream(self._torch_device) if self.decode_device == "mixed" else None
        clips = dense_to_torch(video_list, self._torch_device, stream)
        if self.decode_device == "mixed":
            return normalise_clips(clips, self._scale, self._shift, _TORCH_DTYPES[self.cfg.dtype])
        with _one_torch_thread():
            return normalise_clips(clips, self._scale, self._shift, _TORCH_DTYPES[self.cfg.dtype])

    def _to_batch(self, outputs) -> dict:
        video_list, meta_list = outputs
        meta = np.array(meta_list.as_tensor())                                  # [B, META_LEN]
        if not (meta[:, META_STEP] == self.step).all():
            raise RuntimeError(f"loader out of sync: expected step {self.step}, pipeline gave {meta[0, META_STEP]}")
        video = self.normalise(video_list, meta)
        dataset_id = meta[:, META_DATASET]
        row = meta[:, META_ROW]
        valid = meta[:, META_VALID].astype(bool)
        label = np.array([self.indexes[d].label[r] for d, r in zip(dataset_id, row)], np.int64)
        keys = [str(self.indexes[d].keys[r]) for d, r in zip(dataset_id, row)]
        self.samples_seen += np.bincount(dataset_id[valid], minlength=len(self.indexes))
        self.substitutions += int((meta[:, META_SUBSTITUTED] >= 0).sum())
        return {"video": video, "label": torch.from_numpy(label), "dataset_id": torch.from_numpy(dataset_id.copy()),
                "key": keys, "valid": torch.from_numpy(valid)}

    # ---------------------------------------------------------------- bad samples
    def _isolate_bad_samples(self) -> int:
        """Decode every sample of the batches that may have been in flight; skip the ones that fail."""
        if self._probe is None:
            self._probe = DecodeProbe(self.decode_device, self.device_id)
        found = 0
        for step in range(self.step, self.step + self.cfg.prefetch + 1):
            plan = self.sampler.plan(step)
            for i in range(self.cfg.batch_size):
                d, r = int(plan.dataset_id[i]), int(plan.row[i])
                if (d, r) in self.skipped:
                    continue
                index = self.indexes[d]
                encoded = np.frombuffer(read_member(index.shard_paths[index.shard_id[r]], int(index.media_offset[r]),
                                                    int(index.media_size[r])), np.uint8)
                reason = self._probe.check(encoded, bool(plan.is_image[i]), plan.frames[i])
                if reason is not None:
                    self.skipped[(d, r)] = reason
                    found += 1
                    log.warning("skipping undecodable sample %s (dataset %s, shard %s): %s", index.keys[r],
                                index.name, os.path.basename(index.shard_paths[index.shard_id[r]]), reason)
        if found:
            self.sampler = ClipSampler(self.cfg, self.indexes, frozenset(self.skipped))
        return found

    @property
    def skipped_keys(self) -> list[str]:
        return [str(self.indexes[d].keys[r]) for d, r in sorted(self.skipped)]

    # ---------------------------------------------------------------- reports
    def mix_report(self) -> dict:
        """Target weights and the realised fraction of yielded samples per dataset."""
        total = max(int(self.samples_seen.sum()), 1)
        return {name: {"weight": float(w), "realised": float(c) / total, "samples": int(c)}
                for name, w, c in zip(self.names, self.sampler.weights, self.samples_seen)}

    # ---------------------------------------------------------------- state
    def _fingerprint(self) -> dict:
        cfg = self.cfg
        return {"datasets": self.names, "sizes": [len(ix) for ix in self.indexes], "seed": cfg.seed,
                "rank": cfg.rank, "world_size": cfg.world_size, "batch_size": cfg.batch_size,
                "num_frames": cfg.num_frames, "crop_size": cfg.crop_size, "mode": cfg.mode,
                "samples_per_epoch": self.sampler.samples_per_epoch,
                "weights": [round(float(w), 9) for w in self.sampler.weights]}

    def state_dict(self) -> dict:
        """Position and everything that decides future batches; plain Python types (JSON/torch.save safe)."""
        return {"format": STATE_FORMAT, "step": self.step, "config": self._fingerprint(),
                "skipped": [[d, r, str(self.indexes[d].keys[r]), reason]
                            for (d, r), reason in sorted(self.skipped.items())],
                "samples_seen": self.samples_seen.tolist(), "substitutions": self.substitutions}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"loader state: format {state.get('format')!r}, expected {STATE_FORMAT}")
        mine = self._fingerprint()
        for name, value in state["config"].items():
            if mine.get(name) != value:
                raise ValueError(f"loader state: {name} was {value!r} when saved, is {mine.get(name)!r} now")
        self.close()
        self.step = int(state["step"])
        self.skipped = {}
        for d, r, key, reason in state["skipped"]:
            if str(self.indexes[d].keys[r]) != key:
                raise ValueError(f"loader state: skipped sample {key} is no longer at row {r} of {self.names[d]}")
            self.skipped[(int(d), int(r))] = reason
        self.samples_seen = np.array(state["samples_seen"], np.int64)
        self.substitutions = int(state["substitutions"])
        self.sampler = ClipSampler(self.cfg, self.indexes, frozenset(self.skipped))

    def close(self) -> None:
        """Stop the pipeline and its worker processes (a later batch rebuilds it at the current step)."""
        if self._pipe is not None:
            self._pipe._shutdown()
            self._pipe = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: DALI may already be gone
            pass
