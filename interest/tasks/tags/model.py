"""Interest-tag classifiers over a user's recent behaviour.

Both modes end in the same multi-label head: a logit per tag, plus the log of the
user's behaviour-weighted tag counts so far, smoothed by tag popularity (see
:class:`_Head`), and a learned per-tag bias. The counts term gives every model the
"tags the user already shows" answer to start from, so the network learns what
changes, not what repeats.

- ``cached``: label-wise attention over the user's events, each event the item's
  precomputed text vector (frozen) plus behaviour-type and recency embeddings. Each tag
  attends to the events that speak for it; those weights are the evidence.
- ``finetune``: a transformers encoder reads the behaviour rendered as text and is
  trained end to end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from interest.schemas import N_BEHAVIORS
from interest.text.encoder import mean_pool


@dataclass
class TagModelConfig:
    """Args:
        dim: attention width (``cached``).
        heads_dropout: dropout on event vectors and pooled states.
        max_len: most recent events read.
    """

    dim: int = 64
    dropout: float = 0.1
    max_len: int = 50


class _Head(nn.Module):
    """logit + w . log(tag counts + s * popularity) + per-tag bias.

    The counts are the user's behaviour-weighted tag counts of several kinds (the whole
    history, the latest events, visits) and the tags that usually follow the latest
    event's, so the model weighs lasting against recent interests and where they go
    next; ``s`` (learned, per kind) is a pseudo-count spread over the tags by their
    training popularity. With ``w = (1, 0, ...)`` and a small ``s``, as initialised, the
    head ranks exactly as "the user's own tags, then the popular ones" does, and in log
    space with a gap of several nats between a shown and an unshown tag: the network's
    early updates cannot drown that answer, as they did when the counts entered as
    ``log(1 + count)``, a fraction of a nat for a single view.
    """

    def __init__(self, n_tags: int, n_priors: int, popularity: torch.Tensor):
        super().__init__()
        self.register_buffer("popularity", popularity.float() / popularity.sum())
        self.bias = nn.Parameter(torch.zeros(n_tags))
        self.prior_weight = nn.Parameter(torch.zeros(n_priors))
        self.log_smoothing = nn.Parameter(torch.full((n_priors,), math.log(0.1)))
        with torch.no_grad():
            self.prior_weight[0] = 1.0

    def forward(self, logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """logits (B, n_tags), prior (B, n_priors, n_tags)."""
        smoothed = torch.log(prior + self.log_smoothing.exp()[:, None] * self.popularity)
        return logits + torch.einsum("c,bct->bt", self.prior_weight, smoothed) + self.bias


class CachedTagModel(nn.Module):
    def __init__(self, n_tags: int, n_priors: int, popularity: torch.Tensor, item_vectors: torch.Tensor,
                 cfg: TagModelConfig):
        super().__init__()
        d = cfg.dim
        # Row 0 is padding; frozen, and not saved with the weights (the store holds it).
        self.register_buffer("item_vectors", torch.cat([torch.zeros(1, item_vectors.shape[1]), item_vectors]),
                             persistent=False)
        self.proj = nn.Linear(item_vectors.shape[1], d)
        self.behavior = nn.Embedding(N_BEHAVIORS + 1, d, padding_idx=0)
        self.recency = nn.Embedding(cfg.max_len, d)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.queries = nn.Parameter(torch.randn(n_tags, d) * d ** -0.5)  # one per tag
        # Zero: training starts from the counts term alone, i.e. from the "user's own tags"
        # ranking, and the attention only adds what it learns on top.
        self.out = nn.Parameter(torch.zeros(n_tags, d))
        self.head = _Head(n_tags, n_priors, popularity)

    def forward(self, items: torch.Tensor, behaviors: torch.Tensor, prior: torch.Tensor):
        """items, behaviors (B, T) left-padded (0 = none), prior (B, n_priors, n_tags) ->
        logits (B, n_tags), attention (B, n_tags, T)."""
        T = items.shape[1]
        recency = torch.arange(T - 1, -1, -1, device=items.device).clamp(max=self.recency.num_embeddings - 1)
        x = self.proj(self.item_vectors[items]) + self.behavior(behaviors) + self.recency(recency)  # (B, T, D)
        x = self.drop(self.norm(x))
        k, v = self.key(x), self.value(x)
        att = torch.einsum("nd,btd->bnt", self.queries, k) / k.shape[-1] ** 0.5  # (B, n_tags, T)
        pad = items == 0
        att = att.masked_fill(pad[:, None, :], float("-inf"))
        att = torch.softmax(att, -1).nan_to_num(0.0)  # a user with no events attends to nothing
        pooled = torch.einsum("bnt,btd->bnd", att, v)  # (B, n_tags, D)
        logits = (self.drop(pooled) * self.out).sum(-1)
        return self.head(logits, prior), att


class FinetuneTagModel(nn.Module):
    def __init__(self, n_tags: int, n_priors: int, popularity: torch.Tensor, encoder: nn.Module,
                 cfg: TagModelConfig):
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            # Mean pooling reads the token states; an unused pooler would leave DDP
            # waiting for gradients that never come.
            encoder.pooler = None
        self.encoder = encoder
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, n_tags)
        nn.init.zeros_(self.classifier.weight)  # start from the counts term, as the cached model does
        self.head = _Head(n_tags, n_priors, popularity)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prior: torch.Tensor):
        h = mean_pool(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,
                      attention_mask)  # (B, H)
        return self.head(self.classifier(self.drop(h)), prior), None
