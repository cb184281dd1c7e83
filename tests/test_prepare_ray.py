"""``interest prepare`` end to end on local Ray: accounting, outputs, errors."""

import datetime as dt
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from interest import io, schemas as S
from interest.data.prepare import PrepareConfig, SplitConfig, prepare
from interest.data.prepared import load_report
from interest.io import InputError

pytestmark = pytest.mark.ray


def read(path):
    return pq.read_table(str(path))


def test_synthetic_prepared_dataset_is_consistent(prepared_small, synthetic_small):
    report = load_report(str(prepared_small))
    total = report["total"]
    assert total["input"] == 6000 == total["kept"] + total["quarantined"] + total["duplicates_removed"]
    events = read(prepared_small / "events")
    assert events.schema == S.PREPARED_EVENTS
    assert events.num_rows == total["kept"]
    seqs = read(prepared_small / "sequences")
    assert seqs.schema == S.SEQUENCES
    assert sorted(seqs.column("user_idx").to_pylist()) == list(range(report["users"]))
    assert pc.sum(seqs.column("n_events")).as_py() == events.num_rows
    for row in seqs.slice(0, 50).to_pylist():
        assert row["ts"] == sorted(row["ts"])
        assert row["n_train"] + row["n_valid"] + row["n_test"] == len(row["items"]) <= 200
        assert row["n_test"] == (1 if row["n_events"] > 1 else 0)  # leave-last-one-out
    vocab = read(prepared_small / "vocab" / "items.parquet")
    assert vocab.column("item_idx").to_pylist() == list(range(vocab.num_rows))
    assert pc.sum(vocab.column("count")).as_py() == events.num_rows
    ids = vocab.column("item_id").to_pylist()
    assert ids == sorted(ids)  # by id, never by counts that include the test events
    assert report["format_version"] == 2
    # Events per day and behaviour (the report's chart), counted as the events were written.
    stamped = events.append_column("day", pc.strftime(events[S.TS], "%Y-%m-%d"))
    counted = stamped.group_by(["day", S.BEHAVIOR]).aggregate([(S.USER_IDX, "count")]).to_pylist()
    want = {}
    for row in counted:
        want.setdefault(row["day"], [0] * len(S.BEHAVIORS))[row[S.BEHAVIOR]] = row[f"{S.USER_IDX}_count"]
    assert report["days"] == dict(sorted(want.items())) and len(want) > 1
    users = read(prepared_small / "vocab" / "users")
    assert users.num_rows == report["users"]
    # Every catalogue item is indexed, so items nobody touched stay reachable by text.
    items = read(prepared_small / "items")
    catalogue = read(synthetic_small / "items.parquet")
    assert items.num_rows == catalogue.num_rows == vocab.num_rows
    assert set(items.column("title").to_pylist()) == set(catalogue.column("title").to_pylist())
    assert any("\u4e00" <= ch <= "\u9fff" for t in items.column("title").to_pylist() for ch in t)


def test_output_is_published_atomically(prepared_small):
    assert io.is_complete(str(prepared_small))
    leftovers = [p.name for p in prepared_small.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert not (prepared_small / "_staging").exists()


def test_existing_output_is_not_overwritten_without_asking(prepared_small, synthetic_small):
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        prepare(PrepareConfig(input=str(synthetic_small / "events"), out=str(prepared_small)))


BAD_CSV = """user_id,item_id,behavior,ts,price,session_id
u1,i1,pv,2024-01-01T00:00:00,1.0,s1
u1,i1,pv,2024-01-01T00:00:00,1.0,s1
u1,i2,cart,2024-01-01T00:01:00,2.0,s1
u1,i2,purchase,2024-01-01T00:02:00,2.0,s1
u2,i1,view,2024-01-02T00:00:00,,
,i1,view,2024-01-02T00:00:00,1.0,s2
u3,,view,2024-01-02T00:00:00,1.0,s2
u3,i1,teleport,2024-01-02T00:00:00,1.0,s2
u3,i1,view,not-a-time,1.0,s2
u3,i1,view,1850-01-01T00:00:00,1.0,s2
u3,i1,view,2024-01-02T00:00:00,-4,s2
u3,i1,view
u4,i3,fav,2024-01-03T00:00:00,3.5,s3
"""


def test_bad_rows_are_quarantined_and_accounted(tmp_path, ray_start_4_cpus):
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.csv").write_bytes(BAD_CSV.encode() + "u5,i\xe9,view,2024-01-03T00:00:00,1,s\n".encode("latin-1"))
    (data / "b.csv").write_text("user_id,item_id,behavior,ts\nu6,商品,buy,1704067200\n")
    out = tmp_path / "out"
    report = prepare(PrepareConfig(input=str(data), out=str(out)))
    a = report["files"][str(data / "a.csv")]
    assert a == {"input": 14, "kept": 5, "quarantined": 8, "duplicates_removed": 1, "forgotten": 0}
    assert report["files"][str(data / "b.csv")] == {"input": 1, "kept": 1, "quarantined": 0,
                                                     "duplicates_removed": 0, "forgotten": 0}
    assert report["quarantine_reasons"] == {
        "empty user_id": 1, "empty item_id": 1, "unknown behavior": 1, "unparseable timestamp": 1,
        "timestamp out of range": 1, "negative price": 1, "malformed row": 1, "broken encoding": 1}
    q = read(out / "quarantine" / "events")
    assert q.num_rows == 8 and q.schema == S.QUARANTINE
    teleport = [json.loads(r) for r, why in zip(q["record"].to_pylist(), q["reason"].to_pylist())
                if why == "unknown behavior"]
    assert teleport == [{"user_id": "u3", "item_id": "i1", "behavior": "teleport", "ts": "2024-01-02T00:00:00",
                         "price": "1.0", "session_id": "s2"}]
    events = read(out / "events")
    assert "商品" in events.column("item_id").to_pylist()
    assert sorted(set(events.column("behavior").to_pylist())) == [0, 2, 3, 4]  # view fav cart buy


def test_forgotten_users_reach_no_table_and_no_quarantine_record(tmp_path, ray_start_4_cpus):
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.csv").write_text(BAD_CSV)
    (tmp_path / "forget.csv").write_text("user_id\nu3\nu1\nnobody\n")  # u3's rows are all bad ones
    out = tmp_path / "out"
    report = prepare(PrepareConfig(input=str(data), out=str(out), forget=str(tmp_path / "forget.csv")))
    # u1: 4 rows (one a duplicate); u3: 6 rows, five quarantined before and one malformed line
    assert report["files"][str(data / "a.csv")] == {"input": 13, "kept": 2, "quarantined": 1,
                                                     "duplicates_removed": 0, "forgotten": 10}
    assert report["quarantine_reasons"] == {"empty user_id": 1}
    for folder in ("events", "sequences", "vocab/users", "quarantine/events"):
        table = read(out / folder)
        text = " ".join(str(v) for col in table.columns for v in col.to_pylist())
        assert "u1" not in text.split() and "u3" not in text, folder
    assert sorted(read(out / "sequences").column("user_id").to_pylist()) == ["u2", "u4"]


def test_time_split_with_quantile_cutoffs(synthetic_small, tmp_path, ray_start_4_cpus):
    report = prepare(PrepareConfig(input=str(synthetic_small / "events"), out=str(tmp_path / "t"),
                                   split=SplitConfig(method="time", test_frac=0.2, valid_frac=0.1)))
    counts = report["split"]["events"]
    share = counts["test"] / sum(counts.values())
    assert 0.15 < share < 0.25
    events = read(tmp_path / "t" / "events")
    test_start = dt.datetime.fromisoformat(report["split"]["test_start"])
    test_ts = events.filter(pc.equal(events.column("split"), 2)).column("ts")
    train_ts = events.filter(pc.equal(events.column("split"), 0)).column("ts")
    assert pc.min(test_ts).as_py() >= test_start > pc.max(train_ts).as_py()


def test_missing_column_fails_before_ray_work_naming_file_and_column(tmp_path, ray_start_4_cpus):
    data = tmp_path / "in"
    data.mkdir()
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"], "behavior": ["view"], "ts": [1]}),
                   data / "good.parquet")
    pq.write_table(pa.table({"user_id": ["u"], "item": ["i"], "behavior": ["view"], "ts": [1]}),
                   data / "bad.parquet")
    with pytest.raises(InputError, match=r"bad.parquet: required column\(s\) item_id missing"):
        prepare(PrepareConfig(input=str(data), out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_unreadable_file_is_named(tmp_path, ray_start_4_cpus):
    (tmp_path / "x.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(InputError, match="x.parquet: not a Parquet file"):
        prepare(PrepareConfig(input=str(tmp_path / "x.parquet"), out=str(tmp_path / "o")))
    with pytest.raises(InputError, match="input not found"):
        prepare(PrepareConfig(input=str(tmp_path / "missing"), out=str(tmp_path / "o")))


def test_wrong_format_is_named(tmp_path, ray_start_4_cpus):
    (tmp_path / "e.csv").write_text("user_id,item_id,behavior,ts\nu,i,view,1704067200\n")
    with pytest.raises(InputError, match="e.csv: not a REES46 file, missing column"):
        prepare(PrepareConfig(input=str(tmp_path / "e.csv"), format="rees46", out=str(tmp_path / "o")))


def test_json_lines_and_glob_inputs(tmp_path, ray_start_4_cpus):
    rows = [{"user_id": "u1", "item_id": "i1", "behavior": "view", "ts": "2024-01-01T00:00:00Z"},
            {"user_id": "u1", "item_id": "i2", "behavior": "buy", "ts": "2024-01-01T00:05:00Z", "price": 9.5},
            {"user_id": "u2", "item_id": "i1", "behavior": "cart", "ts": 1704067200}]
    (tmp_path / "day1.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    (tmp_path / "day2.jsonl").write_text(json.dumps(rows[2]) + "\n")
    (tmp_path / "notes.txt").write_text("not an input")
    report = prepare(PrepareConfig(input=str(tmp_path / "day*.jsonl"), out=str(tmp_path / "o")))
    assert report["total"] == {"input": 3, "kept": 3, "quarantined": 0, "duplicates_removed": 0, "forgotten": 0}
    seqs = {r["user_id"]: r for r in read(tmp_path / "o" / "sequences").to_pylist()}
    assert seqs["u1"]["behaviors"] == [0, 4] and seqs["u2"]["n_events"] == 1


def test_later_data_extends_the_item_vocabulary_without_moving_an_index(prepared_small, tmp_path):
    old = read(prepared_small / "vocab" / "items.parquet").to_pydict()
    known = old["item_id"][:2]
    t0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
    events = pa.table({"user_id": ["new1"] * 4, "item_id": [known[1], "zz-new", "aa-new", known[0]],
                       "behavior": ["view"] * 4, "ts": [t0 + dt.timedelta(minutes=m) for m in range(4)]})
    pq.write_table(events, tmp_path / "later.parquet")
    prepare(PrepareConfig(input=str(tmp_path / "later.parquet"), out=str(tmp_path / "out"),
                          extends=str(prepared_small)))
    new = read(tmp_path / "out" / "vocab" / "items.parquet").to_pydict()
    n = len(old["item_id"])
    assert new["item_id"][:n] == old["item_id"] and new["item_id"][n:] == ["aa-new", "zz-new"]
    assert new["item_idx"] == list(range(n + 2))
    # Items of the earlier dataset keep their titles, absent from this input.
    items = read(tmp_path / "out" / "items").sort_by("item_idx")
    assert items.column("title").to_pylist()[:n] == read(prepared_small / "items").sort_by(
        "item_idx").column("title").to_pylist()
    with pytest.raises(InputError, match="not a prepared dataset"):
        prepare(PrepareConfig(input=str(tmp_path / "later.parquet"), out=str(tmp_path / "out2"),
                              extends=str(tmp_path)))
