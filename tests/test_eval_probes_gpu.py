"""The probe trains where its features are: CUDA features give a CUDA probe that scores as the CPU one does
(the learning search's probes on a GPU, benchmarks/gpu/learn.py). Run by the GPU check's pytest stage."""
import pytest
import torch

from engine.eval.features import CachedFeatures
from engine.eval.probe_train import ProbeTrainConfig, train_probe_sweep
from engine.eval.probes import ProbeArch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _features(seed: int, device: str) -> CachedFeatures:
    """4 classes, each owning one direction of a 16-wide feature space, on every other of 6 tokens."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(12)  # [n]
    tokens = torch.randn(labels.shape[0], 6, 16, generator=generator)  # [n, L, D]
    tokens[:, ::2] += (torch.eye(16)[:4] * 4.0)[labels].unsqueeze(1)
    features = tokens.unsqueeze(1).half().to(device)  # [n, V=1, L, D]
    return CachedFeatures(features=features, labels=labels, keys=[f"k{i}" for i in range(len(labels))], meta={})


def test_probe_on_cuda_features_trains_on_cuda_and_matches_the_cpu_probe():
    config = ProbeTrainConfig(epochs=8, batch_size=16, lr=1e-2, seed=0)
    arch = ProbeArch(kind="paper_attentive", num_heads=4)
    cpu = train_probe_sweep(_features(0, "cpu"), _features(1, "cpu"), arch, config, 4)
    cuda = train_probe_sweep(_features(0, "cuda"), _features(1, "cuda"), arch, config, 4)
    assert cuda.protocol.top1 >= 90.0 and abs(cuda.protocol.top1 - cpu.protocol.top1) <= 100.0 / 48
    assert abs(cuda.protocol.final_train_loss - cpu.protocol.final_train_loss) < 0.05
