"""benchmarks/loader.py and loader_profile.py run end to end on miniature synth shards and write
consistent results."""
import json

import pytest

import fixtures_raw as raw
from benchmarks.loader import main as benchmark
from benchmarks.loader_profile import main as profile
from shards.build import main as build_shards


@pytest.fixture(scope="module")
def synth_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader_benchmark")
    with pytest.MonkeyPatch.context() as monkeypatch:
        raw.install_fake_synth_generator(monkeypatch)
        assert build_shards(["synth", "--root", str(root / "raw"), "--out", str(root / "shards"),
                             "--workers", "1", "--quiet"]) == 0
    return root / "shards"


TINY = ["--batch-size", "2", "--frames", "4", "--crop", "16", "--workers", "1", "--threads", "1"]


def test_loader_benchmark_smoke(synth_shards, tmp_path):
    stem = tmp_path / "loader-smoke"
    assert benchmark(["--shards", str(synth_shards), *TINY, "--batches", "2", "--rounds", "2", "--out", str(stem)]) == 0
    run = json.loads(stem.with_suffix(".json").read_text())["runs"]["cpu"]
    for name in ("a_loader", "b_reference", "c_decode_only", "d_graph_only"):
        assert run[name]["clips_per_s"] > 0 and len(run[name]["round_seconds"]) == 2, name
    assert run["a_over_b"] == round(run["a_loader"]["clips_per_s"] / run["b_reference"]["clips_per_s"], 2)
    assert run["a_over_c"] == round(run["a_loader"]["clips_per_s"] / run["c_decode_only"]["clips_per_s"], 3)
    assert "| cpu | a_loader |" in stem.with_suffix(".md").read_text()


def test_loader_profile_smoke(synth_shards, tmp_path):
    stem = tmp_path / "profile-smoke"
    assert profile(["--shards", str(synth_shards), *TINY, "--batches", "3", "--rounds", "1",
                    "--state-seconds", "0.3", "--out", str(stem)]) == 0
    report = json.loads(stem.with_suffix(".json").read_text())
    assert report["plan_cpu_ms_per_batch"] > 0 and report["augment_normalise_ms_per_batch"] > 0
    # busy_cores is machine-wide (/proc/stat): at most every CPU that file counts, whatever os.cpu_count() says.
    cpus = sum(1 for line in open("/proc/stat") if line[:3] == "cpu" and line[3:4].isdigit())
    for run in report["runs"].values():
        assert run["wall_ms"] > 0 and run["process_cpu_ms"] > 0 and 0 <= run["busy_cores"] <= cpus, (run, cpus)
    states = report["thread_states_caller_pool0_pool1"]
    assert states and abs(sum(states.values()) - 1) < 0.01
    assert report["a_over_c"] == round(report["runs"]["c_decode_only"]["wall_ms"] / report["runs"]["a_loader"]["wall_ms"], 3)
