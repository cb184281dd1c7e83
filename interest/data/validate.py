"""Validation rules shared by every format: which rows are kept, which quarantined and why.

Pure functions of Arrow tables (no Ray), applied batch by batch during preparation.
A row is quarantined for the first rule it breaks; its original values are kept as
JSON in the quarantine table so nothing is lost silently.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from interest import schemas as S
from interest.data.adapters import PARSE_ERROR, decode_utf8, parse_number

# Reasons, as written to the quarantine table's `reason` column.
EMPTY_USER = "empty user_id"
EMPTY_ITEM = "empty item_id"
UNKNOWN_BEHAVIOR = "unknown behavior"
MISSING_TS = "missing timestamp"
TS_OUT_OF_RANGE = "timestamp out of range"
NEGATIVE_PRICE = "negative price"
UNKNOWN_SPLIT = "unknown split"
DUPLICATE_ITEM = "duplicate item_id"


@dataclass(frozen=True)
class Bounds:
    """Plausible timestamps; anything outside is 'absurd' and quarantined."""

    min_ts: dt.datetime
    max_ts: dt.datetime

    @classmethod
    def parse(cls, min_ts: str, max_ts: str | None) -> "Bounds":
        lo = _utc(dt.datetime.fromisoformat(min_ts))
        hi = _utc(dt.datetime.fromisoformat(max_ts)) if max_ts else (
            dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1))
        if lo >= hi:
            raise ValueError(f"min_ts {lo} must be before max_ts {hi}")
        return cls(lo, hi)


def _utc(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def _empty(col: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), True))


def event_reasons(conv: pa.Table, bounds: Bounds) -> pa.Array:
    """The quarantine reason of every converted event row (null = valid)."""
    n = conv.num_rows
    behavior = conv.column(S.BEHAVIOR)
    ts = conv.column(S.TS)
    known = pc.fill_null(pc.is_in(behavior, value_set=pa.array(S.BEHAVIORS)), False)
    lo = pa.scalar(bounds.min_ts, S.TS_TYPE)
    hi = pa.scalar(bounds.max_ts, S.TS_TYPE)
    out_of_range = pc.fill_null(pc.or_(pc.less(ts, lo), pc.greater(ts, hi)), False)
    price = conv.column(S.PRICE)
    split = conv.column(S.SPLIT)
    checks = [
        (np.asarray(pc.is_valid(conv.column(PARSE_ERROR))), None),
        (_empty(conv.column(S.USER_ID)), EMPTY_USER),
        (_empty(conv.column(S.ITEM_ID)), EMPTY_ITEM),
        (~np.asarray(known), UNKNOWN_BEHAVIOR),
        (np.asarray(pc.is_null(ts)), MISSING_TS),
        (np.asarray(out_of_range), TS_OUT_OF_RANGE),
        (np.asarray(pc.fill_null(pc.less(price, 0.0), False)), NEGATIVE_PRICE),
        (np.asarray(pc.and_(pc.is_valid(split), pc.invert(pc.is_in(split, value_set=pa.array(S.SPLITS))))),
         UNKNOWN_SPLIT),
    ]
    reason = np.full(n, None, dtype=object)
    parse_errors = conv.column(PARSE_ERROR).to_numpy(zero_copy_only=False)
    for mask, message in reversed(checks):
        reason[mask] = parse_errors[mask] if message is None else message
    return pa.array(reason, pa.string())


def records_json(raw: pa.Table) -> pa.Array:
    """Each row's original values as a JSON object of text (undecodable bytes escaped)."""
    rows = raw.to_pylist()
    return pa.array([json.dumps({k: _text(v) for k, v in r.items()}, ensure_ascii=False) for r in rows], pa.string())


def _text(v):
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "backslashreplace")
    return str(v)


def quarantine_table(raw: pa.Table, reasons: pa.Array, source: pa.Array) -> pa.Table:
    return pa.table({S.SOURCE_FILE: source, S.REASON: reasons, S.RECORD: records_json(raw)}, schema=S.QUARANTINE)


def validate_items(items: pa.Table, source: str) -> tuple[pa.Table, pa.Table, int]:
    """Conform a catalogue to the items contract; return (kept, quarantined, duplicates).

    Duplicated ids keep their last row (catalogue exports append updates) and the
    earlier rows are counted, not quarantined: they are superseded, not bad.
    """
    n = items.num_rows
    cols, bad_enc = {}, np.zeros(n, bool)
    for name in (S.ITEM_ID, S.TITLE, S.CATEGORY, S.BRAND, S.DESCRIPTION):
        if name in items.column_names:
            cols[name], b = decode_utf8(items.column(name))
            bad_enc |= b
        else:
            cols[name] = pa.nulls(n, pa.string())
    if S.PRICE in items.column_names:
        price, bad_price = parse_number(items.column(S.PRICE), pa.float64())
    else:
        price, bad_price = pa.nulls(n, pa.float64()), np.zeros(n, bool)
    negative = np.asarray(pc.fill_null(pc.less(price, 0.0), False))
    checks = [(bad_enc, "broken encoding"), (_empty(cols[S.ITEM_ID]), EMPTY_ITEM),
              (bad_price, "unparseable price"), (negative, NEGATIVE_PRICE)]
    reason = np.full(n, None, dtype=object)
    for mask, message in reversed(checks):
        reason[mask] = message
    bad = np.asarray(pc.is_valid(pa.array(reason, pa.string())))
    table = pa.table({**cols, S.PRICE: price})
    quarantined = quarantine_table(items.filter(pa.array(bad)), pa.array(reason[bad], pa.string()),
                                   pa.array([source] * int(bad.sum()), pa.string()))
    kept = table.filter(pa.array(~bad))
    # Keep the last row of each id.
    ids = kept.column(S.ITEM_ID).to_numpy(zero_copy_only=False)
    _, last_from_end = np.unique(ids[::-1], return_index=True)
    keep = np.sort(len(ids) - 1 - last_from_end)
    duplicates = kept.num_rows - len(keep)
    return S.conform(kept.take(pa.array(keep, pa.int64())), S.ITEMS, what="items"), quarantined, duplicates
