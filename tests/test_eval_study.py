"""The study runner resumes: finished runs are not retrained, a missing one is, and every encoder
(trained runs plus the random-init reference per seed) reaches the evaluation."""
from pathlib import Path

import pytest
import torch

from engine.eval.encoder_eval import EvalConfig
from engine.eval.results import read_csv
from engine.eval.runs import plan_runs
from engine.eval.study import StudyConfig, parse_args, run_study
from engine.export import export_encoder
from engine.models import VisionTransformer, model_preset

REPO = Path(__file__).resolve().parents[1]
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
    # The study is run from the repository root (the README's command); the test may run from anywhere.
    recipes = REPO / config.resolved_recipes_dir()
    assert all((recipes / f"{r}_{v}.yaml").exists() for v in config.variants for r in config.regimes)


# Probe scores the fake evaluation gives a run trained with seed s: UCF-only BASE[s], mixed BASE[s] + GAIN[s].
# Far apart per seed, so any mix-up of seeds between training, results and the paired Δ shows.
BASE = {5: 40.0, 1: 10.0, 3: 25.0}
GAIN = {5: -20.0, 1: 30.0, 3: 5.0}  # reorders the seeds: pairing by rank instead of by seed would differ


def test_each_run_trains_with_its_seed_and_the_delta_pairs_the_same_seeds(tmp_path, monkeypatch):
    """End to end through `python -m engine.train`'s own argument and recipe handling (run in-process with
    the Trainer replaced by one that records the seed it was given and exports an encoder initialised from
    it): each run's command carries its seed, the evaluation sees the weights of that seed, and the regime
    Δ pairs mixed and UCF-only runs of the same seed."""
    import sys

    import yaml

    import engine.eval.runs as runs
    import engine.train as train
    from data_fixtures import FixtureSpec, write_dataset
    from engine.eval.results import regime_deltas
    from engine.export import read_metadata
    from engine.recipe import dump_recipe

    shards = write_dataset(tmp_path / "shards", FixtureSpec("tiny", 2, num_frames=4, height=16, width=16))
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    base = {"run": {"name": "unnamed", "seed": 99, "out_dir": str(tmp_path / "elsewhere")},
            "model": {"preset": "tiny", "img_size": 16, "num_frames": 4, "patch_size": 8, "tubelet_size": 2},
            "predictor": {"preset": "tiny"}, "objective": {"variant": "baseline"},
            "data": {"datasets": [{"root": str(shards)}]}, "train": {"steps": 1, "global_batch": 2, "micro_batch": 2}}
    (recipes / "base.yaml").write_text(yaml.safe_dump(base))
    for regime in ("ucf", "mixed"):
        (recipes / f"{regime}_baseline.yaml").write_text(f"base: base.yaml\nrun: {{name: {regime}_baseline}}\n")

    trained = []

    class RecordingTrainer:
        def __init__(self, recipe, resume):
            self.recipe, self.resume = recipe, resume

        def run(self):
            run = self.recipe.run
            trained.append((run.name, run.seed, self.resume))
            torch.manual_seed(run.seed)  # the real trainer's init is a function of run.seed alone, as here
            dump_recipe(self.recipe, self.recipe.run_dir / "recipe.yaml")
            export_encoder(VisionTransformer(TINY), TINY, self.recipe.run_dir / "encoder.safetensors",
                           trained_encoder="target_encoder", step=1, seed=run.seed)
            return 0

    def call(command, stdout=None, stderr=None, env=None):  # what train_with_entry_point runs, in-process
        assert command[:3] == [sys.executable, "-m", "engine.train"], command
        return train.main(command[3:])

    monkeypatch.setattr(train, "Trainer", RecordingTrainer)
    monkeypatch.setattr(runs.subprocess, "call", call)

    def evaluate(source, config, shards_root, cache_dir, results_dir):
        if source.kind == "run":
            seed = read_metadata(source.path)["seed"]
            assert seed in BASE, f"{source.name} was trained with seed {seed}, not one of the study's"
            torch.manual_seed(seed)
            weights = VisionTransformer(TINY).state_dict()
            assert all(torch.equal(weights[k], v) for k, v in source.load(torch.device("cpu")).state_dict().items())
            top1 = BASE[seed] + (GAIN[seed] if "_mixed_" in source.name else 0.0)
        else:
            top1 = 1.0
        stored = fake_evaluate(source, config, shards_root, cache_dir, results_dir)
        stored["benchmarks"]["synth-ucf"]["probes"]["paper_attentive"]["heads"][0]["top1"] = top1
        return stored

    config = StudyConfig(variants=["baseline"], regimes=["ucf", "mixed"], seeds=[5, 1, 3], scale="demo",
                         out=tmp_path / "study", runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache",
                         recipes_dir=recipes, evaluation=EvalConfig(benchmarks=("synth-ucf",)))
    report = run_study(config, evaluate_fn=evaluate)

    assert sorted(trained) == sorted((f"demo_{regime}_baseline_s{seed}", seed, "auto")
                                     for regime in ("ucf", "mixed") for seed in (5, 1, 3))
    rows = read_csv(config.out / "results.csv")
    (delta,) = regime_deltas(rows)
    assert delta.single == BASE and delta.mixed == {s: BASE[s] + GAIN[s] for s in BASE}
    assert delta.delta.seeds == (1, 3, 5) and delta.delta.differences == (30.0, 5.0, -20.0)
    assert delta.delta.mean == 5.0 and delta.delta.num_pairs == 3 and delta.delta.std == 25.0
    # The interval of the paired differences: 5 ± t(0.975, 2) x 25 / sqrt(3).
    assert "| baseline | 25.00 ± 15.00 | 30.00 ± 10.00 | +5.00 | [-57.10, +67.10] | 3 |" in report.read_text()


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
