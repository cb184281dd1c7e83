"""What a user the model cannot score gets, so every user has rows in every table.

A model answers for every user with at least one event it can read; a user it cannot
score (no events the model knows, every item held out of its vocabulary) still gets rows,
marked in the ``source`` column instead of being missing from the table:

- ``user_recommendations`` and ``user_next_actions``: the most popular items of the
  prepared data (``source = "popular"``; score and probability: the item's share of
  events), with the most common behaviour as the next one;
- ``user_tags``: the tags most carried by the catalogue's events (``"popular"``), their
  share as the probability;
- ``user_zeroshot``: every new tag in the file's order with score 0 (``"no_history"``).

Rows the model wrote get ``source = "model"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from interest import io
from interest import schemas as S

MODEL = "model"
POPULAR = "popular"
NO_HISTORY = "no_history"


@dataclass
class Fallback:
    """The rows of the fallback, ranked: ``names`` (item ids or tags) and their ``shares``."""

    names: list[str]
    shares: list[float]
    behavior: str = ""
    behavior_share: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def item_counts(prepared: str) -> tuple[pa.Array, np.ndarray]:
    """(item ids, events) of every item of a prepared dataset, in index order."""
    vocab = io.read_parquet(io.join(prepared, "vocab", "items.parquet"), columns=[S.ITEM_ID, S.COUNT])
    return vocab.column(S.ITEM_ID).combine_chunks(), vocab.column(S.COUNT).fill_null(0).to_numpy()


def item_popularity(ids: pa.Array, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, share of events) of every item, most popular first (ties: lower item
    index first); ``ids`` and ``counts`` in index order."""
    counts = np.asarray(counts, np.float64)
    order = np.lexsort((np.arange(len(counts)), -counts))
    return np.asarray(ids.to_pylist(), object)[order], counts[order] / max(counts.sum(), 1.0)


def for_table(table: str, items: tuple[pa.Array, np.ndarray], top_k: int, *,
              behavior_counts: dict[str, int] | None = None, meta: Any = None, tag_names: Sequence[str] = (),
              withheld: pa.Array | None = None) -> Fallback:
    """The fallback rows of ``table`` (a key of :data:`interest.schemas.OUTPUTS`) from
    ``items`` (ids and event counts in index order, :func:`item_counts`); ``withheld``:
    item ids it must not name."""
    if table in ("user_recommendations", "user_next_actions"):
        ids, shares = item_popularity(*items)
        if withheld is not None:
            gone = set(withheld.to_pylist())
            keep = np.fromiter((i not in gone for i in ids), bool, len(ids))
            ids, shares = ids[keep], shares[keep]
        counts = behavior_counts or {}
        total = sum(counts.values()) or 1
        behavior = max(counts, key=counts.get) if counts else S.BEHAVIORS[0]
        return Fallback(list(ids[:top_k]), [float(x) for x in shares[:top_k]], behavior,
                        counts.get(behavior, 0) / total)
    if table == "user_tags":
        tags = meta.extra["tags"]
        counts = np.asarray(items[1], np.float32)
        per_tag = tags.matrix(np.zeros(len(counts), np.int64), np.arange(len(counts)), counts, 1)[0]
        order = np.argsort(-per_tag, kind="stable")[:top_k]
        total = max(float(per_tag.sum()), 1.0)
        return Fallback([tags.tags[i] for i in order], [float(per_tag[i]) / total for i in order])
    if table == "user_zeroshot":
        return Fallback(list(tag_names), [0.0] * len(tag_names))
    raise ValueError(f"no fallback for table {table!r}")


def complete(rows: pa.Table, users: Sequence[str], table: str, fallback: Fallback) -> pa.Table:
    """``rows`` of the model (``source`` "model") plus the fallback's rows for every user
    of ``users`` the model wrote none for, conformed to the table's schema."""
    rows = S.conform(rows.append_column(S.SOURCE, pa.array([MODEL] * rows.num_rows, pa.string())),
                     S.OUTPUTS[table], what=table)
    scored = set(pc.unique(rows.column(S.USER_ID)).to_pylist()) if rows.num_rows else set()
    missing = [u for u in dict.fromkeys(users) if u not in scored]
    return pa.concat_tables([rows, _fallback_rows(missing, table, fallback)]) if missing else rows


def _fallback_rows(users: list[str], table: str, fb: Fallback) -> pa.Table:
    k = len(fb.names)
    user_col = [u for u in users for _ in range(k)]
    ranks = list(range(1, k + 1)) * len(users)
    names = fb.names * len(users)
    shares = fb.shares * len(users)
    cols: dict[str, Any] = {S.USER_ID: user_col, "rank": ranks}
    # Nothing of the user's history made these rows: their evidence is empty.
    cols[S.EVIDENCE] = cols[S.MATCHED_ITEMS] = cols[S.MATCHED_WORDS] = [[] for _ in names]
    if table == "user_recommendations":
        cols.update({S.ITEM_ID: names, "score": shares, S.SOURCE: [POPULAR] * len(names)})
    elif table == "user_next_actions":
        cols.update({S.ITEM_ID: names, "probability": shares, "next_behavior": [fb.behavior] * len(names),
                     "behavior_probability": [fb.behavior_share] * len(names), S.SOURCE: [POPULAR] * len(names)})
    elif table == "user_tags":
        cols.update({S.TAG: names, "probability": shares, S.SOURCE: [POPULAR] * len(names)})
    elif table == "user_zeroshot":
        cols.update({S.TAG: names, "score": shares, S.SOURCE: [NO_HISTORY] * len(names)})
    else:
        raise ValueError(f"no fallback for table {table!r}")
    schema = S.OUTPUTS[table]
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema}, schema=schema)
