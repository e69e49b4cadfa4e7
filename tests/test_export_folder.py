"""An export folder (model.safetensors, config.json, model card) loads back as the same encoder, from a
path, a file:// URL and an HTTP server; a corrupted remote copy is refused; probe results reach the card."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from engine.export import export_encoder, load_encoder  # noqa: E402
from engine.export_card import CONFIG_NAME, WEIGHTS_NAME, add_evaluation, write_export_folder  # noqa: E402
from engine.models import ModelConfig, VisionTransformer  # noqa: E402
from engine.models.config import MODEL_PRESETS  # noqa: E402


def _encoder(seed: int = 5):
    cfg = ModelConfig(**{**MODEL_PRESETS["tiny"], "img_size": 32, "num_frames": 4, "patch_size": 8,
                         "tubelet_size": 2})
    torch.manual_seed(seed)
    return VisionTransformer(cfg).eval(), cfg


def _same_outputs(a, b) -> None:
    torch.manual_seed(0)
    video = torch.randn(2, 3, a.cfg.num_frames, a.cfg.img_size, a.cfg.img_size)
    with torch.no_grad():
        assert torch.equal(a.forward_eval(video), b.forward_eval(video))
        assert torch.equal(a(video), b(video))


@pytest.fixture()
def folder(tmp_path):
    encoder, cfg = _encoder()
    out = write_export_folder(encoder, cfg, tmp_path / "export", trained_encoder="target_encoder", step=7,
                              variant="fwm", run="tiny_run")
    return encoder, out


def test_folder_holds_weights_config_and_card(folder):
    _, out = folder
    assert {p.name for p in out.iterdir()} == {WEIGHTS_NAME, CONFIG_NAME, "README.md"}
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["architecture"] == "VisionTransformer" and config["step"] == 7 and config["run"] == "tiny_run"
    assert config["engine_commit"] and len(config["weights_sha256"]) == 64
    card = (out / "README.md").read_text()
    assert "tiny_run" in card and config["engine_commit"] in card and "load_encoder" in card
    assert "Not evaluated yet" in card


def test_round_trip_from_path_file_url_and_http(folder, tmp_path, monkeypatch):
    from remote_servers import RangeHTTPServer

    encoder, out = folder
    monkeypatch.setenv("VJEPA_CACHE", str(tmp_path / "cache"))
    loaded = load_encoder(out)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    _same_outputs(encoder, loaded)
    _same_outputs(encoder, load_encoder(f"file://{out}"))
    with RangeHTTPServer(tmp_path) as server:
        _same_outputs(encoder, load_encoder(f"{server.url}/export"))
        first = len(server.log.gets())
        _same_outputs(encoder, load_encoder(f"{server.url}/export/"))  # cached: only config.json again
        assert len(server.log.gets()) - first == 1
        # the single-file export of the same encoder, by URL
        export_encoder(encoder, encoder.cfg, tmp_path / "enc.safetensors", step=7)
        _same_outputs(encoder, load_encoder(f"{server.url}/enc.safetensors"))


def test_remote_copy_with_wrong_weights_is_refused(folder, tmp_path, monkeypatch):
    from remote_servers import RangeHTTPServer

    _, out = folder
    other, cfg = _encoder(seed=6)
    export_encoder(other, cfg, out / WEIGHTS_NAME)  # weights no longer match config.json's sha256
    monkeypatch.setenv("VJEPA_CACHE", str(tmp_path / "cache"))
    with RangeHTTPServer(tmp_path) as server, pytest.raises(ValueError, match="sha256"):
        load_encoder(f"{server.url}/export")


def test_probe_results_reach_the_card(folder, tmp_path):
    _, out = folder
    head = {"lr": 1e-3, "weight_decay": 0.01, "top1": 41.5, "top5": 80.0, "final_train_loss": 1.0}
    results = {"fingerprint": "x", "benchmarks": {"synth-ucf": {"probes": {"attentive": {
        "heads": [head, {**head, "top1": 45.0}], "best_index": 1}}}}}
    path = tmp_path / "tiny_run.json"
    path.write_text(json.dumps(results))
    card = add_evaluation(out, path).read_text()
    assert "| synth-ucf | attentive | 41.5 | 80.0 | 45.0 |" in card


# -- config.json and weights that are not the folder's own (issue 22 §2.1, §2.2) ---------------------------

def _point_weights_at(out: Path, name: str, target: Path) -> None:
    """Move the folder's (valid) weights to `target` and make config.json name them as `name`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((out / WEIGHTS_NAME).read_bytes())
    config = json.loads((out / CONFIG_NAME).read_text())
    (out / CONFIG_NAME).write_text(json.dumps({**config, "weights": name}))


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_local_folder_never_reads_weights_outside_itself(folder, tmp_path, kind):
    """Before: `"weights": "../outside.safetensors"` (or an absolute path) loaded weights from outside the
    folder; the sha256 matched, so only the name check can refuse it."""
    _, out = folder
    outside = tmp_path / "outside.safetensors"
    _point_weights_at(out, "../outside.safetensors" if kind == "relative" else str(outside), outside)
    with pytest.raises(ValueError, match=r"config.json: weights .* is not a plain file name inside the export folder"):
        load_encoder(out)


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_remote_folder_never_writes_outside_the_cache(folder, tmp_path, monkeypatch, kind):
    """Before: fetch_export saved the download to cache / config["weights"], so a served config.json chose
    where on this machine a file was written (and the encoder loaded). The server here serves the weights
    at the URL the name leads to, as a crafted server would."""
    from remote_servers import RangeHTTPServer

    _, out = folder
    cache = tmp_path / "cache"
    monkeypatch.setenv("VJEPA_CACHE", str(cache))
    if kind == "absolute":
        planted = tmp_path / "planted" / "PWNED.safetensors"  # where the old code wrote: this absolute path
        name, served = str(planted), out / str(planted).lstrip("/")  # http.server maps //tmp/... under its root
    else:
        planted = cache / "exports" / "outside.safetensors"  # <cache>/exports/<folder>-<hash>/../outside...
        name, served = "../outside.safetensors", tmp_path / "outside.safetensors"  # the URL's .. is resolved
    _point_weights_at(out, name, served)
    with RangeHTTPServer(tmp_path) as server:
        with pytest.raises(ValueError, match=r"config.json: weights .* is not a plain file name"):
            load_encoder(f"{server.url}/export")
        assert not any(path.endswith(".safetensors") for _, path, _ in server.log.requests)  # nothing fetched
    assert not planted.exists()
    assert not [p for p in cache.rglob("*") if p.suffix == ".safetensors" or ".safetensors.part" in p.name]


def test_same_architecture_weights_swapped_in_are_refused(folder, tmp_path, monkeypatch):
    """Before: other weights of the same shapes in model.safetensors loaded silently although config.json's
    weights_sha256 no longer matched; every load checks it now (a path and a file:// URL)."""
    _, out = folder
    other, cfg = _encoder(seed=6)
    export_encoder(other, cfg, out / WEIGHTS_NAME, trained_encoder="target_encoder", step=7, run="tiny_run")
    monkeypatch.setenv("VJEPA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"model.safetensors: sha256 differs from weights_sha256 in .*config.json"):
        load_encoder(out)
    with pytest.raises(ValueError, match="sha256"):
        load_encoder(f"file://{out}")


def test_config_without_a_weights_sha256_is_refused(folder):
    _, out = folder
    config = json.loads((out / CONFIG_NAME).read_text())
    del config["weights_sha256"]
    (out / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no valid weights_sha256"):
        load_encoder(out)
