"""benchmarks/kernels.py runs end to end at a tiny size and writes consistent results."""
import json

from benchmarks.kernels import main


def test_kernel_benchmark_smoke(tmp_path):
    main(["--batch", "1", "--img-size", "32", "--frames", "4", "--embed-dim", "16", "--target-dim", "16",
          "--block", "2", "1", "1", "--num-blocks", "2", "--min-time", "0", "--max-repeats", "3",
          "--no-compile", "--tag", "smoke", "--results-dir", str(tmp_path)])
    report = json.loads((tmp_path / "kernels-smoke.json").read_text())
    ops = {row["op"] for row in report["results"]}
    assert ops == {"masked_gather", "hard_weighted_loss", "motion_mask"}
    for row in report["results"]:
        assert row["median_ms"] > 0 and row["gbps"] > 0 and row["repeats"] >= 3
    assert "python loop (original collate)" in {row["impl"] for row in report["results"]}
    assert (tmp_path / "kernels-smoke.md").read_text().startswith("# Kernel microbenchmarks (smoke)")
