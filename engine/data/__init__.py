"""Index-driven DALI video loader: sampling, mixing, augmentation, exact resume (docs/contracts.md §1-2).

The configs import nothing heavy; the loader and the sampler are imported on first use, so that a recipe
loads (and a model trains on synthetic batches) on a machine without DALI or pyarrow.
"""
from engine.data.config import DatasetSpec, LoaderConfig

__all__ = ["DatasetSpec", "LoaderConfig", "VideoLoader", "ClipSampler", "BatchPlan"]


def __getattr__(name: str):
    if name == "VideoLoader":
        from engine.data.loader import VideoLoader
        return VideoLoader
    if name in ("ClipSampler", "BatchPlan"):
        from engine.data import sampler
        return getattr(sampler, name)
    raise AttributeError(f"module 'engine.data' has no attribute {name!r}")
