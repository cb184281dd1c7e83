"""Non-neural baselines scored in the same harness as the models: popularity, ItemKNN, EASE.

All fit on a sparse user x item matrix of training events (no dense user x item table)
and score users in chunks, as :func:`interest.evaluate.metrics.full_ranking` asks.
"""

from __future__ import annotations

import numpy as np
import torch


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """Binary sparse (n_users, n_items) matrix of (user, item) pairs, duplicates collapsed."""
    pairs = np.unique(np.stack([users.astype(np.int64), items.astype(np.int64)]), axis=1)
    return torch.sparse_coo_tensor(torch.as_tensor(pairs), torch.ones(pairs.shape[1]), (n_users, n_items)).coalesce()


class Popularity:
    """Scores every item by its number of training events, for every user alike."""

    def fit(self, items: np.ndarray, n_items: int) -> "Popularity":
        self.scores_ = torch.as_tensor(np.bincount(items, minlength=n_items), dtype=torch.float32)
        return self

    def score(self, n_users: int) -> torch.Tensor:
        return self.scores_.expand(n_users, -1)


class EASE:
    """Embarrassingly shallow autoencoder (Steck, 2019): a closed-form item-item model.

    ``B = I - P / diag(P)`` with ``P = (X^T X + lambda I)^-1``, diagonal zeroed. It keeps a
    dense (n_items, n_items) matrix, so it is for catalogues up to a few tens of thousands.
    """

    MAX_ITEMS = 40_000  # 40k^2 float32 = 6.4 GB: the largest that fits beside everything else here

    def __init__(self, lam: float = 100.0):
        self.lam = lam

    def fit(self, x: torch.Tensor) -> "EASE":
        n_items = x.shape[1]
        if n_items > self.MAX_ITEMS:
            raise ValueError(f"EASE needs a dense {n_items}x{n_items} matrix; above {self.MAX_ITEMS} items use ItemKNN")
        xt = x.t().coalesce()
        gram = torch.sparse.mm(xt, x).to_dense()
        gram.diagonal().add_(self.lam)
        # X^T X + lambda I is symmetric positive definite: a Cholesky inverse takes about
        # half the time of a general (LU) one, and dividing in place keeps one n^2 copy.
        p = torch.cholesky_inverse(torch.linalg.cholesky(gram))
        del gram
        b = p.div_(-p.diagonal().clone())
        b.diagonal().zero_()
        self.b_ = b
        return self

    def score(self, x_rows: torch.Tensor) -> torch.Tensor:
        """Scores of the users whose (sparse) history rows are ``x_rows``."""
        return torch.sparse.mm(x_rows, self.b_)


class ItemKNN:
    """Item-based nearest neighbours: cosine similarity of items' user sets, top ``k`` kept.

    ``sim(i, j) = c_ij / (sqrt(n_i n_j) + shrink)`` with ``c_ij`` the users who have both.
    The co-occurrence matrix is built sparse, so memory follows the number of co-occurring
    pairs rather than items squared: this is the baseline for catalogues too large for EASE.
    """

    def __init__(self, k: int = 100, shrink: float = 0.0):
        self.k, self.shrink = k, shrink

    def fit(self, x: torch.Tensor) -> "ItemKNN":
        n_items = x.shape[1]
        co = torch.sparse.mm(x.t().coalesce(), x).coalesce()
        rows, cols = co.indices().numpy()
        vals = co.values().numpy().astype(np.float64)
        n = np.bincount(x.indices()[1].numpy(), minlength=n_items).astype(np.float64)
        sims = vals / (np.sqrt(n[rows] * n[cols]) + self.shrink)
        off = rows != cols
        rows, cols, sims = rows[off], cols[off], sims[off]
        # Keep each item's k most similar: sort by (row, -sim), rank within each row.
        order = np.lexsort((-sims, rows))
        rows, cols, sims = rows[order], cols[order], sims[order]
        starts = np.searchsorted(rows, np.arange(n_items))
        keep = np.arange(len(rows)) - starts[rows] < self.k
        # Row h holds h's k nearest items: a user's score for j sums sim(h, j) over history h.
        self.sim_ = torch.sparse_coo_tensor(torch.as_tensor(np.stack([rows[keep], cols[keep]])),
                                            torch.as_tensor(sims[keep], dtype=torch.float32),
                                            (n_items, n_items)).coalesce()
        return self

    def score(self, x_rows: torch.Tensor) -> torch.Tensor:
        """Scores of the users whose (sparse) history rows are ``x_rows``."""
        return torch.sparse.mm(x_rows, self.sim_).to_dense()


def select_rows(x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    return torch.index_select(x, 0, torch.as_tensor(rows, dtype=torch.int64)).coalesce()
