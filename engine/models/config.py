"""Typed configuration of the encoder and predictor, with validation and named size presets.

Presets fix only the architecture's size (width, depth, heads); the input geometry (crop, frames,
patch, tubelet) comes from the recipe, so `model_preset("tiny", img_size=64, patch_size=8)` is the CPU demo
and `model_preset("base")` is the paper's ViT-B/16 at 224 px and 16 frames.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.fields import above, at_least, check_fields, field_doc, one_of

POSITION_KINDS = ("rope", "sincos")
# How RoPE pairs channels with frequencies (docs/paper-deviations.md §3): "pairwise" rotates each channel pair
# by one angle (V-JEPA 2.1, the study's code); "vjepa2" reproduces the released V-JEPA 2 code and transformers'
# VJEPA2Model, whose sin/cos tables are repeated, so a pair's two channels use two different frequencies.
ROPE_STYLES = ("pairwise", "vjepa2")
MASK_TOKEN_CHOICES = ("mask_config", "clip_length")


def _as_int_tuple(value) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


def _require(condition: bool, message: str) -> None:
    """A check that involves several fields (single-field ranges are declared with the field)."""
    if not condition:
        raise ValueError(message)


def default_out_layers(depth: int, levels: int = 4) -> tuple[int, ...]:
    """Evenly spaced block indices ending at the last block: depth 12 -> (2, 5, 8, 11), as in the paper."""
    levels = min(levels, depth)
    return tuple(sorted({depth * (i + 1) // levels - 1 for i in range(levels)}))


@dataclass(frozen=True)
class BlockStackConfig:
    """What the encoder's and the predictor's stacks of transformer blocks are both configured by."""

    mlp_ratio: float = field_doc(4.0, "MLP hidden width as a multiple of the token width", valid=above(0))
    qkv_bias: bool = field_doc(True, "bias on the fused q/k/v projection")
    norm_eps: float = field_doc(1e-6, "LayerNorm epsilon", valid=above(0))
    pos_embed: str = field_doc("rope", "'rope' (3D rotary on q/k, the paper) or 'sincos' (fixed additive 3D sin-cos)",
                               valid=one_of(*POSITION_KINDS))
    rope_theta: float = field_doc(10000.0, "RoPE base frequency", valid=above(0))
    rope_style: str = field_doc(
        "pairwise", "RoPE channel/frequency pairing: 'pairwise' (one angle per channel pair, V-JEPA 2.1, the "
        "study) or 'vjepa2' (the released V-JEPA 2 code and transformers' VJEPA2Model)", valid=one_of(*ROPE_STYLES))
    init_std: float = field_doc(0.02, "std of the truncated-normal weight init", valid=above(0))


@dataclass(frozen=True)
class ModelConfig(BlockStackConfig):
    """Video ViT encoder. The defaults are the paper's ViT-B/16 at 224 px, 16 frames, tubelet 2, RoPE."""

    img_size: int = field_doc(224, "side of the square input crop in pixels; a multiple of patch_size", valid=at_least(1))
    num_frames: int = field_doc(16, "frames per clip; a multiple of tubelet_size", valid=at_least(1))
    patch_size: int = field_doc(16, "spatial side of one patch in pixels", valid=at_least(1))
    tubelet_size: int = field_doc(2, "frames merged into one token", valid=at_least(1))
    in_chans: int = field_doc(3, "input channels (RGB)", valid=at_least(1))
    embed_dim: int = field_doc(768, "token width; a multiple of num_heads", valid=at_least(1))
    depth: int = field_doc(12, "number of transformer blocks", valid=at_least(1))
    num_heads: int = field_doc(12, "attention heads per block", valid=at_least(1))
    out_layers: tuple[int, ...] | None = field_doc(
        None, "blocks whose LayerNormed outputs are concatenated for the losses; None = 4 evenly spaced, "
        "ending at the last block", valid=at_least(0))
    eval_layers: tuple[int, ...] | None = field_doc(
        None, "blocks forming the frozen-eval features, a subset of out_layers; None = last block only",
        valid=at_least(0))
    modality_embedding: bool = field_doc(False, "add a learned video/image vector to every token (V-JEPA 2.1, the paper)")
    init_from: str | None = field_doc(
        None, "warm-start the encoder (and the predictor where present) from released weights: a transformers "
        "VJEPA2 folder or hub id, an original vjepa2 checkpoint (.pt/.pth.tar), or an engine export; None = "
        "random init (engine/interop)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_layers", _as_int_tuple(self.out_layers))
        object.__setattr__(self, "eval_layers", _as_int_tuple(self.eval_layers))
        check_fields(self, "model.")
        _require(self.img_size % self.patch_size == 0,
                 f"model.img_size={self.img_size} is not divisible by model.patch_size={self.patch_size}; "
                 f"pick a crop that is a multiple of the patch")
        _require(self.num_frames % self.tubelet_size == 0,
                 f"model.num_frames={self.num_frames} is not divisible by model.tubelet_size={self.tubelet_size}; "
                 f"pick a frame count that is a multiple of the tubelet")
        _require(self.embed_dim % self.num_heads == 0,
                 f"model.embed_dim={self.embed_dim} is not divisible by model.num_heads={self.num_heads}")
        _require(self.pos_embed != "rope" or self.head_dim >= 6,
                 f"model.pos_embed='rope' needs a head dim of at least 6 (2 per axis), got {self.head_dim}; "
                 f"use fewer heads or 'sincos'")
        out = self.out_layer_indices
        _require(len(out) > 0 and len(set(out)) == len(out) and list(out) == sorted(out),
                 f"model.out_layers={out} must be a non-empty ascending list of distinct block indices")
        _require(all(0 <= i < self.depth for i in out),
                 f"model.out_layers={out} has an index outside [0, depth={self.depth})")
        _require(out[-1] == self.depth - 1,
                 f"model.out_layers={out} must end at the last block {self.depth - 1}; "
                 f"blocks after the last output would never be trained (lower model.depth instead)")
        ev = self.eval_layer_indices
        _require(len(ev) > 0 and set(ev) <= set(out),
                 f"model.eval_layers={ev} must be a non-empty subset of model.out_layers={out}, "
                 f"so that their LayerNorms are trained")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (Tg, Hg, Wg) of the configured input geometry."""
        side = self.img_size // self.patch_size
        return (self.num_frames // self.tubelet_size, side, side)

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def out_layer_indices(self) -> tuple[int, ...]:
        return self.out_layers if self.out_layers is not None else default_out_layers(self.depth)

    @property
    def eval_layer_indices(self) -> tuple[int, ...]:
        return self.eval_layers if self.eval_layers is not None else (self.depth - 1,)

    @property
    def out_dim(self) -> int:
        """Width of the training features: one embed_dim per output layer."""
        return len(self.out_layer_indices) * self.embed_dim

    @property
    def eval_dim(self) -> int:
        return len(self.eval_layer_indices) * self.embed_dim


@dataclass(frozen=True)
class PredictorConfig(BlockStackConfig):
    """Narrow ViT predictor. The defaults are the paper's: depth 8, width 256, 8 heads, RoPE, zero-init mask tokens."""

    depth: int = field_doc(8, "number of transformer blocks", valid=at_least(1))
    width: int = field_doc(256, "token width inside the predictor; a multiple of num_heads", valid=at_least(1))
    num_heads: int = field_doc(8, "attention heads per block", valid=at_least(1))
    input_hidden_dim: int | None = field_doc(
        None, "hidden width of the input MLP in_dim -> hidden -> width; None = in_dim // 4 (3072 -> 768 -> 256 "
        "in the paper), 0 = one Linear", valid=at_least(0))
    zero_init_mask_tokens: bool = field_doc(True, "start the learnable mask tokens at zero (the paper) instead of random")
    predict_context: bool = field_doc(
        True, "also project the context tokens' outputs (predict_all; the dense context loss needs them)")
    mask_token_by: str = field_doc(
        "mask_config", "which learnable mask token a mask config uses: 'mask_config' (one per config, V-JEPA 1) "
        "or 'clip_length' (one per frames-per-clip group, the released V-JEPA 2/2.1 code: every config of a "
        "one-clip-length run shares token 0)", valid=one_of(*MASK_TOKEN_CHOICES))
    modality_embedding: bool = field_doc(
        False, "add a learned video/image vector to every predictor token (V-JEPA 2.1 configs with "
        "img_temporal_dim_size)")

    def __post_init__(self) -> None:
        check_fields(self, "predictor.")
        _require(self.width % self.num_heads == 0,
                 f"predictor.width={self.width} is not divisible by predictor.num_heads={self.num_heads}")
        _require(self.pos_embed != "rope" or self.width // self.num_heads >= 6,
                 f"predictor.pos_embed='rope' needs a head dim of at least 6, got {self.width // self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.width * self.mlp_ratio)

    def resolved_input_hidden_dim(self, in_dim: int) -> int:
        """Hidden width of the input MLP for features of width in_dim (0 means a single Linear)."""
        return max(in_dim // 4, 1) if self.input_hidden_dim is None else self.input_hidden_dim


MODEL_PRESETS: dict[str, dict] = {
    "tiny": dict(embed_dim=64, depth=4, num_heads=4),  # CPU tests and demo (~0.2M params)
    "small": dict(embed_dim=384, depth=12, num_heads=6),  # ViT-S
    "base": dict(embed_dim=768, depth=12, num_heads=12),  # ViT-B, the paper (~86M)
    "large": dict(embed_dim=1024, depth=24, num_heads=16),  # ViT-L (~303M)
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),  # ViT-H (~632M)
}

PREDICTOR_PRESETS: dict[str, dict] = {
    "tiny": dict(depth=2, width=64, num_heads=4),  # CPU tests and demo
    "paper": dict(depth=8, width=256, num_heads=8),  # V-JEPA 2.1 predictor used by the paper
    "vjepa": dict(depth=12, width=384, num_heads=12),  # V-JEPA 1/2 predictor
}


def _preset(table: dict[str, dict], kind: str, name: str, overrides: dict):
    if name not in table:
        raise ValueError(f"unknown {kind} preset {name!r}; choose one of {sorted(table)}")
    return {**table[name], **overrides}


def model_preset(name: str, **overrides) -> ModelConfig:
    """ModelConfig of a named size; keyword overrides (geometry, positions, ...) win over the preset."""
    return ModelConfig(**_preset(MODEL_PRESETS, "model", name, overrides))


def predictor_preset(name: str, **overrides) -> PredictorConfig:
    """PredictorConfig of a named size; keyword overrides win over the preset."""
    return PredictorConfig(**_preset(PREDICTOR_PRESETS, "predictor", name, overrides))

