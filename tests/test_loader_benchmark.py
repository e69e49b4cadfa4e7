"""benchmarks/loader.py runs end to end on miniature synth shards and writes consistent results."""
import json

import fixtures_raw as raw
from benchmarks.loader import main as benchmark
from shards.build import main as build_shards


def test_loader_benchmark_smoke(monkeypatch, tmp_path):
    raw.install_fake_synth_generator(monkeypatch)
    assert build_shards(["synth", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "shards"),
                         "--workers", "1", "--quiet"]) == 0
    stem = tmp_path / "results" / "loader-smoke"
    assert benchmark(["--shards", str(tmp_path / "shards"), "--batch-size", "2", "--frames", "4", "--crop", "16",
                      "--workers", "1", "--threads", "1", "--batches", "2", "--rounds", "2", "--out", str(stem)]) == 0
    run = json.loads(stem.with_suffix(".json").read_text())["runs"]["cpu"]
    for name in ("a_loader", "b_reference", "c_decode_only", "d_graph_only"):
        assert run[name]["clips_per_s"] > 0 and len(run[name]["round_seconds"]) == 2, name
    assert run["a_over_b"] == round(run["a_loader"]["clips_per_s"] / run["b_reference"]["clips_per_s"], 2)
    assert run["a_over_c"] == round(run["a_loader"]["clips_per_s"] / run["c_decode_only"]["clips_per_s"], 3)
    assert "| cpu | a_loader |" in stem.with_suffix(".md").read_text()
