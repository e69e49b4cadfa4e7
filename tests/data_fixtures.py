"""Tiny shard folders that follow docs/contracts.md §1 exactly, for the loader tests.

Each video frame carries its own identity so tests can check which frames the loader picked:
red ramps left→right (a flip reverses it), green ramps top→bottom, and blue is a flat level that
encodes the frame index (`frame_level(i)`), which survives VP9 to within a couple of levels.
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BLUE_BASE, BLUE_STEP = 8, 5


def frame_level(frame_index: int) -> int:
    """Blue level written into frame `frame_index` (frame identity survives lossy coding)."""
    return BLUE_BASE + BLUE_STEP * frame_index


def frame_index_from_blue(blue_mean: float) -> int:
    return int(round((blue_mean - BLUE_BASE) / BLUE_STEP))


def synthetic_frames(num_frames: int, height: int, width: int, phase: int = 0) -> np.ndarray:
    """[T, H, W, 3] uint8: smooth ramps in red/green, frame index in blue."""
    assert BLUE_BASE + BLUE_STEP * (num_frames - 1) <= 255, "too many frames to encode in blue"
    xs = np.linspace(20, 230, width, dtype=np.float32)
    ys = np.linspace(30, 220, height, dtype=np.float32)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frames[t, :, :, 0] = np.clip(xs[None, :] + 0 * ys[:, None] + (phase % 7), 0, 255)
        frames[t, :, :, 1] = np.clip(ys[:, None] + 0 * xs[None, :], 0, 255)
        frames[t, :, :, 2] = frame_level(t)
    return frames


def encode_video(frames: np.ndarray, codec: str = "vp9", fps: int = 25, container: str = "mp4") -> bytes:
    """Encode [T, H, W, 3] uint8 as VP9 (keyframe every 8 frames) or H.264 in MP4/WebM."""
    encoder = {"vp9": "libvpx-vp9", "h264": "libx264"}[codec]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(encoder, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # High quality so the fixtures test the loader, not the codec; short GOP as the contract asks.
        stream.options = {"g": "8", "crf": "4", "b:v": "0"} if codec == "vp9" else {"g": "8", "crf": "4", "bf": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def corrupt_packets_from(media: bytes, first_bad_frame: int, seed: int = 0) -> bytes:
    """The video with every packet of frame `first_bad_frame` on overwritten by garbage (an invalid VP9 frame
    marker first): a window of frames before it still decodes, one that reaches it fails."""
    data = bytearray(media)
    with av.open(io.BytesIO(media)) as container:
        packets = sorted((p.pts, p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size)
    rng = np.random.default_rng(seed)
    for _, pos, size in packets[first_bad_frame:]:
        data[pos:pos + size] = bytes([0]) + bytes(rng.integers(0, 256, size - 1, dtype=np.uint8))
    return bytes(data)


def encode_jpeg(image: np.ndarray) -> bytes:
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="image2pipe") as out:
        stream = out.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuvj444p"
        stream.options = {"q:v": "1", "qmin": "1", "qmax": "1"}
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


@dataclass
class FixtureSpec:
    """One dataset folder: `num_samples` videos (or images) split over `samples_per_shard` tars."""
    dataset: str
    num_samples: int
    num_frames: int = 12
    height: int = 32
    width: int = 40
    fps: float = 25.0
    images: bool = False
    codec: str = "vp9"
    split: str = "train"
    samples_per_shard: int = 8
    num_classes: int = 3
    corrupt_keys: tuple[str, ...] = ()
    # (key, frame): that video decodes up to the frame before, every packet from `frame` on is garbage
    corrupt_from_frame: tuple[tuple[str, int], ...] = ()
    frames_per_sample: list[int] = field(default_factory=list)  # overrides num_frames per sample


def sample_key(dataset: str, i: int) -> str:
    return f"{dataset.replace('-', '_')}_{i:05d}"


def write_dataset(out_dir: Path, spec: FixtureSpec) -> Path:
    """Write tars + index.parquet + manifest.json into `out_dir` (contract §1) and return it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    classes = [f"class_{c}" for c in range(spec.num_classes)]
    shards_meta = []
    for shard_no, first in enumerate(range(0, spec.num_samples, spec.samples_per_shard)):
        shard_name = f"{spec.split}-{shard_no:06d}.tar"
        members = []
        for i in range(first, min(first + spec.samples_per_shard, spec.num_samples)):
            key = sample_key(spec.dataset, i)
            n = spec.frames_per_sample[i] if spec.frames_per_sample else spec.num_frames
            if spec.images:
                media = encode_jpeg(synthetic_frames(1, spec.height, spec.width, i)[0])
                ext, codec, n, fps = "jpg", "jpeg", 1, 0.0
            else:
                media = encode_video(synthetic_frames(n, spec.height, spec.width, i), spec.codec, int(spec.fps))
                ext, codec, fps = "mp4", spec.codec, spec.fps
            if key in dict(spec.corrupt_from_frame):
                media = corrupt_packets_from(media, dict(spec.corrupt_from_frame)[key], seed=i)
            if key in spec.corrupt_keys:
                # Keep a plausible container start so only the decoder can tell the bytes are bad.
                media = media[:48] + bytes(np.random.default_rng(i).integers(0, 256, len(media) - 48, dtype=np.uint8))
            label = i % spec.num_classes
            meta = {"label": label, "label_name": classes[label], "dataset": spec.dataset, "source": f"{key}.{ext}",
                    "num_frames": n, "fps": fps, "width": spec.width, "height": spec.height, "codec": codec}
            members.append((key, ext, media, json.dumps(meta).encode()))
        path = out_dir / shard_name
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, ext, media, meta_bytes in members:
                for name, payload in ((f"{key}.{ext}", media), (f"{key}.json", meta_bytes)):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        with tarfile.open(path, "r") as tar:
            offsets = {m.name: (m.offset_data, m.size) for m in tar.getmembers()}
        for key, ext, media, meta_bytes in members:
            meta = json.loads(meta_bytes)
            (mo, ms), (jo, js) = offsets[f"{key}.{ext}"], offsets[f"{key}.json"]
            rows.append({"key": key, "split": spec.split, "shard": shard_name, "media_ext": ext,
                         "media_offset": mo, "media_size": ms, "json_offset": jo, "json_size": js,
                         "label": meta["label"], "label_name": meta["label_name"], "dataset": spec.dataset,
                         "codec": meta["codec"], "num_frames": meta["num_frames"], "fps": meta["fps"],
                         "width": spec.width, "height": spec.height,
                         "duration": meta["num_frames"] / meta["fps"] if meta["fps"] else 0.0})
        shards_meta.append({"name": shard_name, "size": path.stat().st_size, "sha256": "", "count": len(members)})
    schema = pa.schema([("key", pa.string()), ("split", pa.string()), ("shard", pa.string()),
                        ("media_ext", pa.string()), ("media_offset", pa.int64()), ("media_size", pa.int64()),
                        ("json_offset", pa.int64()), ("json_size", pa.int64()), ("label", pa.int64()),
                        ("label_name", pa.string()), ("dataset", pa.string()), ("codec", pa.string()),
                        ("num_frames", pa.int32()), ("fps", pa.float64()), ("width", pa.int32()),
                        ("height", pa.int32()), ("duration", pa.float64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out_dir / "index.parquet")
    manifest = {"dataset": spec.dataset, "classes": classes,
                "splits": {spec.split: {"count": spec.num_samples, "shards": shards_meta, "rejects": []}},
                "build": {"fixture": True}, "format_version": 1}
    (out_dir / "manifest.json").write_text(json.dumps(manifest))
    return out_dir


def epoch_with_reference(cfg) -> list[tuple[dict, dict]]:
    """Every batch of one epoch of a fresh VideoLoader(cfg), each beside the PyAV oracle batch decoded
    from the same plan (sample, frames, crop, flip)."""
    from engine.data import VideoLoader
    from engine.data.pyav_oracle import oracle_batch

    loader = VideoLoader(cfg)
    try:
        return [(loader.next_batch(), oracle_batch(loader.sampler, loader.sampler.plan(step)))
                for step in range(len(loader))]
    finally:
        loader.close()


def write_benchmark_folder(folder: Path, train_clips: int, test_clips: int, num_frames: int = 10,
                           height: int = 24, width: int = 32) -> Path:
    """`folder` as `shards.build` leaves a benchmark: disjoint train and test splits' shards side by side,
    one merged index.parquet and the manifest."""
    import shutil

    scratch = folder.parent / f"{folder.name}.parts"
    geometry = dict(num_frames=num_frames, height=height, width=width)
    train = write_dataset(scratch / "tr", FixtureSpec("tr", train_clips, split="train", **geometry))
    test = write_dataset(scratch / "te", FixtureSpec("te", test_clips, split="test", **geometry))
    folder.mkdir(parents=True)
    for part in (train, test):
        for tar in part.glob("*.tar"):
            shutil.copy(tar, folder / tar.name)
    table = pa.concat_tables([pq.read_table(train / "index.parquet"), pq.read_table(test / "index.parquet")])
    pq.write_table(table, folder / "index.parquet")
    shutil.copy(train / "manifest.json", folder / "manifest.json")
    return folder


# Loader vs PyAV oracle, per resize backend, in 0..255 levels of |loader - reference| (measured on the fixtures
# above, CPU decode, 2026-11: per clip 0.18-0.27 with the DALI resize, 0.18-0.33 with the torch one). The same
# comparison against a reference one frame off gives 1.4-2.6 on every video clip, and one pixel off in x
# or y 1.15-3.0 on every clip: the bounds sit between the two, so neither mistake can pass.
ORACLE_BOUNDS = {"dali": {"mean": 0.35, "clip": 0.5}, "torch": {"mean": 0.4, "clip": 0.55}}


def levels(video, cfg):
    """Normalised [B, C, T, H, W] back to 0..255 levels (float32)."""
    import torch

    std = torch.tensor(cfg.std).view(1, 3, 1, 1, 1) * 255
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1, 1) * 255
    return video.float() * std + mean


def clip_errors(video, reference_video, cfg):
    """[B] mean absolute error per clip in 0..255 levels."""
    return (levels(video, cfg) - levels(reference_video, cfg)).abs().flatten(1).mean(1)


def shifted_plan(plan, frames: int = 0, x: int = 0):
    """A copy of a BatchPlan whose frame indices (videos) or crop box (every clip) are moved by a little:
    what a loader with an off-by-one in frame selection or crop placement would decode."""
    import copy

    moved = copy.deepcopy(plan)
    if frames:
        moved.frames = np.clip(moved.frames + frames, 0, None).astype(plan.frames.dtype)
    if x:
        moved.roi_start = (moved.roi_start + np.float32([0, x])).astype(plan.roi_start.dtype)
        moved.roi_end = (moved.roi_end + np.float32([0, x])).astype(plan.roi_end.dtype)
    return moved


def assert_matches_reference(batch, sampler, plan, cfg, backend: str) -> None:
    """The loader's batch equals the PyAV reference of its plan within ORACLE_BOUNDS[backend], on average and
    for every clip; and the oracle can tell: the references one frame off and one pixel off do not."""
    import torch

    from engine.data.pyav_oracle import oracle_batch

    bound = ORACLE_BOUNDS[backend]
    reference = oracle_batch(sampler, plan)
    assert batch["key"] == reference["key"]
    errors = clip_errors(batch["video"], reference["video"], cfg)
    assert errors.mean() < bound["mean"] and errors.max() < bound["clip"], (backend, errors.tolist())
    videos = ~torch.from_numpy(np.asarray(plan.is_image, bool))
    off_frame = clip_errors(batch["video"], oracle_batch(sampler, shifted_plan(plan, frames=-1))["video"], cfg)
    off_pixel = clip_errors(batch["video"], oracle_batch(sampler, shifted_plan(plan, x=1))["video"], cfg)
    # A frame index of 0 stays 0 when shifted down; every fixture clip has later frames that move.
    assert (off_frame[videos] > bound["clip"]).all(), ("oracle blind to a frame shift", off_frame.tolist())
    assert (off_pixel > bound["clip"]).all(), ("oracle blind to a 1-pixel crop shift", off_pixel.tolist())
