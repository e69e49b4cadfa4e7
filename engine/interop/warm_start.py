"""`model.init_from`: start a run's encoder, EMA target and predictor from released or exported weights.

    warm_start(recipe.model.init_from, encoder, predictor, target)   # after the modules are built

The recipe still decides the architecture; the source must agree with it on every field that shapes the
weights or the computation (width, depth, heads, patch, tubelet, RoPE style, ...): the first that differs
is named with its recipe key. Encoder weights must all fit (one line naming the first that does not).
Parameters the source does not have (the LayerNorms of extra output levels, a modality vector, the
predictor's context projection) keep their initial values and are listed in the log line. The predictor is
loaded where the source has one of the recipe's shape; otherwise it starts from its init, and the log says
why.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .hf_names import MappingError
from .released import Released, is_released_source, load_matching, read_released

log = logging.getLogger(__name__)

MODEL_FIELDS = ("embed_dim", "depth", "num_heads", "patch_size", "tubelet_size", "in_chans", "mlp_ratio", "qkv_bias",
                "norm_eps", "pos_embed", "rope_theta", "rope_style")
PREDICTOR_FIELDS = ("width", "depth", "num_heads", "mlp_ratio", "qkv_bias", "norm_eps", "pos_embed", "rope_theta",
                    "rope_style")


def _source(init_from: str, encoder: nn.Module, predictor: nn.Module) -> Released:
    cfg = encoder.cfg
    if is_released_source(init_from):
        return read_released(init_from, img_size=cfg.img_size, num_frames=cfg.num_frames, num_heads=cfg.num_heads,
                             predictor_heads=predictor.cfg.num_heads)
    return _engine_export(init_from)


def _engine_export(path: str) -> Released:
    """An engine export: a folder (model.safetensors + config.json) or an encoder .safetensors file."""
    from pathlib import Path

    from safetensors.torch import load_file

    from engine.encoder_file import read_metadata
    from engine.models import ModelConfig

    local = Path(path)
    if local.is_dir():
        local = local / "model.safetensors"
    if not local.is_file():
        raise MappingError(f"model.init_from {path}: no such export, transformers VJEPA2 folder, vjepa2 checkpoint "
                           f"or hub id; fix: check the path (a URL: copy the export here first)")
    try:
        cfg = ModelConfig(**read_metadata(local)["model_config"])
    except ValueError as err:
        raise MappingError(f"model.init_from {path}: {err}") from None
    return Released(path, cfg, load_file(str(local), device="cpu"))


def _first_difference(ours, theirs, fields, prefix: str) -> str | None:
    for name in fields:
        if getattr(ours, name) != getattr(theirs, name):
            return (f"{prefix}.{name}: the recipe has {getattr(ours, name)!r}, the weights "
                    f"{getattr(theirs, name)!r}")
    return None


@torch.no_grad()
def warm_start(init_from: str, encoder: nn.Module, predictor: nn.Module, target: nn.Module | None = None) -> list[str]:
    """Load `init_from` into the run's modules (in place). Returns what was loaded, in words (also logged)."""
    released = _source(init_from, encoder, predictor)
    why = _first_difference(encoder.cfg, released.model, MODEL_FIELDS, "model")
    if why:
        raise MappingError(f"model.init_from {init_from}: {why}; fix: set the recipe's value to the weights'")
    kept = load_matching(encoder, released.encoder, init_from, strict=False)
    done = [f"encoder from {init_from}" + (f" (kept at init: {', '.join(kept)})" if kept else "")]
    if target is not None:
        # The target is the init's copy of the encoder: what the source lacks stays equal in both.
        load_matching(target, released.eval_encoder, init_from, strict=False)
        done.append("EMA target from its " + ("target_encoder" if released.target is not None else "encoder"))
    done.append(_load_predictor(released, predictor, encoder))
    log.info("model.init_from: %s", "; ".join(done))
    return done


def _load_predictor(released: Released, predictor: nn.Module, encoder: nn.Module) -> str:
    if released.predictor is None:
        return "predictor at init (the weights hold none)"
    why = _first_difference(predictor.cfg, released.predictor_cfg, PREDICTOR_FIELDS, "predictor")
    state = dict(released.predictor)
    if why is None and predictor.input_mlp.weight.shape != state["input_mlp.weight"].shape:
        why = (f"input_mlp.weight: the recipe's predictor reads {encoder.out_dim} features through "
               f"{tuple(predictor.input_mlp.weight.shape)}, the weights {tuple(state['input_mlp.weight'].shape)} "
               f"(model.out_layers, predictor.input_hidden_dim)")
    if why is not None:
        return f"predictor at init ({why})"
    tokens = state["mask_tokens"]
    own = predictor.mask_tokens.detach().clone()
    count = min(len(own), len(tokens))
    own[:count] = tokens[:count]  # the recipe's mask configs take the first mask tokens of the weights
    state["mask_tokens"] = own
    kept = load_matching(predictor, state, released.source, strict=False)
    return f"predictor, {count} mask tokens" + (f" (kept at init: {', '.join(kept)})" if kept else "")
