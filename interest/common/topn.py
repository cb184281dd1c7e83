"""Exact top-N inner-product search over a catalogue, in item chunks.

Memory is bounded by ``users x (chunk + n)`` scores whatever the catalogue size: each
chunk's scores are merged into the running top N and dropped. Exact, not approximate:
at batch-scoring sizes a matmul per chunk is fast, and an index would be one more thing
to build, version and get wrong.
"""

from __future__ import annotations

import numpy as np
import torch

# Items per chunk. On a CPU a (users x 4096) block of scores (16 MB for 1,024 users) stays
# in cache and keeps a scoring actor's memory flat: a block of the whole 50k-item
# catalogue was 200 MB, allocated and freed per batch, and made the actors' memory swing
# by 600 MB; it was also 30% slower (bench/score.py's model, one thread). A GPU wants few,
# large matmuls.
CHUNK_CPU = 1 << 12
CHUNK_GPU = 1 << 16


def seen_pairs(seen: list[np.ndarray], device="cpu") -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(row, item) index tensors of the items to mask, one row per history in ``seen``."""
    lengths = np.fromiter((len(s) for s in seen), np.int64, len(seen))
    if lengths.sum() == 0:
        return None, None
    rows = np.repeat(np.arange(len(seen)), lengths)
    return (torch.as_tensor(rows, device=device),
            torch.as_tensor(np.concatenate(seen).astype(np.int64), device=device))


@torch.no_grad()
def top_n(users: torch.Tensor, items: torch.Tensor, n: int, exclude: list[np.ndarray] | None = None,
          chunk: int | None = None, lse: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(scores, item indices), each (U, min(n, I)), best first, of ``users`` (U, D) against
    ``items`` (I, D), and each user's log-sum-exp of the scores of every item (U,), so that
    ``exp(score - lse)`` is the item's probability under a softmax over the catalogue
    (None with ``lse=False``: on a CPU it costs nearly as much as the chunks' top-k).
    ``exclude[u]`` lists item indices user u must not get; where fewer
    than n items remain, the tail has score -inf (callers drop it). Ties go to the lower
    item index across chunks (within a chunk, exact ties may come in either order)."""
    n_users, n_items = users.shape[0], items.shape[0]
    n = min(n, n_items)
    chunk = chunk or (CHUNK_CPU if users.device.type == "cpu" else CHUNK_GPU)
    rows, cols = seen_pairs(exclude, users.device) if exclude is not None else (None, None)
    best_s = users.new_empty((n_users, 0))
    best_i = torch.empty((n_users, 0), dtype=torch.long, device=users.device)
    total = users.new_full((n_users,), float("-inf")) if lse else None
    for lo in range(0, n_items, chunk):
        hi = min(lo + chunk, n_items)
        s = users @ items[lo:hi].t()
        if lse:  # before exclusion: the model's own distribution
            total = torch.logaddexp(total, s.logsumexp(1))
        if rows is not None:
            inside = (cols >= lo) & (cols < hi)
            s[rows[inside], cols[inside] - lo] = float("-inf")
        chunk_s, chunk_i = s.topk(min(n, hi - lo), 1)  # the chunk's best, then merged with the running best
        cand_s = torch.cat([best_s, chunk_s], 1)
        cand_i = torch.cat([best_i, chunk_i + lo], 1)
        # A stable sort keeps ties in candidate order: earlier chunks (lower indices) first.
        order = torch.sort(cand_s, dim=1, descending=True, stable=True).indices[:, :n]
        best_s, best_i = cand_s.gather(1, order), cand_i.gather(1, order)
    return best_s, best_i, total


@torch.no_grad()
def top_of_rows(scores: torch.Tensor, n: int, exclude: list[np.ndarray] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, item indices), best first, of the top n of full rows of ``scores`` (U, I),
    as :func:`top_n` gives them (excluded items -inf)."""
    scores = scores.clone()
    if exclude is not None:
        rows, cols = seen_pairs(exclude, scores.device)
        if rows is not None:
            scores[rows, cols] = float("-inf")
    return scores.topk(min(n, scores.shape[1]), 1)
