"""The study runner resumes: finished runs are not retrained, a missing one is, and every encoder
(trained runs plus the random-init reference per seed) reaches the evaluation."""
from pathlib import Path

import pytest

from engine.eval.encoder_eval import EvalConfig
from engine.eval.results import read_csv
from engine.eval.runs import plan_runs
from engine.eval.study import StudyConfig, parse_args, run_study
from engine.export import export_encoder
from engine.models import VisionTransformer, model_preset

TINY = model_preset("tiny", img_size=16, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=24, depth=1, num_heads=4)


class CountingTrainer:
    """Stands in for `python -m engine.train`: writes the export a finished run leaves behind."""

    def __init__(self):
        self.calls = []

    def __call__(self, plan):
        self.calls.append(plan.name)
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        (plan.run_dir / "recipe.yaml").write_text(f"run: {{name: {plan.name}, seed: {plan.seed}}}\n")
        export_encoder(VisionTransformer(TINY), TINY, plan.export_path, trained_encoder="target_encoder", step=1)


def fake_evaluate(source, config, shards_root, cache_dir, results_dir):
    """A stored evaluation of one encoder: accuracy derived from the name, so rows are distinguishable."""
    top1 = 30.0 + (sum(map(ord, source.name)) % 40)
    head = {"lr": 1e-3, "weight_decay": 0.01, "top1": top1, "top5": 90.0, "final_train_loss": 1.0}
    probe = {"arch": {}, "train": {"epochs": 2}, "heads": [head], "best_index": 0, "num_train": 10, "num_test": 5,
             "num_classes": 20, "seconds": 0.0}
    return {"fingerprint": source.fingerprint(), "encoder": {"trained_encoder": "target_encoder"},
            "benchmarks": {"synth-ucf": {"key": {"probe": {"batch_size": 16}}, "split_check": {"train": 10, "test": 5},
                                         "num_classes": 20, "probes": {"paper_attentive": probe}}}}


@pytest.fixture
def config(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for name in ("ucf_baseline", "mixed_baseline", "ucf_hw", "mixed_hw"):
        (recipes / f"{name}.yaml").write_text("base: regimes/x.yaml\n")
    return StudyConfig(variants=["baseline", "hw"], regimes=["ucf", "mixed"], seeds=[0, 1], scale="demo",
                       out=tmp_path / "study", runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache",
                       recipes_dir=recipes, evaluation=EvalConfig(benchmarks=("synth-ucf",)))


def test_resumed_study_trains_only_what_is_missing(config):
    trainer = CountingTrainer()
    run_study(config, train_fn=trainer, evaluate_fn=fake_evaluate)
    assert len(trainer.calls) == 8  # 2 variants x 2 regimes x 2 seeds
    assert trainer.calls[0] == "demo_ucf_baseline_s0"

    run_study(config, train_fn=trainer, evaluate_fn=fake_evaluate)
    assert len(trainer.calls) == 8  # everything finished: nothing retrained

    (config.runs_dir / "demo_mixed_hw_s1" / "encoder.safetensors").unlink()  # an interrupted run
    report = run_study(config, train_fn=trainer, evaluate_fn=fake_evaluate)
    assert trainer.calls[8:] == ["demo_mixed_hw_s1"]

    rows = read_csv(config.out / "results.csv")
    assert len(rows) == 8 + 2 + 2  # every run plus one random-init and one pixel-baseline reference per seed
    assert {r["encoder"] for r in rows if r["kind"] == "random"} == {"demo_random_init_s0", "demo_random_init_s1"}
    assert {r["encoder"] for r in rows if r["kind"] == "pixel"} == {"demo_pixel_baseline_s0", "demo_pixel_baseline_s1"}
    assert (config.out / "recipes" / "demo_ucf_hw_s1.yaml").exists()
    assert len((config.out / "heads.csv").read_text().splitlines()) == 1 + 12  # header + one head per encoder
    text = report.read_text()
    assert "demo_mixed_hw_s1" in text
    # The report leads with trained vs the two references, then the mixed vs UCF-only answer.
    learning, answer = text.index("## Does pretraining learn here?"), text.index("## The answer")
    assert learning < answer
    assert "| random init (same architecture, untrained) |" in text[learning:answer]
    assert "| pixel baseline (patch embedding, no blocks) |" in text[learning:answer]


def test_missing_recipe_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="ucf_nope.yaml"):
        plan_runs(["nope"], ["ucf"], [0], tmp_path, tmp_path / "runs", "demo")


def test_command_line_builds_the_documented_study():
    config = parse_args("--variants baseline,motion_guided,hw,ld,fwm,fwm_hw_ld,ac --regimes ucf,mixed --seeds 3 "
                        "--scale demo --out study/demo".split())
    assert config.seeds == [0, 1, 2] and len(config.variants) == 7 and config.out == Path("study/demo")
    assert config.evaluation.benchmarks == ("synth-ucf", "synth-diving", "synth-ssv2", "synth-in")
    assert all((Path("recipes/demo") / f"{r}_{v}.yaml").exists() for v in config.variants for r in config.regimes)


def test_a_failing_run_is_reported_and_the_rest_go_on(config):
    trainer = CountingTrainer()

    def flaky(plan):
        if plan.name == "demo_ucf_hw_s0":
            raise RuntimeError("training demo_ucf_hw_s0 failed (exit 1); see logs/demo_ucf_hw_s0.log")
        trainer(plan)

    report = run_study(config, train_fn=flaky, evaluate_fn=fake_evaluate)
    assert len(trainer.calls) == 7
    rows = read_csv(config.out / "results.csv")
    assert "demo_ucf_hw_s0" not in {r["encoder"] for r in rows} and len(rows) == 7 + 2 + 2
    assert "demo_ucf_hw_s0: RuntimeError: training demo_ucf_hw_s0 failed" in report.read_text()
    run_study(config, train_fn=trainer, evaluate_fn=fake_evaluate)  # the rerun retries only the failed run
    assert trainer.calls[7:] == ["demo_ucf_hw_s0"]
