"""Features of a video in one call, preprocessed exactly as the evaluation preprocesses its clips.

    python -m engine.features runs/<run>/export clip.mp4 --out feats.npy            # tokens [N, D]
    python -m engine.features facebook/vjepa2-vitl-fpc64-256 clip.mp4 --out f.npy --pooled   # [D]

    from engine.features import video_features
    feats = video_features("runs/<run>/export", "clip.mp4")          # [N, D] float32 tensor
    feats = video_features(encoder, frames_uint8_THWC, pooled=True)   # a module and decoded frames work too

The model: anything `engine.export.load_encoder` reads (an export folder or file, its URL, a transformers
VJEPA2 folder or hub id, an original vjepa2 checkpoint). The preprocessing is the evaluation loader's
(engine.data, eval mode, CPU path), calling its own functions rather than a copy of them:
- frames: the encoder's T frames spread uniformly from the first to the last frame of the video
  (`sampler.eval_frame_indices`; a short video repeats frames), or with `frame_step` k, T frames k apart
  from the first (the last frame repeats past the end);
- decoding with DALI's colour conversion (BT.601 limited range; `pyav_oracle.decode_video_frames`);
- the centred square of side min(H, W) (`sampler.centre_square`: short-side resize + centre crop) resized
  to the encoder's crop, bilinear with antialiasing (`augment.crop_flip_resize_uint8`);
- ImageNet mean/std normalisation of the 0..255 levels (`loader.normalisation`, `loader.normalise_clips`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from engine.clip_input import clip_from_frames, load_clip, preprocessing_spec, select_frames  # noqa: F401 (API)


@torch.no_grad()
def video_features(model, video, pooled: bool = False, frame_step: int | None = None,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Features of one video: tokens [N, D] (the encoder's forward_eval), or their mean [D] when pooled.

    model: a VisionTransformer, or anything engine.export.load_encoder reads. video: a file path, or
    decoded frames uint8 [T, H, W, 3] (all of the video's frames: T of them are picked as from a file)."""
    if not isinstance(model, torch.nn.Module):
        from engine.export import load_encoder
        model = load_encoder(model, device)
    cfg = model.cfg
    if isinstance(video, (str, Path)):
        clip = load_clip(video, cfg, frame_step)
    else:
        frames = torch.as_tensor(video)
        clip = clip_from_frames(frames[torch.from_numpy(select_frames(len(frames), cfg.num_frames, frame_step)).long()],
                                cfg.img_size)
    tokens = model.forward_eval(clip.to(device))[0].float().cpu()  # [N, D]
    return tokens.mean(dim=0) if pooled else tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Features of a video file, preprocessed as the evaluation does.")
    parser.add_argument("model", help="export folder/file or URL, transformers VJEPA2 folder or hub id, vjepa2 .pt")
    parser.add_argument("video", help="a video file (mp4, webm, ...)")
    parser.add_argument("--out", required=True, help="output .npy: tokens [N, D], or [D] with --pooled")
    parser.add_argument("--pooled", action="store_true", help="the mean over tokens instead of all tokens")
    parser.add_argument("--frame-step", type=int, default=None,
                        help="take frames this far apart from the first (default: spread over the whole video, "
                             "as the evaluation does)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        feats = video_features(args.model, args.video, args.pooled, args.frame_step, args.device)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npy")
    np.save(tmp, feats.numpy())
    tmp.replace(out)
    print(f"{out}: {tuple(feats.shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
