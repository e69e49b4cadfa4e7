"""The kNN probe: each test clip takes the weighted vote of its k nearest training clips in feature space.

It reads the same cached features as the attentive probe (the same class-balanced training subset, the
same test split) and trains nothing, so it needs no extra encoder pass and has no seed: one number per
encoder and benchmark. Reported beside the attentive probe (which stays the headline) because the field
accepts it as a second reading of "pretraining helps" at small scale, where a probe's own training noise
can hide a difference (issue 23).

The protocol is DINO's weighted kNN (Caron et al. 2021, also used by I-JEPA / V-JEPA follow-ups):
- a clip's feature is the mean of its cached tokens over every token and view, L2-normalised;
- similarity is the cosine (the dot product of the normalised features);
- the k most similar training clips vote for their labels with weight exp(similarity / τ), τ = 0.07, so
  a close neighbour counts far more than the k-th (τ -> inf would be a plain majority vote);
- top-1 / top-5 rank the classes by their summed votes.
Computed in float64 and with a stable sort (ties go to the earlier training clip, equal votes to the lower
class), so the result does not depend on the machine's SIMD width or thread count.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from engine.fields import above, at_least, check_fields, field_doc

from .features import CachedFeatures

KNN_WEIGHTING = "exp(cosine / temperature), DINO's weighted kNN"


@dataclass(frozen=True)
class KnnConfig:
    """kNN probe settings; part of the stored result's key."""

    k: int = field_doc(20, "Neighbours that vote (the field's 20 at small scale; DINO also reports 200 on "
                           "ImageNet); capped at the training clips.", valid=at_least(1))
    temperature: float = field_doc(0.07, "τ of the exp(cosine / τ) vote weights (DINO's).", valid=above(0))

    def __post_init__(self) -> None:
        check_fields(self, "knn.")



def knn_probe_name(stored: dict) -> str:
    """The kNN probe's name in results.csv and the printed table, from its stored result: knn_k20."""
    return f"knn_k{stored['k']}"


def pooled_unit_features(cached: CachedFeatures) -> torch.Tensor:
    """[n, V, L, D] cached tokens -> [n, D] float64 unit vectors: the mean over views and tokens."""
    pooled = cached.features.double().mean(dim=(1, 2))  # [n, D]
    return torch.nn.functional.normalize(pooled, dim=1)


def knn_votes(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, num_classes: int,
              config: KnnConfig, chunk: int = 1024) -> torch.Tensor:
    """Class votes [m, C] of each test vector: the k most similar training vectors (unit rows) vote
    exp(similarity / τ) for their label. k is capped at the number of training vectors."""
    k = min(config.k, train.shape[0])
    votes = torch.zeros(test.shape[0], num_classes, dtype=torch.float64)
    for start in range(0, test.shape[0], chunk):
        similarity = test[start: start + chunk] @ train.T  # [b, n] cosines
        ranked, order = torch.sort(similarity, dim=1, descending=True, stable=True)
        weights = (ranked[:, :k] / config.temperature).exp()  # [b, k]
        neighbour_labels = train_labels[order[:, :k]]  # [b, k]
        votes[start: start + chunk].scatter_add_(1, neighbour_labels, weights)
    return votes


def topk_hits(votes: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of test clips whose label is among the k best-voted classes; equal votes go to the lower class."""
    ranked = torch.sort(votes, dim=1, descending=True, stable=True).indices  # [m, C]
    hits = ranked == labels.unsqueeze(1)
    return {k: int(hits[:, : min(k, votes.shape[1])].any(dim=1).sum()) for k in ks}


def knn_probe(train: CachedFeatures, test: CachedFeatures, num_classes: int, config: KnnConfig = KnnConfig()) -> dict:
    """The stored kNN result of one benchmark: top-1 / top-5 in percent and what they were computed from."""
    if train.width != test.width:
        raise ValueError(f"kNN: train features have width {train.width}, test features {test.width}; "
                         f"extract both with one encoder")
    votes = knn_votes(pooled_unit_features(train), train.labels.long(), pooled_unit_features(test), num_classes,
                      config)
    hits = topk_hits(votes, test.labels.long())
    total = max(int(test.labels.shape[0]), 1)
    return {**asdict(config), "weighting": KNN_WEIGHTING, "features": "mean over tokens and views, L2-normalised",
            "top1": 100.0 * hits[1] / total, "top5": 100.0 * hits[5] / total,
            "num_train": int(train.labels.shape[0]), "num_test": int(test.labels.shape[0]),
            "num_classes": num_classes}
