"""Probes on cached-feature fixtures: separable classes are learned, shuffled labels stay at chance."""
import pytest
import torch

from engine.eval.features import CachedFeatures
from engine.eval.probe_train import ProbeTrainConfig, train_probe_sweep
from engine.eval.probes import ProbeArch, average_view_probabilities, build_probe, topk_correct

NUM_CLASSES, WIDTH, TOKENS = 4, 16, 6



def _separable(n_per_class: int, seed: int, shuffle_labels: bool = False) -> CachedFeatures:
    """Each class owns one direction of feature space; tokens are noisy copies of it, every other token
    carries the signal so that pooling has to find it."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.eye(WIDTH)[:NUM_CLASSES] * 4.0  # [C, D]
    labels = torch.arange(NUM_CLASSES).repeat_interleave(n_per_class)  # [n]
    tokens = torch.randn(labels.shape[0], TOKENS, WIDTH, generator=generator)  # [n, L, D]
    tokens[:, ::2] += directions[labels].unsqueeze(1)
    if shuffle_labels:
        labels = labels[torch.randperm(labels.shape[0], generator=generator)]
    features = tokens.unsqueeze(1).to(torch.float16)  # [n, V=1, L, D]
    return CachedFeatures(features=features, labels=labels, keys=[f"k{i}" for i in range(len(labels))], meta={})


@pytest.mark.parametrize("kind", ["attentive", "paper_attentive", "linear"])
def test_probe_learns_separable_features(kind):
    train, test = _separable(16, seed=0), _separable(10, seed=1)
    config = ProbeTrainConfig(epochs=10, batch_size=16, lr=1e-2, seed=0)
    result = train_probe_sweep(train, test, ProbeArch(kind=kind, num_heads=4), config, NUM_CLASSES)
    assert result.protocol.top1 >= 90.0, result.heads
    assert result.protocol.top5 == 100.0  # 4 classes: top-5 covers them all


def test_probe_on_shuffled_labels_stays_near_chance():
    # Train labels are shuffled, so nothing links features to labels: test accuracy must sit near 25%.
    train = _separable(40, seed=0, shuffle_labels=True)
    test = _separable(50, seed=1)
    config = ProbeTrainConfig(epochs=10, batch_size=16, lr=1e-2, seed=0)
    result = train_probe_sweep(train, test, ProbeArch(kind="linear"), config, NUM_CLASSES)
    assert result.protocol.top1 < 45.0, result.protocol


def test_sweep_trains_every_head_in_one_loop_and_reports_protocol_head_first():
    train, test = _separable(12, seed=0), _separable(5, seed=1)
    config = ProbeTrainConfig(epochs=3, sweep_lrs=(1e-2, 1e-4), sweep_wds=(0.1,), seed=3)
    result = train_probe_sweep(train, test, ProbeArch(kind="linear"), config, NUM_CLASSES)
    grid = [(h.lr, h.weight_decay) for h in result.heads]
    assert grid[0] == (1e-3, 0.01) and len(set(grid)) == 6
    assert result.best.top1 == max(h.top1 for h in result.heads)
    # lr 1e-4 for 3 epochs moves the weights far less than 1e-2: the heads really differ.
    losses = {(h.lr, h.weight_decay): h.final_train_loss for h in result.heads}
    assert losses[(1e-2, 0.01)] < losses[(1e-4, 0.01)]
    # Same seed, same result: the sweep is deterministic.
    again = train_probe_sweep(train, test, ProbeArch(kind="linear"), config, NUM_CLASSES)
    assert [h.final_train_loss for h in again.heads] == [h.final_train_loss for h in result.heads]


def _reference_attention(pooling, width):
    """nn.MultiheadAttention holding the same parameters as a QueryPooling."""
    reference = torch.nn.MultiheadAttention(width, pooling.num_heads, batch_first=True)
    reference.load_state_dict(pooling.state_dict())
    return reference


def test_query_pooling_equals_multihead_attention():
    torch.manual_seed(0)
    probe = build_probe(ProbeArch(kind="attentive", num_heads=4, num_queries=2), WIDTH, NUM_CLASSES)
    with torch.no_grad():
        probe.attn.in_proj_bias.normal_()  # non-zero key/value biases must cancel / pass through exactly
    query, tokens = torch.randn(3, 2, WIDTH), torch.randn(3, TOKENS, WIDTH)
    expected, _ = _reference_attention(probe.attn, WIDTH)(query, tokens, tokens, need_weights=False)
    torch.testing.assert_close(probe.attn(query, tokens), expected, atol=1e-5, rtol=1e-5)


def test_paper_probe_equals_full_self_attention_cls_row():
    """The CLS-only computation matches the paper's full self-attention layer over [CLS; tokens]."""
    torch.manual_seed(0)
    probe = build_probe(ProbeArch(kind="paper_attentive", num_heads=4), WIDTH, NUM_CLASSES).eval()
    tokens = torch.randn(3, TOKENS, WIDTH)
    sequence = torch.cat([probe.cls.expand(3, -1, -1), tokens], dim=1)
    full, _ = _reference_attention(probe.attn, WIDTH)(sequence, sequence, sequence, need_weights=False)
    expected = probe.head(probe.norm(sequence + full)[:, 0])
    torch.testing.assert_close(probe(tokens), expected, atol=1e-5, rtol=1e-5)


def test_topk_and_view_averaging():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    assert topk_correct(logits, torch.tensor([1, 2]), ks=(1, 2)) == {1: 1, 2: 1}
    # Two samples x three views, rows in (sample, view) order. Sample 0: view 0 alone says class 1 and the
    # mean logit says class 1, the mean softmax says class 0; sample 1 is sample 0 with the classes swapped.
    views = torch.tensor([[0.0, 100.0], [5.0, 0.0], [5.0, 0.0], [100.0, 0.0], [0.0, 5.0], [0.0, 5.0]])
    averaged = average_view_probabilities(views, 3)
    a = 2 * torch.sigmoid(torch.tensor(5.0)).item() / 3        # mean of softmax [~0, 1], [s, 1-s], [s, 1-s]
    torch.testing.assert_close(averaged, torch.tensor([[a, 1 - a], [1 - a, a]]), rtol=0, atol=1e-6)
    assert averaged.argmax(1).tolist() == [0, 1]
    assert views[::3].argmax(1).tolist() == [1, 0] and views.view(2, 3, 2).mean(1).argmax(1).tolist() == [1, 0]


def _with_noise_view(cached: CachedFeatures, signal_view: int, seed: int) -> CachedFeatures:
    """Two views [n, V=2, L, D]: the class signal in `signal_view`, features of no class in the other."""
    noise = torch.randn(cached.features.shape, generator=torch.Generator().manual_seed(seed)).to(torch.float16)
    views = [cached.features, noise] if signal_view == 0 else [noise, cached.features]
    return CachedFeatures(features=torch.cat(views, dim=1), labels=cached.labels, keys=cached.keys, meta={})


@pytest.mark.parametrize("signal_view", [0, 1])
def test_views_train_as_examples_and_average_at_test(signal_view):
    """Two spatial views per sample: training sees both (each with its sample's label), scoring averages
    their softmax per sample. At test time one view carries the class and the other none: the averaged
    prediction follows the confident view, whichever it is; scoring one view alone would sit near chance
    (25%) for one of the two cases."""
    train = _separable(16, seed=0)
    train.features = torch.cat([train.features, _separable(16, seed=2).features], dim=1)  # two noisy copies
    test = _with_noise_view(_separable(10, seed=1), signal_view, seed=3)
    config = ProbeTrainConfig(epochs=10, batch_size=16, lr=1e-2, seed=0)
    result = train_probe_sweep(train, test, ProbeArch(kind="linear"), config, NUM_CLASSES)
    assert (result.num_train, result.num_test) == (64, 40)
    assert result.protocol.top1 >= 90.0, result.protocol
    noise_only = _with_noise_view(_separable(10, seed=1), signal_view, seed=3)
    noise_only.features = noise_only.features[:, 1 - signal_view:2 - signal_view]  # the uninformative view alone
    alone = train_probe_sweep(train, noise_only, ProbeArch(kind="linear"), config, NUM_CLASSES)
    assert alone.protocol.top1 < 50.0, alone.protocol  # so the averaged score above did use the other view


def test_standardized_probe_finds_a_small_signal_under_a_large_common_component():
    # Tokens share a large offset and differ by a small class signal, as a random ViT's do: per-channel
    # standardisation (training split statistics) lets the linear probe learn it in the same steps.
    def shifted(n_per_class: int, seed: int) -> CachedFeatures:
        base = _separable(n_per_class, seed)
        features = (base.features.float() * 0.05 + 3.0).to(torch.float16)
        return CachedFeatures(features=features, labels=base.labels, keys=base.keys, meta={})

    train, test = shifted(16, seed=0), shifted(10, seed=1)
    results = {flag: train_probe_sweep(train, test, ProbeArch(kind="linear"),
                                       ProbeTrainConfig(epochs=10, batch_size=16, lr=1e-2, standardize=flag),
                                       NUM_CLASSES).protocol.top1 for flag in (True, False)}
    assert results[True] >= 90.0 and results[False] < 60.0, results


def test_channel_statistics_match_torch():
    from engine.eval.probe_train import channel_statistics

    train = _separable(8, seed=3)
    mean, std = channel_statistics(train)
    flat = train.features.float().reshape(-1, WIDTH)
    torch.testing.assert_close(mean, flat.mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(std, flat.std(0, unbiased=False), rtol=1e-4, atol=1e-5)
