"""`python -m engine.features <export> clip.mp4 --out feats.npy` (issue 24): from a fresh Python, the features
of an mp4 equal the encoder's features of the clip the evaluation's own loader (engine.data, eval mode: DALI
decoding, uniform frames, centre square, resize, normalisation) makes of the same video."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from data_fixtures import FixtureSpec, write_dataset  # noqa: E402
from engine.clip_input import load_clip  # noqa: E402
from engine.eval.clips import eval_batches  # noqa: E402
from engine.eval.features import ExtractionSpec  # noqa: E402
from engine.export_card import write_export_folder  # noqa: E402
from engine.models import ModelConfig, VisionTransformer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# 9 frames of 32 x 40: the encoder's 4 frames spread over them, the centred 32 x 32 square resized to 16.
SPEC = FixtureSpec("one", 1, num_frames=9, height=32, width=40)
CFG = ModelConfig(img_size=16, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=64, depth=2, num_heads=4)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    folder = write_dataset(root / "one", SPEC)
    batches, _ = eval_batches(folder, "train", ExtractionSpec(num_frames=CFG.num_frames, crop_size=CFG.img_size),
                              batch_size=1)
    evaluation_clip = next(iter(batches))["video"].float().contiguous()  # [1, 3, T, S, S]
    mp4 = root / "clip.mp4"  # the shard member's own bytes (VP9 in mp4)
    with tarfile.open(next(folder.glob("*.tar"))) as tar:
        mp4.write_bytes(tar.extractfile(tar.getmember("one_00000.mp4")).read())
    return root, mp4, evaluation_clip


def test_load_clip_is_the_evaluations_clip(video):
    _, mp4, evaluation_clip = video
    clip = load_clip(mp4, CFG)
    assert clip.shape == evaluation_clip.shape == (1, 3, 4, 16, 16)
    error = (clip - evaluation_clip).abs() * 255 * 0.226  # about one 0..255 level per unit
    assert error.mean() < 0.1 and error.max() <= 1.01, (error.mean(), error.max())  # decoders' rounding only


@pytest.mark.slow  # a fresh Python
def test_features_cli_from_a_fresh_python(video, tmp_path):
    root, mp4, evaluation_clip = video
    torch.manual_seed(0)
    encoder = VisionTransformer(CFG).eval()
    export = write_export_folder(encoder, CFG, tmp_path / "export", run="tiny")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for extra, name in (([], "tokens.npy"), (["--pooled"], "pooled.npy")):
        result = subprocess.run([sys.executable, "-m", "engine.features", str(export), str(mp4), "--out",
                                 str(tmp_path / name), *extra], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        expected = encoder.forward_eval(evaluation_clip)[0]  # [N, D]
    tokens, pooled = np.load(tmp_path / "tokens.npy"), np.load(tmp_path / "pooled.npy")
    assert tokens.shape == (8, 64) and pooled.shape == (64,)  # (4/2) x (16/8)^2 tokens
    scale = expected.abs().max().item()
    assert np.abs(tokens - expected.numpy()).max() <= 1e-2 * scale
    assert np.abs(pooled - expected.mean(0).numpy()).max() <= 1e-2 * scale
    result = subprocess.run([sys.executable, "-m", "engine.features", str(export), str(root / "absent.mp4"), "--out",
                             str(tmp_path / "x.npy")], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 2 and "absent.mp4: no such video file" in result.stderr
