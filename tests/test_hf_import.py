"""Released V-JEPA 2 weights into the engine (issue 24): a transformers VJEPA2 folder, the same folder as a
hub id from the Hugging Face cache, and an original vjepa2 checkpoint (`encoder` / `target_encoder` /
`predictor`, `module.backbone.` prefixes, fused qkv) built here from a tiny transformers model's weights, each
giving the transformers model's outputs; a weight that does not fit is named in one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (requirements-extras.txt)")

from engine.export import load_encoder  # noqa: E402
from engine.interop import MappingError, read_released  # noqa: E402
from test_hf_parity import assert_parity, engine_outputs, hf_model, hf_outputs, inputs, relative_error  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def original_layout(hf_state: dict, part: str) -> dict:
    """The vjepa2 repository's names for one part ('encoder' or 'predictor') of a VJEPA2Model state dict,
    written out here by hand from its layout (not with the engine's mapping)."""
    out = {}
    prefix = "module.backbone."
    for key, value in hf_state.items():
        if not key.startswith(part + "."):
            continue
        name = key[len(part) + 1:]
        if ".attention.query." in name or ".attention.key." in name or ".attention.value." in name:
            if ".attention.query." not in name:
                continue
            kind = name.rsplit(".", 1)[1]
            stem = name.split(".attention.")[0]
            value = torch.cat([hf_state[f"{part}.{stem}.attention.{p}.{kind}"] for p in ("query", "key", "value")])
            name = f"{stem}.attn.qkv.{kind}"
        name = name.replace(".attention.", ".attn.")
        if part == "encoder":
            name = (name.replace("embeddings.patch_embeddings.", "patch_embed.").replace("layer.", "blocks.", 1)
                    .replace("layernorm.", "norm."))
        else:
            if name == "embeddings.mask_tokens":
                for i, token in enumerate(value):
                    out[f"{prefix}mask_tokens.{i}"] = token.clone()  # [1, 1, W]
                continue
            name = (name.replace("embeddings.predictor_embeddings.", "predictor_embed.")
                    .replace("layer.", "predictor_blocks.", 1).replace("layernorm.", "predictor_norm.")
                    .replace("proj.", "predictor_proj.", 1 if name.startswith("proj.") else 0))
        out[prefix + name] = value.clone()
    return out


def test_load_encoder_reads_a_transformers_folder(tmp_path):
    model = hf_model()
    model.save_pretrained(tmp_path / "hf")
    encoder = load_encoder(tmp_path / "hf")
    assert encoder.cfg.rope_style == "vjepa2" and not encoder.training
    video, context, target = inputs()
    with torch.no_grad():
        ours = encoder.forward_eval(video)
    assert relative_error(ours, hf_outputs(model, video, context, target)[0]) <= 1e-5


def test_original_vjepa2_checkpoint_gives_the_transformers_outputs(tmp_path):
    online, target_model = hf_model(seed=0), hf_model(seed=5)
    checkpoint = {"encoder": original_layout(online.state_dict(), "encoder"),
                  "target_encoder": original_layout(target_model.state_dict(), "encoder"),
                  "predictor": original_layout(online.state_dict(), "predictor"), "epoch": 3}
    path = tmp_path / "vitl.pt"
    torch.save(checkpoint, path)
    released = read_released(path, img_size=64, num_frames=8, num_heads=4, predictor_heads=2)
    assert released.model.rope_style == "vjepa2"
    video, context, target = inputs()
    # The EMA target is the encoder evaluation reads; the online encoder is kept for warm starts.
    reference = hf_outputs(target_model, video, context, target)
    ours = engine_outputs(released.build_encoder(), released.build_predictor(), video, context, target)
    assert relative_error(ours[0], reference[0]) <= 1e-5 and relative_error(ours[1], reference[1]) <= 1e-5
    assert_parity(engine_outputs(_online_encoder(released), released.build_predictor(), video, context, target),
                  hf_outputs(online, video, context, target))


def _online_encoder(released):
    from engine.models import VisionTransformer
    encoder = VisionTransformer(released.model).eval()
    encoder.load_state_dict(released.encoder)
    return encoder


def test_a_weight_that_does_not_fit_is_named_in_one_line(tmp_path):
    state = original_layout(hf_model().state_dict(), "encoder")
    state["module.backbone.blocks.1.attn.rel_pos_h"] = torch.zeros(3)
    torch.save({"encoder": state}, tmp_path / "odd.pt")
    with pytest.raises(MappingError) as err:
        read_released(tmp_path / "odd.pt", img_size=64, num_frames=8, num_heads=4)
    message = str(err.value)
    assert "\n" not in message and "'module.backbone.blocks.1.attn.rel_pos_h'" in message and "odd.pt" in message
    # Heads are not in the shapes: a width the released models do not have needs them given.
    torch.save({"encoder": original_layout(hf_model().state_dict(), "encoder")}, tmp_path / "tiny.pt")
    with pytest.raises(MappingError, match="num_heads"):
        read_released(tmp_path / "tiny.pt")


@pytest.mark.slow  # two fresh Pythons
def test_hub_id_from_the_cache_in_a_fresh_python(tmp_path):
    """A hub id resolves through huggingface_hub's cache (offline here): the folder layout the hub writes."""
    model = hf_model()
    snapshot = tmp_path / "hub" / "models--someone--vjepa2-tiny" / "snapshots" / ("a" * 40)
    model.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    video, context, target = inputs()
    torch.save(video, tmp_path / "video.pt")
    script = ("import sys, torch; from engine.export import load_encoder; "
              "enc = load_encoder('someone/vjepa2-tiny'); "
              f"torch.save(enc.forward_eval(torch.load({str(tmp_path / 'video.pt')!r})), {str(tmp_path / 'out.pt')!r})")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert relative_error(torch.load(tmp_path / "out.pt"), hf_outputs(model, video, context, target)[0]) <= 1e-5
    # An id that is not in the cache, offline: one line naming it.
    script = "from engine.export import load_encoder; load_encoder('someone/absent')"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode != 0 and "someone/absent: not in the Hugging Face cache" in result.stderr


def test_hf_config_json_is_what_transformers_reads(tmp_path):
    model = hf_model()
    model.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    released = read_released(tmp_path / "hf")
    assert (released.model.embed_dim, released.model.depth, released.model.num_heads) == (
        config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"])
    assert released.num_mask_tokens == config["pred_num_mask_tokens"] == 2
    with pytest.raises(MappingError, match="model_type"):
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
        read_released(tmp_path / "hf")
