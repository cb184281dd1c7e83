"""Each adapter on a tiny inline sample, without Ray."""

import datetime as dt
import io as _io

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from interest import schemas as S
from interest.data import adapters as A
from interest.data.csv_source import MALFORMED, read_csv_stream

UTC = dt.timezone.utc


def csv_table(text: str, names=None, delimiter=",", header=True) -> pa.Table:
    cols = names or text.splitlines()[0].split(delimiter)
    read, parse, convert = A._binary_csv(cols, delimiter=delimiter, header=header)
    return pacsv.read_csv(_io.BytesIO(text.encode()), read_options=read, parse_options=parse,
                          convert_options=convert)


def test_taobao_maps_pv_and_parses_unix_seconds():
    raw = csv_table("1,2268318,2520377,pv,1511544070\n1,2333346,2520771,buy,1511561733\n",
                    names=A.TAOBAO_COLUMNS, header=False)
    out = A.convert_taobao(raw)
    assert out.column("behavior").to_pylist() == ["view", "buy"]
    assert out.column("ts")[0].as_py() == dt.datetime(2017, 11, 24, 17, 21, 10, tzinfo=UTC)
    assert out.column("category").to_pylist() == ["2520377", "2520771"]
    assert out.column(A.PARSE_ERROR).null_count == 2


def test_taobao_unparseable_timestamp_is_flagged_not_dropped():
    raw = csv_table("1,2,3,pv,notatime\n", names=A.TAOBAO_COLUMNS, header=False)
    out = A.convert_taobao(raw)
    assert out.num_rows == 1
    assert out.column(A.PARSE_ERROR).to_pylist() == ["unparseable timestamp"]


REES46 = """event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session
2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde
2019-10-01 00:00:01 UTC,purchase,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,554748717,9333dfbd
"""


def test_rees46_purchase_is_buy_and_category_falls_back_to_id():
    out = A.convert_rees46(csv_table(REES46))
    assert out.column("behavior").to_pylist() == ["view", "buy"]
    assert out.column("category").to_pylist() == ["2103807459595387724", "appliances.environment.water_heater"]
    assert out.column("price").to_pylist() == [35.79, 33.2]
    assert out.column("ts")[1].as_py() == dt.datetime(2019, 10, 1, 0, 0, 1, tzinfo=UTC)
    assert out.column("session_id").to_pylist() == ["72d76fde", "9333dfbd"]


def test_broken_utf8_flags_only_that_row():
    text = REES46.encode().replace(b"shiseido", b"shi\xff\xfeseido")
    read, parse, convert = A._binary_csv(A.REES46_COLUMNS, header=True)
    raw = pacsv.read_csv(_io.BytesIO(text), read_options=read, parse_options=parse, convert_options=convert)
    out = A.convert_rees46(raw)
    assert out.column(A.PARSE_ERROR).to_pylist() == ["broken encoding", None]


def test_events_format_parses_iso_and_numeric_timestamps_and_keeps_chinese():
    raw = pa.table({"user_id": ["u1", "u2", "u3"], "item_id": ["手机", "b", "c"], "behavior": ["PV", "Cart", "fav"],
                    "ts": ["2024-01-02T03:04:05Z", "1704164645", "2024-01-02 03:04:05"], "price": ["1.5", "", "x"]})
    out = A.convert_events(raw)
    assert out.column("item_id").to_pylist()[0] == "手机"
    assert out.column("behavior").to_pylist() == ["view", "cart", "fav"]
    expected = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert out.column("ts").to_pylist() == [expected] * 3
    assert out.column("price").to_pylist() == [1.5, None, None]
    assert out.column(A.PARSE_ERROR).to_pylist() == [None, None, "unparseable price"]


def test_events_format_millisecond_unit():
    raw = pa.table({"user_id": ["u"], "item_id": ["i"], "behavior": ["view"], "ts": [1704164645000]})
    out = A.convert_events(raw, ts_unit="ms")
    assert out.column("ts")[0].as_py() == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_sasrec_lines_become_positions_per_user():
    t = A.parse_sasrec("f", b"1 10\n1 11\n2 10\n1 12\n")
    rows = list(zip(*(t.column(c).to_pylist() for c in ("user_id", "item_id", "position"))))
    assert rows == [("1", "10", 0), ("1", "11", 1), ("1", "12", 2), ("2", "10", 0)]
    out = A.convert_order_only(t)
    ts = out.column("ts").to_pylist()
    assert ts[0] == A.ORDER_ONLY_EPOCH and ts[2] - ts[0] == dt.timedelta(seconds=2)


def test_sasrec_rejects_lines_that_are_not_pairs():
    with pytest.raises(A.InputError, match="f:2: expected 'user item'"):
        A.parse_sasrec("f", b"1 10\n1 11 12\n")


def test_s3rec_lines_and_attributes(tmp_path):
    (tmp_path / "Beauty.txt").write_text("1 5 6 7\n2 6\n")
    (tmp_path / "Beauty_item2attributes.json").write_text('{"5": [1, 2], "6": [3], "7": []}')
    t = A.parse_s3rec("f", (tmp_path / "Beauty.txt").read_bytes())
    assert t.column("item_id").to_pylist() == ["5", "6", "7", "6"]
    assert t.column("position").to_pylist() == [0, 1, 2, 0]
    items = A._s3rec_items(str(tmp_path / "Beauty.txt"), None)
    assert dict(zip(items["item_id"].to_pylist(), items["category"].to_pylist())) == {"5": "1.2", "6": "3", "7": ""}


def test_recbole_inter_and_item(tmp_path):
    (tmp_path / "ml.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                       "196\t242\t3\t881250949\n")
    (tmp_path / "ml.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                      "242\tKolya\t1996\tComedy Drama\n")
    fs, inner = A.io.filesystem(str(tmp_path / "ml.inter"))
    spec = A._recbole_spec([inner], fs)
    raw = pacsv.read_csv(str(tmp_path / "ml.inter"), read_options=spec.csv_read, parse_options=spec.csv_parse,
                         convert_options=spec.csv_convert)
    out = A.convert_recbole(raw)
    assert out.column("user_id").to_pylist() == ["196"] and out.column("item_id").to_pylist() == ["242"]
    assert out.column("ts")[0].as_py() == dt.datetime.fromtimestamp(881250949, UTC)
    items = A._recbole_items(str(tmp_path / "ml.inter"), None)
    assert items.to_pylist() == [{"item_id": "242", "title": "Kolya", "category": "Comedy|Drama",
                                  "description": "released 1996"}]


def write_unisrec(folder):
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    # user 0: items 0 1 2 3 4 (train targets 1, 2; valid 3; test 4); train rows are listed latest first.
    (folder / "S.train.inter").write_text(header + "0\t0 1\t2\n0\t0\t1\n1\t5\t6\n")
    (folder / "S.valid.inter").write_text(header + "0\t0 1 2\t3\n1\t5 6\t7\n")
    (folder / "S.test.inter").write_text(header + "0\t0 1 2 3\t4\n1\t5 6 7\t8\n")
    (folder / "S.item2index").write_text("".join(f"A{i}\t{i}\n" for i in range(9)))
    (folder / "S.user2index").write_text("UA\t0\nUB\t1\n")
    (folder / "S.text").write_text("item_id:token\ttext:token_seq\n"
                                   "A0\tPORTER-CABLE Sanding Roll 4. 5 in. Industrial & Scientific Abrasives. PORTER-CABLE. \n")


def test_unisrec_rebuilds_sequences_with_the_given_split(tmp_path):
    write_unisrec(tmp_path)
    t = A.read_unisrec_events(str(tmp_path))
    rows = [(r["user_id"], r["item_id"], r["position"], r["split"]) for r in t.to_pylist()]
    assert rows == [("UA", "A0", 0, "train"), ("UA", "A1", 1, "train"), ("UA", "A2", 2, "train"),
                    ("UA", "A3", 3, "valid"), ("UA", "A4", 4, "test"),
                    ("UB", "A5", 0, "train"), ("UB", "A6", 1, "train"), ("UB", "A7", 2, "valid"),
                    ("UB", "A8", 3, "test")]
    items = A._unisrec_items(str(tmp_path), None).to_pylist()[0]
    # Titles with ". " inside stay whole: category and brand are the last two sentences.
    assert items["title"] == "PORTER-CABLE Sanding Roll 4. 5 in"
    assert items["category"] == "Industrial & Scientific Abrasives" and items["brand"] == "PORTER-CABLE"


def test_csv_stream_yields_malformed_lines_as_rows():
    text = b"a,b\n1,2\n3\n4,5\n"
    read, parse, convert = A._binary_csv(["a", "b"], header=True)
    tables = list(read_csv_stream(_io.BytesIO(text), read, parse, convert))
    t = pa.concat_tables(tables)
    assert t.num_rows == 3
    assert sorted(v for v in t.column(MALFORMED).to_pylist() if v) == ["3"]


def test_unknown_format_lists_the_choices():
    with pytest.raises(A.InputError, match="choose one of: events, taobao"):
        A.get("nope")


def test_timestamp_beyond_int64_is_unparseable_not_an_overflow():
    ts, bad = A.unix_seconds(pa.array(["1e30", "100"]))
    assert ts.to_pylist()[0] is None and list(bad) == [True, False]


def test_every_adapter_declares_help_and_required_columns():
    for name, adapter in A.ADAPTERS.items():
        assert adapter.name == name and adapter.help and adapter.required
    assert set(S.EVENTS_REQUIRED) <= set(A.ADAPTERS["events"].required)
