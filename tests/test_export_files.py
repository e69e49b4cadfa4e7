"""The files `python -m engine.export` writes: the same bytes in every process (issue 22 §2.4: the sha256 of
an export folder's config.json and the evaluation's fingerprint depend on it), modes that follow the umask
like every other file (issue 24 item 6), and one stderr line when a checkpoint is refused (issue 22 §3.3).

Each check runs the export in fresh Python processes, as a user does."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_untrusted_files import machine_key, written  # noqa: F401  (fixtures: a tiny checkpoint, a test key)

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str, seed: str = "0") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


EXPORT_TWICE = """
import sys
from engine.export import main
checkpoint, out = sys.argv[1:]
assert main([checkpoint, "--out", out + ".safetensors"]) == 0
assert main([checkpoint, "--out", out]) == 0   # an export folder
"""


@pytest.mark.slow  # three fresh Pythons importing torch and exporting twice: ~18 s on the shared 2-core machine
def test_the_same_checkpoint_exports_to_the_same_bytes_in_every_process(written, tmp_path):
    """Before: three exports of one checkpoint gave three sha256s. safetensors writes its metadata from a Rust
    HashMap whose order is drawn per process (so PYTHONHASHSEED alone does not decide it; the three processes
    here differ in it anyway); the tensors were equal."""
    for seed in ("0", "1", "2"):
        done = _python(EXPORT_TWICE, str(written), str(tmp_path / f"export{seed}"), seed=seed)
        assert done.returncode == 0, done.stderr[-2000:]
    files = {_sha256(tmp_path / f"export{seed}.safetensors") for seed in "012"}
    folders = {_sha256(tmp_path / f"export{seed}" / "model.safetensors") for seed in "012"}
    assert len(files) == 1 and files == folders, (files, folders)
    configs = [json.loads((tmp_path / f"export{seed}" / "config.json").read_text()) for seed in "012"]
    assert {c["weights_sha256"] for c in configs} == files


MODES = """
import os, stat, sys
from pathlib import Path
import torch
from engine.export import export_encoder
from engine.export_card import write_export_folder
from engine.models import VisionTransformer, model_preset

cfg = model_preset("tiny", img_size=16, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=24, depth=1, num_heads=4)
encoder = VisionTransformer(cfg)
root = Path(sys.argv[1])
for mask in (0o022, 0o027):
    os.umask(mask)
    out = root / oct(mask)
    single = export_encoder(encoder, cfg, out / "encoder.safetensors", step=1)
    linked = write_export_folder(encoder, cfg, out / "linked", weights=single, step=1)  # hard link of `single`
    written = write_export_folder(encoder, cfg, out / "written", step=1)               # weights written anew
    for path in (single, linked / "model.safetensors", linked / "config.json", written / "model.safetensors",
                 written / "config.json", written / "README.md"):
        print(oct(mask), path.relative_to(out), oct(stat.S_IMODE(path.stat().st_mode)))
"""


def test_exported_files_follow_the_umask(tmp_path):
    """Before: the weights were 0600 under umask 022 (safetensors creates its file 0600) while config.json and
    README.md were 0644; now every file has 0666 & ~umask."""
    done = _python(MODES, str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    assert len(rows) == 12
    expected = {"0o22": "0o644", "0o27": "0o640"}
    assert [(mask, path) for mask, path, mode in rows if mode != expected[mask]] == []


def _raw_pickle(path: Path, marker: Path, payload_key: str, extra: dict) -> None:
    """A plain pickle (protocol 4, not torch's zip format) whose loading would create `marker`."""
    class CreatesFile:
        def __reduce__(self):
            return open, (str(marker), "w")

    with open(path, "wb") as handle:
        pickle.dump({**extra, payload_key: CreatesFile()}, handle, protocol=4)


@pytest.mark.parametrize("crafted", ["trainer.pt", "ds/mp_rank_00_model_states.pt"])
def test_a_raw_pickle_is_refused_in_one_stderr_line(written, tmp_path, crafted):
    """Before: torch printed two UserWarning lines (pickle protocol 4) above the refusal."""
    folder = Path(shutil.copytree(written, tmp_path / "sent" / "step_00000004"))
    marker = tmp_path / "created-by-unpickling"
    if crafted == "trainer.pt":  # a checkpoint written before trainer.json: export reads trainer.pt alone
        (folder / "trainer.json").unlink()
        _raw_pickle(folder / crafted, marker, "ema_target", {"step": 4, "trained_encoder": "target_encoder",
                                                            "run": "tiny"})
    else:  # a run without EMA: the online encoder comes from DeepSpeed's model states
        info = json.loads((folder / "trainer.json").read_text())
        (folder / "trainer.json").write_text(json.dumps({**info, "trained_encoder": "encoder"}))
        _raw_pickle(folder / crafted, marker, "module", {})
    out = tmp_path / "enc.safetensors"
    done = subprocess.run([sys.executable, "-m", "engine.export", str(folder), "--out", str(out)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert not marker.exists() and not out.exists()
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {folder / crafted}: refused: loading it needs pickle"), lines[0]


def test_every_weights_only_read_refuses_a_raw_pickle_without_warnings(tmp_path):
    """Resume reads its checkpoint files through the same load_weights_only as export: a raw pickle is one
    CheckpointRefused and no warning (before: torch's two pickle-protocol lines came first on resume)."""
    import warnings

    from engine.training.checkpoint import CheckpointRefused, load_weights_only

    marker = tmp_path / "created-by-unpickling"
    _raw_pickle(tmp_path / "rank_0.pt", marker, "loader", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointRefused, match="refused: loading it needs pickle"):
            load_weights_only(tmp_path / "rank_0.pt", "fix it")
    assert [str(w.message) for w in caught] == [] and not marker.exists()
