"""Evidence of a scored row: the user's own items whose events raise the row's score most.

Every rule here asks one question of the model that scored the row: *how much lower would
this item's score be without the user's events on that history item?* (a leave-one-item-out
drop). Each model answers it exactly, or as nearly as one pass allows, without scoring the
catalogue again:

- the two-tower (``recommend``): the user vector is an attention pooling of the events, so
  removing an item's events takes their share out of the pooling and renormalises the
  rest; the user vector is recomputed from that (exact, except that older events keep
  their recency positions);
- EASE and ItemKNN: a score is a sum over the history items, so each one's drop is its
  weight towards the row's item (exact);
- SASRec (``sequence``): the same renormalisation at the last attention layer, reading the
  positions below it as they were; for the latest event's item, the model runs once more
  on the window without that event (exact for an item taken once);
- GRU (``sequence``): the recurrence is run again over the last :data:`TAIL` events
  without the item's, from the state before them (exact for those events; older ones stay);
- item transitions (``sequence`` with ``transitions``): when the row's item followed the
  user's last item in the data, the last item leads the evidence.

Occlusion by running the model once per history item would answer exactly for every
model, at the model's cost times the history's length: 16x the sequence model's forward
time for 10 candidates on this machine, against one or two more passes here.
``bench/explanations.py`` measures how faithful each rule is by deleting the evidence.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

# Items of evidence per row.
N = 3
# Latest events a GRU's evidence re-runs (its candidates).
TAIL = 8


def groups(items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct items of each user's window ``items`` (B, T) (item index + 1, 0 padding):
    (group of each position (B, T), -1 for padding; user of each group (G,); item + 1 of
    each group (G,)). Groups are sorted by user, then item."""
    span = int(items.max()) + 1 if items.numel() else 1
    real = items > 0
    key = torch.arange(items.shape[0], device=items.device)[:, None] * span + items
    unique, inverse = torch.unique(key[real], return_inverse=True)
    group = torch.full_like(items, -1)
    group[real] = inverse
    return group, unique // span, unique % span


def pooled_parts(group: torch.Tensor, n_groups: int, weights: torch.Tensor, values: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group, the attention mass (G, H) and the weighted values (G, H, D) of its
    positions: ``weights`` (B, T, H), ``values`` (B, T, H, D) or (B, T, D) shared by heads."""
    real = group >= 0
    if values.dim() == 3:
        values = values[:, :, None, :]
    w = weights[real]
    mass = weights.new_zeros(n_groups, weights.shape[-1]).index_add_(0, group[real], w)
    parts = values.new_zeros(n_groups, weights.shape[-1], values.shape[-1]).index_add_(
        0, group[real], w[..., None] * values[real])
    return mass, parts


def without(pooled: torch.Tensor, mass: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """An attention pooling (G, H, D) with the parts of a group taken out and the rest
    renormalised; where nothing is left, zeros (the pooling of a user with no events)."""
    left = (1 - mass)[..., None]
    keep = left > 1e-6
    return torch.where(keep, (pooled - parts) / left.clamp(min=1e-6), torch.zeros_like(pooled))


def row_drops(change: torch.Tensor, owner: torch.Tensor, table: torch.Tensor, targets: torch.Tensor
              ) -> torch.Tensor:
    """(G, K) drops of each group's rows: how the user vector's ``change`` (G, D) without
    the group moves the score of each of its user's ``targets`` (U, K) item indices, whose
    vectors are rows ``targets + 1`` of ``table``. One batched product per user, with the
    groups laid out (U, most groups of a user, D): gathering a (G, K, D) block of target
    vectors instead took half the time of the two-tower's evidence."""
    if not len(owner):
        return change.new_zeros(0, targets.shape[1])
    first = torch.searchsorted(owner, torch.arange(len(targets), device=owner.device))
    position = torch.arange(len(owner), device=owner.device) - first[owner]
    laid = change.new_zeros(len(targets), int(position.max()) + 1, change.shape[1])
    laid[owner, position] = change
    return torch.bmm(laid, table[targets + 1].transpose(1, 2))[owner, position]


def pick(drops: torch.Tensor, group_user: torch.Tensor, group_item: torch.Tensor, n_users: int, n: int = N
         ) -> np.ndarray:
    """The evidence of every row: ``drops`` (G, K) is how much row k of the group's user
    loses without the group's item. For each user and row, the items of the ``n`` largest
    drops, strongest first, those that raise the score (drop > 0), or the largest alone
    when none does: a user with a history always has evidence. Returns (users, n, K) item
    indices (0-based), -1 past a row's evidence."""
    out = np.full((n_users, n, drops.shape[1]), -1, np.int64)
    if not len(group_user):
        return out
    first = torch.searchsorted(group_user, torch.arange(n_users, device=group_user.device))
    position = torch.arange(len(group_user), device=group_user.device) - first[group_user]
    width = int(position.max()) + 1
    dense = drops.new_full((n_users, width, drops.shape[1]), float("-inf"), dtype=torch.float32)
    dense[group_user, position] = drops.float()
    values, order = dense.topk(min(n, width), dim=1)  # (U, n, K), strongest first
    values, order = values.cpu().numpy(), order.cpu().numpy()
    strongest = np.arange(values.shape[1])[None, :, None] == 0
    keep = np.isfinite(values) & ((values > 0) | strongest)
    found = (group_item - 1).cpu().numpy()
    at = np.minimum(first.cpu().numpy()[:, None, None] + order, len(found) - 1)
    out[:, :values.shape[1]] = np.where(keep, found[at], -1)
    return out


def leading(row: np.ndarray, item: int) -> np.ndarray:
    """A row of :func:`pick` with ``item`` first (and not repeated), as long as before."""
    rest = [i for i in row.tolist() if i not in (item, -1)]
    return np.asarray(([item] + rest + [-1] * len(row))[:len(row)], np.int64)


def as_ids(evidence: np.ndarray, user_rows: np.ndarray, ranks: np.ndarray, item_ids: pa.Array) -> pa.Array:
    """The evidence (:func:`pick`) of the written rows (user ``user_rows[j]``, rank
    ``ranks[j]`` + 1) as lists of item ids."""
    rows = evidence[user_rows, :, ranks]  # (R, n)
    present = rows >= 0
    offsets = np.concatenate([[0], np.cumsum(present.sum(1))]).astype(np.int32)
    values = item_ids.take(pa.array(rows[present], pa.int64()))
    return pa.ListArray.from_arrays(pa.array(offsets), values.cast(pa.string()))
