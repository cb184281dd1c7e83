"""What a scoring pass's rows say, summed over batches: rows per source, catalogue
coverage, the rank-1 values. A light module (no torch): the tasks that carry rows over
(:mod:`interest.score.carry`) summarise them too, and start in a fresh worker."""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from interest import schemas as S


def summarize(rows: pa.Table, vocab: pa.Array) -> dict[str, Any]:
    """What a batch's rows of a table say, in parts that add up over batches
    (:class:`Summary`): rows per source, the items named as a bitmap over the item
    vocabulary ``vocab`` (catalogue coverage, in memory that does not grow with the
    users), and the rank-1 values (tag shares, behaviour mix)."""
    out: dict[str, Any] = {"sources": _counts(rows.column(S.SOURCE))}
    if S.ITEM_ID in rows.column_names:
        index = pc.drop_null(pc.index_in(pc.unique(rows.column(S.ITEM_ID)), value_set=vocab))
        named = np.zeros(len(vocab), bool)
        named[index.to_numpy()] = True
        out["items"] = base64.b64encode(np.packbits(named).tobytes()).decode()
    first = rows.filter(pc.equal(rows.column("rank"), 1))
    for col in ("next_behavior", S.TAG):
        if col in rows.column_names:
            out["top1"] = _counts(first.column(col))
            break
    return out


def _counts(column: pa.ChunkedArray) -> dict[str, int]:
    return {r["values"]: r["counts"] for r in pc.value_counts(column).to_pylist()}


class Summary:
    """The batches' summaries of one table (:func:`summarize`) merged as they arrive."""

    def __init__(self):
        self.sources, self.top1, self.items = Counter(), Counter(), None

    def add(self, part: dict[str, Any]) -> None:
        self.sources.update(part["sources"])
        self.top1.update(part.get("top1", {}))
        if "items" in part:
            named = np.frombuffer(base64.b64decode(part["items"]), np.uint8)
            self.items = named if self.items is None else self.items | named

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sources": dict(self.sources)}
        if self.top1:
            out["top1"] = dict(self.top1.most_common())
        if self.items is not None:
            out["distinct_items"] = int(np.unpackbits(self.items).sum())
        return out
