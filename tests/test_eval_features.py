"""Frozen feature extraction: deterministic, cached once, clips x views laid out as documented, and
benchmark splits checked for overlap. Uses the real DALI loader on a tiny contract-exact shard folder."""
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_fixtures import write_benchmark_folder
from engine.eval.eval_sets import BENCHMARKS, check_splits_disjoint
from engine.eval.clips import encoder_forward, eval_batches
from engine.eval.features import ExtractionSpec, extract_to_cache, load_cache, split_clips_and_views
from engine.models import VisionTransformer, model_preset

TINY = model_preset("tiny", img_size=16, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=24, depth=2, num_heads=4)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return VisionTransformer(TINY).eval()


def _synthetic_batches(count=5, batch=2, frames=4, side=16):
    generator = torch.Generator().manual_seed(1)
    for b in range(count):
        yield {"video": torch.randn(batch, 3, frames, side, side, generator=generator),
               "label": torch.arange(batch) + b, "key": [f"s{b}_{i}" for i in range(batch)]}


def test_extraction_is_deterministic_and_cached_once(encoder, tmp_path):
    spec = ExtractionSpec(num_frames=4, crop_size=16, chunk_size=3)
    calls = []

    def encode(video):
        calls.append(video.shape[0])
        return encoder.forward_eval(video)

    request = {"encoder": "tiny"}
    first = load_cache(extract_to_cache(encode, _synthetic_batches(), tmp_path / "a", spec, request))
    second = load_cache(extract_to_cache(encode, _synthetic_batches(), tmp_path / "b", spec, request))
    assert first.features.dtype == torch.float16 and first.features.shape == (10, 1, TINY.num_tokens, 24)
    assert torch.equal(first.features, second.features) and first.keys == second.keys
    assert len(list((tmp_path / "a").glob("chunk-*.safetensors"))) == 4  # chunks of 3 samples
    calls.clear()
    extract_to_cache(encode, _synthetic_batches(), tmp_path / "a", spec, request)
    assert calls == []  # complete cache with the same request: not recomputed
    extract_to_cache(encode, _synthetic_batches(), tmp_path / "a", spec, {"encoder": "other"})
    assert sum(calls) == 10  # another encoder: recomputed


def test_mean_pooling_and_duplicate_keys(encoder, tmp_path):
    spec = ExtractionSpec(num_frames=4, crop_size=16, pooling="mean")
    batches = list(_synthetic_batches(count=2))
    batches.append(batches[-1])  # a padded last batch repeats samples: kept once
    cached = load_cache(extract_to_cache(encoder.forward_eval, batches, tmp_path / "m", spec, {"encoder": "tiny"}))
    assert cached.features.shape == (4, 1, 1, 24)
    expected = encoder.forward_eval(batches[0]["video"]).mean(dim=1)  # [2, D]
    torch.testing.assert_close(cached.features[:2, 0, 0].float(), expected, atol=2e-3, rtol=2e-3)


def test_clips_and_views_layout():
    spec = ExtractionSpec(num_frames=2, crop_size=4, num_clips=2, num_views=3)
    assert spec.load_frames == 4 and spec.load_crop == 6  # 4 * 8 / 7 rounded up to even
    video = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 1, 4, 6, 6).clone()  # frame index as value
    video[..., :, :] += torch.arange(6.0).view(1, 1, 1, 1, 6) * 10  # column index in tens
    clips = split_clips_and_views(video, spec)  # [B*V*S, C, T, crop, crop] in (view, clip) order
    assert clips.shape == (6, 1, 2, 4, 4)
    assert clips[0, 0, :, 0, 0].tolist() == [0.0, 1.0] and clips[1, 0, :, 0, 0].tolist() == [2.0, 3.0]
    assert [clips[2 * v, 0, 0, 0, 0].item() for v in range(3)] == [0.0, 10.0, 20.0]  # left, centre, right


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory):
    """A benchmark folder with disjoint train/test splits, merged as `shards.build` does."""
    return write_benchmark_folder(tmp_path_factory.mktemp("bench") / "synth-diving", train_clips=6, test_clips=3)


def test_real_loader_extraction_is_deterministic(encoder, shard_folder, tmp_path):
    spec = ExtractionSpec(num_frames=4, crop_size=16)
    device = torch.device("cpu")
    caches = []
    for name in ("one", "two"):
        batches, total = eval_batches(shard_folder, "train", spec, batch_size=4)  # 6 samples: last batch padded
        caches.append(load_cache(extract_to_cache(encoder_forward(encoder, device), batches, tmp_path / name, spec,
                                                  {"encoder": "tiny"}, total)))
    assert caches[0].keys == [f"tr_{i:05d}" for i in range(6)]  # every sample once, index order
    assert torch.equal(caches[0].features, caches[1].features)
    assert caches[0].labels.tolist() == [i % 3 for i in range(6)]


def test_split_overlap_is_refused(shard_folder, tmp_path):
    benchmark = BENCHMARKS["synth-diving"]
    assert check_splits_disjoint(shard_folder, benchmark) == {"train": 6, "test": 3, "shared_keys": 0, "shared_sources": 0}
    leaky = tmp_path / "leaky"
    shutil.copytree(shard_folder, leaky)
    table = pq.read_table(leaky / "index.parquet").to_pylist()
    table[-1] = {**table[0], "split": "test"}  # a training sample listed in the test split too
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(leaky / "index.parquet")), leaky / "index.parquet")
    with pytest.raises(ValueError, match="overlap"):
        check_splits_disjoint(leaky, benchmark)


def test_evaluate_encoder_reuses_results_and_caches(shard_folder, tmp_path):
    """End to end on the real loader: split check, extraction, probe; a rerun touches no loader."""
    from engine.eval.encoders import random_encoder
    from engine.eval.encoder_eval import EvalConfig, evaluate_encoder

    loader_calls = []

    def counting_loader(folder, split, spec, batch_size):
        loader_calls.append(split)
        return eval_batches(folder, split, spec, batch_size=batch_size)

    source = random_encoder("random_s0", TINY, seed=0)
    config = EvalConfig(benchmarks=("synth-diving",), probe_epochs=2, probe_batch_size=4)
    args = (source, config, shard_folder.parent, tmp_path / "cache", tmp_path / "evals")
    stored = evaluate_encoder(*args, batch_source=counting_loader, device=torch.device("cpu"))
    entry = stored["benchmarks"]["synth-diving"]
    result = entry["probes"]["paper_attentive"]
    assert loader_calls == ["train", "test"]
    assert (result["num_train"], result["num_test"], result["num_classes"]) == (6, 3, 3)
    assert entry["split_check"]["shared_keys"] == 0
    # The stored scores are those of the headline probe trained on the cached train split with the asked
    # epochs, batch, lr and seed, and scored on the cached test split: retrain it here from the caches.
    from engine.eval.probe_train import ProbeTrainConfig, train_probe_sweep
    (train_dir,) = (tmp_path / "cache").rglob("train-tokens-1x1")
    (test_dir,) = (tmp_path / "cache").rglob("test-tokens-1x1")
    train, test = load_cache(train_dir), load_cache(test_dir)
    assert train.keys == [f"tr_{i:05d}" for i in range(6)] and test.keys == [f"te_{i:05d}" for i in range(3)]
    again = train_probe_sweep(train, test, BENCHMARKS["synth-diving"].headline.arch,
                              ProbeTrainConfig(epochs=2, batch_size=4, lr=1e-3, weight_decay=0.01, seed=0), 3)
    assert result["heads"] == again.as_dict()["heads"]
    assert min(abs(result["heads"][0]["top1"] - 100 * k / 3) for k in range(4)) < 1e-9  # of 3 test clips
    assert result["heads"][0]["top5"] == 100.0  # 3 classes: the top 5 hold them all
    assert evaluate_encoder(*args, batch_source=counting_loader) == stored  # stored result reused
    (tmp_path / "evals" / "random_s0.json").unlink()
    again = evaluate_encoder(*args, batch_source=counting_loader, device=torch.device("cpu"))
    assert loader_calls == ["train", "test"]  # features came from the cache
    assert again["benchmarks"]["synth-diving"]["probes"]["paper_attentive"]["heads"] == result["heads"]


def test_multi_clip_multi_view_evaluation(shard_folder, tmp_path):
    """2 clips x 2 views through the real loader: tokens of both clips per view, views kept apart."""
    from engine.eval.encoders import random_encoder
    from engine.eval.encoder_eval import EvalConfig, evaluate_encoder

    config = EvalConfig(benchmarks=("synth-diving",), probe_epochs=1, probe_batch_size=4, num_clips=2, num_views=2)
    stored = evaluate_encoder(random_encoder("mv", TINY, seed=0), config, shard_folder.parent, tmp_path / "cache",
                              tmp_path / "evals", device=torch.device("cpu"))
    assert stored["benchmarks"]["synth-diving"]["extraction"]["num_views"] == 2
    (train_cache,) = [p for p in (tmp_path / "cache").rglob("train-tokens-2x2")]
    cached = load_cache(train_cache)
    assert cached.features.shape == (6, 2, 2 * TINY.num_tokens, 24)  # [n, V, S*N, D]
    assert not torch.equal(cached.features[:, 0], cached.features[:, 1])  # left and right crops differ


def test_probe_train_subset_is_class_balanced_and_independent_of_order():
    from engine.eval.encoder_eval import probe_train_subset
    from engine.eval.features import CachedFeatures

    keys = [f"v_c{label}_g{g:02d}" for label in range(3) for g in range(10)]
    labels = torch.tensor([label for label in range(3) for _ in range(10)])
    features = torch.arange(30, dtype=torch.float16).view(30, 1, 1, 1)
    cached = CachedFeatures(features=features, labels=labels, keys=keys, meta={})
    subset = probe_train_subset(cached, 4)
    assert torch.bincount(subset.labels).tolist() == [4, 4, 4]
    assert subset.keys == sorted(subset.keys, key=keys.index)  # cache order kept
    assert all(subset.features[i, 0, 0, 0] == keys.index(k) for i, k in enumerate(subset.keys))  # rows follow keys
    assert subset.keys != [k for k in keys if int(k[-2:]) < 4]  # spread over groups, not the first four
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = CachedFeatures(features=features[order], labels=labels[order], keys=[keys[i] for i in order], meta={})
    assert set(probe_train_subset(shuffled, 4).keys) == set(subset.keys)  # the keys decide, not the order
    assert probe_train_subset(cached, None) is cached and len(probe_train_subset(cached, 50).keys) == 30


def test_probe_train_per_class_is_in_the_result_key_and_limits_the_probe(shard_folder, tmp_path, monkeypatch):
    from dataclasses import replace

    from engine.eval.encoders import random_encoder
    from engine.eval.encoder_eval import EvalConfig, evaluate_encoder

    assert BENCHMARKS["synth-ucf"].probe_train_per_class == 50 and BENCHMARKS["ucf101"].probe_train_per_class is None
    config = EvalConfig(benchmarks=("synth-diving",), probe_epochs=1, probe_batch_size=4)
    assert "probe_train_per_class" not in config.key(BENCHMARKS["synth-diving"])  # older keys stay valid
    assert config.key(BENCHMARKS["synth-ucf"])["probe_train_per_class"] == 50
    with pytest.raises(ValueError, match="probe_train_per_class"):
        replace(BENCHMARKS["synth-ucf"], probe_train_per_class=0)
    monkeypatch.setitem(BENCHMARKS, "synth-diving", replace(BENCHMARKS["synth-diving"], probe_train_per_class=1))
    stored = evaluate_encoder(random_encoder("sub", TINY, seed=0), config, shard_folder.parent, tmp_path / "cache",
                              tmp_path / "evals", device=torch.device("cpu"))
    entry = stored["benchmarks"]["synth-diving"]
    assert entry["key"]["probe_train_per_class"] == 1
    assert entry["probes"]["paper_attentive"]["num_train"] == 3  # one per class of 3; the test split whole
    assert entry["probes"]["paper_attentive"]["num_test"] == 3 and entry["split_check"]["train"] == 6
    (cache,) = (tmp_path / "cache").rglob("train-tokens-1x1")
    assert len(load_cache(cache).keys) == 6  # the cache holds the whole split
