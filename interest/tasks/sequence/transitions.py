"""First-order item transitions, mixed into the sequence model's next-item distribution.

``P(next | user) = (1 - w) softmax(state . items) + w T[last item, next]``, where ``T`` is
the share of each item among the events that followed the user's last item in everyone's
history (a Markov chain, the "MC" of FPMC). A network of 64 dimensions that generalises
across 50k items cannot also remember which product followed which for items seen a
handful of times; the counts do, exactly, and cost one sparse row per user. The mixture
is only ever added where ``T`` has a row, so a user whose last item never had a successor
gets the network's answer. ``w`` is chosen on the validation targets after training
(:meth:`~interest.tasks.sequence.task.SequenceTask.choose_settings`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from interest.common.events import ragged, training_steps

# The events counted for each held-out split: those before it (validation targets: the
# training events; test targets: training + validation; scoring: every event).
THROUGH = {"valid": "train", "test": "valid", "score": "test"}


class ItemTransitions:
    """``T`` as a CSR matrix over item indices: row ``i`` holds the items that followed
    item ``i`` and their shares (each row sums to 1; rows of items never followed are empty)."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, probs: np.ndarray):
        self.indptr, self.indices, self.probs = indptr, indices, probs

    @classmethod
    def count(cls, prepared: str, n_items: int, through: str) -> ItemTransitions:
        """Counted on consecutive events of each user up to split ``through`` (train, valid
        or test), streamed from the prepared sequences."""
        keys = []
        for before, after in training_steps(prepared, "items", through):
            keep = before >= 0
            # One int64 key per pair: n_items^2 < 2^63 for any catalogue under 3e9 items.
            keys.append(np.unique(before[keep] * n_items + after[keep], return_counts=True))
        pairs = np.concatenate([k for k, _ in keys]) if keys else np.zeros(0, np.int64)
        counts = np.concatenate([c for _, c in keys]) if keys else np.zeros(0, np.int64)
        pairs, inverse = np.unique(pairs, return_inverse=True)  # a pair recurs across batches: add its counts up
        counts = np.bincount(inverse, weights=counts).astype(np.float64)
        rows, cols = pairs // n_items, pairs % n_items
        totals = np.bincount(rows, weights=counts, minlength=n_items)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_items))])
        return cls(indptr, cols, (counts / totals[rows]).astype(np.float32))

    @property
    def pairs(self) -> int:
        return len(self.indices)

    def rows(self, last: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows of items ``last`` (U,), flattened: (user position, item, share)."""
        last = np.asarray(last, np.int64)
        owner, at = ragged(self.indptr[last], self.indptr[last + 1] - self.indptr[last])
        return owner, self.indices[at], self.probs[at]

    def log_mix(self, scores: torch.Tensor, last: np.ndarray, weight: float) -> torch.Tensor:
        """log((1 - weight) softmax(scores) + weight T[last]), (U, n_items) from the
        network's (U, n_items) ``scores``. Computed as log-softmax plus log(1 - weight)
        everywhere and a log-add-exp where T has an entry, so the far tail keeps its order
        instead of underflowing to -inf."""
        out = torch.log_softmax(scores.float(), 1) + math.log1p(-weight)
        owner, cols, probs = self.rows(last)
        if len(owner):
            r, c = torch.as_tensor(owner, device=out.device), torch.as_tensor(cols, device=out.device)
            mass = torch.as_tensor(probs, device=out.device).mul(weight).log()
            out[r, c] = torch.logaddexp(out[r, c], mass)
        return out
