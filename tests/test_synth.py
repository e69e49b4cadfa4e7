"""The synth suite generator: determinism, exact real-dataset layouts, decodability, held-out instances,
idempotence and resumption. Uses the tiny `test` scale (32 px, 8 frames, a few classes)."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from shards.synth import COMPLETE_MARKER, PART_NAMES, SCALES, generate_suite
from shards.synth import assets, diving, imagenet, ssv2, suite, ucf
from shards.synth.__main__ import main as cli_main

SCALE = SCALES["test"]


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "raw"
    roots = generate_suite(out, scale="test", seed=0, workers=1)
    assert roots == {name: out / name for name in PART_NAMES}
    return out


@pytest.mark.parametrize("workers", [2, 4])
def test_same_seed_same_bytes_any_worker_count(raw, tmp_path, workers):
    again = generate_suite(tmp_path / "again", scale="test", seed=0, workers=workers)
    first, second = tree_hashes(raw), tree_hashes(again["synth-ucf"].parent)
    for part in PART_NAMES:  # every part, each with media files in it
        assert any(k.startswith(part) and k.endswith((".avi", ".webm", ".mp4", ".JPEG")) for k in first)
    assert first == second


# Renders every job of every part in a fresh process whose FFmpeg is told the CPU has no SIMD at all, and
# prints {relpath: sha256}. FFmpeg picks SIMD code per CPU (and per buffer alignment), so bytes that depend
# on that choice differ between machines and between processes; these must not.
_NO_SIMD_RENDER = """
import ctypes, glob, hashlib, json, os, sys
import av
libavutil = glob.glob(os.path.join(os.path.dirname(av.__file__), os.pardir, "av.libs", "libavutil*.so*"))
ctypes.CDLL(libavutil[0]).av_force_cpu_flags(0)
from shards.synth import SCALES, suite
scale = SCALES["test"]
out = {}
for name, module in suite.PART_MODULES.items():
    for job in module.plan(scale, 0):
        out[name + "/" + job.relpath] = hashlib.sha256(module.render(job, scale, 0)).hexdigest()
print(json.dumps(out))
"""


def test_same_bytes_whatever_simd_ffmpeg_uses(raw):
    import subprocess
    import sys

    import av
    if not list((Path(av.__file__).parent.parent / "av.libs").glob("libavutil*.so*")):
        pytest.skip("this PyAV build does not bundle its own libavutil")
    result = subprocess.run([sys.executable, "-c", _NO_SIMD_RENDER], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent)
    without_simd = json.loads(result.stdout.strip().splitlines()[-1])
    with_simd = tree_hashes(raw)
    assert without_simd and all(with_simd[key] == digest for key, digest in without_simd.items())


def test_other_seed_other_content(raw, tmp_path):
    other = tree_hashes(generate_suite(tmp_path / "other", scale="test", seed=1, workers=1)["synth-ucf"].parent)
    first = tree_hashes(raw)
    media = [k for k in first if k.endswith((".avi", ".webm", ".mp4", ".JPEG"))]
    changed = [k for k in media if other.get(k) != first[k]]
    assert len(changed) == len(media)


def test_ucf_layout(raw):
    root = raw / "synth-ucf"
    names = ucf.class_names(SCALE)
    assert names == sorted(names) and len(names) == SCALE.ucf.class_limit
    lists = root / "ucfTrainTestlist"
    assert (lists / "classInd.txt").read_text() == "".join(f"{i + 1} {n}\n" for i, n in enumerate(names))
    on_disk = {str(p.relative_to(root / "UCF-101")) for p in (root / "UCF-101").rglob("*.avi")}
    assert len(on_disk) == len(names) * SCALE.ucf.groups * SCALE.ucf.clips_per_group
    for split in (1, 2, 3):
        train = (lists / f"trainlist{split:02d}.txt").read_text().splitlines()
        test = (lists / f"testlist{split:02d}.txt").read_text().splitlines()
        listed = set()
        for line in train + test:
            match = re.fullmatch(r"(\w+)/v_(\w+)_g(\d\d)_c(\d\d)\.avi( \d+)?", line)
            assert match, line
            folder, name, group = match.group(1), match.group(2), int(match.group(3))
            assert folder == name and name in names
            in_test = 7 * (split - 1) < group <= 7 * split
            assert in_test == (line in test)
            if not in_test:
                assert int(match.group(5)) == names.index(name) + 1
            listed.add(line.split()[0])
        assert listed == on_disk


def test_ssv2_layout(raw):
    root = raw / "synth-ssv2"
    labels = json.loads((root / "labels" / "labels.json").read_text())
    assert list(labels.values()) == [str(i) for i in range(SCALE.ssv2.class_limit)]
    ids = set()
    for file_name, per_class in (("train.json", SCALE.ssv2.train_per_class), ("validation.json", SCALE.ssv2.test_per_class)):
        entries = json.loads((root / "labels" / file_name).read_text())
        assert len(entries) == per_class * len(labels)
        for entry in entries:
            assert set(entry) == {"id", "label", "template", "placeholders"}
            assert entry["id"].isdigit() and (root / "20bn-something-something-v2" / f"{entry['id']}.webm").is_file()
            assert entry["template"].replace("[", "").replace("]", "") in labels
            assert len(entry["placeholders"]) == entry["template"].count("[something]")
            filled = entry["template"]
            for name in entry["placeholders"]:
                filled = filled.replace("[something]", name, 1)
            assert entry["label"] == filled
            ids.add(entry["id"])
    assert len(ids) == len(list((root / "20bn-something-something-v2").iterdir()))


def test_imagenet_layout(raw):
    root = raw / "synth-in"
    classes = json.loads((root / "Labels.json").read_text())
    assert all(re.fullmatch(r"n\d{8}", wnid) for wnid in classes) and len(classes) == SCALE.imagenet.class_limit
    for wnid in classes:
        train = sorted(p.name for p in (root / "train" / wnid).iterdir())
        assert len(train) == SCALE.imagenet.train_per_class
        assert all(re.fullmatch(rf"{wnid}_\d+\.JPEG", n) for n in train)
        val = [p.name for p in (root / "val" / wnid).iterdir()]
        assert len(val) == SCALE.imagenet.test_per_class
        assert all(re.fullmatch(r"ILSVRC2012_val_\d{8}\.JPEG", n) for n in val)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["Labels.json", "train", "val"]


def test_diving_layout(raw):
    root = raw / "synth-diving"
    vocab = json.loads((root / "Diving48_vocab.json").read_text())
    assert len(vocab) == SCALE.diving.class_limit
    assert all(len(words) == 4 and all(isinstance(w, str) for w in words) for words in vocab)
    assert len({tuple(w) for w in diving.vocabulary()}) == 48
    names = set()
    for file_name, per_class in (("Diving48_V2_train.json", SCALE.diving.train_per_class),
                                 ("Diving48_V2_test.json", SCALE.diving.test_per_class)):
        entries = json.loads((root / file_name).read_text())
        assert len(entries) == per_class * len(vocab)
        for entry in entries:
            assert entry == {"vid_name": entry["vid_name"], "label": entry["label"], "start_frame": 0,
                             "end_frame": SCALE.diving.frames - 1}
            assert re.fullmatch(r"[A-Za-z0-9_-]+", entry["vid_name"]) and 0 <= entry["label"] < len(vocab)
            assert (root / "rgb" / f"{entry['vid_name']}.mp4").is_file()
            names.add(entry["vid_name"])
    assert len(names) == len(list((root / "rgb").iterdir()))


@pytest.mark.parametrize("pattern, container, codec, fps, size", [
    ("synth-ucf/UCF-101/*/*.avi", "avi", "mpeg4", 25, SCALE.ucf),
    ("synth-ssv2/20bn-something-something-v2/*.webm", "matroska,webm", "vp9", 12, SCALE.ssv2),
    ("synth-diving/rgb/*.mp4", "mov,mp4,m4a,3gp,3g2,mj2", "h264", 25, SCALE.diving),
])
def test_videos_decode(raw, pattern, container, codec, fps, size):
    paths = sorted(raw.glob(pattern))
    assert paths
    for path in paths[:6]:
        with av.open(str(path)) as video:
            stream = video.streams.video[0]
            assert video.format.name == container and stream.codec_context.name == codec
            assert stream.average_rate == fps
            frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
        assert len(frames) == size.frames and frames[0].shape == (size.height, size.width, 3)
        assert np.std(np.stack(frames).astype(np.float32)) > 5  # something was drawn


def test_images_decode(raw):
    for path in sorted((raw / "synth-in").rglob("*.JPEG"))[:6]:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == (SCALE.imagenet.width, SCALE.imagenet.height)
        with av.open(str(path)) as container:  # the same bytes through FFmpeg, as the shard builder reads them
            assert container.streams.video[0].codec_context.name == "mjpeg"
            assert len(list(container.decode(video=0))) == 1


def _instances_used(monkeypatch, module, jobs) -> dict[str, tuple[set, set]]:
    """Render `jobs` and record, per split, the digit images and photo tiles the renderer touched."""
    used: dict[str, tuple[set, set]] = {}
    current = {"split": None}
    digit_alpha, random_crop = assets.digit_alpha, assets.random_crop

    def recording_digit_alpha(index, size):
        used.setdefault(current["split"], (set(), set()))[0].add(int(index))
        return digit_alpha(index, size)

    def recording_random_crop(rng, tile_index, *args, **kwargs):
        used.setdefault(current["split"], (set(), set()))[1].add(int(tile_index))
        return random_crop(rng, tile_index, *args, **kwargs)

    monkeypatch.setattr(assets, "digit_alpha", recording_digit_alpha)
    monkeypatch.setattr(assets, "random_crop", recording_random_crop)
    for job in jobs:
        current["split"] = job.split
        module.render(job, SCALE, 0)
    return used


@pytest.mark.parametrize("module", [ucf, ssv2, imagenet, diving], ids=lambda m: m.NAME)
def test_held_out_instances_are_disjoint(monkeypatch, module):
    jobs = module.plan(SCALE, 0)
    used = _instances_used(monkeypatch, module, jobs)
    held_out = "val" if "val" in used else "test"
    train_digits, train_tiles = used["train"]
    test_digits, test_tiles = used[held_out]
    assert train_tiles and test_tiles and not train_tiles & test_tiles
    assert not train_digits & test_digits
    if module is not diving:  # the diver is drawn, not a digit
        assert train_digits and test_digits


def test_complete_part_is_skipped(raw, capsys):
    before = {p: p.stat().st_mtime_ns for p in raw.rglob("*") if p.is_file()}
    generate_suite(raw, scale="test", seed=0, parts=["synth-in", "synth-ucf"], workers=1)
    assert {p: p.stat().st_mtime_ns for p in raw.rglob("*") if p.is_file()} == before
    assert capsys.readouterr().out.count("complete, skipped") == 2


def test_interrupted_part_resumes_to_identical_bytes(raw, tmp_path):
    part = tmp_path / "raw" / "synth-ssv2"
    shutil.copytree(raw / "synth-ssv2", part)
    marker = json.loads((part / COMPLETE_MARKER).read_text())
    # What a kill leaves behind: no completion marker, a claimed folder, half-written and missing files.
    (part / COMPLETE_MARKER).unlink()
    (part / suite.PROGRESS_MARKER).write_text(json.dumps(marker["arguments"]))
    videos = sorted((part / "20bn-something-something-v2").iterdir())
    for video in videos[:3]:
        video.unlink()
    (videos[3].parent / (videos[3].name + ".synth-partial")).write_bytes(b"truncated")
    (part / "labels" / "train.json").unlink()
    generate_suite(tmp_path / "raw", scale="test", seed=0, parts=["synth-ssv2"], workers=1)
    assert tree_hashes(part) == tree_hashes(raw / "synth-ssv2")


def test_refuses_a_part_made_with_other_arguments(raw):
    with pytest.raises(ValueError, match="other arguments"):
        generate_suite(raw, scale="test", seed=3, parts=["synth-diving"], workers=1)


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "synth-in").mkdir()
    (tmp_path / "synth-in" / "my_photos.txt").write_text("not synth")
    with pytest.raises(ValueError, match="not a synth part"):
        generate_suite(tmp_path, scale="test", parts=["synth-in"], workers=1)


@pytest.mark.parametrize("kwargs, argument", [
    ({"scale": "huge"}, "scale="), ({"parts": ["synth-kinetics"]}, "parts="), ({"seed": -1}, "seed="),
    ({"workers": 0}, "workers="),
])
def test_bad_arguments_name_themselves(tmp_path, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        generate_suite(tmp_path, **kwargs)


def test_cli_help_and_error(capsys, raw):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--help"])
    assert exit_info.value.code == 0 and "--scale" in capsys.readouterr().out
    assert cli_main(["--out", str(raw), "--scale", "test", "--seed", "5", "--parts", "synth-in"]) == 2
    assert "other arguments" in capsys.readouterr().err


def test_own_yuv_conversion_matches_ffmpeg_within_rounding():
    from shards.synth import media
    rows, cols = np.mgrid[0:48, 0:64]
    smooth = np.stack([cols * 4, rows * 5, (cols + rows) * 2], axis=-1).astype(np.uint8)  # [48, 64, 3]
    ours = media.rgb_to_yuv420p(smooth)
    ffmpeg = av.VideoFrame.from_ndarray(smooth, format="rgb24").reformat(format="yuv420p").to_ndarray()
    assert ours.shape == ffmpeg.shape == (72, 64)
    assert np.abs(ours.astype(int) - ffmpeg).max() <= 1
