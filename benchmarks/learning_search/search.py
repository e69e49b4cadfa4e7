"""Learning search: the engine's encoder, predictor, JEPA loss, masks and EMA in a plain loop on in-memory
clips (benchmarks/learning_search/clips.py), probed with the engine's probe at chosen steps, beside the
random init (step 0) and a pixel baseline (patch embedding only). Fast enough to compare settings on the
2-core CPU before a setting becomes a recipe; results go to one JSON per run as they come.

    python -m benchmarks.learning_search.clips
    python -m benchmarks.learning_search.search --steps 600 --eval-at 0,300,600 --pixel --out run.json
"""
import argparse
import json
import time

import numpy as np
import torch
from engine.models import VisionTransformer, Predictor, model_preset, predictor_preset, make_ema_target
from engine.masking.generator import build_mask_generator, MASKING_REGISTRY
from engine.masking.config import MaskConfig
from engine.jepa import JEPA, JEPAConfig
from engine.objectives.jepa_loss import ContextLossConfig
from engine.eval.features import CachedFeatures
from engine.eval.knn import knn_probe
from engine.eval.probes import ProbeArch
from engine.eval.probe_train import ProbeTrainConfig, train_probe_sweep
from engine.training.collapse import collapse_metrics

p = argparse.ArgumentParser()
p.add_argument("--data", default="data/learning_search/clips.npz")
p.add_argument("--steps", type=int, default=600)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--lr", type=float, default=5e-4)
p.add_argument("--wd", type=float, default=0.04)
p.add_argument("--warmup", type=int, default=50)
p.add_argument("--ema", type=float, nargs=2, default=[0.996, 1.0])
p.add_argument("--masks", default="")  # registry name or json list of MaskConfig kwargs; "" = the variant's own
p.add_argument("--embed", type=int, default=64); p.add_argument("--depth", type=int, default=4); p.add_argument("--heads", type=int, default=4)
p.add_argument("--patch", type=int, default=8)
p.add_argument("--pred", type=str, default="2,64,4")  # depth,width,heads
p.add_argument("--levels", type=str, default="")  # out_layers e.g. "3" or "1,3"
p.add_argument("--ctx", type=float, default=0.0)  # context loss weight (0 = off)
p.add_argument("--variant", default="baseline", help="registry name, or a recipe's direct listing as JSON")
p.add_argument("--pix", type=float, default=0.0)
p.add_argument("--latent-weight", type=float, default=1.0,
               help="weight of the latent prediction loss; 0 with --pix > 0 trains on the pixel target alone (MAE-like)")
p.add_argument("--eval-split", choices=("val", "test"), default="val",
               help="held-out clips the probe is scored on: settings are chosen on val, test is reported once")
p.add_argument("--eval-every-min", type=float, default=0.0,
               help="also probe every this many minutes of training (a learning curve in wall time); 0 = only --eval-at")
p.add_argument("--max-minutes", type=float, default=0.0, help="stop (after a final probe) at this much training time; 0 = no limit")
p.add_argument("--eval-online", action="store_true")
p.add_argument("--supervised-labels", choices=("class", "motion", "digit"), default="class",
               help="what --supervised trains on: the 20 classes, the motion family alone or the digit alone")
p.add_argument("--supervised-head", choices=("mean_linear", "attentive"), default="mean_linear",
               help="--supervised head: a Linear on mean-pooled tokens, or the benchmark's attentive probe on all tokens")
p.add_argument("--supervised", action="store_true", help="upper reference: train the encoder with labels (linear head on mean-pooled tokens, cross-entropy) instead of JEPA")
p.add_argument("--head-only-steps", type=int, default=0,
               help="--supervised: train the head alone (encoder frozen) for this many steps first, then both "
                    "(linear-probe-then-fine-tune, so early head noise does not wash out the encoder's features)")
p.add_argument("--encoder-lr-scale", type=float, default=1.0, help="--supervised: the encoder's lr = --lr times this")
p.add_argument("--probe-sweep", type=str, default="")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--eval-at", type=str, default="0,600")
p.add_argument("--probe-seeds", type=int, default=2)
p.add_argument("--probe-epochs", type=int, default=20)
p.add_argument("--probe-n", type=int, default=1000)
p.add_argument("--probe-batch", type=int, default=32)
p.add_argument("--probe-lr", type=float, default=1e-3)
p.add_argument("--pixel", action="store_true")
p.add_argument("--probe-features", choices=("normed", "residual"), default="normed",
               help="what the probe reads: the eval features (per-token LayerNorm of the last level, as the engine "
                    "evaluates) or the last block's residual stream before that norm, where token magnitude survives")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--device", default="cpu", help="where the model, the batches and the probes run: cpu or cuda")
p.add_argument("--bf16", action="store_true", help="bf16 autocast for the training step's forward (the probes stay fp32)")
p.add_argument("--aug", action="store_true")
p.add_argument("--out", required=True)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
dev = torch.device(a.device)
d = dict(np.load(a.data))
MEAN = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1, 1); STD = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1, 1)
def to_video(u8):  # [B, T, H, W, 3] uint8 -> [B, 3, T, H, W] on the device (moved as uint8: a quarter of the bytes)
    x = torch.from_numpy(u8).to(dev).permute(0, 4, 1, 2, 3).float() / 255.0
    return (x - MEAN) / STD
if a.eval_split == "val" and "val" not in d:
    raise SystemExit(f"{a.data} has no validation split: render it again with python -m benchmarks.learning_search.clips")
pre, test, test_labels = d["pre"], d[a.eval_split], torch.from_numpy(d[f"{a.eval_split}_labels"])
# The probe reads the frames of the evaluation protocol where the data has them (pre_eval), pretraining its own.
probe_train = (d["pre_eval"] if "pre_eval" in d else pre)[:a.probe_n]
probe_labels = torch.from_numpy(d["pre_labels"][:a.probe_n])
levels = tuple(int(x) for x in a.levels.split(",")) if a.levels else None
cfg = model_preset("tiny", img_size=64, num_frames=pre.shape[1], patch_size=a.patch, tubelet_size=2, pos_embed="rope",
                   embed_dim=a.embed, depth=a.depth, num_heads=a.heads, out_layers=levels)
encoder = VisionTransformer(cfg)
from engine.objectives.base import Variant, Term
from engine.objectives.registry import resolve_variant
variant = (json.loads(a.variant) if a.variant.startswith("{") else a.variant) if a.pix <= 0 \
    else Variant("pix", (Term("pixel_target", a.pix),))
if not a.masks or a.masks in MASKING_REGISTRY:
    masks = build_mask_generator(a.masks or resolve_variant(variant).mask_generator)
else:
    masks = build_mask_generator([MaskConfig(**m) for m in json.loads(a.masks)])
pd, pw, ph = (int(x) for x in a.pred.split(","))
predictor = Predictor(predictor_preset("tiny", depth=pd, width=pw, num_heads=ph), encoder.out_dim, cfg.grid, masks.num_mask_configs)
jepa = JEPA(encoder, predictor, variant, JEPAConfig(context_loss=ContextLossConfig(weight_distance=True, lambda_value=a.ctx, lambda_start=0, lambda_end=1)))
jepa.to(dev)
target = make_ema_target(encoder)
LABEL_OF = {"class": lambda y: y, "motion": lambda y: y % 2, "digit": lambda y: y // 2}  # y = digit * 2 + motion
num_labels = {"class": 20, "motion": 2, "digit": 10}[a.supervised_labels]
if a.supervised_head == "attentive":
    from engine.eval.probes import build_probe
    head = build_probe(ProbeArch("paper_attentive", num_heads=8), cfg.embed_dim, num_labels)  # [B, N, D] -> logits
else:
    class MeanLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(cfg.embed_dim, num_labels)

        def forward(self, tokens):  # [B, N, D] -> logits [B, num_labels]
            return self.linear(tokens.mean(1))
    head = MeanLinear()
head.to(dev)
if a.supervised:  # the encoder trained with labels; probed like every other encoder (online weights)
    jepa = torch.nn.ModuleDict({"encoder": encoder, "head": head})
    a.eval_online = True
groups = {}  # (weight decay, is the supervised encoder) -> params
for n_, p_ in jepa.named_parameters():
    groups.setdefault((0.0 if p_.ndim < 2 else a.wd, a.supervised and n_.startswith("encoder.")), []).append(p_)
opt = torch.optim.AdamW([{"params": ps, "weight_decay": wd, "supervised_encoder": enc} for (wd, enc), ps in groups.items()],
                        lr=a.lr, betas=(0.9, 0.999))

def residual_stream(module, video):  # [B, C, T, H, W] -> [B, N, D]: the last block's output before the level norm
    from engine.models.layers import apply_block
    x, rope = module.embed_tokens(video)
    for block in module.blocks:
        x = apply_block(block, x, rope, False)
    return x

@torch.no_grad()
def features(module, clips, pixel=False):
    out = []
    module.eval()
    for i in range(0, len(clips), 64):
        v = to_video(clips[i:i + 64])
        if pixel:
            f = module.patch_embed(v).flatten(2).transpose(1, 2)
        elif a.probe_features == "residual":
            f = residual_stream(module, v)
        else:
            f = module.forward_eval(v)
        out.append(f.half())  # on the device: the probe trains where its features are
    module.train()
    return torch.cat(out).unsqueeze(1)  # [n, 1, N, D]

def probe(module, pixel=False):
    tr = CachedFeatures(features(module, probe_train, pixel), probe_labels, [], {})
    te = CachedFeatures(features(module, test, pixel), test_labels, [], {})
    accs = []
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    for s in range(a.probe_seeds):
        r = train_probe_sweep(tr, te, ProbeArch("paper_attentive", num_heads=8), ProbeTrainConfig(epochs=a.probe_epochs, batch_size=a.probe_batch, lr=a.probe_lr, seed=s,
                              sweep_lrs=tuple(float(x) for x in a.probe_sweep.split(",") if x)), 20)
        accs.append([h.top1 for h in r.heads])
    torch.set_num_threads(threads)
    on_cpu = [CachedFeatures(c.features.cpu(), c.labels, [], {}) for c in (tr, te)]  # the kNN votes on the CPU
    return accs, knn_probe(*on_cpu, 20)["top1"]

def token_stats(module):
    """(rank, within-clip share) of 200 test clips' eval tokens, as the collapse alarm computes them."""
    with torch.no_grad():
        module.eval(); f = module.forward_eval(to_video(test[:200])); module.train()
    stats = collapse_metrics(f)
    return stats["collapse.rank"], stats["collapse.within_share"]

results = {"args": vars(a), "evals": []}
def save():
    json.dump(results, open(a.out, "w"), indent=1)
eval_at = sorted(int(x) for x in a.eval_at.split(","))
if a.pixel:
    results["pixel"], results["pixel_knn"] = probe(encoder, pixel=True); save()
    print("pixel", results["pixel"], flush=True)
gen = torch.Generator().manual_seed(a.seed)
mask_gen = gen if dev.type == "cpu" else torch.Generator(device=dev).manual_seed(a.seed)  # masks draw beside the video
t0 = time.time(); losses = []
n = len(pre)
order = torch.randperm(n, generator=gen); pos = 0
train_s, next_wall_eval = 0.0, a.eval_every_min * 60 if a.eval_every_min > 0 else float("inf")
for step in range(a.steps + 1):
    out_of_time = a.max_minutes > 0 and train_s >= a.max_minutes * 60
    if step in eval_at or train_s >= next_wall_eval or step == a.steps or out_of_time:
        while train_s >= next_wall_eval:
            next_wall_eval += a.eval_every_min * 60
        te0 = time.time()
        ev = encoder if a.eval_online else jepa.encoder_for_eval(target)  # online for EMA-off and frozen-teacher variants
        accs, knn = probe(ev); rank, within = token_stats(ev)
        results["evals"].append({"step": step, "top1": accs, "knn_top1": knn, "rank": rank, "within": within, "train_s": train_s,
                                 "loss": float(np.mean(losses[-20:])) if losses else None})
        save(); print(results["evals"][-1], "eval_s", round(time.time() - te0), flush=True)
    if step == a.steps or out_of_time:
        break
    step_started = time.time()
    if pos + a.batch > n:
        order = torch.randperm(n, generator=gen); pos = 0
    idx = order[pos:pos + a.batch].numpy(); pos += a.batch
    clips = pre[np.sort(idx)]
    if a.aug and torch.rand(1, generator=gen) < 0.5:
        clips = clips[:, :, :, ::-1].copy()
    video = to_video(clips)
    lr = a.lr * min(1.0, (step + 1) / max(1, a.warmup))
    for g in opt.param_groups:
        if g["supervised_encoder"]:
            g["lr"] = 0.0 if step < a.head_only_steps else lr * a.encoder_lr_scale
        else:
            g["lr"] = lr
    m = a.ema[0] + (a.ema[1] - a.ema[0]) * step / max(1, a.steps)
    if a.supervised:
        labels = LABEL_OF[a.supervised_labels](torch.from_numpy(d["pre_labels"][np.sort(idx)]))
        loss = torch.nn.functional.cross_entropy(head(encoder.forward_eval(video)), labels.to(dev))
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        losses.append(float(loss.detach()))
        train_s += time.time() - step_started
        if step % 100 == 0:
            print(step, round(losses[-1], 4), round(train_s, 1), flush=True)
        continue
    ms = masks(video.shape[0], cfg.grid, mask_gen, video)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
        out = jepa(video, ms, step, target)
    total = out["total"] - (1.0 - a.latent_weight) * jepa.variant.prediction_weight * out["pred"]
    opt.zero_grad(set_to_none=True); total.backward(); opt.step()
    jepa.update_target(target, m)
    losses.append(float(out["pred"].detach()) if a.latent_weight > 0 else float(out["pixel_target"].detach()))
    train_s += time.time() - step_started
    if step % 100 == 0:
        print(step, round(losses[-1], 4), round(train_s, 1), flush=True)
