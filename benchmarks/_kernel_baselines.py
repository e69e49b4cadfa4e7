"""The original study's eager implementations that the kernels replace (benchmark baselines only).

Written after the released code as described in docs/paper.md §3: V-JEPA's
``apply_masks`` gather on an expanded int64 index with the position embedding and the mask token
repeated to [B,N,D]; the HW loss in several eager passes; the motion-guided mask built sample by
sample with Python loops over every block origin, as the original collate function does.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def apply_masks_gather(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x [B,N,D] + pos repeated to [B,N,D], both gathered by a materialised [B,K,D] int64 index."""
    B, _, D = x.shape
    index = idx.unsqueeze(-1).repeat(1, 1, D)                              # [B,K,D] int64
    return torch.gather(x, 1, index) + torch.gather(pos.unsqueeze(0).repeat(B, 1, 1), 1, index)


def apply_masks_mask_tokens(token: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Predictor input: the mask token repeated to [B,N,D], plus pos repeated, gathered at the targets."""
    B = idx.shape[0]
    N, D = pos.shape
    tokens = token.reshape(1, 1, D).repeat(B, N, 1) + pos.unsqueeze(0).repeat(B, 1, 1)   # [B,N,D]
    return torch.gather(tokens, 1, idx.unsqueeze(-1).repeat(1, 1, D))


def hw_loss_eager(pred: torch.Tensor, target: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """The HW term as separate eager ops: |diff| materialised, errors, detached softmax weights, mean."""
    l1 = (pred.float() - target.float()).abs()                            # [B,K,D]
    errors = l1.mean(-1)                                                   # [B,K]
    with torch.no_grad():
        weights = errors.shape[1] * torch.softmax(errors / tau, dim=-1)    # [B,K]
    return (weights.unsqueeze(-1) * l1).mean()


def motion_mask_python_loop(video: torch.Tensor, tubelet: int, patch: int, block_shape, num_blocks: int,
                            strength: float, random_rate: float, rng: np.random.Generator) -> torch.Tensor:
    """Per sample: motion map, then for every block a Python loop over all feasible origins."""
    B, _, T, H, W = video.shape
    Tg, Hg, Wg = T // tubelet, H // patch, W // patch
    bt, bh, bw = block_shape
    masks = torch.zeros(B, Tg, Hg, Wg, dtype=torch.bool)
    for b in range(B):
        clip = video[b].float()                                            # [C,T,H,W]
        diff = (clip[:, 1:] - clip[:, :-1]).abs().mean(0)                  # [T-1,H,W]
        diff = torch.cat([torch.zeros_like(diff[:1]), diff])              # first frame duplicated: 0
        motion = F.interpolate(diff[None, None], size=(Tg, Hg, Wg), mode="trilinear", align_corners=False)[0, 0]
        peak = motion.max()
        motion = motion / peak if peak > 0 else motion
        motion = motion.cpu()
        for _ in range(num_blocks):
            origins, scores = [], []
            for t in range(Tg - bt + 1):
                for h in range(Hg - bh + 1):
                    for w in range(Wg - bw + 1):
                        origins.append((t, h, w))
                        scores.append(float(motion[t:t + bt, h:h + bh, w:w + bw].mean()))
            if rng.random() < random_rate:
                choice = rng.integers(len(origins))
            else:
                p = np.maximum(np.asarray(scores), 1e-6) ** strength
                choice = rng.choice(len(origins), p=p / p.sum())
            t, h, w = origins[choice]
            masks[b, t:t + bt, h:h + bh, w:w + bw] = True
    return masks.flatten(1)
