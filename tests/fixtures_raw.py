"""Miniature raw datasets in the exact published layouts, with real encoded media (PyAV, Pillow).

Each `make_*` writes a tree the matching shards/sources adapter reads, with the real file names and
JSON schemas (UCF-101 lists with CRLF line ends and the HandstandPushups/HandStandPushups quirk,
SSv2 templates with brackets, Diving-48 V2 splits and vocabulary, ImageNet-100 class lists) and
returns what the tests need to check the listing. Clips are tiny (32x24, 8-24 frames) and smooth, so
lossy coding keeps them close to the source.
"""
from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

CONTAINER_CODECS = {".avi": ("avi", "mpeg4"), ".webm": ("webm", "libvpx-vp9"), ".mp4": ("mp4", "libx264")}


def moving_frames(num_frames: int, height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    """[T, H, W, 3] uint8: smooth colour ramps drifting one pixel per frame (easy to code, easy to compare)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 200, size=3)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frames[t, ..., 0] = np.clip(base[0] + 2.0 * (xs + t), 0, 255)
        frames[t, ..., 1] = np.clip(base[1] + 2.0 * ys, 0, 255)
        frames[t, ..., 2] = np.clip(base[2] + 1.5 * (xs - ys) + t, 0, 255)
    return frames


def encode_video(frames: np.ndarray, suffix: str, fps: Fraction | int = 25) -> bytes:
    """MPEG-4 .avi (UCF-101), VP9 .webm (SSv2) or H.264 .mp4 (Diving-48) bytes of [T, H, W, 3] frames."""
    container_format, codec = CONTAINER_CODECS[suffix]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"deadline": "realtime", "cpu-used": "8"} if codec == "libvpx-vp9" else {}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_video(path: Path, num_frames: int = 12, seed: int = 0, **size) -> np.ndarray:
    frames = moving_frames(num_frames, seed=seed, **size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_video(frames, path.suffix))
    return frames


def write_zero_frame_avi(path: Path) -> None:
    """A valid AVI header with a video stream and no frames at all."""
    buffer = io.BytesIO()
    container = av.open(buffer, "w", format="avi")
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
    container.start_encoding()
    container.close()
    path.write_bytes(buffer.getvalue())


def write_image(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0, image_format: str = "JPEG") -> None:
    rng = np.random.default_rng(seed)
    pixels = (rng.uniform(0, 255, size=(size[1] // 2, size[0] // 2, 3))).astype(np.uint8)
    image = Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=image_format)


def _crlf(lines: list[str]) -> str:
    return "".join(f"{line}\r\n" for line in lines)


# UCF-101: the real classInd.txt names "HandstandPushups" while its files say "HandStandPushups".
UCF_CLASSES = ["ApplyEyeMakeup", "Basketball", "HandstandPushups"]
UCF_FILE_CLASS = {"HandstandPushups": "HandStandPushups"}


def make_ucf101(root: Path, frames: int = 10) -> dict:
    """UCF-101/<Class>/v_<Class>_gXX_cYY.avi + ucfTrainTestlist/. Groups 1-2 test, 3-4 train (split 1)."""
    train, test = [], []
    for index, name in enumerate(UCF_CLASSES):
        file_class = UCF_FILE_CLASS.get(name, name)
        for group in (1, 3, 4):
            relative = f"{name}/v_{file_class}_g{group:02d}_c01.avi"
            write_video(root / "UCF-101" / relative, frames, seed=index * 10 + group)
            (test if group < 3 else train).append((relative, index + 1))
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text(_crlf([f"{i + 1} {name}" for i, name in enumerate(UCF_CLASSES)]))
    (lists / "trainlist01.txt").write_text(_crlf([f"{path} {label}" for path, label in train]))
    (lists / "testlist01.txt").write_text(_crlf([path for path, _ in test]))
    return {"train": train, "test": test}


SSV2_TEMPLATES = ["Holding [something] next to [something]", "Pushing [something] from left to right",
                  "Pushing [something] from right to left"]


def make_ssv2(root: Path, frames: int = 10) -> dict:
    """20bn-something-something-v2/<id>.webm + labels/{labels,train,validation}.json."""
    labels = {template.replace("[", "").replace("]", ""): str(i) for i, template in enumerate(SSV2_TEMPLATES)}
    splits: dict[str, list] = {"train": [], "validation": []}
    for video_id in range(1, 7):
        template = SSV2_TEMPLATES[video_id % 3]
        write_video(root / "20bn-something-something-v2" / f"{video_id}.webm", frames, seed=video_id)
        entry = {"id": str(video_id), "label": template.replace("[something]", "a cup"),
                 "template": template, "placeholders": ["a cup", "a pen"][: template.count("[")]}
        splits["train" if video_id <= 4 else "validation"].append(entry)
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "labels.json").write_text(json.dumps(labels, indent=1))
    for name, entries in splits.items():
        (root / "labels" / f"{name}.json").write_text(json.dumps(entries))
    return {"labels": labels, **splits}


IN_WNIDS = ["n01440764", "n01443537", "n01484850"]
IN_NAMES = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark"]


def make_imagenet100(root: Path, class_list: str = "json", image_size: tuple[int, int] = (40, 30)) -> dict:
    """train/<wnid>/<wnid>_<n>.JPEG, val/<wnid>/ILSVRC2012_val_<n>.JPEG and a class list
    (`json`: Labels.json {wnid: name}; `txt`: imagenet100.txt, one wnid and name per line, unsorted)."""
    counter = 0
    for wnid in IN_WNIDS:
        for n in range(2):
            write_image(root / "train" / wnid / f"{wnid}_{n}.JPEG", image_size, seed=counter)
            counter += 1
        write_image(root / "val" / wnid / f"ILSVRC2012_val_{counter:08d}.JPEG", image_size, seed=counter)
        counter += 1
    if class_list == "json":
        (root / "Labels.json").write_text(json.dumps(dict(zip(IN_WNIDS, IN_NAMES)), indent=2))
    else:
        lines = [f"{wnid} {name}" for wnid, name in reversed(list(zip(IN_WNIDS, IN_NAMES)))]
        (root / "imagenet100.txt").write_text("\n".join(lines) + "\n")
    return {"classes": sorted(IN_WNIDS)}


DIVING_VOCAB = [["Back", "15som", "05Twis", "FREE"], ["Forward", "25som", "NoTwis", "PIKE"],
                ["Inward", "35som", "NoTwis", "TUCK"]]


def make_diving48(root: Path, frames: int = 12) -> dict:
    """rgb/<vid_name>.mp4 (H.264) + Diving48_V2_{train,test}.json + Diving48_vocab.json."""
    entries = {"train": [], "test": []}
    for index in range(5):
        name = f"-mmq0PT-u8k_{index:05d}"
        write_video(root / "rgb" / f"{name}.mp4", frames, seed=100 + index)
        split = "train" if index < 3 else "test"
        entries[split].append({"vid_name": name, "label": index % 3, "start_frame": 0, "end_frame": frames - 1})
    (root / "Diving48_vocab.json").write_text(json.dumps(DIVING_VOCAB))
    for split, items in entries.items():
        (root / f"Diving48_V2_{split}.json").write_text(json.dumps(items))
    return entries


def make_folder(root: Path, clips_per_class: int = 2, frames: int = 12) -> dict:
    """<split>/<class>/<file>: VP9 .webm and MPEG-4 .avi clips plus one JPEG, in train/ and val/."""
    seed = 0
    for split in ("train", "val"):
        for class_name in ("cat", "dog"):
            for n in range(clips_per_class):
                suffix = ".avi" if n % 2 else ".webm"
                write_video(root / split / class_name / f"clip.{n}{suffix}", frames, seed=seed)
                seed += 1
        write_image(root / split / "dog" / "still.jpg", seed=seed)
    return {"classes": ["cat", "dog"]}


SYNTH_PART_WRITERS = {"synth-ucf": make_ucf101, "synth-ssv2": make_ssv2, "synth-in": make_imagenet100,
                      "synth-diving": make_diving48}


def install_fake_synth_generator(monkeypatch) -> list[dict]:
    """Replace `shards.synth.generate_suite` with one that writes the miniature fixture trees, one per synth part.

    The shard builder's `synth` source then runs its real adapters on them in about a second. Returns the
    list the fake appends each call's arguments to."""
    calls = []

    def generate_suite(out_root, scale="demo", seed=0, parts=None, workers=None):
        calls.append({"out_root": Path(out_root), "scale": scale, "seed": seed, "workers": workers})
        roots = {}
        for part, writer in SYNTH_PART_WRITERS.items():
            roots[part] = Path(out_root) / part
            if not roots[part].exists():
                writer(roots[part])
        return roots

    monkeypatch.setattr("shards.synth.generate_suite", generate_suite)
    return calls
