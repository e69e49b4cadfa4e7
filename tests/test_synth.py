"""The synth suite generator: determinism, exact real-dataset layouts, decodability, held-out instances,
idempotence and resumption. Uses the tiny `test` scale (32 px, 8 frames, a few classes)."""
from __future__ import annotations

import colorsys
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
from shards.synth import assets, diving, imagenet, scenes, ssv2, suite, ucf
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


def test_ucf_classes_are_camera_motions():
    pans = [f"Pan{h}{v}" for h in ucf.HEADINGS for v in ("Slow", "Fast")]
    assert ucf.ALL_CLASSES == sorted(pans + ["ZoomIn", "ZoomOut", "RollLeft", "RollRight"])
    assert len(ucf.ALL_CLASSES) == 20
    assert ucf.class_names(SCALE) == ["PanEastFast", "PanEastSlow"]  # test scale: one heading, both speeds
    assert ucf.CLASSES["PanNorthWestSlow"].heading == 135 and ucf.CLASSES["ZoomOut"].sense == -1


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


def test_ucf_demo_counts():
    jobs = ucf.plan(SCALES["demo"], 0)
    assert len(jobs) == 25 * 7 * 20
    assert sum(job.split == "train" for job in jobs) == 2520 and sum(job.split == "test" for job in jobs) == 980


def test_ucf_appearance_is_independent_of_the_class():
    """Over the demo plan, the scene, the photo tiles, the number of digits, their identities, hues and sizes
    each have the same distribution in every class (chi-square test of independence); tiles and digit
    images come from the clip's group pool."""
    from scipy.stats import chi2_contingency

    scale = SCALES["demo"]
    jobs = ucf.plan(scale, 0)
    looks = [ucf.clip_look(job, scale, 0) for job in jobs]
    labels = np.array([job.label for job in jobs])
    _, digit_labels = assets.digit_images()
    hue = np.array([colorsys.rgb_to_hsv(*(np.asarray(look.colors[0]) / 255.0))[0] for look in looks])
    draws = {
        "scene": np.array([[s.name for s in scenes.SCENES].index(look.scene.name) for look in looks]),
        "tile": np.array([look.tiles[0] % 4 for look in looks]),  # 4 bins: a tile's group is its index mod 25
        "count": np.array([len(look.digit_indices) for look in looks]) - ucf.SPRITES_PER_SCENE[0],
        "digit": np.array([digit_labels[look.digit_indices[0]] for look in looks]),
        "hue": np.minimum((hue * 6).astype(int), 5),
        "size": np.digitize([look.size_fracs[0] for look in looks], [0.30, 0.35]),
    }
    for name, values in draws.items():
        table = np.zeros((20, values.max() + 1))
        np.add.at(table, (labels, values), 1)
        assert chi2_contingency(table).pvalue > 0.01, name
    for job, look in zip(jobs, looks):
        group = job.extra[0]
        assert all(index % scale.ucf.groups == group - 1 for index in look.digit_indices)
        assert all(tile % scale.ucf.groups == group - 1 for tile in look.tiles)


def test_ucf_pixels_tell_nothing_of_the_class_without_the_motion():
    """The mean colour of a clip (what a bag of frames sees first) scores chance with a nearest-centroid
    classifier trained on the training groups, tested on the held-out ones: only the camera's motion
    tells the class."""
    import dataclasses

    scale = dataclasses.replace(SCALE, ucf=dataclasses.replace(SCALE.ucf, class_limit=None))
    jobs = [job for job in ucf.plan(scale, 0) if job.extra[0] <= 15]  # 7 test + 8 train groups per class
    colours = np.stack([ucf.render_frames(job, scale, 0).reshape(-1, 3).mean(0) for job in jobs])
    labels = np.array([job.label for job in jobs])
    train = np.array([job.split == "train" for job in jobs])
    centroids = np.stack([colours[train & (labels == c)].mean(0) for c in range(20)])
    guess = np.argmin(((colours[~train, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (guess == labels[~train]).mean() < 0.09  # chance 0.05; 140 test clips


def test_ucf_camera_paths():
    """Pans travel their speed band within 8 degrees of their heading and keep the view inside the canvas;
    zooms go between 1 and 1.35-1.6 in their sense; rolls turn 25-40 degrees in their sense; only pans move
    the centre."""
    t = np.linspace(0.0, 1.0, 32)
    width = height = 64
    side = ucf.CANVAS * 64
    for name, motion in ucf.CLASSES.items():
        for seed in range(30):
            x, y, zoom, roll = ucf.camera_path(motion, np.random.default_rng(seed), t, width, height)
            if motion.kind == "pan":
                length = np.hypot(x[-1] - x[0], y[-1] - y[0]) / 64
                assert motion.speed[0] - 1e-9 <= length <= motion.speed[1] + 1e-9, name
                heading = np.degrees(np.arctan2(y[0] - y[-1], x[-1] - x[0]))
                assert abs((heading - motion.heading + 180) % 360 - 180) <= ucf.HEADING_JITTER + 1e-6, name
                assert np.all(zoom == 1) and np.all(roll == 0)
                assert 32 <= x.min() and x.max() <= side - 32 and 32 <= y.min() and y.max() <= side - 32
                continue
            assert np.ptp(x) == 0 and np.ptp(y) == 0
            if motion.kind == "zoom":
                far = zoom[-1] if motion.sense > 0 else zoom[0]
                assert zoom.min() == pytest.approx(1.0) and ucf.ZOOM[0] <= far <= ucf.ZOOM[1]
                assert np.all(np.diff(zoom) * motion.sense > 0) and np.ptp(roll) == 0
            else:
                turn = (roll[-1] - roll[0]) * motion.sense
                assert ucf.ROLL_DEG[0] <= turn <= ucf.ROLL_DEG[1] and np.all(zoom == 1)


def test_ucf_camera_view_moves_the_scene():
    """A pan east shows the canvas shifted left by the camera's travel (the affine view is exact for
    whole-pixel shifts)."""
    canvas = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    first = ucf.camera_view(canvas, 48.0, 48.0, 1.0, 0.0, 32, 32)
    moved = ucf.camera_view(canvas, 51.0, 48.0, 1.0, 0.0, 32, 32)
    assert np.array_equal(moved[:, :-3], first[:, 3:])
    assert np.array_equal(first, np.asarray(canvas)[32:64, 32:64])


def test_ucf_shards_build_end_to_end(raw, tmp_path):
    """`python -m shards.build synth --scale test` on the generated trees: the UCF-101 adapter reads the
    class names and labels the generator wrote."""
    import pyarrow.parquet as pq

    from shards.build import main as build_main

    code = build_main(["synth", "--root", str(raw), "--out", str(tmp_path / "shards"), "--scale", "test",
                       "--workers", "1", "--quiet"])
    assert code == 0
    folder = tmp_path / "shards" / "synth-ucf"
    names = ucf.class_names(SCALE)
    assert json.loads((folder / "manifest.json").read_text())["classes"] == names
    rows = pq.read_table(folder / "index.parquet").to_pylist()
    assert len(rows) == len(names) * SCALE.ucf.groups * SCALE.ucf.clips_per_group
    for row in rows:
        class_name, group = re.fullmatch(r"v_(\w+)_g(\d\d)_c\d\d", row["key"]).groups()
        assert row["label"] == names.index(class_name) and row["label_name"] == class_name
        assert row["split"] == ("test" if int(group) <= 7 else "train")
    for part in PART_NAMES:
        assert (tmp_path / "shards" / part / "index.parquet").is_file()


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
