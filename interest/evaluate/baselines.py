"""Non-neural baselines scored in the same harness as the models: popularity, ItemKNN, EASE.

All fit on a sparse user x item matrix of training events (no dense user x item table)
and score users in chunks, as :func:`interest.evaluate.metrics.full_ranking` asks. Their
parameters are searched on validation targets by :func:`grid_search`, which does not stop
at the edge of a grid while the metric still improves there.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)


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


# Each tuned baseline's parameter: its name, the grid searched first (ordered) and the
# factory. :func:`grid_search` goes past either end of the grid while the metric improves.
GRIDS: dict[str, tuple[str, tuple, Callable]] = {
    "ease": ("lambda", (20.0, 50.0, 100.0, 250.0, 500.0), EASE),
    "itemknn": ("k", (20, 50, 100, 200), ItemKNN),
}
MAX_EXTENSIONS = 10  # steps past an end of a grid: a factor of 2^10 either way


def _beyond(value, up: bool):
    """The next value past an end of a grid: twice or half ``value`` (integers stay
    integers and at least 1); None when there is none."""
    if isinstance(value, int):
        nxt = value * 2 if up else value // 2
        return nxt if nxt >= 1 and nxt != value else None
    return value * 2.0 if up else value / 2.0


def grid_search(name: str, measure: Callable[[Any], tuple[float, Any]], metric: str) -> tuple[Any, Any, list]:
    """(best value, its payload, values tried in order) of ``measure(value) -> (valid
    metric, payload)`` for the parameter of baseline ``name``.

    Walks :data:`GRIDS`' ordered grid upwards until the metric falls (the metric being
    unimodal in the parameter). A best value at an end of the grid is not trusted: the
    search goes on past that end (doubling up, halving down) until the metric falls, so
    a baseline is never under-tuned by where its grid happened to stop. Only the best
    payload is kept (an EASE payload is a dense items x items matrix).
    """
    param, grid, _ = GRIDS[name]
    scores: dict[Any, float] = {}
    best: list = [None, -np.inf, None]  # value, metric, payload

    def at(value) -> bool:
        """Measure ``value``; whether it beat the best so far (then it is the best)."""
        score, payload = measure(value)
        scores[value] = score
        log.info("%s %s=%g: valid %s %.4f", name, param, value, metric, score)
        if score > best[1] or best[0] is None:
            best[:] = [value, score, payload]
            return True
        return False

    for value in grid:
        if not at(value) and scores[value] < best[1]:
            break
    for up in (True, False):
        for _ in range(MAX_EXTENSIONS):
            end = max(scores) if up else min(scores)
            nxt = _beyond(end, up)
            if best[0] != end or nxt is None or not at(nxt):
                break
    if best[0] in (max(scores), min(scores)) and len(scores) > 1:
        log.warning("%s: the best %s (%g) is still the end of the values tried (%s)", name, param, best[0],
                    ", ".join(f"{v:g}" for v in scores))
    return best[0], best[2], list(scores)


def select_rows(x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    return torch.index_select(x, 0, torch.as_tensor(rows, dtype=torch.int64)).coalesce()
