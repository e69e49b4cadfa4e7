"""Frozen-feature probes: V-JEPA attentive pooling, the paper's CLS "attentive probe", and a linear probe.

Every probe takes cached encoder tokens `[B, N, D]` (N = 1 when the benchmark feeds mean-pooled
features) and returns logits `[B, num_classes]`.

- `attentive` (V-JEPA 1 `AttentiveClassifier`, depth 1): learned query token(s) cross-attend to the
  frozen tokens (pre-norm), then an MLP with a residual, then a Linear on the mean of the queries.
- `paper_attentive` (the studied paper's probe): a learned CLS token is concatenated in front of the
  tokens, one `nn.MultiheadAttention` self-attention layer, residual, LayerNorm, Linear on the CLS output.
  Only the CLS row is read, so it is computed as the CLS query attending over [CLS; tokens]: the same
  function as the full self-attention layer, without the O(N^2) rows that are thrown away.

Both attention probes use `QueryPooling`, an exact re-arrangement of multi-head attention for a few
queries that never projects the N tokens (see its docstring).
- `linear`: Linear on the mean over tokens (the paper's ImageNet-100 protocol).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PROBE_KINDS = ("attentive", "paper_attentive", "linear")


@dataclass(frozen=True)
class ProbeArch:
    """Architecture of one probe head; the training hyperparameters live in ProbeTrainConfig."""

    kind: str = "attentive"  # one of PROBE_KINDS
    num_heads: int = 8  # attention heads of the pooling layer (the paper: 8); must divide the feature width
    num_queries: int = 1  # learned query tokens of the V-JEPA pooler (ignored by the other kinds)
    mlp_ratio: float = 4.0  # MLP width of the V-JEPA cross-attention block as a multiple of the feature width

    def __post_init__(self) -> None:
        if self.kind not in PROBE_KINDS:
            raise ValueError(f"probe kind {self.kind!r} is unknown; use one of {PROBE_KINDS}")
        if self.num_heads < 1 or self.num_queries < 1:
            raise ValueError(f"probe num_heads={self.num_heads} and num_queries={self.num_queries} must be >= 1")


def _heads_for(width: int, wanted: int) -> int:
    """The largest head count <= wanted that divides width, so tiny demo encoders still get a probe."""
    for heads in range(min(wanted, width), 0, -1):
        if width % heads == 0:
            return heads
    return 1


class QueryPooling(nn.Module):
    """Multi-head attention of a few learned queries over many frozen tokens, computed key-side free.

    The same function as `nn.MultiheadAttention(query, tokens, tokens)` with the same parameter layout
    (in_proj_weight [3D, D], in_proj_bias, out_proj), but the per-token key and value projections are
    folded into the queries: a head's logit is (W_k,h^T q_h) . x_n (the key bias adds a per-head constant
    that softmax cancels) and its output is W_v,h (sum_n w_n x_n) + b_v,h (the weights sum to one). The
    cost per sample is O(Q * H * N * D) instead of O(N * D^2), which is what makes probing all tokens
    of every encoder of a study affordable on a CPU.
    """

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = _heads_for(width, num_heads)
        self.head_dim = width // self.num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's init
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """query [B, Q, D], tokens [B, N, D] -> [B, Q, D]."""
        batch, num_queries, width = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)  # [D, D] each
        b_q, _, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).view(batch, num_queries, heads, head_dim) * head_dim ** -0.5
        q_in_token_space = torch.einsum("bqhe,hed->bqhd", q, w_k.view(heads, head_dim, width))  # [B, Q, H, D]
        logits = torch.einsum("bqhd,bnd->bqhn", q_in_token_space, tokens)  # [B, Q, H, N]
        weights = logits.softmax(dim=-1)
        pooled = torch.einsum("bqhn,bnd->bqhd", weights, tokens)  # [B, Q, H, D]
        values = torch.einsum("bqhd,hed->bqhe", pooled, w_v.view(heads, head_dim, width))  # [B, Q, H, dh]
        values = values + b_v.view(heads, head_dim)
        return self.out_proj(values.reshape(batch, num_queries, width))


class AttentiveProbe(nn.Module):
    """V-JEPA attentive classifier: queries [Q, D] cross-attend to tokens, MLP, Linear on the mean query."""

    def __init__(self, width: int, num_classes: int, arch: ProbeArch):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(arch.num_queries, width))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.norm_query = nn.LayerNorm(width)
        self.norm_tokens = nn.LayerNorm(width)
        self.attn = QueryPooling(width, arch.num_heads)
        self.norm_mlp = nn.LayerNorm(width)
        hidden = int(width * arch.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.head = nn.Linear(width, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch = tokens.shape[0]
        query = self.queries.unsqueeze(0).expand(batch, -1, -1)  # [B, Q, D]
        keys = self.norm_tokens(tokens)  # [B, N, D]
        pooled = query + self.attn(self.norm_query(query), keys)  # [B, Q, D]
        pooled = pooled + self.mlp(self.norm_mlp(pooled))
        return self.head(pooled.mean(dim=1))  # [B, C]


class PaperAttentiveProbe(nn.Module):
    """The paper's probe: LayerNorm(cls + MHA(cls, [cls; tokens])) -> Linear. No MLP, no pre-norm."""

    def __init__(self, width: int, num_classes: int, arch: ProbeArch):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.attn = QueryPooling(width, arch.num_heads)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = self.cls.expand(tokens.shape[0], -1, -1)  # [B, 1, D]
        sequence = torch.cat([cls, tokens], dim=1)  # [B, 1 + N, D]
        attended = self.attn(cls, sequence)  # [B, 1, D]
        return self.head(self.norm(cls + attended)[:, 0])  # [B, C]


class LinearProbe(nn.Module):
    """Linear classifier on the token mean."""

    def __init__(self, width: int, num_classes: int, arch: ProbeArch):
        super().__init__()
        self.head = nn.Linear(width, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(tokens.mean(dim=1))  # [B, C]


_CLASSES = {"attentive": AttentiveProbe, "paper_attentive": PaperAttentiveProbe, "linear": LinearProbe}


def build_probe(arch: ProbeArch, width: int, num_classes: int) -> nn.Module:
    """One probe head of the given kind for features of `width` and `num_classes` outputs."""
    return _CLASSES[arch.kind](width, num_classes, arch)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the k highest logits, for each k (k capped at the classes)."""
    ranked = logits.argsort(dim=1, descending=True)  # [B, C]
    hits = ranked == labels.unsqueeze(1)  # [B, C]
    return {k: int(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks}


def average_view_probabilities(logits: torch.Tensor, num_views: int) -> torch.Tensor:
    """[B * V, C] logits of V spatial views -> [B, C] mean softmax (V-JEPA's multi-view aggregation)."""
    probs = F.softmax(logits.float(), dim=1)
    return probs.view(-1, num_views, probs.shape[1]).mean(dim=1)
