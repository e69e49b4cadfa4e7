"""Index-driven DALI video loader: sampling, mixing, augmentation, exact resume (docs/contracts.md §1-2)."""
from engine.data.config import DatasetSpec, LoaderConfig
from engine.data.loader import VideoLoader
from engine.data.sampler import BatchPlan, ClipSampler

__all__ = ["DatasetSpec", "LoaderConfig", "VideoLoader", "ClipSampler", "BatchPlan"]
