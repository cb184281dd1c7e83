"""Streamed reads of a prepared dataset's events and sequences, and the shapes tasks
build from them: windows of a user's latest events and sparse history matrices.

Nothing here holds more than one batch of events at a time, except :func:`read_events`,
whose callers ask for the few columns they need.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from interest import io
from interest import schemas as S

# Events of each split a user's prepared sequence holds, in order: the counts that add up
# to the end of split ``through`` (train: the first n_train events, ...).
SPLIT_COUNTS = {"train": ("n_train",), "valid": ("n_train", "n_valid"), "test": ("n_train", "n_valid", "n_test")}


def _events(prepared: str) -> pads.Dataset:
    fs, inner = io.filesystem(io.join(prepared, "events"))
    return pads.dataset(inner, filesystem=fs, format="parquet")


def read_events(prepared: str, columns: list[str], splits: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Columns of the prepared events in ``splits`` (0 train, 1 valid, 2 test), read a
    batch at a time with the split filter pushed down."""
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for b in _events(prepared).to_batches(columns=columns, filter=pc.field(S.SPLIT).isin(list(splits))):
        for c in columns:
            parts[c].append(b.column(c).to_numpy())
    return {c: np.concatenate(v) if v else np.zeros(0, np.int64) for c, v in parts.items()}


def user_items(prepared: str, splits: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(user_idx, item_idx) of every event in ``splits``."""
    ev = read_events(prepared, [S.USER_IDX, S.ITEM_IDX], splits)
    return ev[S.USER_IDX], ev[S.ITEM_IDX]


def event_counts(prepared: str, n_items: int, splits: tuple[int, ...] = (0,)) -> np.ndarray:
    """Events per item in ``splits``, summed a batch at a time (never the whole column)."""
    counts = np.zeros(n_items, np.int64)
    for b in _events(prepared).to_batches(columns=[S.ITEM_IDX], filter=pc.field(S.SPLIT).isin(list(splits))):
        counts += np.bincount(b.column(S.ITEM_IDX).to_numpy(), minlength=n_items)
    return counts


def ragged(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries of runs ``counts[r]`` long from ``starts[r]`` (list offsets, CSR rows),
    flattened: (the run each belongs to, its index)."""
    counts = np.asarray(counts, np.int64)
    owner = np.repeat(np.arange(len(counts)), counts)
    first = np.asarray(starts, np.int64) - (np.cumsum(counts) - counts)  # index - flat position, per run
    return owner, np.arange(counts.sum()) + np.repeat(first, counts)


def training_steps(prepared: str, column: str, through: str = "train") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``column``'s values (items, behaviors) of consecutive events of each user up to the
    end of split ``through`` (``train``: the first ``n_train`` events; ``valid``, ``test``:
    also those of the later splits), as (before, after) arrays a batch of sequences at a
    time; ``before`` is -1 where ``after`` is a user's first event. Streams the prepared
    sequences."""
    counts = SPLIT_COUNTS[through]
    fs, inner = io.filesystem(io.join(prepared, "sequences"))
    for b in pads.dataset(inner, filesystem=fs, format="parquet").to_batches(columns=[column, *counts]):
        lists = b.column(column)
        offsets = lists.offsets.to_numpy().astype(np.int64)
        n = sum(b.column(c).to_numpy().astype(np.int64) for c in counts)
        user, at = ragged(offsets[:-1], np.minimum(np.diff(offsets), n))
        values = lists.values.to_numpy().astype(np.int64)
        yield np.where(at > offsets[user], values[np.maximum(at - 1, 0)], -1), values[at]


def future_windows(batch: dict[str, np.ndarray], phase: str, held_out: np.ndarray,
                   require_history: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, ends, window ends) of the users of a batch of prepared sequences that have a
    later window in ``phase``, the future-window protocol of tasks ``tags`` and
    ``zeroshot``: a user reads events [0, end) and is asked about [end, window end).
    ``train`` users (not ``held_out``) read their train split and are asked about their
    validation events, and each with two or more training events is also cut at a random
    point of the later half of its train split and asked about the rest of it (so every
    user teaches, not only those active in the validation window); ``valid`` users
    (``held_out``) read their train split, asked about the validation events; ``test``:
    every user reads train + validation, asked about the test events. With
    ``require_history`` a user must have read at least one event."""
    n_train, n_valid, n_test = (batch[c].astype(np.int64) for c in ("n_train", "n_valid", "n_test"))
    in_phase = {"train": ~held_out, "valid": held_out, "test": np.ones(len(n_train), bool)}[phase]
    ends = n_train + (n_valid if phase == "test" else 0)
    window_ends = ends + (n_test if phase == "test" else n_valid)
    rows = np.flatnonzero(in_phase & (window_ends > ends) & ((ends > 0) | (not require_history)))
    ends, window_ends = ends[rows], window_ends[rows]
    if phase == "train":
        cut = np.flatnonzero(in_phase & (n_train >= 2))
        lo = np.ceil(n_train[cut] / 2).astype(np.int64)
        rows = np.concatenate([rows, cut])
        ends = np.concatenate([ends, lo + (np.random.random(len(cut)) * (n_train[cut] - lo)).astype(np.int64)])
        window_ends = np.concatenate([window_ends, n_train[cut]])
    return rows, ends, window_ends


def windows(batch: dict[str, np.ndarray], ends: np.ndarray, length: int) -> tuple[np.ndarray, ...]:
    """Left-padded (B, length) items+1, behaviours+1 and time gaps in seconds of each
    user's events [end-length, end) in a batch of prepared sequences."""
    n = len(ends)
    items = np.zeros((n, length), np.int64)
    behaviors = np.zeros((n, length), np.int64)
    gaps = np.zeros((n, length), np.float64)
    for r in range(n):
        end = int(ends[r])
        start = max(0, end - length)
        k = end - start
        if k <= 0:
            continue
        items[r, length - k:] = np.asarray(batch["items"][r][start:end]) + 1
        behaviors[r, length - k:] = np.asarray(batch["behaviors"][r][start:end]) + 1
        ts = np.asarray(batch["ts"][r][max(0, start - 1):end]).astype("datetime64[us]").astype(np.int64) / 1e6
        g = np.diff(ts) if start > 0 else np.concatenate([[0.0], np.diff(ts)])
        gaps[r, length - k:] = g
    return items, behaviors, gaps


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """Binary sparse (n_users, n_items) matrix of (user, item) pairs, duplicates collapsed."""
    pairs = np.unique(np.stack([users.astype(np.int64), items.astype(np.int64)]), axis=1)
    return torch.sparse_coo_tensor(torch.as_tensor(pairs), torch.ones(pairs.shape[1]), (n_users, n_items)).coalesce()


def history_matrix(histories: list[np.ndarray], n_items: int) -> torch.Tensor:
    """Sparse (len(histories), n_items) rows of the given item histories."""
    lengths = [len(h) for h in histories]
    rows = np.repeat(np.arange(len(histories)), lengths)
    cols = np.concatenate(histories) if histories else np.zeros(0, np.int64)
    return interaction_matrix(rows, cols, len(histories), n_items)


def drop_events(batch: dict[str, np.ndarray], drop: np.ndarray) -> dict[str, np.ndarray]:
    """``batch`` (prepared sequences) without the events where ``drop`` (one flag per
    event, the users' sequences end to end) is set, each user's split counts lowered to
    match."""
    items = batch["items"]
    lengths = np.fromiter((len(x) for x in items), np.int64, len(items))
    owner = np.repeat(np.arange(len(items)), lengths)
    position = np.arange(len(drop)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    n_train, n_valid = np.repeat(batch["n_train"], lengths), np.repeat(batch["n_valid"], lengths)
    split = (position >= n_train).astype(np.int64) + (position >= n_train + n_valid)  # events: train, valid, test
    out = dict(batch)
    for code, column in enumerate(("n_train", "n_valid", "n_test")):
        gone = np.bincount(owner[drop & (split == code)], minlength=len(items))
        out[column] = (batch[column] - gone).astype(batch[column].dtype)
    keep = ~drop
    cuts = np.cumsum(np.bincount(owner[keep], minlength=len(items)))[:-1]
    for column in ("items", "behaviors", "ts"):
        if column in batch:
            parts = np.split(np.concatenate(list(batch[column]))[keep], cuts)
            out[column] = np.empty(len(parts), object)
            for i, part in enumerate(parts):
                out[column][i] = part
    return out
