"""Models of the ``recommend`` task: a two-tower network and the closed-form baselines.

Every model maps a user's history to one score per item, so the task's training,
evaluation and scoring treat them alike; the closed-form ones (EASE, ItemKNN,
popularity) are plain modules whose fitted matrices are buffers, saved and loaded like
any weights. Users can ship whichever wins on their data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from interest.common import evidence
from interest.schemas import N_BEHAVIORS

KINDS = ("two_tower", "ease", "itemknn", "popularity")


@dataclass
class RecommendModelConfig:
    """Args:
        kind: ``two_tower`` (trained), or a closed-form model: ``ease``, ``itemknn``,
            ``popularity``.
        dim: embedding size (``two_tower``).
        heads: attention-pooling heads of the user tower.
        dropout: on event vectors (``two_tower``).
        id_dropout: share of items whose id embedding is dropped at each training step,
            so that the text part alone learns to place an item (what a cold item has).
        max_len: most recent events the user tower reads.
        layers: self-attention layers over the history before the pooling (0: pooling
            alone); they let an event's weight depend on the rest of the history.
        lam: EASE's L2 regularisation; None: chosen on the validation users.
        k: ItemKNN's neighbours per item; None: chosen on the validation users.
    """

    kind: str = "two_tower"
    dim: int = 64
    heads: int = 2
    dropout: float = 0.3
    id_dropout: float = 0.1
    max_len: int = 200
    layers: int = 0
    lam: float | None = None
    k: int | None = None


class TwoTower(nn.Module):
    """User tower: attention pooling over the user's recent events; item tower: an id
    embedding plus a projection of the item's frozen text vector.

    The item tower also embeds the history's events, so users and items live in one
    space. Each event is its item's vector plus behaviour-type and recency embeddings;
    ``heads`` learned attention scorers weigh the events (a purchase a day ago counts
    differently from a view last month), and their pooled vectors map to the user vector.
    Items with no training events (``warm`` is 0) are represented by their text alone:
    their id embeddings never met a positive example and would only add noise.
    """

    def __init__(self, n_items: int, cfg: RecommendModelConfig, item_vectors: torch.Tensor | None = None,
                 warm: torch.Tensor | None = None):
        super().__init__()
        d = cfg.dim
        self.id_dropout = cfg.id_dropout
        # One column more than the user vectors: each item's bias, which the user side
        # meets with a constant 1 (popularity without a dimension of the taste space).
        self.item = nn.Embedding(n_items + 1, d + 1, padding_idx=0)  # row 0: padding
        nn.init.normal_(self.item.weight, std=d ** -0.5)
        with torch.no_grad():
            self.item.weight[0].zero_()
            self.item.weight[:, d].zero_()
        warm = torch.ones(n_items) if warm is None else warm.float()
        # Derived from the prepared data, like the text vectors: not saved with the weights.
        self.register_buffer("warm", torch.cat([torch.zeros(1), warm]), persistent=False)
        self.text = None
        if item_vectors is not None:
            self.register_buffer("item_vectors", torch.cat([torch.zeros(1, item_vectors.shape[1]), item_vectors]),
                                 persistent=False)
            self.text = nn.Linear(item_vectors.shape[1], d + 1, bias=False)
        self.behavior = nn.Embedding(N_BEHAVIORS + 1, d, padding_idx=0)
        self.recency = nn.Embedding(cfg.max_len, d)
        for emb in (self.behavior, self.recency):  # at the items' scale, not N(0, 1): they would drown them
            nn.init.normal_(emb.weight, std=d ** -0.5)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = None
        if cfg.layers:
            layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, cfg.dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.attend = nn.Linear(d, cfg.heads)
        self.out = nn.Sequential(nn.Linear(cfg.heads * d, d), nn.GELU(), nn.Linear(d, d))
        self.skip = nn.Linear(cfg.heads * d, d)

    def item_table(self) -> torch.Tensor:
        """(n_items + 1, D + 1) item vectors and biases (last column), row 0 padding."""
        keep = self.warm
        if self.training and self.text is not None and self.id_dropout > 0:
            keep = keep * (torch.rand_like(keep) >= self.id_dropout)
        table = self.item.weight * keep[:, None]
        if self.text is not None:
            table = table + self.text(self.item_vectors)
        return table

    def forward(self, items: torch.Tensor, behaviors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """items, behaviors (B, T) left-padded (0 = none; items as index + 1) ->
        (user vectors (B, D + 1), item table (n_items + 1, D + 1)): one call computes both, so the
        training loss goes through DDP's forward and the table is built once per step."""
        table = self.item_table()
        x, att = self.events(items, behaviors, table)
        return self.user(torch.einsum("bth,btd->bhd", att, x)), table

    def events(self, items: torch.Tensor, behaviors: torch.Tensor, table: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(event vectors (B, T, D), their attention weights (B, T, H), each head's
        summing to 1 over a user's events)."""
        T = items.shape[1]
        recency = torch.arange(T - 1, -1, -1, device=items.device).clamp(max=self.recency.num_embeddings - 1)
        x = self.drop(self.norm(table[items, :-1] + self.behavior(behaviors) + self.recency(recency)))  # (B, T, D)
        if self.encoder is not None:
            pad = items == 0
            # A user with no events masks nothing here (an all-masked row gives NaN); the
            # pooling below ignores padding anyway.
            x = self.encoder(x, src_key_padding_mask=pad & ~pad.all(1, keepdim=True))
        att = self.attend(x).masked_fill((items == 0)[..., None], float("-inf"))  # (B, T, H)
        return x, torch.softmax(att, 1).nan_to_num(0.0)  # a user with no events pools nothing

    def user(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, H, D) pooled events -> (B, D + 1) user vectors (the last column 1: the item bias)."""
        pooled = pooled.flatten(1)
        users = self.skip(pooled) + self.out(pooled)
        return torch.cat([users, users.new_ones(len(users), 1)], 1)

    def scores(self, items: torch.Tensor, behaviors: torch.Tensor) -> torch.Tensor:
        """(B, n_items) scores of every item."""
        users, table = self(items, behaviors)
        return users @ table[1:].t()

    @torch.no_grad()
    def removal_drops(self, items: torch.Tensor, behaviors: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """How much each target's score (``targets`` (B, K) item indices) drops without
        each distinct item of the user's window: its events' share of the attention pooling
        taken out and the rest renormalised (:mod:`interest.common.evidence`). Returns
        (drops (G, K), user (G,), item + 1 (G,)) per group of :func:`evidence.groups`."""
        table = self.item_table()
        x, att = self.events(items, behaviors, table)
        pooled = torch.einsum("bth,btd->bhd", att, x)
        group, owner, item = evidence.groups(items)
        mass, parts = evidence.pooled_parts(group, len(owner), att, x)
        change = self.user(pooled)[owner] - self.user(evidence.without(pooled[owner], mass, parts))
        return evidence.row_drops(change, owner, table, targets), owner, item


class ItemItem(nn.Module):
    """Scores = the user's binary history row times an (n_items, n_items) item-item
    matrix: EASE's dense weights, or ItemKNN's sparse top-k similarities (stored as
    index and value buffers, so large catalogues stay sparse on disk too)."""

    def __init__(self, n_items: int, dense: bool):
        super().__init__()
        self.n_items, self.dense = n_items, dense
        if dense:
            self.register_buffer("weight", torch.zeros(n_items, n_items))
        else:
            self.register_buffer("indices", torch.zeros(2, 0, dtype=torch.long))
            self.register_buffer("values", torch.zeros(0))

    def set(self, matrix: torch.Tensor) -> "ItemItem":
        if self.dense:
            self.weight = matrix.to_dense() if matrix.is_sparse else matrix
        else:
            matrix = matrix.coalesce()
            self.indices, self.values = matrix.indices(), matrix.values()
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if not self.dense:  # sparse sizes are known only from the saved weights
            self.indices = torch.empty_like(state_dict[prefix + "indices"])
            self.values = torch.empty_like(state_dict[prefix + "values"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def weights(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The matrix's entries at (``rows``, ``cols``), 0 where a sparse one has none."""
        if self.dense:
            return self.weight[rows, cols]
        keys = self.indices[0] * self.n_items + self.indices[1]  # sorted: the indices are coalesced
        if not len(keys):
            return torch.zeros(rows.shape, dtype=self.values.dtype, device=rows.device)
        wanted = rows * self.n_items + cols
        at = torch.searchsorted(keys, wanted).clamp(max=len(keys) - 1)
        return torch.where(keys[at] == wanted, self.values[at], 0.0)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """``history`` sparse (B, n_items) -> (B, n_items) scores."""
        if self.dense:
            return torch.sparse.mm(history, self.weight)
        sim = torch.sparse_coo_tensor(self.indices, self.values, (self.n_items, self.n_items))
        return torch.sparse.mm(history, sim).to_dense()


class PopularityModel(nn.Module):
    """The same ranking for everyone: items by their number of training events."""

    def __init__(self, n_items: int):
        super().__init__()
        self.n_items = n_items
        self.register_buffer("counts", torch.zeros(n_items))

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(history.shape[0], -1)
