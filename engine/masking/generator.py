"""Mask generators: the registry of named mask sets and the object a training step calls.

Index contract (contracts.md §3): for each mask config a MaskSet with int64 context_idx [B, K_ctx] and
target_idx [B, K_tgt] into the (t, h, w)-flattened token grid, each row ascending and unique, context and
target disjoint. Rows are made rectangular the V-JEPA way: every row is cut to the batch minimum count,
which drops a row's highest indices (latest time steps, bottom rows). Dropped tokens are neither context
nor target, except with full_complement, where the targets are every token outside the cut context.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from kernels import motion_mask

from .blocks import complement_indices, first_true_indices, future_time_steps, sample_block_shape, uniform_block_union
from .config import MaskConfig, MaskingConfig
from .motion import motion_map

Grid = tuple[int, int, int]


@dataclass(frozen=True)
class MaskSet:
    """Context and target token indices of one mask config for a batch."""

    context_idx: torch.Tensor  # int64 [B, K_ctx], ascending per row
    target_idx: torch.Tensor  # int64 [B, K_tgt], ascending per row, disjoint from context_idx


_SHORT = MaskConfig(num_blocks=8, spatial_scale=(0.15, 0.15))  # V-JEPA "short-range"
_LONG = MaskConfig(num_blocks=2, spatial_scale=(0.7, 0.7))  # V-JEPA "long-range"
_FUTURE = dict(max_temporal_keep=0.5, full_complement=True)  # the paper's Future-Predictive masking
_MGM = dict(motion_guided=True, motion_strength=2.0, motion_random_rate=0.1)  # Motion-Guided Masking
_AMG = dict(motion_guided=True, motion_strength=5.0, motion_random_rate=0.0)  # Aggressive Motion-Guided


MASKING_REGISTRY: dict[str, tuple[MaskConfig, ...]] = {
    "multiblock": (_SHORT, _LONG),
    "motion_guided": (replace(_SHORT, **_MGM), replace(_LONG, **_MGM)),
    "amg": (replace(_SHORT, **_AMG), replace(_LONG, **_AMG)),
    "future_predictive": (replace(_SHORT, num_blocks=4, **_FUTURE), replace(_LONG, num_blocks=1, **_FUTURE)),
    "motion_future": (replace(_SHORT, num_blocks=4, **_FUTURE, **_MGM),
                      replace(_LONG, num_blocks=1, **_FUTURE, **_MGM)),
}


def register_masking(name: str, masks: Sequence[MaskConfig]) -> None:
    """Add a named mask set to the registry (an existing name is an error, so presets cannot be shadowed)."""
    if name in MASKING_REGISTRY:
        raise ValueError(f"masking {name!r} is already registered")
    MASKING_REGISTRY[name] = tuple(masks)


class MaskGenerator:
    """Draws one MaskSet per mask config: `generator(batch_size, grid, torch_generator, video=None)`.

    Block sizes are drawn once per batch and config, block origins per sample; every draw comes from the
    given torch.Generator, on its device (which must be the video's), so a seed fixes the masks.
    """

    def __init__(self, cfg: MaskingConfig):
        if cfg.masks:
            masks = cfg.masks
        elif cfg.name is None:
            raise ValueError("masking.name is null and masking.masks empty: build it with "
                             "build_mask_generator(cfg, default=<the variant's generator>)")
        elif cfg.name in MASKING_REGISTRY:
            masks = MASKING_REGISTRY[cfg.name]
        else:
            raise ValueError(f"masking.name={cfg.name!r} is not registered; choose one of {sorted(MASKING_REGISTRY)} "
                             f"or give masking.masks")
        self.cfg = cfg
        self.masks: tuple[MaskConfig, ...] = masks

    @property
    def num_mask_configs(self) -> int:
        """How many MaskSets a call returns (= the predictor's num_mask_tokens)."""
        return len(self.masks)

    @property
    def needs_video(self) -> bool:
        return any(m.motion_guided for m in self.masks)

    def __call__(self, batch_size: int, grid: Grid, generator: torch.Generator,
                 video: torch.Tensor | None = None) -> list[MaskSet]:
        masked = self.sample_masked(batch_size, grid, generator, video)
        return [self.indices_from_masked(cfg, masked_tokens) for cfg, masked_tokens in zip(self.masks, masked)]

    def sample_masked(self, batch_size: int, grid: Grid, generator: torch.Generator,
                      video: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per mask config, bool [B, N]: True = not available as context (block union, plus the future steps
        when the context is time-limited), before the rows are cut to a common length."""
        grid = tuple(int(g) for g in grid)
        if video is not None:
            if video.device.type != generator.device.type:
                raise ValueError(f"the generator is on {generator.device} but the video on {video.device}; "
                                 f"create it with torch.Generator(device=video.device)")
            if video.shape[0] != batch_size:
                raise ValueError(f"batch_size={batch_size} but the video batch holds {video.shape[0]} clips")
        scores = None
        if self.needs_video:
            if video is None:
                raise ValueError(f"masking {self.cfg.name!r} is motion-guided and needs the video batch "
                                 f"(video=None given)")
            scores = motion_map(video, grid, self.cfg.motion_map)  # [B, Tg, Hg, Wg]
        return [self._masked_tokens(m, batch_size, grid, generator, scores) for m in self.masks]

    def _draw(self, cfg: MaskConfig, rows: int, grid: Grid, block, generator, scores) -> torch.Tensor:
        if cfg.motion_guided:
            return motion_mask(scores, block, cfg.num_blocks, cfg.motion_strength, cfg.motion_random_rate, generator)
        return uniform_block_union(rows, grid, block, cfg.num_blocks, generator)

    def _masked_tokens(self, cfg: MaskConfig, batch_size: int, grid: Grid, generator, scores) -> torch.Tensor:
        block = sample_block_shape(cfg, grid, generator)
        future = future_time_steps(grid, cfg.max_temporal_keep, generator.device)  # [N] or None

        def draw(rows: torch.Tensor | None) -> torch.Tensor:
            count = batch_size if rows is None else rows.numel()
            row_scores = scores if scores is None or rows is None else scores[rows]
            masked = self._draw(cfg, count, grid, block, generator, row_scores)
            return masked if future is None else masked | future

        masked = draw(None)  # [B, N]
        # A sample whose blocks cover every allowed token has no context: redraw its origins (as V-JEPA does).
        for _ in range(self.cfg.max_attempts - 1):
            empty = masked.all(dim=1).nonzero().squeeze(1)
            if empty.numel() == 0:
                break
            masked[empty] = draw(empty)
        empty = masked.all(dim=1).nonzero().squeeze(1)
        if empty.numel():
            # Still covered after max_attempts (e.g. blocks as large as the grid): free one allowed token at random.
            allowed = torch.arange(masked.shape[1], device=masked.device)
            if future is not None:
                allowed = allowed[~future]
            pick = torch.randint(0, allowed.numel(), (empty.numel(),), generator=generator, device=masked.device)
            masked[empty, allowed[pick]] = False
        return masked

    @staticmethod
    def indices_from_masked(cfg: MaskConfig, masked: torch.Tensor) -> MaskSet:
        """Rectangular context/target indices from one config's bool [B, N] (True = not context)."""
        context = ~masked
        num_context = int(context.sum(dim=1).min())
        if cfg.max_keep is not None:
            num_context = min(num_context, cfg.max_keep)
        context_idx = first_true_indices(context, num_context)
        if cfg.full_complement:
            target_idx = complement_indices(context_idx, masked.shape[1])
        else:
            target_idx = first_true_indices(masked, int(masked.sum(dim=1).min()))
        return MaskSet(context_idx, target_idx)


def build_mask_generator(cfg: MaskingConfig | str | Sequence[MaskConfig] | None = "multiblock",
                         default: str = "multiblock") -> MaskGenerator:
    """The one entry point: a MaskingConfig, a registry name, or a list of MaskConfigs. None, or a
    MaskingConfig with neither `name` nor `masks` (a recipe's `masking:` that sets only e.g. motion_map),
    takes the registry entry `default`; the trainer passes the objective variant's generator."""
    if cfg is None:
        cfg = MaskingConfig(name=default)
    elif isinstance(cfg, str):
        cfg = MaskingConfig(name=cfg)
    elif not isinstance(cfg, MaskingConfig):
        cfg = MaskingConfig(name="custom", masks=tuple(cfg))
    if cfg.name is None and not cfg.masks:
        cfg = replace(cfg, name=default)
    return MaskGenerator(cfg)
