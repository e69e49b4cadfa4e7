"""The kNN probe (engine/eval/knn.py): DINO's exp(cosine / τ) weighted vote over the k nearest training clips,
checked against a hand computation, and carried into the stored evaluation, results.csv and the table."""
import math

import pytest
import torch

from engine.eval.features import CachedFeatures
from engine.eval.knn import KnnConfig, knn_probe, knn_votes, pooled_unit_features


def _cached(vectors: list[tuple[float, float]], labels: list[int]) -> CachedFeatures:
    """Each vector v stored as two tokens v + e and v - e (their mean is v) of one view: [n, 1, 2, 2]."""
    base = torch.tensor(vectors, dtype=torch.float32)
    offset = torch.tensor([0.5, -0.25])
    tokens = torch.stack([base + offset, base - offset], dim=1).unsqueeze(1).to(torch.float16)
    return CachedFeatures(features=tokens, labels=torch.tensor(labels), keys=[f"k{i}" for i in range(len(labels))],
                          meta={})


# Pooled directions: a (1, 0) class 0; b (0.6, 0.8) and c (0.6, -0.8) class 1; d (-1, 0) class 2. The norms
# differ on purpose (the cosine ignores them); every number is exact in fp16.
TRAIN_VECTORS = [(2.0, 0.0), (3.0, 4.0), (3.0, -4.0), (-1.0, 0.0)]
TRAIN = _cached(TRAIN_VECTORS, [0, 1, 1, 2])
# t1 lies on a: with k = 3 its neighbours are a (cos 1) and b, c (cos 0.6): a majority vote says class 1, the
# weighted vote class 0 (e^(1/0.07) > 2 e^(0.6/0.07)). t2 lies near d: neighbours d, then b and c (two votes
# for class 1, one much closer for class 2). t3 = (0, 1), labelled 0: b (cos 0.8) outweighs a and d (cos 0).
TEST_VECTORS = [(3.0, 0.0), (-1.0, 0.125), (0.0, 2.0)]
TEST = _cached(TEST_VECTORS, [0, 2, 0])


def _cos(u, v) -> float:
    return (u[0] * v[0] + u[1] * v[1]) / (math.hypot(*u) * math.hypot(*v))


def test_knn_matches_a_hand_computation():
    config = KnnConfig(k=3, temperature=0.07)
    votes = knn_votes(pooled_unit_features(TRAIN), TRAIN.labels, pooled_unit_features(TEST), 3, config)
    a, b, c, d = TRAIN_VECTORS
    w = lambda test, train: math.exp(_cos(test, train) / 0.07)  # noqa: E731
    t1, t2, t3 = TEST_VECTORS
    expected = [[w(t1, a), w(t1, b) + w(t1, c), 0.0],  # d is 4th
                [0.0, w(t2, b) + w(t2, c), w(t2, d)],  # a is 4th
                [w(t3, a), w(t3, b), w(t3, d)]]  # c is 4th
    torch.testing.assert_close(votes, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=0)
    assert votes.argmax(dim=1).tolist() == [0, 2, 1]
    result = knn_probe(TRAIN, TEST, 3, config)
    assert result["top1"] == pytest.approx(200 / 3) and result["top5"] == 100.0  # t3 missed; 3 classes: top-5 holds all
    assert (result["k"], result["temperature"], result["num_train"], result["num_test"]) == (3, 0.07, 4, 3)
    # A very large τ makes the vote a plain majority: t1 and t2 go to class 1 (two votes), t3 to b's class 1.
    assert knn_probe(TRAIN, TEST, 3, KnnConfig(k=3, temperature=1e6))["top1"] == 0.0
    # k = 1 is the nearest neighbour's label (a, d, b); k above the training set uses all of it.
    assert knn_probe(TRAIN, TEST, 3, KnnConfig(k=1))["top1"] == pytest.approx(200 / 3)
    assert knn_probe(TRAIN, TEST, 3, KnnConfig(k=100))["top1"] == pytest.approx(200 / 3)


def test_knn_is_deterministic_and_ignores_the_training_order():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 2, 3, 8, generator=generator).to(torch.float16)  # [n, V, L, D]
    labels = torch.arange(60) % 5
    train = CachedFeatures(features[:40], labels[:40], [f"t{i}" for i in range(40)], {})
    test = CachedFeatures(features[40:], labels[40:], [f"q{i}" for i in range(20)], {})
    first = knn_probe(train, test, 5)
    assert knn_probe(train, test, 5) == first
    order = torch.randperm(40, generator=generator)
    shuffled = CachedFeatures(train.features[order], train.labels[order], [train.keys[i] for i in order], {})
    assert knn_probe(shuffled, test, 5)["top1"] == first["top1"]
    with pytest.raises(ValueError, match="knn.k=0"):
        KnnConfig(k=0)


def test_knn_is_stored_reported_and_in_results_csv(tmp_path):
    """End to end on the real loader: the stored entry holds the kNN of the cached features (the probe's own
    training subset), the table gets a knn_k20 row, results.csv a knn_k20 row beside the headline probe."""
    from data_fixtures import write_benchmark_folder
    from engine.eval.encoder_eval import EvalConfig, probe_train_subset
    from engine.eval.encoders import random_encoder
    from engine.eval.features import load_cache
    from engine.eval.probe_seeds import evaluate_probe_seeds, format_table
    from engine.eval.results import EncoderInfo, read_csv, rows_from_evaluation, write_csv
    from engine.models import model_preset

    folder = write_benchmark_folder(tmp_path / "shards" / "synth-diving", train_clips=6, test_clips=3)
    tiny = model_preset("tiny", img_size=16, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=24, depth=2,
                        num_heads=4)
    source = random_encoder("knn_s0", tiny, seed=0)
    config = EvalConfig(benchmarks=("synth-diving",), probe_epochs=1, probe_batch_size=4, knn_k=4)
    assert config.key(BENCHMARK)["knn"] == {"k": 4, "temperature": 0.07}  # a result made without it is redone
    summaries = evaluate_probe_seeds(source, config, 2, folder.parent, tmp_path / "cache", tmp_path / "evals",
                                     device=torch.device("cpu"), with_knn=True)
    import json
    entry = json.loads((tmp_path / "evals" / "knn_s0.json").read_text())["benchmarks"]["synth-diving"]
    (train_dir,) = (tmp_path / "cache").rglob("train-tokens-1x1")
    (test_dir,) = (tmp_path / "cache").rglob("test-tokens-1x1")
    train = probe_train_subset(load_cache(train_dir), BENCHMARK.probe_train_per_class)
    assert entry["knn"] == knn_probe(train, load_cache(test_dir), 3, KnnConfig(k=4))
    knn = summaries[("synth-diving", "knn_k4")]
    assert knn.values == (entry["knn"]["top1"],)  # no seed: one value, not one per probe seed
    assert len(summaries[("synth-diving", "paper_attentive")].values) == 2
    table = format_table({"random init": summaries})
    assert "knn_k4" in table and "paper_attentive" in table
    info = EncoderInfo(name="knn_s0", kind="random", variant="random_init", regime="", seed=0)
    rows = rows_from_evaluation(info, json.loads((tmp_path / "evals" / "knn_s0.json").read_text()))
    write_csv(rows, tmp_path / "results.csv")
    back = {r["probe"]: r for r in read_csv(tmp_path / "results.csv")}
    assert set(back) == {"paper_attentive", "knn_k4"}
    assert back["paper_attentive"]["headline"] and not back["knn_k4"]["headline"]
    assert back["knn_k4"]["top1"] == pytest.approx(entry["knn"]["top1"], abs=1e-3) and back["knn_k4"]["num_train"] == 6


from engine.eval.eval_sets import BENCHMARKS  # noqa: E402

BENCHMARK = BENCHMARKS["synth-diving"]
