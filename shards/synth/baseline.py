"""Sanity baselines for the synth suite: logistic regression on hand-made features, train -> held out.

Reads the raw trees that `generate_suite` wrote (through their published split files, not the shard
builder), samples 16 frames uniformly per video (the probe protocol of docs/paper.md §5),
downsamples them to 16x16, and fits scikit-learn's logistic regression (after standardising and a
PCA; the best held-out score over a small grid of PCA sizes and C is reported) on three features:

- bag of frames: the time-mean of the frames (no motion, no order);
- frame difference: the time-mean of |frame[t+1] - frame[t]| (motion energy, no order);
- ordered segments: the means of four consecutive quarters of the clip, concatenated (coarse order).

    python -m shards.synth.baseline --root RAW [--parts synth-ucf ...] [--json results.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from .suite import PART_NAMES

FRAMES = 16
SIDE = 16
# (PCA components, inverse regularisation C). The best test score over this grid is reported: an
# optimistic number, which is the safe side for a claim that a part is *not* easy.
GRID = tuple((components, c) for components in (64, 128, 256) for c in (0.01, 0.1, 1.0))
FEATURES = ("bag of frames", "frame difference", "ordered segments")


def _ucf_split(root: Path) -> list[tuple[Path, int, str]]:
    lists = root / "ucfTrainTestlist"
    classes = {line.split()[1]: int(line.split()[0]) - 1 for line in (lists / "classInd.txt").read_text().splitlines()}
    samples = []
    for split, file_name in (("train", "trainlist01.txt"), ("test", "testlist01.txt")):
        for line in (lists / file_name).read_text().splitlines():
            relative = line.split()[0]
            samples.append((root / "UCF-101" / relative, classes[relative.split("/")[0]], split))
    return samples


def _ssv2_split(root: Path) -> list[tuple[Path, int, str]]:
    labels = json.loads((root / "labels" / "labels.json").read_text())
    samples = []
    for split, file_name in (("train", "train.json"), ("test", "validation.json")):
        for entry in json.loads((root / "labels" / file_name).read_text()):
            key = entry["template"].replace("[", "").replace("]", "")
            samples.append((root / "20bn-something-something-v2" / f"{entry['id']}.webm", int(labels[key]), split))
    return samples


def _imagenet_split(root: Path) -> list[tuple[Path, int, str]]:
    wnids = sorted(json.loads((root / "Labels.json").read_text()))
    return [(path, label, "train" if folder == "train" else "test")
            for folder in ("train", "val") for label, wnid in enumerate(wnids)
            for path in sorted((root / folder / wnid).glob("*.JPEG"))]


def _diving_split(root: Path) -> list[tuple[Path, int, str]]:
    return [(root / "rgb" / f"{entry['vid_name']}.mp4", int(entry["label"]), split)
            for split, file_name in (("train", "Diving48_V2_train.json"), ("test", "Diving48_V2_test.json"))
            for entry in json.loads((root / file_name).read_text())]


SPLIT_READERS = {"synth-ucf": _ucf_split, "synth-ssv2": _ssv2_split, "synth-in": _imagenet_split,
                 "synth-diving": _diving_split}


def load_clip(path: Path) -> np.ndarray:
    """[FRAMES, SIDE, SIDE, 3] float32 in [0, 1]: frames at linspace(0, T-1, FRAMES), downsampled."""
    with av.open(str(path)) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    picks = np.linspace(0, len(frames) - 1, FRAMES).round().astype(int)
    return np.stack([np.asarray(frames[i].resize((SIDE, SIDE), Image.BILINEAR), np.float32) / 255.0
                     for i in picks])


def features(clip: np.ndarray) -> dict[str, np.ndarray]:
    """clip [T, S, S, 3] -> one flat vector per feature name."""
    difference = np.abs(np.diff(clip, axis=0)).mean(axis=0)
    segments = np.concatenate([part.mean(axis=0).ravel() for part in np.array_split(clip, 4)])
    return {"bag of frames": clip.mean(axis=0).ravel(), "frame difference": difference.ravel(),
            "ordered segments": segments}


def evaluate_part(name: str, root: Path) -> dict:
    samples = SPLIT_READERS[name](root)
    table = {feature: [] for feature in FEATURES}
    for path, _, _ in tqdm(samples, desc=f"decode {name}", unit="file"):
        for feature, vector in features(load_clip(path)).items():
            table[feature].append(vector)
    labels = np.array([label for _, label, _ in samples])
    train = np.array([split == "train" for _, _, split in samples])
    result = {"classes": int(labels.max() + 1), "train": int(train.sum()), "test": int((~train).sum()),
              "chance": round(100.0 / (labels.max() + 1), 1)}
    for feature in FEATURES:
        matrix = np.stack(table[feature])
        if not matrix.any():  # still images have no frame differences
            result[feature] = None
            continue
        result[feature] = max(_fit_and_score(matrix, labels, train, components, c) for components, c in GRID)
        if name == "synth-ssv2":
            result[f"{feature}, within pair"] = _within_pair_score(matrix, labels, train)
    return result


def _within_pair_score(matrix: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    """Mean over synth-ssv2's time-reversed pairs (labels 2k, 2k+1) of a two-way classifier's held-out
    accuracy: 50 % means the feature cannot tell a clip from its reversal."""
    scores = []
    for pair in range(int(labels.max()) // 2 + 1):
        members = labels // 2 == pair
        pair_train, pair_test = train & members, ~train & members
        if len(np.unique(labels[pair_train])) < 2 or not pair_test.any():
            continue
        scores.append(_fit_and_score(matrix, labels % 2, pair_train, 32, 0.1, pair_test))
    return round(float(np.mean(scores)), 1) if scores else None


def _fit_and_score(matrix: np.ndarray, labels: np.ndarray, train: np.ndarray, components: int, c: float,
                   test: np.ndarray | None = None) -> float:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # PCA first: lbfgs on thousands of raw dimensions takes minutes per part on 2 cores.
    components = min(components, int(train.sum()) - 1, matrix.shape[1])
    model = make_pipeline(StandardScaler(), PCA(components, whiten=True, random_state=0),
                          LogisticRegression(C=c, max_iter=1000))
    model.fit(matrix[train], labels[train])
    test = ~train if test is None else test
    return round(100.0 * float((model.predict(matrix[test]) == labels[test]).mean()), 1)


def markdown(results: dict) -> str:
    lines = ["| part | classes | train / test | chance | " + " | ".join(FEATURES) + " |",
             "|---|---|---|---|" + "---|" * len(FEATURES)]
    for name, row in results.items():
        cells = ["n/a" if row[f] is None else f"{row[f]:.1f}" for f in FEATURES]
        lines.append(f"| {name} | {row['classes']} | {row['train']} / {row['test']} | {row['chance']:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shards.synth.baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="folder holding the synth-* raw trees")
    parser.add_argument("--parts", nargs="+", choices=PART_NAMES, default=list(PART_NAMES), metavar="PART",
                        help=f"parts to evaluate (default: all of {', '.join(PART_NAMES)})")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    missing = [name for name in args.parts if not (args.root / name).is_dir()]
    if missing:
        print(f"error: --root {args.root} has no {', '.join(missing)}; run `python -m shards.synth --out "
              f"{args.root}` first", file=sys.stderr)
        return 2
    results = {name: evaluate_part(name, args.root / name) for name in args.parts}
    print(f"top-1 % on the held-out split: best over PCA components x C in {GRID} of logistic regression "
          f"on features of {FRAMES} frames at {SIDE}x{SIDE} px")
    print(markdown(results))
    for name, row in results.items():
        pairs = {f: row[f"{f}, within pair"] for f in FEATURES if f"{f}, within pair" in row}
        if pairs:
            print(f"{name}, two-way accuracy within time-reversed pairs (chance 50 %): "
                  + ", ".join(f"{f} {score:.1f}" for f, score in pairs.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
