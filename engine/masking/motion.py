"""Per-token motion score maps [B, Tg, Hg, Wg] in [0, 1] that steer motion-guided block origins."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import motion_scores


def trilinear_motion_map(video: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """The original code's map: channel-mean |frame[t+1] - frame[t]| with the first difference repeated for
    frame 0, trilinearly resized to the token grid (a point sample near each cell centre, not a cell mean),
    divided by the per-sample max. video [B, C, T, H, W] -> [B, Tg, Hg, Wg]."""
    if video.shape[2] < 2:
        return torch.zeros(video.shape[0], *grid, device=video.device)
    frames = video.float()
    energy = (frames[:, :, 1:] - frames[:, :, :-1]).abs().mean(dim=1)  # [B, T-1, H, W]
    energy = torch.cat((energy[:, :1], energy), dim=1)  # [B, T, H, W]
    resized = F.interpolate(energy.unsqueeze(1), size=grid, mode="trilinear", align_corners=False).squeeze(1)
    peak = resized.flatten(1).amax(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    return resized / peak


def motion_map(video: torch.Tensor, grid: tuple[int, int, int], kind: str) -> torch.Tensor:
    """Motion scores of a clip batch on the token grid; kind is "cell_mean" or "trilinear"."""
    _, _, frames, height, width = video.shape
    tubelet, patch = frames // grid[0], height // grid[1]
    if frames != tubelet * grid[0] or height != patch * grid[1] or width != patch * grid[2]:
        raise ValueError(f"video {tuple(video.shape[2:])} (T, H, W) does not tile into the token grid {grid}")
    if kind == "cell_mean":
        return motion_scores(video, tubelet, patch)
    if kind == "trilinear":
        return trilinear_motion_map(video, grid)
    raise ValueError(f"unknown motion map {kind!r}; use 'cell_mean' or 'trilinear'")
