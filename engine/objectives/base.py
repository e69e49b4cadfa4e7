"""The vocabulary shared by every objective family: terms, variants, and what a term sees of one step.

A *variant* (a row of the study) is a list of `Term`s, each naming a registered term kind with a
coefficient and its parameters, the weight of the prediction loss beside them, plus the non-loss choices
that come with a row: the mask generator it was run with and where the targets come from (the EMA target,
the online encoder, or a target frozen at its initial weights).
"""
from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from engine.fields import at_least, check_fields, field_doc
from engine.objectives.grid import FeatureGrid, scatter_to_grid, token_grid


@dataclass(frozen=True)
class Term:
    """One weighted loss term of a variant, e.g. `Term("hw", coeff=0.3, params={"tau": 1.0})`."""

    name: str = field_doc(doc="Registered term kind (a key of `engine.objectives.registry.TERM_KINDS`).")
    coeff: float = field_doc(1.0, "Multiplier of this term in the total loss.")
    params: dict[str, Any] = field_doc(factory=dict, doc="Keyword parameters of the term kind (its `Params`); "
                                                         "unknown keys are an error naming the term.")
    label: str | None = field_doc(None, "Key of this term in the loss dict; defaults to `name` (must be unique "
                                        "within a variant).")

    @property
    def key(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Variant:
    """A named objective of the study: auxiliary terms on top of w·(L_pred + λ_ctx·L_ctx)."""

    name: str = field_doc("custom", "Registry name, also the run name stem.")
    terms: tuple[Term, ...] = field_doc((), "Auxiliary terms added to the JEPA loss (empty for the baseline and "
                                            "masking-only rows).")
    mask_generator: str = field_doc("multiblock", "Name in engine.masking's generator registry that this row was "
                                                  "trained with.")
    disable_ema: bool = field_doc(False, "True: targets come from the online encoder with gradient and the EMA "
                                         "target is never updated.")
    description: str = field_doc("", "One line on what the row computes.")
    prediction_weight: float = field_doc(1.0, "w, the multiplier of the JEPA prediction loss L_pred + "
                                              "λ_ctx·L_ctx in the total. 1 for the study's rows; 1−λ in the "
                                              "LeJEPA form, total = (1−λ)·prediction + λ·SIGReg.",
                                         valid=at_least(0))
    frozen_target: bool = field_doc(False, "True: the target encoder stays at its initial (random) weights: "
                                           "never EMA-updated, no gradient; the student distils from it and the "
                                           "exported encoder is the online one (the random-teacher control). "
                                           "Excludes disable_ema.")

    def __post_init__(self):
        if self.frozen_target and self.disable_ema:
            raise ValueError(f"variant {self.name!r}: frozen_target and disable_ema exclude each other (a frozen "
                             "target needs the target encoder; disable_ema replaces it by the online one); fix: "
                             "set only one of them")
        if not self.prediction_weight >= 0:
            raise ValueError(f"variant {self.name!r}: prediction_weight={self.prediction_weight} must be >= 0; "
                             "fix: give a non-negative weight")
        keys = [t.key for t in self.terms]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"variant {self.name!r}: terms share the loss key(s) {duplicates}; give them labels")


@dataclass
class MaskView:
    """Everything the loss sees of one mask config (one context-encoder pass)."""

    context_idx: Tensor
    """[B, Kc] int64 visible tokens, sorted, into the flattened (t, h, w) grid."""
    target_idx: Tensor
    """[B, Kt] int64 masked tokens to predict."""
    student: Tensor
    """[B, Kc, D] context-encoder output z_enc on the visible tokens."""
    pred_target: Tensor
    """[B, Kt, D] predictor output at the masked tokens."""
    pred_context: Tensor
    """[B, Kc, D] predictor output at the context tokens (V-JEPA 2.1 predict_all)."""
    target_at_target: Tensor
    """[B, Kt, D] h gathered at the masked tokens."""
    target_at_context: Tensor
    """[B, Kc, D] h gathered at the context tokens."""
    grid: tuple[int, int, int]
    """Token grid (Tg, Hg, Wg)."""
    _student_grid: FeatureGrid | None = None

    @property
    def student_grid(self) -> FeatureGrid:
        """z_enc scattered back onto the full grid, with the visible set and the valid (t, t+1) pairs."""
        if self._student_grid is None:
            self._student_grid = scatter_to_grid(self.student, self.context_idx, self.grid)
        return self._student_grid


@dataclass
class StepInputs:
    """What a term sees of one training step: the full-clip target, the clip, and every mask view."""

    target: Tensor
    """[B, N, D] h = per-level LayerNorm of the target features of the full clip. Detached, except when
    the EMA is disabled (then it is the online encoder's output and carries gradient)."""
    video: Tensor
    """[B, C, T, H, W] the normalised clip (for pixel-space action targets)."""
    grid: tuple[int, int, int]
    """Token grid (Tg, Hg, Wg)."""
    tubelet: int
    """Frames per token step."""
    patch: int
    """Pixels per token side."""
    step: int
    """Global training iteration (schedules, slice seeds)."""
    views: Sequence[MaskView]
    """One view per mask config."""

    @property
    def target_grid(self) -> Tensor:
        """[B, Tg, Hg*Wg, D] the target on the grid, time separated from space."""
        return token_grid(self.target, self.grid)


class AuxTerm(nn.Module, metaclass=abc.ABCMeta):
    """Base of every auxiliary term: one scalar per training step. A subclass declares `Params` (a
    dataclass of `engine.fields.field_doc` fields: doc and valid range each, checked here). Terms that read the student features derive from
    `MaskViewTerm`; terms that see only the full-clip target (kinematic) implement `step_loss`."""

    Params: type = None  # set by each subclass
    reads_student: bool = True
    """False for terms that see only the full-clip target: they train nothing while h is detached."""

    def __init__(self, params: Any, feat_dim: int):
        super().__init__()
        try:
            check_fields(params)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None
        self.params = params
        self.feat_dim = feat_dim

    @abc.abstractmethod
    def step_loss(self, inputs: StepInputs) -> Tensor:
        """The term's unweighted value for this step (scalar)."""

    def schedule(self, step: int) -> float:
        """Multiplier of the coefficient at this step (1.0 unless the term anneals)."""
        return 1.0


class MaskViewTerm(AuxTerm):
    """A term evaluated on each mask config's view (one context-encoder pass) and averaged over them,
    as L_pred is."""

    @abc.abstractmethod
    def view_loss(self, view: MaskView, inputs: StepInputs) -> Tensor:
        """The term on one mask config (scalar)."""

    def step_loss(self, inputs: StepInputs) -> Tensor:
        return torch.stack([self.view_loss(v, inputs) for v in inputs.views]).mean()


def parse_params(params_cls: type, raw: Mapping[str, Any] | None, owner: str):
    """Build a term's typed params from a mapping; unknown keys and wrong types name the term."""
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"term {owner!r}: unknown parameter(s) {unknown}; known: {sorted(fields)}")
    defaults = params_cls()
    for key, value in raw.items():
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            raw[key] = float(value)
        elif not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise TypeError(f"term {owner!r}: parameter {key!r} must be {expected.__name__}, got {value!r}")
    return params_cls(**raw)


def split_dims(feat_dim: int, app_ratio: float) -> int:
    """Width of Z_app: the first ⌊ratio·D⌋ dims (Z_dyn is the rest), as in the paper's FWM split."""
    width = int(math.floor(app_ratio * feat_dim))
    if not 0 < width < feat_dim:
        raise ValueError(f"app_ratio {app_ratio} leaves an empty subspace of a {feat_dim}-d feature")
    return width
