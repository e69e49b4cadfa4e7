"""The collapse alarm: its four statistics on tokens whose answer is known, its rule, and the alarm on a
tiny JEPA that collapses (online targets with gradient, the textbook collapsing setting) against the same
JEPA at random init, measured through the step's own kept targets."""
from dataclasses import dataclass

import pytest
import torch

from engine.jepa import JEPA, JEPAConfig
from engine.models import Predictor, VisionTransformer, model_preset, predictor_preset
from engine.training.collapse import COLUMNS, CollapseAlarm, CollapseConfig, collapse_metrics, last_level

TINY = model_preset("tiny", img_size=32, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=32, depth=2,
                    num_heads=4)


def test_identical_tokens_in_a_clip_have_no_within_share_and_a_small_rank():
    clips = torch.randn(8, 1, 64).expand(8, 50, 64)  # every token of a clip is the clip's token
    stats = collapse_metrics(clips)
    assert stats["collapse.within_share"] == pytest.approx(0.0, abs=1e-12)
    assert 1.0 < stats["collapse.rank"] <= 7.0  # 8 points span at most 7 centred directions
    one_point = collapse_metrics(torch.randn(1, 1, 64).expand(4, 50, 64))
    assert one_point["collapse.rank"] == 0.0 and one_point["collapse.feature_std"] == pytest.approx(0.0, abs=1e-12)
    assert one_point["collapse.pooled_cosine"] == pytest.approx(1.0)


def test_random_tokens_have_a_rank_near_the_width_and_no_shared_direction():
    stats = collapse_metrics(torch.randn(8, 256, 64, generator=torch.Generator().manual_seed(0)))
    assert stats["collapse.rank"] > 60.0  # of 64
    assert stats["collapse.within_share"] == pytest.approx(1.0 - 1.0 / 256, abs=0.005)  # a clip mean: var / N
    assert abs(stats["collapse.pooled_cosine"]) < 0.1
    assert stats["collapse.feature_std"] == pytest.approx(1.0, abs=0.02)


def test_within_share_and_cosine_by_hand():
    # Two clips of two 2-d tokens: clip means (1, 0) and (-1, 0), each token 1 away from its mean along y.
    tokens = torch.tensor([[[1.0, 1.0], [1.0, -1.0]], [[-1.0, 1.0], [-1.0, -1.0]]])
    stats = collapse_metrics(tokens)
    assert stats["collapse.within_share"] == pytest.approx(0.5)  # within 1, total 2
    assert stats["collapse.pooled_cosine"] == pytest.approx(-1.0)
    assert stats["collapse.rank"] == pytest.approx(2.0)  # equal spread along x and y
    assert stats["collapse.feature_std"] == pytest.approx(1.0)
    assert last_level(torch.arange(12.0).view(1, 2, 6), 3).tolist() == [[[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]]]


def _stats(rank=20.0, within=0.3, cosine=0.0, std=0.8):
    return dict(zip(COLUMNS, (rank, within, cosine, std)))


def test_rule_reference_window_and_once_per_crossing():
    alarm = CollapseAlarm(CollapseConfig(every=10, reference_steps=2, window=2, min_fraction=0.5))
    assert [s for s in range(25) if alarm.due(s)] == [0, 1, 10, 20]
    assert alarm.check(1, _stats(rank=22.0)) == [] and alarm.thresholds() == {}  # reference not complete
    assert alarm.check(2, _stats(rank=18.0)) == []
    assert alarm.thresholds()["collapse.rank"] == ("below", pytest.approx(10.0))  # 0.5 x mean(22, 18)
    assert alarm.check(11, _stats(rank=4.0)) == []  # one low batch: the window's mean 11 is above 10
    warned = alarm.check(21, _stats(rank=4.0))
    assert len(warned) == 1 and "collapse.rank = 4 (mean of the last 2" in warned[0]
    assert alarm.check(31, _stats(rank=4.0)) == []  # still crossed: not repeated
    assert alarm.check(41, _stats(rank=30.0)) == []  # recovered (mean 17)
    assert alarm.check(51, _stats(rank=30.0, cosine=0.95, within=0.1)) == []  # window means 0.475 and 0.2: fine
    both = alarm.check(61, _stats(rank=1.0, cosine=0.95, within=0.01))
    assert sorted(w.split(": ")[2].split(" ")[0] for w in both) == ["collapse.pooled_cosine", "collapse.within_share"]
    resumed = CollapseAlarm(alarm.cfg)
    resumed.load_state_dict(alarm.state_dict())
    assert resumed.check(71, _stats(rank=1.0, cosine=0.95, within=0.01)) == alarm.check(
        71, _stats(rank=1.0, cosine=0.95, within=0.01))
    assert len(alarm.fired) == 4 and alarm.summary().startswith("collapse alarm: 4 warning(s)")


@dataclass
class _Mask:
    context_idx: torch.Tensor
    target_idx: torch.Tensor


def _batches(count, generator, batch=8):
    """Clips with a colour of their own plus noise, and one random half/half mask each."""
    tokens = TINY.num_tokens
    for _ in range(count):
        video = torch.rand(batch, 3, 1, 1, 1, generator=generator) + 0.5 * torch.randn(
            batch, 3, TINY.num_frames, TINY.img_size, TINY.img_size, generator=generator)
        order = torch.stack([torch.randperm(tokens, generator=generator) for _ in range(batch)])
        yield video, [_Mask(order[:, : tokens // 2].sort(1).values, order[:, tokens // 2:].sort(1).values)]


def _toy_jepa(disable_ema: bool) -> JEPA:
    torch.manual_seed(0)
    encoder = VisionTransformer(TINY)
    predictor = Predictor(predictor_preset("tiny", width=32, depth=1), in_dim=encoder.out_dim, grid=TINY.grid,
                          num_mask_tokens=1)
    return JEPA(encoder, predictor, "baseline", JEPAConfig(disable_ema=disable_ema))


def _run_alarm(jepa: JEPA, steps: int, lr: float) -> list[str]:
    """Train (lr > 0) or only measure (lr 0) for `steps` steps, measuring every step; the alarm's warnings."""
    alarm = CollapseAlarm(CollapseConfig(every=1, reference_steps=3, window=3))
    optimizer = torch.optim.AdamW(jepa.parameters(), lr=lr) if lr else None
    for step, (video, masks) in enumerate(_batches(steps, torch.Generator().manual_seed(1))):
        losses = jepa(video, masks, step, keep_targets=True)
        alarm.check(step + 1, collapse_metrics(last_level(jepa.pop_kept_targets(), TINY.embed_dim)))
        if optimizer is not None and step >= 3:  # the first steps are the random-init reference
            optimizer.zero_grad()
            losses["total"].backward()
            optimizer.step()
    return alarm.fired


def test_alarm_fires_on_a_collapsing_jepa_and_stays_quiet_at_random_init():
    # Online targets with gradient: the loss is minimised by making every token alike.
    fired = _run_alarm(_toy_jepa(disable_ema=True), steps=25, lr=3e-3)
    assert fired, "a JEPA trained on its own online targets collapsed without a warning"
    assert any("collapse.feature_std" in w or "collapse.pooled_cosine" in w for w in fired), fired
    assert _run_alarm(_toy_jepa(disable_ema=True), steps=25, lr=0.0) == []


def test_kept_targets_are_the_step_targets():
    jepa = _toy_jepa(disable_ema=False)
    target = VisionTransformer(TINY)
    video, masks = next(_batches(1, torch.Generator().manual_seed(2), batch=2))
    with pytest.raises(RuntimeError, match="no targets kept"):
        jepa.pop_kept_targets()
    jepa(video, masks, 0, target_encoder=target, keep_targets=True)
    kept = jepa.pop_kept_targets()
    assert torch.equal(kept, jepa.targets(video, target).float()) and not kept.requires_grad
    jepa(video, masks, 0, target_encoder=target)
    with pytest.raises(RuntimeError):  # released on reading, and not kept unless asked
        jepa.pop_kept_targets()
