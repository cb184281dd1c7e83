"""Next-action models: a causal self-attention encoder (SASRec line) and a GRU.

Both read a user's time-ordered events as (item, behaviour, time gap) and predict, at
every position, the next item (scores against the shared item embedding table) and
the next behaviour type. Index 0 is padding; item ``i`` of the vocabulary is ``i + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from interest.schemas import N_BEHAVIORS

# Time gaps to the previous event, in log2 buckets of seconds: 0 s, 1 s, 2-3 s, ...
# 2^23 s (~3 months) and beyond share the last bucket. Bucket 0 is padding.
N_GAP_BUCKETS = 26


def gap_buckets(gap_seconds: torch.Tensor) -> torch.Tensor:
    """(B, T) gaps in seconds -> bucket ids in [1, N_GAP_BUCKETS)."""
    b = torch.floor(torch.log2(gap_seconds.float().clamp(min=0) + 1)).long() + 1
    return b.clamp(max=N_GAP_BUCKETS - 1)


@dataclass
class SequenceModelConfig:
    """Args:
        kind: ``sasrec`` (causal self-attention) or ``gru``.
        dim: embedding and hidden size.
        layers: attention blocks or GRU layers.
        heads: attention heads (``sasrec``).
        dropout: on embeddings and inside blocks.
        max_len: the most recent events a model reads.
    """

    kind: str = "sasrec"
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50


PRESETS = {
    "tiny": dict(dim=16, layers=1, heads=1, dropout=0.0, max_len=20),  # tests
    "small": dict(dim=64, layers=2, heads=2, dropout=0.2, max_len=50),  # RecBole's SASRec size
    "base": dict(dim=128, layers=2, heads=4, dropout=0.2, max_len=200),
}


class SequenceModel(nn.Module):
    """``item_vectors`` (n_items, text dim), when given, are the items' text vectors
    (frozen): an item's embedding is then its id embedding plus a learned projection of
    its text, so items with few events borrow from items with similar text."""

    def __init__(self, n_items: int, cfg: SequenceModelConfig, item_vectors: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.item = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.text = None
        if item_vectors is not None:
            # Row 0 is padding; not saved with the weights (the vector store holds them).
            self.register_buffer("item_vectors", torch.cat([item_vectors.new_zeros(1, item_vectors.shape[1]),
                                                            item_vectors]), persistent=False)
            self.text = nn.Linear(item_vectors.shape[1], d, bias=False)  # no bias: padding stays zero
        self.behavior = nn.Embedding(N_BEHAVIORS + 1, d, padding_idx=0)
        self.gap = nn.Embedding(N_GAP_BUCKETS, d, padding_idx=0)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.kind == "sasrec":
            self.pos = nn.Embedding(cfg.max_len, d)
            # Point-wise feed-forward of width d, as in SASRec: 4d costs 4x the matmuls and
            # dropout draws (CPU random numbers are slow) for no gain at these sizes.
            layer = nn.TransformerEncoderLayer(d, cfg.heads, d, cfg.dropout,
                                               activation="relu", batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        elif cfg.kind == "gru":
            self.encoder = nn.GRU(d, d, cfg.layers, batch_first=True, dropout=cfg.dropout if cfg.layers > 1 else 0)
        else:
            raise ValueError(f"unknown sequence model kind {cfg.kind!r}; use sasrec or gru")
        self.norm = nn.LayerNorm(d)
        # Next behaviour = log P(next | last behaviour), counted on the training events by the
        # task (:func:`interest.tasks.sequence.task.behavior_transitions`; row 0: no event
        # before), plus what the state adds; the head starts at zero, so the untrained model
        # already answers as that first-order chain. Learned alone, the head had not caught
        # up with "repeat the last behaviour" when early stopping (on the next item) ended
        # training on the small time-split files.
        self.register_buffer("transitions", torch.zeros(N_BEHAVIORS + 1, N_BEHAVIORS))
        self.behavior_head = nn.Linear(d, N_BEHAVIORS)
        nn.init.zeros_(self.behavior_head.weight)
        # Positions and gaps at the items' scale: nn.Embedding's N(0, 1) made them ~8x the
        # items at d=64 and drowned what the model is to learn. Behaviours keep N(0, 1)
        # where they vary: at the items' scale the next behaviour lost what it reads from
        # them (Taobao macro AUC .53-.60 over three seeds, .67 at N(0, 1)); where there is
        # one type, SequenceTask.build_model starts it at zero.
        for emb in (self.item, self.gap, *([self.pos] if cfg.kind == "sasrec" else [])):
            nn.init.normal_(emb.weight, std=d ** -0.5)
        with torch.no_grad():
            for emb in (self.item, self.gap):  # padding rows, re-drawn above
                emb.weight[0].zero_()

    def item_table(self) -> torch.Tensor:
        """(n_items + 1, D) item embeddings, row 0 padding."""
        if self.text is None:
            return self.item.weight
        return self.item.weight + self.text(self.item_vectors)

    def forward(self, items: torch.Tensor, behaviors: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """(B, T) left-padded inputs -> (B, T, D) states; state t has seen events <= t."""
        if self.text is None:
            x = self.item(items)
        else:
            x = self.item(items) + self.text(self.item_vectors[items])
        x = x + self.behavior(behaviors) + self.gap(gaps)  # (B, T, D)
        pad = items == 0
        if self.cfg.kind == "sasrec":
            b, t = items.shape
            # Positions count back from the latest event (0 = latest): windows are padded to
            # different lengths, and the latest event must look the same in all of them.
            x = x + self.pos(torch.arange(t - 1, -1, -1, device=items.device))
            # Blocked (True) = a future key, or a padding key other than the query itself.
            # Every query keeps itself, so no attention row is fully masked (that gives
            # NaN, which zero attention weights do not cancel in the next layer).
            eye = torch.eye(t, dtype=torch.bool, device=items.device)
            blocked = torch.triu(torch.ones(t, t, dtype=torch.bool, device=items.device), 1) | pad.unsqueeze(1)
            blocked = (blocked & ~eye).repeat_interleave(self.cfg.heads, 0)  # (B * heads, T, T)
            h = self.encoder(self.drop(x), mask=blocked)
        else:
            h, _ = self.encoder(self.drop(x))
        return self.norm(h).masked_fill(pad.unsqueeze(-1), 0.0)

    def item_scores(self, states: torch.Tensor) -> torch.Tensor:
        """(N, D) states -> (N, n_items) scores of every item (padding excluded)."""
        return states @ self.item_table()[1:].t()

    def behavior_logits(self, states: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(N, D) states and (N,) the behaviour + 1 of each state's latest event -> (N, 5)."""
        return self.behavior_head(states) + self.transitions[last]

