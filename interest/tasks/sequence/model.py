"""Next-action models: a causal self-attention encoder (SASRec line) and a GRU.

Both read a user's time-ordered events as (item, behaviour, time gap) and predict, at
every position, the next item (scores against the shared item embedding table) and
the next behaviour type. Index 0 is padding; item ``i`` of the vocabulary is ``i + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from interest.common import evidence
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
        x, blocked = self.inputs(items, behaviors, gaps)
        if self.cfg.kind == "sasrec":
            h = self.encoder(x, mask=blocked)
        else:
            h, _ = self.encoder(x)
        return self.norm(h).masked_fill((items == 0).unsqueeze(-1), 0.0)

    def inputs(self, items: torch.Tensor, behaviors: torch.Tensor, gaps: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the encoder's input (B, T, D), SASRec's attention mask (B * heads, T, T) or None)."""
        if self.text is None:
            x = self.item(items)
        else:
            x = self.item(items) + self.text(self.item_vectors[items])
        x = x + self.behavior(behaviors) + self.gap(gaps)  # (B, T, D)
        if self.cfg.kind != "sasrec":
            return self.drop(x), None
        b, t = items.shape
        # Positions count back from the latest event (0 = latest): windows are padded to
        # different lengths, and the latest event must look the same in all of them.
        x = x + self.pos(torch.arange(t - 1, -1, -1, device=items.device))
        # Blocked (True) = a future key, or a padding key other than the query itself.
        # Every query keeps itself, so no attention row is fully masked (that gives
        # NaN, which zero attention weights do not cancel in the next layer).
        eye = torch.eye(t, dtype=torch.bool, device=items.device)
        blocked = torch.triu(torch.ones(t, t, dtype=torch.bool, device=items.device), 1) | (items == 0).unsqueeze(1)
        return self.drop(x), (blocked & ~eye).repeat_interleave(self.cfg.heads, 0)

    @torch.no_grad()
    def removal_drops(self, items: torch.Tensor, behaviors: torch.Tensor, gaps: torch.Tensor,
                      targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """How much each target's score (``targets`` (B, K) item indices) drops after the
        latest event without each distinct item of the window (SASRec) or of its last
        :data:`evidence.TAIL` events (GRU), as :mod:`interest.common.evidence` describes.
        Returns (drops (G, K), user (G,), item + 1 (G,)). Windows end with an event."""
        x, blocked = self.inputs(items, behaviors, gaps)
        table = self.item_table()
        if self.cfg.kind == "sasrec":
            shifted = [torch.cat([z.new_zeros(len(z), 1), z[:, :-1]], 1) for z in (items, behaviors, gaps)]
            final, states, owner, item = self._without_sasrec(items, x, blocked, self(*shifted)[:, -1])
        else:
            final, states, owner, item = self._without_gru(items, x)
        return evidence.row_drops(final[owner] - states, owner, table, targets), owner, item

    def _without_sasrec(self, items, x, blocked, before_latest):
        """(each user's final state (B, D), each group's with its events' share of the
        last layer's attention (the latest event's query) taken out, and the groups). A
        group holding the latest event takes ``before_latest``, the state of the window
        without its latest event (exact for an item the user took once)."""
        *lower, last = self.encoder.layers
        for layer in lower:
            x = layer(x, src_mask=blocked)
        attn, heads = last.self_attn, self.cfg.heads
        b, t, d = x.shape
        normed = last.norm1(x)
        q, k, v = F.linear(normed, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
        q = q[:, -1].view(b, 1, heads, d // heads)
        k, v = k.view(b, t, heads, d // heads), v.view(b, t, heads, d // heads)
        logits = torch.einsum("bqhe,bthe->bth", q, k) / math.sqrt(d // heads)
        weights = torch.softmax(logits.masked_fill((items == 0)[..., None], float("-inf")), 1)  # (B, T, H)
        pooled = torch.einsum("bth,bthe->bhe", weights, v)
        group, owner, item = evidence.groups(items)
        mass, parts = evidence.pooled_parts(group, len(owner), weights, v)

        def out(residual, pooled):  # the last (pre-norm) layer's output at the latest event, then the final norm
            y = residual + attn.out_proj(pooled.flatten(1))
            return self.norm(y + last.linear2(last.activation(last.linear1(last.norm2(y)))))

        final = out(x[:, -1], pooled)
        states = out(x[owner, -1], evidence.without(pooled[owner], mass, parts))
        latest = group[:, -1][owner] == torch.arange(len(owner), device=items.device)
        states[latest] = before_latest[owner[latest]]
        return final, states, owner, item

    def _without_gru(self, items, x):
        """(each user's final state (B, D), each group's with the recurrence run again over
        the last :data:`evidence.TAIL` events without the group's, from the state before
        them, and the groups)."""
        b, t, d = x.shape
        tail = min(evidence.TAIL, t)
        h0 = self.encoder(x[:, :t - tail])[1] if t > tail else x.new_zeros(self.cfg.layers, b, d)
        group, owner, item = evidence.groups(items[:, t - tail:])
        # The window's padding stays: the forward pass runs the recurrence over it too.
        keep = group[owner] != torch.arange(len(owner), device=items.device)[:, None]  # (G, tail)
        lengths = keep.sum(1)
        # Kept events moved to the front of each row, for a packed run of each row's length.
        order = torch.sort((~keep).int(), dim=1, stable=True).indices
        rows = x[owner, t - tail:].gather(1, order[..., None].expand(-1, -1, d))
        final = self.norm(self.encoder(x[:, t - tail:], h0.contiguous())[1][-1])
        start = h0[:, owner]
        states = start[-1].clone()  # nothing kept: the state before the tail
        run = lengths > 0
        if run.any():
            packed = nn.utils.rnn.pack_padded_sequence(rows[run], lengths[run].cpu(), batch_first=True,
                                                       enforce_sorted=False)
            _, h = self.encoder(packed, start[:, run].contiguous())
            states[run] = h[-1]
        return final, self.norm(states), owner, item

    def item_scores(self, states: torch.Tensor) -> torch.Tensor:
        """(N, D) states -> (N, n_items) scores of every item (padding excluded)."""
        return states @ self.item_table()[1:].t()

    def behavior_logits(self, states: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(N, D) states and (N,) the behaviour + 1 of each state's latest event -> (N, 5)."""
        return self.behavior_head(states) + self.transitions[last]

