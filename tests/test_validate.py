"""The shared validation rules, one reason each, without Ray."""

import datetime as dt

import pyarrow as pa
import pytest

from interest import schemas as S
from interest.data import validate as V
from interest.data.adapters import convert_events

BOUNDS = V.Bounds.parse("1990-01-01", "2030-01-01")


def reasons(**overrides):
    row = {"user_id": "u", "item_id": "i", "behavior": "view", "ts": "2024-01-01T00:00:00", "price": "1.0"}
    row.update(overrides)
    return V.event_reasons(convert_events(pa.table({k: [v] for k, v in row.items()})), BOUNDS).to_pylist()[0]


@pytest.mark.parametrize("overrides, reason", [
    ({}, None),
    ({"user_id": ""}, V.EMPTY_USER),
    ({"user_id": None}, V.EMPTY_USER),
    ({"item_id": "  "}, V.EMPTY_ITEM),
    ({"behavior": "teleport"}, V.UNKNOWN_BEHAVIOR),
    ({"behavior": "purchase"}, None),
    ({"ts": None}, V.MISSING_TS),
    ({"ts": "yesterday"}, "unparseable timestamp"),
    ({"ts": "1970-01-01T00:00:00"}, V.TS_OUT_OF_RANGE),
    ({"ts": "2999-01-01T00:00:00"}, V.TS_OUT_OF_RANGE),
    ({"price": "-3"}, V.NEGATIVE_PRICE),
    ({"price": "abc"}, "unparseable price"),
    ({"price": None}, None),
])
def test_event_rule(overrides, reason):
    assert reasons(**overrides) == reason


def test_first_broken_rule_wins():
    assert reasons(user_id="", item_id="", price="-1") == V.EMPTY_USER


def test_unknown_given_split_is_quarantined():
    assert reasons(split="holdout") == V.UNKNOWN_SPLIT
    assert reasons(split="test") is None


def test_default_upper_bound_is_tomorrow():
    b = V.Bounds.parse("1990-01-01", None)
    assert dt.timedelta(hours=23) < b.max_ts - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(days=1)
    with pytest.raises(ValueError):
        V.Bounds.parse("2030-01-01", "2020-01-01")


def test_quarantine_keeps_original_values_with_broken_bytes_escaped():
    raw = pa.table({"user_id": pa.array([b"u\xff"], pa.binary()), "n": [3]})
    q = V.quarantine_table(raw, pa.array(["broken encoding"]), pa.array(["f.csv"]))
    assert q.schema == S.QUARANTINE
    assert q.column("record").to_pylist() == ['{"user_id": "u\\\\xff", "n": "3"}']


def test_items_keep_last_duplicate_and_quarantine_bad_rows():
    items = pa.table({"item_id": ["a", "b", "a", "", "c"], "title": ["old", "B", "new", "x", "手机 红色"],
                      "price": [1.0, -2.0, 3.0, 1.0, 5.0]})
    kept, quarantined, dups = V.validate_items(items, "items.csv")
    assert kept.schema == S.ITEMS
    assert kept.column("item_id").to_pylist() == ["a", "c"]
    assert kept.column("title").to_pylist() == ["new", "手机 红色"]
    assert sorted(quarantined.column("reason").to_pylist()) == [V.EMPTY_ITEM, V.NEGATIVE_PRICE]
    assert dups == 1
    assert kept.num_rows + quarantined.num_rows + dups == items.num_rows
