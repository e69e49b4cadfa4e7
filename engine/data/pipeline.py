"""The DALI graph: member bytes from parallel Python workers -> decode -> crop/flip/resize.

One graph for both decode devices. With `decode_device="mixed"` the decoders run on NVDEC/nvJPEG and
everything after them on the GPU, so the batch reaches PyTorch as CUDA memory; with `"cpu"` the same
operators run on the CPU (DALI decodes VP9/VP8/MJPEG there). The graph ends with uint8 [T, S, S, 3]
clips; the loader normalises them into the batch layout in PyTorch on the same device
(`engine.data.loader.normalise_clips`): on the CPU that pass is cheaper than DALI's
crop_mirror_normalize and it moves a quarter of the bytes out of DALI (benchmarks/results/loader-cpu.md).
On the CPU the loader by default also ends the graph at the decoders (`resize=False`) and crops, flips
and resizes in PyTorch (`engine.data.augment`, LoaderConfig.resize_backend): DALI's CPU resize costs
about half a decode there. The tests run the CPU graph both ways, so the GPU's graph is tested too.

Per-sample decisions (frames, crop box, flip) come from the sampler through `external_source`, so the
graph holds no RNG and a pipeline rebuilt at step s produces exactly the batches of an unbroken run.

What `parallel=True` needs (DALI 2.4): a picklable callable (module-level class; file handles are
reopened in each worker). It is called once per batch with `BatchInfo` (batch=True, batch_info=True):
a whole batch per call costs one message between processes instead of one per sample, which measured
faster than per-sample calls on 2 cores. Workers start with `fork` on the CPU path and `spawn` once
CUDA may be initialised. The callback never raises StopIteration:
the stream is endless and epochs are counted by the loader, so DALI never resets mid-run.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import warnings

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from engine.data.sampler import ClipSampler

# Columns of the per-sample `meta` output (int64 [META_LEN]); the last four are the crop box in stored
# pixels (y0, x_from, y1, x_to; x_from > x_to means flipped), read by the PyTorch resize.
META_STEP, META_DATASET, META_ROW, META_VALID, META_SUBSTITUTED = range(5)
META_ROI = slice(5, 9)
META_LEN = 9


class SampleSource:
    """external_source callback: one call per batch, run in DALI's worker processes.

    It recomputes the batch plan from (first_step + iteration) instead of receiving it, which is what
    makes the worker processes stateless and the whole loader resumable from a step number.
    """

    def __init__(self, sampler: ClipSampler, first_step: int):
        self.sampler = sampler
        self.first_step = int(first_step)
        self._files: dict[str, object] = {}
        self._loader_pid = os.getpid()
        self._watching = False

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}
        state["_watching"] = False
        state["_ranges"] = None  # remote reader: connections are per process
        return state

    def _exit_with_loader(self) -> None:
        """In a worker process: exit once the loader's process is gone. DALI's workers otherwise outlive a
        trainer killed with SIGKILL (reparented to init, holding memory and shard handles)."""
        self._watching = True
        if os.getpid() == self._loader_pid:   # parallel=False: the callback runs in the loader itself
            return
        loader_pid = self._loader_pid

        def watch():
            while os.getppid() == loader_pid:
                time.sleep(0.5)
            os._exit(0)

        threading.Thread(target=watch, name="exit-with-loader", daemon=True).start()

    def _read(self, path: str, offset: int, size: int) -> np.ndarray:
        handle = self._files.get(path)
        if handle is None:
            handle = self._files[path] = open(path, "rb", buffering=0)
        handle.seek(offset)
        return np.frombuffer(handle.read(size), np.uint8)

    def _remote_members(self, plan) -> list[np.ndarray] | None:
        """The batch's media bytes when a dataset root is a URL (one batched ranged read), else None."""
        if not any(isinstance(ix.root, str) for ix in self.sampler.indexes):
            return None
        from engine.data.remote import RangeReader, read_plan_members
        if getattr(self, "_ranges", None) is None:
            self._ranges = RangeReader(self.sampler.cfg.remote)
        return read_plan_members(self._ranges, self.sampler.indexes, plan, self._read)

    def __call__(self, batch_info) -> tuple[list[np.ndarray], ...]:
        if not self._watching:
            self._exit_with_loader()
        step = self.first_step + batch_info.iteration
        plan = self.sampler.plan(step)
        encoded, meta = [], []
        remote = self._remote_members(plan)  # URL roots: the whole batch's ranged reads at once
        for i in range(len(plan.row)):
            d, r = int(plan.dataset_id[i]), int(plan.row[i])
            index = self.sampler.indexes[d]
            encoded.append(remote[i] if remote is not None else
                           self._read(index.shard_paths[index.shard_id[r]], int(index.media_offset[r]),
                                      int(index.media_size[r])))
            box = np.rint([plan.roi_start[i][0], plan.roi_start[i][1], plan.roi_end[i][0], plan.roi_end[i][1]])
            meta.append(np.array([step, d, r, int(plan.valid[i]), int(plan.substituted[i]), *box], np.int64))
        return (encoded, list(plan.frames), list(plan.roi_start), list(plan.roi_end),
                [np.array(x) for x in plan.is_image], meta)


def _video_branch(encoded, frames, roi_start, roi_end, decode_device: str, size: int, resize: bool):
    clip = fn.decoders.video(encoded, device=decode_device, frames=frames)          # [T, H, W, 3] uint8
    if not resize:
        return clip
    # A reversed x range in the ROI flips the crop, so crop, flip and resize are one resampling pass.
    return fn.resize(clip, size=[size, size], roi_start=roi_start, roi_end=roi_end, antialias=True)


def _image_branch(encoded, roi_start, roi_end, decode_device: str, size: int, num_frames: int, resize: bool):
    image = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB)   # [H, W, 3] uint8
    if not resize:
        return fn.expand_dims(image, axes=[0], new_axis_names="F")                    # [1, H, W, 3]
    image = fn.resize(image, size=[size, size], roi_start=roi_start, roi_end=roi_end, antialias=True)
    # Resize once, then repeat: a static clip costs one resize, not T.
    return fn.stack(*([image] * num_frames), axis=0, axis_name="F")                  # [T, S, S, 3]


@pipeline_def(enable_conditionals=True)
def _clip_graph(source, decode_device, size, num_frames, has_videos, has_images, parallel, prefetch, resize):
    encoded, frames, roi_start, roi_end, is_image, meta = fn.external_source(
        source, num_outputs=6, batch=True, batch_info=True, parallel=parallel,
        prefetch_queue_depth=prefetch if parallel else None,
        dtype=[types.UINT8, types.INT32, types.FLOAT, types.FLOAT, types.BOOL, types.INT64])
    if has_videos and has_images:
        if is_image:
            clip = _image_branch(encoded, roi_start, roi_end, decode_device, size, num_frames, resize)
        else:
            clip = _video_branch(encoded, frames, roi_start, roi_end, decode_device, size, resize)
    elif has_images:
        clip = _image_branch(encoded, roi_start, roi_end, decode_device, size, num_frames, resize)
    else:
        clip = _video_branch(encoded, frames, roi_start, roi_end, decode_device, size, resize)
    # resize: [T, S, S, 3] uint8; else the decoded frames, [T, H, W, 3] (an image: [1, H, W, 3])
    return clip, meta


def build_pipeline(sampler: ClipSampler, first_step: int, decode_device: str, device_id: int | None,
                   source: SampleSource | None = None, resize: bool = True):
    """A built DALI pipeline whose iteration i is the sampler's step `first_step + i`.

    `source` replaces the tar reader (the benchmark feeds bytes from memory to time the graph alone).
    `resize=False` ends the graph at the decoders (the caller crops and resizes, see resize_backend)."""
    cfg = sampler.cfg
    has_images = any(ix.is_image.any() for ix in sampler.indexes)
    has_videos = any((~ix.is_image).any() for ix in sampler.indexes)
    parallel = cfg.num_workers > 0
    with warnings.catch_warnings():
        # A video-only mix leaves `is_image` unused, an image-only mix `frames`: both are tiny, keep one callback.
        warnings.filterwarnings("ignore", message=r"The external source node .* not used")
        pipe = _build_clip_graph(source or SampleSource(sampler, first_step), decode_device, device_id, has_videos,
                                 has_images, parallel, resize)
    return pipe


def _build_clip_graph(source, decode_device, device_id, has_videos, has_images, parallel, resize):
    cfg = source.sampler.cfg
    try:
        pipe = _clip_graph(
            source, decode_device, cfg.crop_size, cfg.num_frames, has_videos, has_images, parallel, cfg.prefetch,
            resize, batch_size=cfg.batch_size, num_threads=cfg.num_threads,
            device_id=device_id if decode_device == "mixed" else None,
            prefetch_queue_depth=cfg.prefetch, seed=cfg.seed,
            py_num_workers=max(cfg.num_workers, 1),
            # fork is cheap and safe before CUDA exists; once CUDA is initialised only spawn is.
            py_start_method="fork" if decode_device == "cpu" else "spawn",
        )
    finally:
        remove_autograph_sources()
    pipe.build()
    return pipe


AUTOGRAPH_MODULE_PREFIX = "__autograph_generated_file"


def dense_to_torch(output, device, stream=None):
    """A pipeline output of equal-shape samples as one uint8 torch tensor on `device`. One copy out of DALI's
    reusable buffer: device to device on PyTorch's stream with a GPU (the batch never visits host memory), a
    plain memcpy on the CPU (no OpenMP team for a copy on busy cores)."""
    import torch
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = output.as_tensor()
    clips = torch.empty(dense.shape(), dtype=torch.uint8, device=device)
    feed_ndarray(dense, clips, cuda_stream=stream)
    return clips


def remove_autograph_sources() -> None:
    """Delete the source files of the graph functions DALI's autograph converted in this process.

    `enable_conditionals=True` makes DALI rewrite the graph function (and the branch functions it
    calls) through autograph, which writes each rewrite to `<tmp>/__autograph_generated_file*.py`,
    imports it, and deletes the file only at interpreter exit (atexit), which a killed or os._exit-ed
    process never reaches: two files per pipeline were left in /tmp. The modules are imported by then
    and autograph caches them per function, so the files only served source lines in tracebacks."""
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) if name.startswith(AUTOGRAPH_MODULE_PREFIX) else None
        if path:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


@pipeline_def
def _probe_graph(decode_device, is_image):
    encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
    if is_image:
        return fn.decoders.image(encoded, device=decode_device, output_type=types.RGB)
    frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
    return fn.decoders.video(encoded, device=decode_device, frames=frames)


class DecodeProbe:
    """Decodes one sample at a time, with the loader's own decoders, to find the sample that broke a batch.

    DALI reports a decode failure for the whole batch and leaves the pipeline unusable, without naming
    the sample; this runs each suspect alone. A probe pipeline that fails is discarded and rebuilt.
    """

    def __init__(self, decode_device: str, device_id: int | None):
        self.decode_device, self.device_id = decode_device, device_id
        self._pipes: dict[bool, object] = {}

    def _pipe(self, is_image: bool):
        if is_image not in self._pipes:
            pipe = _probe_graph(self.decode_device, is_image, batch_size=1, num_threads=1, prefetch_queue_depth=1,
                                device_id=self.device_id if self.decode_device == "mixed" else None)
            pipe.build()
            self._pipes[is_image] = pipe
        return self._pipes[is_image]

    def check(self, encoded: np.ndarray, is_image: bool, frames: np.ndarray) -> str | None:
        """None if the sample decodes, else the first line of DALI's error."""
        pipe = self._pipe(is_image)
        pipe.feed_input("encoded", [encoded])
        if not is_image:
            pipe.feed_input("frames", [frames.astype(np.int32)])
        try:
            pipe.run()
            return None
        except RuntimeError as err:
            self._pipes.pop(is_image)._shutdown()
            return _reason(str(err))


def _reason(message: str) -> str:
    """The line of a DALI error that says what went wrong (it follows 'encountered:')."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.startswith("encountered"):
            return lines[i + 1][:200]
    return (lines[-1] if lines else "unknown error")[:200]
