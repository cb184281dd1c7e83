"""Ranking metrics over the whole catalogue, computed in chunks of users.

The tie rule: a target ranks after every item scored at least as high, whatever the
items' indices, so a model that scores everything alike gets the worst rank among the
tied items and no item order (which could carry anything) settles a tie. Seen items
(the user's history) are masked unless the protocol says otherwise; every number is
reported with its protocol (:class:`Protocol`), which states the rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from interest.common.topn import seen_pairs


@dataclass(frozen=True)
class Protocol:
    """How a metric was computed; written beside every number.

    Args:
        ranking: ``full`` (against every item) or ``sampled-100`` (against 100 random
            negatives; inflated, never to be compared with full-ranking numbers).
        split: which held-out events are the targets (``valid`` or ``test``).
        target: which event of the split is the target (``first``: leave-one-out).
        mask_seen: items in the user's history cannot be recommended.
        ties: the tie rule (module docstring), stated beside every number.
    """

    ranking: str = "full"
    split: str = "test"
    target: str = "first"
    mask_seen: bool = True
    ties: str = "against the target: it ranks after every item scored at least as high"

    def as_dict(self) -> dict:
        return asdict(self)


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor, seen_rows: torch.Tensor | None = None,
                      seen_cols: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each row's target among all columns of ``scores`` (B, I): the
    number of other unmasked items scored at least as high as the target (ties count
    against it; a NaN score counts above it).

    ``seen_rows``/``seen_cols`` list distinct (row, item) pairs to mask; a masked target
    ranks after every unmasked item.

    The counts come from one sign pass over ``scores`` minus the target score (sum of
    signs = above - below, sum of their absolutes = above + below; every other item is
    above or tied), and the masks' corrections from the few seen pairs: masking a copy of
    the (B, I) block, as :func:`_exact_ranks` does, takes 4-5x as long, and was half of a
    54k-item validation epoch on 2 cores. Only rows with a masked target or a non-finite
    score take that exact path.
    """
    scores = scores.float()
    n_items = scores.shape[1]
    rows = torch.arange(len(targets), device=scores.device)
    target_score = scores[rows, targets].unsqueeze(1)  # (B, 1)
    # Sums of +-1 are exact in float32 below 2^24 columns.
    sign = (scores - target_score).sign_().to(torch.float32 if n_items < 2 ** 24 else torch.float64)
    above_minus_below = sign.sum(1)
    above_plus_below = torch.linalg.vector_norm(sign, ord=1, dim=1)  # fused: no |sign| block written
    below = ((above_plus_below - above_minus_below) / 2).long()
    rank = n_items - 1 - below  # above + tied
    slow = above_plus_below.isnan() | ~target_score[:, 0].isfinite()
    if seen_rows is not None and len(seen_rows):
        seen_scores, seen_targets = scores[seen_rows, seen_cols], target_score[seen_rows, 0]
        rank -= torch.bincount(seen_rows[seen_scores >= seen_targets], minlength=len(targets))
        slow[seen_rows[seen_cols == targets[seen_rows]]] = True
    slow_rows = slow.nonzero().squeeze(1)
    if len(slow_rows):
        rank[slow_rows] = _exact_ranks(scores, targets, seen_rows, seen_cols, slow_rows)
    return rank


def _exact_ranks(scores, targets, seen_rows, seen_cols, rows) -> torch.Tensor:
    """:func:`ranks_from_scores` of ``rows`` by comparing a copy of their scores."""
    sub = scores[rows]
    r = torch.arange(len(rows), device=sub.device)
    t = targets[rows]
    target_score = sub[r, t].unsqueeze(1)
    # A NaN target ranks after everything; a NaN item counts above any target.
    counted = (sub >= target_score) | sub.isnan() | target_score.isnan()
    masked = torch.zeros_like(counted)
    if seen_rows is not None and len(seen_rows):
        position = torch.full((len(scores),), -1, dtype=torch.long, device=scores.device)
        position[rows] = r
        keep = position[seen_rows] >= 0
        masked[position[seen_rows[keep]], seen_cols[keep]] = True
    counted = torch.where(masked[r, t].unsqueeze(1), ~masked, counted & ~masked)  # a masked target: after the rest
    counted[r, t] = False
    return counted.sum(1)


def per_rank(ranks: np.ndarray, ks: tuple[int, ...] = (10, 20)) -> dict[str, np.ndarray]:
    """HR@k, NDCG@k and reciprocal rank of each 0-based target rank."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    out["mrr"] = 1.0 / (ranks + 1.0)
    return out


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Means of :func:`per_rank`'s metrics, and the ``users`` (targets) counted."""
    out = {"users": int(len(ranks))}
    if len(ranks) == 0:
        return out
    return out | {name: float(v.mean()) for name, v in per_rank(ranks, ks).items()}


def full_ranking(score: Callable[[np.ndarray], torch.Tensor], users: np.ndarray, targets: np.ndarray,
                 seen: list[np.ndarray], *, mask_seen: bool = True, chunk: int = 1024) -> np.ndarray:
    """Ranks of ``targets`` for ``users``, scoring ``chunk`` users at a time.

    ``score(user_positions)`` returns the (chunk, n_items) scores of those positions of
    ``users``; memory is bounded by ``chunk * n_items`` floats.
    """
    out = []
    for lo in range(0, len(users), chunk):
        idx = np.arange(lo, min(lo + chunk, len(users)))
        scores = score(idx)
        rows, cols = seen_pairs([seen[i] for i in idx], scores.device) if mask_seen else (None, None)
        out.append(ranks_from_scores(scores, torch.as_tensor(targets[idx], device=scores.device), rows, cols).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def sampled_ranking(score: Callable[[np.ndarray], torch.Tensor], users: np.ndarray, targets: np.ndarray,
                    seen: list[np.ndarray], n_items: int, *, negatives: int = 100, seed: int = 0,
                    chunk: int = 1024) -> np.ndarray:
    """Ranks among ``negatives`` random unseen items (the 'sampled' protocol; inflated)."""
    rng = np.random.default_rng(seed)
    out = []
    for lo in range(0, len(users), chunk):
        idx = np.arange(lo, min(lo + chunk, len(users)))
        scores = score(idx)
        for j, i in enumerate(idx):
            banned = np.union1d(seen[i], [targets[i]])
            cand = rng.choice(n_items, size=min(n_items, negatives + len(banned) + 8), replace=False)
            cand = cand[~np.isin(cand, banned)][:negatives]
            row = scores[j]
            t = row[targets[i]]
            out.append(int((row[torch.as_tensor(cand, device=row.device)] >= t).sum()))
    return np.asarray(out, np.int64)


def multilabel_per_user(scores: np.ndarray, relevant: np.ndarray,
                        k: int = 5) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """P@k, R@k and average precision of each user's ranking of every tag by ``scores``
    (U, T) against the boolean ``relevant`` (U, T): (rows of the users with something
    relevant, each metric's values for them). Ties count against the targets, as for
    items: among equal scores the irrelevant tags rank first."""
    has = relevant.any(1)
    scores, relevant = scores[has], relevant[has]
    order = np.lexsort((relevant, -scores), axis=1)  # by score, then irrelevant before relevant
    hits = np.take_along_axis(relevant, order, 1).astype(np.float64)  # (U, T) in ranked order
    n_rel = hits.sum(1)
    cum = np.cumsum(hits, 1)
    precision_at = cum / np.arange(1, hits.shape[1] + 1)
    at_k = cum[:, min(k, hits.shape[1]) - 1]
    return np.flatnonzero(has), {f"p@{k}": at_k / k, f"r@{k}": at_k / n_rel,
                                 "map": (precision_at * hits).sum(1) / n_rel}


def multilabel_sums(scores: np.ndarray, relevant: np.ndarray, k: int = 5) -> dict[str, float]:
    """Sums over users of :func:`multilabel_per_user`'s metrics; users with nothing
    relevant are left out (``users`` counts the rest)."""
    return sums_over_users(*multilabel_per_user(scores, relevant, k))


def top_k_per_user(scores: torch.Tensor, targets: list[np.ndarray], seen: list[np.ndarray] | None,
                   ks: tuple[int, ...] = (10, 20), chunk: int = 1024) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Recall@k and NDCG@k of each user's ranking of every item by ``scores`` (U, I)
    against the user's set of ``targets`` (several items per user, as in a test window);
    ``seen`` items are masked. Returns (rows of the users with a target, each metric's
    values for them).

    Each target is ranked as :func:`ranks_from_scores` ranks one, against the other
    items (the user's other targets included): ties count against it. Recall divides the
    hits by the user's number of targets, NDCG by the ideal DCG of min(k, targets) hits.
    """
    keep = [i for i, t in enumerate(targets) if len(t)]
    if not keep:
        return np.zeros(0, np.int64), {f"{m}@{k}": np.zeros(0) for k in ks for m in ("recall", "ndcg")}
    scores = scores[keep].float()
    targets = [np.asarray(targets[i], np.int64) for i in keep]
    seen = [seen[i] for i in keep] if seen is not None else None
    t_rows, t_items = seen_pairs(targets, scores.device)
    ranks = []
    for lo in range(0, len(t_rows), chunk):
        users = t_rows[lo:lo + chunk]
        masks = seen_pairs([seen[u] for u in users.tolist()], scores.device) if seen is not None else (None, None)
        ranks.append(ranks_from_scores(scores[users], t_items[lo:lo + chunk], *masks))
    ranks = torch.cat(ranks).double()
    n_targets = torch.as_tensor([len(t) for t in targets], dtype=torch.float64, device=scores.device)
    values = {}
    for k in ks:
        hit = ranks < k
        gain = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
        per_user = torch.zeros(len(targets), dtype=torch.float64, device=scores.device)
        hits = per_user.index_add(0, t_rows, hit.double())
        dcg = per_user.index_add(0, t_rows, gain)
        ideal = torch.cumsum(1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64, device=scores.device)), 0)
        idcg = ideal[(n_targets.clamp(max=k) - 1).long()]
        values[f"recall@{k}"] = (hits / n_targets).cpu().numpy()
        values[f"ndcg@{k}"] = (dcg / idcg).cpu().numpy()
    return np.asarray(keep, np.int64), values


def top_k_sums(scores: torch.Tensor, targets: list[np.ndarray], seen: list[np.ndarray] | None,
               ks: tuple[int, ...] = (10, 20), chunk: int = 1024) -> dict[str, float]:
    """Sums over users of :func:`top_k_per_user`'s metrics; users with no target are
    left out (``users`` counts the rest)."""
    return sums_over_users(*top_k_per_user(scores, targets, seen, ks, chunk))


def sums_over_users(rows: np.ndarray, values: dict[str, np.ndarray]) -> dict[str, float]:
    """Each metric's sum over the users of a batch, and their count (``users``): batches
    add up, and :func:`means_from_sums` divides at the end."""
    return {name: float(v.sum()) for name, v in values.items()} | {"users": len(rows)}


def means_from_sums(sums: dict[str, float]) -> dict[str, float]:
    """Per-user means of metric sums that carry their ``users`` count."""
    n = max(sums.get("users", 0), 1)
    return {k: v / n for k, v in sums.items() if k != "users"} | {"users": int(sums.get("users", 0))}


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` against the boolean ``positive``: the chance that a random
    positive outscores a random negative, ties counting half (average ranks); None
    without both outcomes."""
    positive = np.asarray(positive, bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if not n_pos or not n_neg:
        return None
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(np.asarray(scores)[order], return_index=True, return_counts=True)
    ranks = np.empty(len(order))
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recall_at(scores: np.ndarray, positive: np.ndarray, k: int) -> float | None:
    """Share of the positives among the ``k`` best scores; ties at the cut count against
    the positives (among equal scores the negatives come first). None without positives."""
    positive = np.asarray(positive, bool)
    if not positive.any():
        return None
    order = np.lexsort((positive, -np.asarray(scores)))
    return float(positive[order[:k]].sum() / positive.sum())


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``b - a`` over paired units (the same users under two models) and its
    ``level`` percentile interval from ``n`` resamples of the units: B beats A when the
    whole interval lies above zero. Pairing removes the users' own spread (some users are
    easy for every model), which unpaired intervals of the two means would carry."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    if len(d) == 0:
        raise ValueError("no paired units to compare")
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    for i in range(0, n, 100):  # 100 resamples at a time: bounded memory for millions of users
        k = min(100, n - i)
        means[i:i + k] = d[rng.integers(0, len(d), (k, len(d)))].mean(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(d.mean()), float(lo), float(hi)


class Reliability:
    """A reliability diagram's figures, added up over batches: per equal-width bin of the
    predicted probability, how many predictions, their mean, and how often the event
    happened. Expected calibration error: the bins' |mean probability - frequency|,
    weighted by their share of the predictions."""

    def __init__(self, bins: int = 10):
        self.n, self.p, self.y = np.zeros(bins), np.zeros(bins), np.zeros(bins)

    def add(self, probs: np.ndarray, happened: np.ndarray) -> None:
        probs = np.asarray(probs, np.float64).ravel()
        at = np.minimum((probs * len(self.n)).astype(np.int64), len(self.n) - 1)  # p = 1 in the last bin
        self.n += np.bincount(at, minlength=len(self.n))
        self.p += np.bincount(at, weights=probs, minlength=len(self.n))
        self.y += np.bincount(at, weights=np.asarray(happened, np.float64).ravel(), minlength=len(self.n))

    def as_dict(self) -> dict:
        """{"bins": [{"n", "probability", "frequency"}] (empty bins left out), "ece", "n"}."""
        full = self.n > 0
        mean_p = np.divide(self.p, self.n, out=np.zeros_like(self.p), where=full)
        freq = np.divide(self.y, self.n, out=np.zeros_like(self.y), where=full)
        total = self.n.sum()
        ece = float((self.n * np.abs(mean_p - freq)).sum() / total) if total else None
        return {"bins": [{"n": int(n), "probability": float(p), "frequency": float(f)}
                         for n, p, f in zip(self.n[full], mean_p[full], freq[full])], "ece": ece, "n": int(total)}
