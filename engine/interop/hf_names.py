"""Names, shapes and config fields of `transformers`' VJEPA2Model against the engine's modules, both ways.

Pure tensor bookkeeping (no transformers import): the engine fuses q/k/v into one Linear where
VJEPA2Model keeps three, calls its final LayerNorm `encoder.layernorm` where the engine has one LayerNorm per
output level, and stores the predictor's mask tokens as [M, 1, 1, W] where the engine has [M, W].

A config HF cannot express is refused by `hf_refusal` with the recipe key that makes it so.
"""
from __future__ import annotations

import torch

from engine.models import ModelConfig, PredictorConfig

HF_THETA = 10000.0  # rotate_queries_or_keys hard-codes it
BLOCK_PARTS = ("norm1", "norm2", "mlp.fc1", "mlp.fc2", "attn.proj")  # same layout both sides (attn -> attention)


class MappingError(ValueError):
    """A weight or a config field that does not fit; the message names the first key and the fix."""


def _block_part(part: str) -> str:
    return part.replace("attn.", "attention.")


def _last_norm_index(cfg: ModelConfig) -> int:
    return cfg.out_layer_indices.index(cfg.depth - 1)


# ------------------------------------------------------------------------------------------------- configs

def hf_refusal(model: ModelConfig, predictor: PredictorConfig | None = None) -> str | None:
    """Why VJEPA2Model cannot hold this encoder (and predictor), naming the recipe key; None if it can."""
    checks = [
        (model.pos_embed == "rope", "model.pos_embed", f"{model.pos_embed!r}; VJEPA2Model only has 3D RoPE"),
        (model.rope_style == "vjepa2", "model.rope_style",
         f"{model.rope_style!r}; VJEPA2Model only has the V-JEPA 2 rotation: train with model.rope_style: vjepa2"),
        (model.rope_theta == HF_THETA, "model.rope_theta", f"{model.rope_theta:g}; VJEPA2Model fixes it at 10000"),
        (model.eval_layer_indices == (model.depth - 1,), "model.eval_layers",
         f"{list(model.eval_layer_indices)}; VJEPA2Model's output is the last block's LayerNorm only"),
    ]
    if predictor is not None:
        checks += [
            (predictor.pos_embed == "rope" and predictor.rope_style == "vjepa2", "predictor.rope_style",
             f"{predictor.pos_embed}/{predictor.rope_style}; VJEPA2Model's predictor has the V-JEPA 2 RoPE only"),
            (predictor.rope_theta == HF_THETA, "predictor.rope_theta", f"{predictor.rope_theta:g}, not 10000"),
            (predictor.resolved_input_hidden_dim(model.out_dim) == 0, "predictor.input_hidden_dim",
             "an MLP; VJEPA2Model's predictor embeds with one Linear (set predictor.input_hidden_dim: 0)"),
            (model.out_layer_indices == (model.depth - 1,), "model.out_layers",
             f"{list(model.out_layer_indices)}; VJEPA2Model's predictor reads the last block only"),
            (not predictor.modality_embedding, "predictor.modality_embedding", "true; VJEPA2Model has none"),
            (predictor.qkv_bias == model.qkv_bias and predictor.norm_eps == model.norm_eps, "predictor.qkv_bias",
             "differs from the encoder's (or predictor.norm_eps does); VJEPA2Config has one of each"),
        ]
    for ok, key, why in checks:
        if not ok:
            return f"{key} = {why}"
    return None


def hf_config_dict(model: ModelConfig, predictor: PredictorConfig | None = None, num_mask_tokens: int = 1) -> dict:
    """The VJEPA2Config fields of an expressible engine config (check `hf_refusal` first)."""
    fields = dict(model_type="vjepa2", architectures=["VJEPA2Model"], patch_size=model.patch_size,
                  crop_size=model.img_size, frames_per_clip=model.num_frames, tubelet_size=model.tubelet_size,
                  hidden_size=model.embed_dim, in_chans=model.in_chans, num_attention_heads=model.num_heads,
                  num_hidden_layers=model.depth, mlp_ratio=model.mlp_ratio, layer_norm_eps=model.norm_eps,
                  qkv_bias=model.qkv_bias, hidden_act="gelu", initializer_range=model.init_std, drop_path_rate=0.0,
                  attention_probs_dropout_prob=0.0, attention_dropout=0.0, torch_dtype="float32")
    if predictor is not None:
        fields.update(pred_hidden_size=predictor.width, pred_num_attention_heads=predictor.num_heads,
                      pred_num_hidden_layers=predictor.depth, pred_num_mask_tokens=num_mask_tokens,
                      pred_zero_init_mask_tokens=predictor.zero_init_mask_tokens, pred_mlp_ratio=predictor.mlp_ratio)
    return fields


def configs_from_hf(config: dict, source: str) -> tuple[ModelConfig, PredictorConfig, int]:
    """(ModelConfig, PredictorConfig, number of mask tokens) of a VJEPA2Config dict (config.json)."""
    if config.get("model_type") != "vjepa2":
        raise MappingError(f"{source}: config.json model_type {config.get('model_type')!r}, not 'vjepa2'; fix: "
                           f"pass a transformers VJEPA2 model folder or hub id")
    get = lambda key, default: config.get(key, default)  # noqa: E731 - VJEPA2Config's defaults
    if get("hidden_act", "gelu") != "gelu":
        raise MappingError(f"{source}: hidden_act {config['hidden_act']!r}; the engine's blocks use exact GELU")
    if not isinstance(get("patch_size", 16), int):
        raise MappingError(f"{source}: patch_size {config['patch_size']!r}; the engine needs one square patch side")
    depth = get("num_hidden_layers", 24)
    common = dict(qkv_bias=get("qkv_bias", True), norm_eps=get("layer_norm_eps", 1e-6), pos_embed="rope",
                  rope_theta=HF_THETA, rope_style="vjepa2", init_std=get("initializer_range", 0.02))
    model = ModelConfig(img_size=get("crop_size", 256), num_frames=get("frames_per_clip", 64),
                        patch_size=get("patch_size", 16), tubelet_size=get("tubelet_size", 2),
                        in_chans=get("in_chans", 3), embed_dim=get("hidden_size", 1024), depth=depth,
                        num_heads=get("num_attention_heads", 16), mlp_ratio=get("mlp_ratio", 4.0),
                        out_layers=(depth - 1,), **common)
    predictor = PredictorConfig(depth=get("pred_num_hidden_layers", 12), width=get("pred_hidden_size", 384),
                                num_heads=get("pred_num_attention_heads", 12), mlp_ratio=get("pred_mlp_ratio", 4.0),
                                input_hidden_dim=0, predict_context=False,
                                zero_init_mask_tokens=get("pred_zero_init_mask_tokens", True), **common)
    return model, predictor, get("pred_num_mask_tokens", 10)


# -------------------------------------------------------------------------------------------- state dicts

def encoder_to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Engine VisionTransformer state dict -> VJEPA2Model `encoder.*` tensors.

    With a modality embedding, the video vector (added to every token right after the patch embedding) is
    folded into the patch embedding's bias: the same outputs for video, which is all VJEPA2Model takes."""
    out = {"encoder.embeddings.patch_embeddings.proj.weight": state["patch_embed.weight"],
           "encoder.embeddings.patch_embeddings.proj.bias": state["patch_embed.bias"]}
    if "modality_embed" in state:
        from engine.models import VIDEO
        out["encoder.embeddings.patch_embeddings.proj.bias"] = state["patch_embed.bias"] + state["modality_embed"][VIDEO]
    for i in range(cfg.depth):
        _blocks_to_hf(state, f"blocks.{i}.", f"encoder.layer.{i}.", out)
    norm = _last_norm_index(cfg)
    out["encoder.layernorm.weight"] = state[f"level_norms.{norm}.weight"]
    out["encoder.layernorm.bias"] = state[f"level_norms.{norm}.bias"]
    return out


def predictor_to_hf(state: dict[str, torch.Tensor], cfg: PredictorConfig) -> dict[str, torch.Tensor]:
    """Engine Predictor state dict -> VJEPA2Model `predictor.*` tensors (proj_context has no HF place: dropped)."""
    out = {"predictor.embeddings.predictor_embeddings.weight": state["input_mlp.weight"],
           "predictor.embeddings.predictor_embeddings.bias": state["input_mlp.bias"],
           "predictor.embeddings.mask_tokens": state["mask_tokens"][:, None, None, :],  # [M, 1, 1, W]
           "predictor.layernorm.weight": state["norm.weight"], "predictor.layernorm.bias": state["norm.bias"],
           "predictor.proj.weight": state["proj_target.weight"], "predictor.proj.bias": state["proj_target.bias"]}
    for i in range(cfg.depth):
        _blocks_to_hf(state, f"blocks.{i}.", f"predictor.layer.{i}.", out)
    return out


def _blocks_to_hf(state, src: str, dst: str, out: dict) -> None:
    for part in BLOCK_PARTS:
        for kind in ("weight", "bias"):
            out[f"{dst}{_block_part(part)}.{kind}"] = state[f"{src}{part}.{kind}"]
    for kind in ("weight", "bias"):
        if f"{src}attn.qkv.{kind}" in state:
            q, k, v = state[f"{src}attn.qkv.{kind}"].chunk(3, dim=0)  # rows: q, then k, then v
            out.update({f"{dst}attention.query.{kind}": q, f"{dst}attention.key.{kind}": k,
                        f"{dst}attention.value.{kind}": v})


def _blocks_from_hf(hf: dict, src: str, dst: str, out: dict, used: set) -> None:
    for part in BLOCK_PARTS:
        for kind in ("weight", "bias"):
            out[f"{dst}{part}.{kind}"] = _take(hf, f"{src}{_block_part(part)}.{kind}", used)
    for kind in ("weight", "bias"):
        names = [f"{src}attention.{p}.{kind}" for p in ("query", "key", "value")]
        if all(n in hf for n in names):
            out[f"{dst}attn.qkv.{kind}"] = torch.cat([_take(hf, n, used) for n in names], dim=0)


def _take(hf: dict, key: str, used: set) -> torch.Tensor:
    if key not in hf:
        raise MappingError(f"missing weight {key!r}")
    used.add(key)
    return hf[key]


def encoder_from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig, used: set) -> dict[str, torch.Tensor]:
    """VJEPA2Model `encoder.*` tensors -> engine VisionTransformer state dict (the last level's norm only)."""
    out = {"patch_embed.weight": _take(hf, "encoder.embeddings.patch_embeddings.proj.weight", used),
           "patch_embed.bias": _take(hf, "encoder.embeddings.patch_embeddings.proj.bias", used)}
    for i in range(cfg.depth):
        _blocks_from_hf(hf, f"encoder.layer.{i}.", f"blocks.{i}.", out, used)
    norm = _last_norm_index(cfg)
    out[f"level_norms.{norm}.weight"] = _take(hf, "encoder.layernorm.weight", used)
    out[f"level_norms.{norm}.bias"] = _take(hf, "encoder.layernorm.bias", used)
    return out


def predictor_from_hf(hf: dict[str, torch.Tensor], cfg: PredictorConfig, used: set) -> dict[str, torch.Tensor]:
    """VJEPA2Model `predictor.*` tensors -> engine Predictor state dict (no proj_context: HF has none)."""
    tokens = _take(hf, "predictor.embeddings.mask_tokens", used)
    out = {"input_mlp.weight": _take(hf, "predictor.embeddings.predictor_embeddings.weight", used),
           "input_mlp.bias": _take(hf, "predictor.embeddings.predictor_embeddings.bias", used),
           "mask_tokens": tokens.reshape(tokens.shape[0], tokens.shape[-1]),  # [M, 1, 1, W] -> [M, W]
           "norm.weight": _take(hf, "predictor.layernorm.weight", used),
           "norm.bias": _take(hf, "predictor.layernorm.bias", used),
           "proj_target.weight": _take(hf, "predictor.proj.weight", used),
           "proj_target.bias": _take(hf, "predictor.proj.bias", used)}
    for i in range(cfg.depth):
        _blocks_from_hf(hf, f"predictor.layer.{i}.", f"blocks.{i}.", out, used)
    return out

