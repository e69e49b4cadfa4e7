"""Released V-JEPA weights as the engine's configs and state dicts: a `transformers` VJEPA2 folder or hub id,
or an original vjepa2 checkpoint (`encoder` / `target_encoder` / `predictor` entries, `module.` /
`backbone.` prefixes).

    released = read_released("facebook/vjepa2-vitl-fpc64-256")   # or a folder, or vitl.pt
    encoder = released.build_encoder()                            # VisionTransformer, RoPE style vjepa2

Both are V-JEPA 2 weights, so both come with `rope_style: vjepa2`. Every tensor of the source must find a
place in the engine's modules with the same shape; the first that does not is named in one line.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.models import ModelConfig, Predictor, PredictorConfig, VisionTransformer

from .hf_names import MappingError, configs_from_hf, encoder_from_hf, predictor_from_hf

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt", ".bin")
# Heads of the released widths (not recoverable from the weights' shapes): ViT-S/B/L/H/g.
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 22}


@dataclass
class Released:
    """One source's configs and engine-named state dicts. `target` is the EMA target encoder where the source
    has one apart from the online encoder (an original checkpoint's `target_encoder`), else None."""

    source: str
    model: ModelConfig
    encoder: dict[str, torch.Tensor]
    target: dict[str, torch.Tensor] | None = None
    predictor_cfg: PredictorConfig | None = None
    predictor: dict[str, torch.Tensor] | None = None
    num_mask_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def eval_encoder(self) -> dict[str, torch.Tensor]:
        """The weights evaluation reads: the EMA target where there is one (as V-JEPA 2 evaluates)."""
        return self.target if self.target is not None else self.encoder

    def build_encoder(self, device: str | torch.device = "cpu") -> VisionTransformer:
        """The (target) encoder as a frozen VisionTransformer in eval mode."""
        encoder = VisionTransformer(self.model)
        load_matching(encoder, self.eval_encoder, self.source, strict=True)
        encoder.requires_grad_(False)
        return encoder.eval().to(device)

    def build_predictor(self) -> Predictor:
        if self.predictor is None:
            raise MappingError(f"{self.source}: holds no predictor")
        predictor = Predictor(self.predictor_cfg, in_dim=self.model.out_dim, grid=self.model.grid,
                              num_mask_tokens=self.num_mask_tokens)
        load_matching(predictor, self.predictor, self.source, strict=True)
        return predictor.eval()


def load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool) -> list[str]:
    """Copy `state` into `module`; every tensor must have a place of the same shape (else one MappingError naming
    the first that does not). strict: every parameter of the module must be given too. Returns the module's
    parameter names left at their initial values."""
    own = module.state_dict()
    for key, value in state.items():
        if key not in own:
            raise MappingError(f"{source}: weight {key!r} has no place in the engine's {type(module).__name__}; "
                               f"fix: check the checkpoint is a V-JEPA 2 encoder/predictor of this layout")
        if tuple(own[key].shape) != tuple(value.shape):
            raise MappingError(f"{source}: weight {key!r} is {tuple(value.shape)}, the engine's "
                               f"{type(module).__name__} has {tuple(own[key].shape)}; fix: set the recipe's model/"
                               f"predictor sizes to the checkpoint's")
    missing = [key for key in own if key not in state]
    if strict and missing:
        raise MappingError(f"{source}: no weight for {missing[0]!r}; fix: a complete V-JEPA 2 checkpoint")
    module.load_state_dict(state, strict=False)
    return missing


def read_released(source: str | Path, img_size: int = 256, num_frames: int = 64, num_heads: int | None = None,
                  predictor_heads: int | None = None) -> Released:
    """Read a transformers VJEPA2 folder or hub id, or an original vjepa2 checkpoint file.

    An original checkpoint carries no config, so for it: img_size / num_frames are the geometry recorded (the
    released V-JEPA 2 models: 256 px, 64 frames), and num_heads / predictor_heads the head counts (shapes do
    not show them; default: the released models' for their width, else a head dim of 64 / 32). A transformers
    folder has all of these in its config.json."""
    path = Path(source)
    if path.is_dir():
        return read_hf_folder(path, str(source))
    if path.is_file():
        if path.name.endswith(CHECKPOINT_SUFFIXES):
            return read_vjepa2_checkpoint(path, img_size, num_frames, num_heads, predictor_heads)
        raise MappingError(f"{source}: not a transformers VJEPA2 folder nor a vjepa2 checkpoint "
                           f"({', '.join(CHECKPOINT_SUFFIXES)}); fix: pass one of those")
    if HUB_ID.match(str(source)):
        return read_hf_folder(hub_snapshot(str(source)), str(source))
    raise MappingError(f"{source}: no such file or folder, and not a hub id (owner/name)")


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of a hub model (config and safetensors only), from the cache or downloaded."""
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "*.safetensors", "*.safetensors.index.json", "*.md"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, gated: one line either way
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise MappingError(f"{repo_id}: not in the Hugging Face cache and not downloadable ({first}); fix: check "
                           f"the id and the network, or pass a local folder") from None


def _hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise MappingError(f"{folder}: no model.safetensors; fix: save the model with save_pretrained "
                           f"(safetensors; pytorch_model.bin pickles are not read)")
    tensors = {}
    for name in files:
        tensors.update(load_file(str(folder / name), device="cpu"))
    return tensors


def read_hf_folder(folder: Path, source: str) -> Released:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MappingError(f"{source}: no config.json; fix: pass a transformers VJEPA2 model folder")
    model, predictor_cfg, num_tokens = configs_from_hf(json.loads(config_path.read_text(encoding="utf-8")), source)
    hf = {k.removeprefix("vjepa2."): v for k, v in _hf_tensors(folder).items()}
    used: set[str] = set()
    try:
        encoder = encoder_from_hf(hf, model, used)
        predictor = predictor_from_hf(hf, predictor_cfg, used) if any(k.startswith("predictor.") for k in hf) else None
    except MappingError as err:
        raise MappingError(f"{source}: {err}; fix: a complete VJEPA2Model checkpoint") from None
    # A VJEPA2ForVideoClassification checkpoint's attentive pooler and classifier are not the encoder's.
    extra = sorted(k for k in hf if k not in used and not k.startswith(("pooler.", "classifier.")))
    if extra:
        raise MappingError(f"{source}: weight {extra[0]!r} has no place in the engine's modules")
    return Released(source, model, encoder, None, predictor_cfg if predictor else None, predictor,
                    num_tokens if predictor else 0)


# --------------------------------------------------------------------------------- original vjepa2 layout

def _strip(state: dict) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def _original_to_hf(state: dict, role: str, origin: dict[str, str]) -> dict[str, torch.Tensor]:
    """Original vjepa2 names -> transformers names (the encoder's or the predictor's), q/k/v split; `origin`
    collects each new name's original one, for the error messages."""
    out = {}
    originals = {}
    for key in state:
        stripped = key
        for prefix in ("module.", "backbone."):
            stripped = stripped.removeprefix(prefix)
        originals[stripped] = key
    for key, value in _strip(state).items():
        if role == "encoder":
            new = re.sub(r"^blocks\.", "encoder.layer.", key)
            new = re.sub(r"^patch_embed\.", "encoder.embeddings.patch_embeddings.", new)
            new = re.sub(r"^norm\.", "encoder.layernorm.", new)
        else:
            if key == "predictor_pos_embed":
                raise MappingError(f"weight {key!r} (a sin-cos predictor, V-JEPA 1) has no place in a RoPE predictor")
            new = re.sub(r"^predictor_blocks\.", "predictor.layer.", key)
            new = re.sub(r"^predictor_embed\.", "predictor.embeddings.predictor_embeddings.", new)
            new = re.sub(r"^predictor_norm\.", "predictor.layernorm.", new)
            new = re.sub(r"^predictor_proj\.", "predictor.proj.", new)
            if re.match(r"^mask_tokens\.\d+$", key):
                continue  # stacked below
        new = new.replace(".attn.", ".attention.")
        if ".attention.qkv." in new:
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[new.replace(".qkv.", f".{name}.")] = part
                origin[new.replace(".qkv.", f".{name}.")] = originals[key]
        else:
            out[new] = value
            origin[new] = originals[key]
    if role == "predictor":
        tokens = sorted((int(k.split(".")[-1]), v) for k, v in _strip(state).items() if re.match(r"^mask_tokens\.\d+$", k))
        if tokens:
            out["predictor.embeddings.mask_tokens"] = torch.stack([v.reshape(1, 1, -1) for _, v in tokens])
    return out


def _geometry_from_weights(hf: dict, source: str, img_size: int, num_frames: int,
                           num_heads: int | None) -> ModelConfig:
    key = "encoder.embeddings.patch_embeddings.proj.weight"
    if key not in hf:
        raise MappingError(f"{source}: no patch embedding (patch_embed.proj.weight); fix: pass a V-JEPA 2 checkpoint")
    width, chans, tubelet, patch, _ = hf[key].shape
    depth = 1 + max(int(k.split(".")[2]) for k in hf if k.startswith("encoder.layer."))
    heads = num_heads or HEADS_BY_WIDTH.get(width)
    if not heads:
        raise MappingError(f"{source}: width {width} is not a released V-JEPA 2 width, so its head count is unknown; "
                           f"fix: read_released(..., num_heads=...) or model.init_from with the recipe's model.num_heads")
    hidden = hf["encoder.layer.0.mlp.fc1.weight"].shape[0]
    return ModelConfig(img_size=img_size, num_frames=num_frames, patch_size=patch, tubelet_size=tubelet,
                       in_chans=chans, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=hidden / width,
                       qkv_bias="encoder.layer.0.attention.query.bias" in hf, pos_embed="rope",
                       rope_style="vjepa2", out_layers=(depth - 1,))


def _predictor_from_weights(hf: dict, model: ModelConfig, heads: int | None) -> tuple[PredictorConfig, int]:
    width = hf["predictor.embeddings.predictor_embeddings.weight"].shape[0]
    depth = 1 + max(int(k.split(".")[2]) for k in hf if k.startswith("predictor.layer."))
    heads = heads or {384: 12}.get(width)  # the released predictors: 384 wide, 12 heads
    if not heads:
        raise MappingError(f"predictor width {width} is not a released V-JEPA 2 predictor's, so its head count is "
                           f"unknown; fix: read_released(..., predictor_heads=...) or the recipe's predictor.num_heads")
    hidden = hf["predictor.layer.0.mlp.fc1.weight"].shape[0]
    cfg = PredictorConfig(depth=depth, width=width, num_heads=heads, mlp_ratio=hidden / width, input_hidden_dim=0,
                          predict_context=False, qkv_bias=model.qkv_bias, pos_embed="rope", rope_style="vjepa2")
    return cfg, hf["predictor.embeddings.mask_tokens"].shape[0]


def read_vjepa2_checkpoint(path: Path, img_size: int = 256, num_frames: int = 64, num_heads: int | None = None,
                           predictor_heads: int | None = None) -> Released:
    """An original vjepa2 training checkpoint (or a bare encoder state dict), read weights-only."""
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a pickle with code in it, or not a torch file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise MappingError(f"{path}: not readable as plain tensors ({first}); fix: a vjepa2 checkpoint saved with "
                           f"torch.save of state dicts") from None
    if not isinstance(raw, dict):
        raise MappingError(f"{path}: holds a {type(raw).__name__}, not a dict of state dicts")
    entries = {k: raw[k] for k in ("encoder", "target_encoder", "predictor") if isinstance(raw.get(k), dict)}
    if "encoder" not in entries and "target_encoder" not in entries:
        entries = {"encoder": raw}  # a bare encoder state dict
    source = str(path)
    origin: dict[str, str] = {}
    try:
        online_entry = "encoder" if "encoder" in entries else "target_encoder"
        online = _original_to_hf(entries[online_entry], "encoder", origin)
        model = _geometry_from_weights(online, source, img_size, num_frames, num_heads)
        encoder = _checked_encoder(online, model, online_entry, origin)
        target = (_checked_encoder(_original_to_hf(entries["target_encoder"], "encoder", origin), model,
                                   "target_encoder", origin)
                  if "target_encoder" in entries and "encoder" in entries else None)
        predictor_cfg = predictor = None
        tokens = 0
        if "predictor" in entries:
            hf_pred = _original_to_hf(entries["predictor"], "predictor", origin)
            predictor_cfg, tokens = _predictor_from_weights(hf_pred, model, predictor_heads)
            used: set[str] = set()
            predictor = predictor_from_hf(hf_pred, predictor_cfg, used)
            extra = [k for k in hf_pred if k not in used]
            if extra:
                raise MappingError(f"predictor weight {origin.get(extra[0], extra[0])!r} has no place in the "
                                   f"engine's Predictor")
    except MappingError as err:
        message = str(err)
        raise MappingError(message if message.startswith(source) else f"{source}: {message}") from None
    return Released(source, model, encoder, target, predictor_cfg, predictor, tokens,
                    notes=[f"geometry {num_frames} frames of {img_size} px assumed (not stored in the checkpoint)"])


def _checked_encoder(hf: dict, model: ModelConfig, entry: str, origin: dict[str, str]) -> dict[str, torch.Tensor]:
    used: set[str] = set()
    encoder = encoder_from_hf(hf, model, used)
    extra = [k for k in hf if k not in used]
    if extra:
        raise MappingError(f"{entry} weight {origin.get(extra[0], extra[0])!r} has no place in the engine's "
                           f"VisionTransformer")
    return encoder


def is_released_source(source: str | Path) -> bool:
    """Whether `load_encoder` should read `source` as released weights: a transformers VJEPA2 folder, an
    original checkpoint file (.pt, .pth, .tar, ...), or a hub id that is no local path or URL."""
    text = str(source)
    if "://" in text:
        return False
    path = Path(text)
    if path.is_dir():
        config = path / "config.json"
        try:
            return config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == "vjepa2"
        except (OSError, ValueError):
            return False
    if path.exists():
        return path.is_file() and path.name.endswith(CHECKPOINT_SUFFIXES)
    return bool(HUB_ID.match(text)) and not text.endswith(".safetensors")
