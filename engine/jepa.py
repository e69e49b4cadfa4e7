"""One Video-JEPA training step's forward pass: targets, context encoder, predictor, and every loss of
the variant (docs/paper.md §2 for the baseline, §3 for the auxiliary terms, §6 for what we do differently).

    h     = LN per level (target encoder on the full clip)          no gradient while the EMA is on
    z     = encoder(kept tokens of mask config m)                   one pass per mask config
    ẑ     = predictor(z, context, targets, mask token m)
    total = w·(mean_m L_pred + λ_ctx(step)·mean_m L_ctx) + Σ_k coeff_k·schedule_k(step)·L_k

w is the variant's `prediction_weight` (1 for the study's rows; 1−λ in the LeJEPA form).

`disable_ema` (kinematic and SIGReg-no-EMA rows) makes the online encoder produce the targets, with
gradient, and leaves the EMA target untouched, so the encoder that was trained is `encoder`. The study's
released evaluation still loaded the untouched `target_encoder` (docs/paper.md §6.3): `paper_compat`
reproduces that choice, and the one of building the hard-region weighted LD loss under no_grad (§6.1).

`frozen_target` (the random-teacher control) keeps the target encoder at its initial weights (the trainer
builds it as a copy of the online encoder at init, so the teacher is the student's own starting point):
targets come from it without gradient, `update_target` leaves it alone, and the trained encoder is `encoder`.
The collapse alarm reads the targets, so for this variant it watches the teacher, which cannot collapse.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import torch
from torch import Tensor, nn

from kernels import masked_gather
from engine.fields import field_doc
from engine.models import ema_update
from engine.objectives.base import MaskView, StepInputs, Term, Variant
from engine.objectives.jepa_loss import (
    ContextLossConfig,
    context_distance_weights,
    context_loss,
    layer_norm_levels,
    prediction_loss,
)
from engine.objectives.registry import TERM_KINDS, Objective, resolve_variant

# Loss-dict keys of the JEPA terms themselves; auxiliary terms may not use them.
RESERVED_KEYS = ("pred", "ctx", "lambda_ctx", "total")
ONLINE, TARGET = "encoder", "target_encoder"


class MaskPair(Protocol):
    """What jepa.py reads of a mask config (engine.masking's MaskSet, contracts §3)."""

    context_idx: Tensor  # [B, Kc] int64
    target_idx: Tensor  # [B, Kt] int64


@dataclass(frozen=True)
class JEPAConfig:
    """The loss-side switches of a run."""

    context_loss: ContextLossConfig = field_doc(factory=ContextLossConfig,
                                                doc="Dense context loss: distance weighting and its λ schedule.")
    disable_ema: bool | None = field_doc(None, "None: the variant's setting. True: online targets with gradient, "
                                               "EMA target never updated. False: the EMA on.")
    paper_compat: bool = field_doc(False, "Reproduce the released code's two defects so the study can measure "
                                          "their effect: every LD term's hard-weighted loss under no_grad (its "
                                          "own paper_compat parameter), and evaluating the untrained target copy "
                                          "of a no-EMA run. Off by default.")


def trained_encoder_key(disable_ema: bool, paper_compat: bool, frozen_target: bool = False) -> str:
    """Checkpoint key of the encoder that evaluation must load.

    With the EMA on, the EMA target is the trained (averaged) encoder, as in the paper. With it off the
    EMA target is the untouched initial copy, so the trained one is the online encoder, unless
    paper_compat asks for the released (wrong) choice. A frozen target is the random teacher: the
    student (online encoder) is the trained one, whatever paper_compat says (the study had no such row)."""
    if frozen_target or (disable_ema and not paper_compat):
        return ONLINE
    return TARGET


def with_paper_compat(variant: Variant) -> Variant:
    """The variant with `paper_compat: true` in the parameters of every term whose kind has that parameter
    (today only LD reads it): the recipe's one switch reaches the one term it changes."""
    def reads_it(term: Term) -> bool:
        kind = TERM_KINDS.get(term.name)  # an unknown name is the Objective's error to report
        return kind is not None and "paper_compat" in {f.name for f in dataclasses.fields(kind.Params)}

    terms = tuple(dataclasses.replace(term, params={**term.params, "paper_compat": True}) if reads_it(term) else term
                  for term in variant.terms)
    return dataclasses.replace(variant, terms=terms)


class JEPA(nn.Module):
    """Encoder, predictor and the variant's auxiliary heads: everything the optimizer trains.

    The EMA target encoder is passed to `forward` rather than owned, so that it stays outside the
    optimizer and any ZeRO partitioning, in fp32."""

    def __init__(self, encoder: nn.Module, predictor: nn.Module, variant: str | Variant | Mapping[str, Any],
                 cfg: JEPAConfig | None = None):
        super().__init__()
        self.cfg = cfg or JEPAConfig()
        self.variant = resolve_variant(variant)
        clashes = sorted({t.key for t in self.variant.terms} & set(RESERVED_KEYS))
        if clashes:
            raise ValueError(f"variant {self.variant.name!r}: term keys {clashes} clash with the JEPA loss keys")
        self.encoder = encoder
        self.predictor = predictor
        self.disable_ema = self.variant.disable_ema if self.cfg.disable_ema is None else bool(self.cfg.disable_ema)
        self.frozen_target = self.variant.frozen_target
        if self.frozen_target and self.disable_ema:
            raise ValueError(f"variant {self.variant.name!r} keeps a frozen target; loss.disable_ema: true would "
                             "replace it by the online encoder (fix: drop loss.disable_ema or use another variant)")
        self.paper_compat = self.cfg.paper_compat
        # Rebuild the variant with the effective EMA switch so that the objective's checks see it.
        if self.disable_ema != self.variant.disable_ema:
            self.variant = dataclasses.replace(self.variant, disable_ema=self.disable_ema)
        if self.paper_compat:
            self.variant = with_paper_compat(self.variant)
        self.objective = Objective(self.variant, encoder.out_dim)
        for term in self.objective.terms.values():
            if hasattr(term, "configure"):  # heads sized by the clip geometry (pixel target)
                geometry = encoder.cfg
                term.configure(geometry.in_chans * geometry.tubelet_size * geometry.patch_size ** 2)
        self.levels = encoder.out_dim // encoder.embed_dim
        self.trained_encoder = trained_encoder_key(self.disable_ema, self.paper_compat, self.frozen_target)
        self._kept_targets: Tensor | None = None

    def no_weight_decay(self) -> set[str]:
        """Names of the trainable parameters that take no weight decay: biases, norm scales, position and
        mask tokens (every parameter of one dimension or fewer, and the predictor's mask tokens)."""
        return {name for name, param in self.named_parameters()
                if param.requires_grad and (param.ndim <= 1 or name.endswith("mask_tokens"))}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW's two groups, in parameter order: decayed (`apply_wd` True, so a weight-decay schedule that
        rewrites the groups each step knows which to change) and not decayed (`no_weight_decay`)."""
        exempt = self.no_weight_decay()
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (no_decay if name in exempt else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay, "apply_wd": True},
                {"params": no_decay, "weight_decay": 0.0, "apply_wd": False}]

    @property
    def mask_generator(self) -> str:
        """Name of the mask generator (engine.masking registry) this variant is defined with."""
        return self.variant.mask_generator

    def targets(self, video: Tensor, target_encoder: nn.Module | None, modality: Tensor | None = None) -> Tensor:
        """h [B, N, D]: per-level LayerNorm of the target features of the full clip."""
        if self.disable_ema:
            return layer_norm_levels(self.encoder(video, modality=modality), self.levels)
        if target_encoder is None:
            raise ValueError("the EMA target encoder is required unless disable_ema is set")
        with torch.no_grad():
            return layer_norm_levels(target_encoder(video, modality=modality), self.levels)

    def forward(self, video: Tensor, masks: Sequence[MaskPair], step: int, target_encoder: nn.Module | None = None,
                modality: Tensor | None = None, keep_targets: bool = False) -> dict[str, Tensor]:
        """video [B, C, T, H, W]; masks one MaskPair per mask config; step the global iteration;
        keep_targets: hold on to this step's targets h (detached) for `pop_kept_targets` (the collapse
        alarm reads them without a second target pass).

        Returns the unweighted value of every term by key ("pred", "ctx", each auxiliary term),
        "lambda_ctx", and "total", the loss to backpropagate."""
        if not masks:
            raise ValueError("at least one mask config is required")
        grid = self.encoder.token_grid(video)
        # Losses are reduced in fp32 whatever the autocast dtype: bf16 means over millions of
        # elements lose the small differences between terms.
        target = self.targets(video, target_encoder, modality).float()  # [B, N, D]
        if keep_targets:
            self._kept_targets = target.detach()
        views = []
        pred_losses, ctx_losses = [], []
        for config_id, mask in enumerate(masks):
            student = self.encoder(video, keep_idx=mask.context_idx, modality=modality)  # [B, Kc, D]
            pred_target, pred_context = self.predictor(student, mask.context_idx, mask.target_idx, config_id,
                                                       modality=modality)
            if pred_context is None:
                raise ValueError("the context loss needs the predictor's context outputs (predict_context)")
            student, pred_target, pred_context = student.float(), pred_target.float(), pred_context.float()
            view = MaskView(
                context_idx=mask.context_idx,
                target_idx=mask.target_idx,
                student=student,
                pred_target=pred_target,  # [B, Kt, D]
                pred_context=pred_context,  # [B, Kc, D]
                target_at_target=masked_gather(target, mask.target_idx),  # [B, Kt, D]
                target_at_context=masked_gather(target, mask.context_idx),  # [B, Kc, D]
                grid=grid,
            )
            views.append(view)
            pred_losses.append(prediction_loss(view.pred_target, view.target_at_target))
            weights = None
            if self.cfg.context_loss.weight_distance:
                weights = context_distance_weights(mask.context_idx, mask.target_idx, grid)  # [B, Kc]
            ctx_losses.append(context_loss(view.pred_context, view.target_at_context, weights))

        cfg = self.encoder.cfg
        inputs = StepInputs(target=target, video=video, grid=grid, tubelet=cfg.tubelet_size,
                            patch=cfg.patch_size, step=step, views=views)
        aux = self.objective(inputs)
        coeffs = self.objective.effective_coeffs(step)

        losses: dict[str, Tensor] = {"pred": torch.stack(pred_losses).mean(), "ctx": torch.stack(ctx_losses).mean()}
        lam = self.cfg.context_loss.lambda_at(step)
        total = self.variant.prediction_weight * (losses["pred"] + lam * losses["ctx"])
        for key, value in aux.items():
            losses[key] = value
            total = total + coeffs[key] * value
        losses["lambda_ctx"] = torch.tensor(lam, device=total.device)
        losses["total"] = total
        return losses

    def pop_kept_targets(self) -> Tensor:
        """The targets h [B, N, D] of the last forward that asked to keep them; released on reading."""
        if self._kept_targets is None:
            raise RuntimeError("no targets kept: call forward(..., keep_targets=True) first")
        kept, self._kept_targets = self._kept_targets, None
        return kept

    @torch.no_grad()
    def update_target(self, target_encoder: nn.Module, momentum: float) -> None:
        """EMA step of the target; a no-op when the EMA is disabled or the target is frozen (the target
        stays the initial copy)."""
        if self.disable_ema or self.frozen_target:
            return
        ema_update(target_encoder, self.encoder, momentum)

    def encoder_for_eval(self, target_encoder: nn.Module) -> nn.Module:
        """The encoder module that `trained_encoder` names."""
        return self.encoder if self.trained_encoder == ONLINE else target_encoder
