"""Readers for the event-log formats interest understands.

Every adapter turns its source into the same *converted* batch: the contract's event
columns (strings and parsed values, ``null`` where parsing failed), an optional
given ``split``, item attributes found on event rows, a ``parse_error`` column, and
the raw values for quarantine. :mod:`interest.data.validate` then applies the rules
shared by every format. Each adapter's ``convert`` is a pure function of one Arrow
batch, so it is tested without Ray; ``read`` builds the Ray Data pipeline.

Formats (``--format``):

- ``events``: the contract itself (Parquet, CSV or JSON Lines), items from ``--items``;
- ``taobao``: Taobao UserBehavior CSV, no header (user, item, category, behaviour, unix ts);
- ``rees46``: REES46 e-commerce events CSV with header;
- ``sasrec``: ``uid iid`` lines in time order per user (SASRec/BERT4Rec files);
- ``s3rec``: ``uid i1 i2 ...`` lines with a sibling ``*_item2attributes.json``;
- ``recbole``: RecBole atomic ``.inter`` (and ``.item``) files with typed headers;
- ``unisrec``: UniSRec/RecBole split files ``.train/.valid/.test.inter`` with ``.text``.

Order-only formats have no timestamps: event ``k`` of a user gets
``ORDER_ONLY_EPOCH + k`` seconds, which keeps the order and nothing more.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson

from interest import io
from interest import schemas as S
from interest.io import InputError

ORDER_ONLY_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
_EPOCH_US = int(ORDER_ONLY_EPOCH.timestamp() * 1_000_000)

PARSE_ERROR = "parse_error"
# Columns of a converted batch beyond the contract's event columns.
CONVERTED = pa.schema(
    list(S.EVENTS.remove(S.EVENTS.get_field_index(S.TS)))
    + [
        pa.field(S.TS, S.TS_TYPE),
        pa.field(S.SPLIT, pa.string()),
        pa.field(S.CATEGORY, pa.string()),
        pa.field(S.BRAND, pa.string()),
        pa.field(S.TITLE, pa.string()),
        pa.field(PARSE_ERROR, pa.string()),
    ]
)
PATH_COL = "path"  # added by Ray Data's include_paths


# --- small vectorised parsers (null + error text where a value does not parse) ----------

def decode_utf8(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Binary -> string; rows with invalid UTF-8 become null and are flagged."""
    col = _as_array(col)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.cast(pa.string()), np.zeros(len(col), bool)
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), pa.string()), np.zeros(len(col), bool)
    if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        return pc.cast(col, pa.string()), np.zeros(len(col), bool)
    try:
        return col.cast(pa.string()), np.zeros(len(col), bool)
    except pa.ArrowInvalid:
        pass
    values, bad = [], np.zeros(len(col), bool)
    for i, v in enumerate(col.to_pylist()):  # rare path: only batches with bad bytes
        try:
            values.append(None if v is None else v.decode("utf-8"))
        except UnicodeDecodeError:
            values.append(None)
            bad[i] = True
    return pa.array(values, pa.string()), bad


def _as_array(col) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


_INT_RE = r"^\s*[+-]?\d+\s*$"
_FLOAT_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"


def parse_number(col: pa.Array, typ: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Text -> number; returns values (null where unparseable) and the unparseable mask."""
    col = _as_array(col)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return pc.cast(col, typ), np.zeros(len(col), bool)
    text = pc.utf8_trim_whitespace(col.cast(pa.string()))
    empty = pc.fill_null(pc.equal(text, ""), True)
    ok = pc.match_substring_regex(text, _INT_RE if pa.types.is_integer(typ) else _FLOAT_RE)
    ok = pc.fill_null(ok, False)
    clean = pc.if_else(ok, text, pa.scalar(None, pa.string()))
    values = pc.cast(clean, pa.float64() if not pa.types.is_integer(typ) else pa.int64()).cast(typ)
    bad = np.asarray(pc.and_(pc.invert(ok), pc.invert(empty)))
    return values, bad


def unix_seconds(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    secs, bad = parse_number(col, pa.float64())
    # Beyond about the year 9900 microseconds overflow int64: treat as unparseable.
    in_range = pc.fill_null(pc.less(pc.abs(secs), 2.5e11), True)
    secs = pc.if_else(in_range, secs, pa.scalar(None, pa.float64()))
    us = pc.cast(pc.round(pc.multiply(secs, 1e6)), pa.int64())
    return us.cast(S.TS_TYPE), bad | ~np.asarray(in_range)


def _nonempty(col: pa.Array) -> np.ndarray:
    if pa.types.is_string(col.type) or pa.types.is_binary(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(col.cast(pa.string())), ""), False))
    return np.asarray(pc.is_valid(col))


def parse_timestamp(col: pa.Array, *, fmt: str | None = None, unit: str = "s") -> tuple[pa.Array, np.ndarray]:
    """Timestamps from numbers (unix ``unit``), ISO-8601 text, or text in ``fmt``; all UTC."""
    col = _as_array(col)
    if pa.types.is_timestamp(col.type):
        if col.type.tz is None:
            col = pc.assume_timezone(col, "UTC")
        return col.cast(S.TS_TYPE), np.zeros(len(col), bool)
    if pa.types.is_date(col.type):
        return col.cast(pa.timestamp("us")).cast(S.TS_TYPE), np.zeros(len(col), bool)
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}[unit]
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return unix_seconds(pc.multiply(col.cast(pa.float64()), scale))
    text = pc.utf8_trim_whitespace(col.cast(pa.string()))
    nonempty = _nonempty(text)
    if fmt:
        ts = pc.strptime(text, format=fmt, unit="us", error_is_null=True)
        ts = pc.assume_timezone(ts, "UTC") if ts.type.tz is None else ts
        ts = ts.cast(S.TS_TYPE)
        return ts, np.asarray(pc.is_null(ts)) & nonempty
    numeric = np.asarray(pc.fill_null(pc.match_substring_regex(text, _FLOAT_RE), False))
    if numeric.all() or (numeric | ~nonempty).all():
        return unix_seconds(pc.multiply(parse_number(text, pa.float64())[0], scale))
    values: list[int | None] = []
    for s, is_num in zip(text.to_pylist(), numeric):
        values.append(_parse_one(s, is_num, scale))
    us = pa.array(values, pa.int64())
    return us.cast(S.TS_TYPE), np.asarray(pc.is_null(us)) & nonempty


def _parse_one(s: str | None, is_num: bool, scale: float) -> int | None:
    if s is None or s == "":
        return None
    try:
        if is_num:
            us = float(s) * scale * 1e6
            return int(round(us)) if abs(us) < 2.5e17 else None  # beyond ~year 9900: unparseable
        s = s.replace(" UTC", "+00:00").replace("Z", "+00:00")
        t = dt.datetime.fromisoformat(s)
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return int(t.timestamp() * 1_000_000)
    except (ValueError, OverflowError):
        return None


def order_only_ts(position: np.ndarray) -> pa.Array:
    return pa.array(_EPOCH_US + position.astype(np.int64) * 1_000_000, pa.int64()).cast(S.TS_TYPE)


def first_error(n: int, *checks: tuple[np.ndarray, str]) -> pa.Array:
    """Per row, the message of the first check that fails (null where all pass)."""
    out = np.full(n, None, dtype=object)
    for mask, message in reversed(checks):
        out[np.asarray(mask, bool)] = message
    return pa.array(out, pa.string())


def _col(table: pa.Table, name: str, n: int, typ=pa.string()) -> pa.Array:
    if name in table.column_names:
        return _as_array(table.column(name))
    return pa.nulls(n, typ)


def converted(n: int, **cols: pa.Array) -> pa.Table:
    arrays = [cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in CONVERTED]
    return pa.Table.from_arrays([a if a.type == f.type else a.cast(f.type) for a, f in zip(arrays, CONVERTED)],
                                schema=CONVERTED)


# --- adapters ---------------------------------------------------------------------

@dataclass
class ReadSpec:
    """How Ray Data reads one format: the reader and its options."""

    kind: str  # "csv" | "parquet" | "json" | "files"
    csv_read: pacsv.ReadOptions | None = None
    csv_parse: pacsv.ParseOptions | None = None
    csv_convert: pacsv.ConvertOptions | None = None
    # For kind "files": parse one whole file into a raw table (order-only formats,
    # where a user's position needs the whole file).
    parse_file: Callable[[str, bytes], pa.Table] | None = None


@dataclass
class Adapter:
    name: str
    help: str
    extensions: tuple[str, ...] | None
    required: tuple[str, ...]  # raw columns that must exist, checked per file
    convert: Callable[[pa.Table], pa.Table]
    read_spec: Callable[[list[str], "pafs.FileSystem"], ReadSpec]
    # Catalogue on the side (e.g. item2attributes.json); None when items come from events.
    items: Callable[[str, str | None], pa.Table | None] = lambda path, items_path: None


def _binary_csv(names: list[str], *, delimiter: str = ",", header: bool) -> tuple:
    read = pacsv.ReadOptions(column_names=None if header else names, block_size=16 << 20)
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=False if delimiter == "\t" else '"')
    # Read text as bytes: one bad byte must quarantine one row, not fail the file.
    convert = pacsv.ConvertOptions(column_types={n: pa.binary() for n in names}, strings_can_be_null=False)
    return read, parse, convert


def _text_columns(raw: pa.Table, names: tuple[str, ...]) -> tuple[dict[str, pa.Array], np.ndarray]:
    out, bad = {}, np.zeros(raw.num_rows, bool)
    for name in names:
        if name in raw.column_names:
            out[name], b = decode_utf8(raw.column(name))
            bad |= b
    return out, bad


def normalise_behavior(col: pa.Array) -> pa.Array:
    """Lower-case and map source vocabularies (``pv``, ``purchase``, ...) onto ours."""
    low = pc.utf8_lower(pc.utf8_trim_whitespace(col))
    keys = pa.array(list(S.BEHAVIOR_ALIASES))
    idx = pc.index_in(low, value_set=keys)
    mapped = pc.take(pa.array(list(S.BEHAVIOR_ALIASES.values())), idx)
    return pc.coalesce(mapped, low)


def _blank_to_null(col: pa.Array) -> pa.Array:
    return pc.if_else(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), True),
                      pa.scalar(None, pa.string()), col)


# events: the contract itself -------------------------------------------------------------

def convert_events(raw: pa.Table, *, ts_unit: str = "s") -> pa.Table:
    n = raw.num_rows
    text, bad_enc = _text_columns(raw, (S.USER_ID, S.ITEM_ID, S.BEHAVIOR, S.SESSION_ID, S.SPLIT,
                                        S.CATEGORY, S.BRAND, S.TITLE))
    ts, bad_ts = parse_timestamp(_col(raw, S.TS, n), unit=ts_unit)
    price, bad_price = parse_number(_col(raw, S.PRICE, n), pa.float64())
    return converted(
        n,
        user_id=text.get(S.USER_ID, pa.nulls(n, pa.string())),
        item_id=text.get(S.ITEM_ID, pa.nulls(n, pa.string())),
        behavior=normalise_behavior(text.get(S.BEHAVIOR, pa.nulls(n, pa.string()))),
        ts=ts,
        session_id=_blank_to_null(text[S.SESSION_ID]) if S.SESSION_ID in text else pa.nulls(n, pa.string()),
        price=price,
        split=text.get(S.SPLIT, pa.nulls(n, pa.string())),
        category=text.get(S.CATEGORY, pa.nulls(n, pa.string())),
        brand=text.get(S.BRAND, pa.nulls(n, pa.string())),
        title=text.get(S.TITLE, pa.nulls(n, pa.string())),
        parse_error=first_error(n, (bad_enc, "broken encoding"), (bad_ts, "unparseable timestamp"),
                                (bad_price, "unparseable price")),
    )


def _tabular_spec(files: list[str], fs: pafs.FileSystem) -> ReadSpec:
    kinds = {_file_kind(f) for f in files}
    if len(kinds) != 1:
        raise InputError(f"input mixes file formats ({', '.join(sorted(kinds))}); give one format per input")
    kind = kinds.pop()
    if kind == "csv":
        header = read_csv_header(files[0], fs)
        read, parse, convert = _binary_csv(header, header=True)
        return ReadSpec("csv", read, parse, convert)
    return ReadSpec(kind)


def _file_kind(path: str) -> str:
    p = path.lower().removesuffix(".gz")
    if p.endswith(".parquet") or p.endswith(".pq"):
        return "parquet"
    if p.endswith(".csv") or p.endswith(".tsv"):
        return "csv"
    if p.endswith(".jsonl") or p.endswith(".json") or p.endswith(".ndjson"):
        return "json"
    raise InputError(f"{path}: unknown file type; expected .parquet, .csv or .jsonl")


def read_csv_header(path: str, fs: pafs.FileSystem, delimiter: str = ",") -> list[str]:
    try:
        with fs.open_input_stream(path, compression="detect") as f:
            first = f.read(1 << 16).split(b"\n", 1)[0].decode("utf-8", "replace").strip("\r\ufeff")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    return [c.strip().strip('"') for c in first.split(delimiter)]


def read_table_file(path: str, fs: pafs.FileSystem) -> pa.Table:
    """Read a small side table (items catalogue, forget list) of any supported kind."""
    import pyarrow.parquet as pq

    kind = _file_kind(path)
    try:
        if kind == "parquet":
            return pq.read_table(path, filesystem=fs)
        with fs.open_input_stream(path, compression="detect") as f:
            data = f.read()
        import io as _io

        if kind == "csv":
            return pacsv.read_csv(_io.BytesIO(data))
        return pajson.read_json(_io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: cannot read as {kind}: {exc}") from None


def items_from_table_files(items_path: str | None) -> pa.Table | None:
    if not items_path:
        return None
    fs, _ = io.filesystem(items_path)
    tables = [read_table_file(f, fs) for f in io.expand(items_path)]
    table = pa.concat_tables(tables, promote_options="permissive")
    for name in S.ITEMS_REQUIRED:
        if name not in table.column_names:
            raise InputError(f"items {items_path}: required column {name!r} is missing "
                             f"(found {', '.join(table.column_names)})")
    return table


# taobao ---------------------------------------------------------------------------

TAOBAO_COLUMNS = ["user_id", "item_id", "category_id", "behavior", "ts"]


def convert_taobao(raw: pa.Table) -> pa.Table:
    n = raw.num_rows
    text, bad_enc = _text_columns(raw, ("user_id", "item_id", "category_id", "behavior"))
    ts, bad_ts = unix_seconds(raw.column("ts"))
    return converted(
        n, user_id=text["user_id"], item_id=text["item_id"], behavior=normalise_behavior(text["behavior"]),
        ts=ts, category=_blank_to_null(text["category_id"]),
        parse_error=first_error(n, (bad_enc, "broken encoding"), (bad_ts, "unparseable timestamp")),
    )


def _taobao_spec(files, fs):
    read, parse, convert = _binary_csv(TAOBAO_COLUMNS, header=False)
    return ReadSpec("csv", read, parse, convert)


# rees46 ---------------------------------------------------------------------------

REES46_COLUMNS = ["event_time", "event_type", "product_id", "category_id", "category_code", "brand",
                  "price", "user_id", "user_session"]


def convert_rees46(raw: pa.Table) -> pa.Table:
    n = raw.num_rows
    text, bad_enc = _text_columns(raw, ("event_type", "product_id", "category_id", "category_code", "brand",
                                        "user_id", "user_session", "event_time"))
    ts, bad_ts = parse_timestamp(text["event_time"], fmt="%Y-%m-%d %H:%M:%S UTC")
    price, bad_price = parse_number(raw.column("price"), pa.float64())
    # category_code is empty on a third of the rows; fall back to the numeric id so the
    # item keeps a category (tags can still be derived from the id).
    category = pc.coalesce(_blank_to_null(text["category_code"]), _blank_to_null(text["category_id"]))
    return converted(
        n, user_id=text["user_id"], item_id=text["product_id"], behavior=normalise_behavior(text["event_type"]),
        ts=ts, session_id=_blank_to_null(text["user_session"]), price=price, category=category,
        brand=_blank_to_null(text["brand"]),
        parse_error=first_error(n, (bad_enc, "broken encoding"), (bad_ts, "unparseable timestamp"),
                                (bad_price, "unparseable price")),
    )


def _rees46_spec(files, fs):
    header = read_csv_header(files[0], fs)
    missing = [c for c in REES46_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{files[0]}: not a REES46 file, missing column(s) {', '.join(missing)}")
    read, parse, convert = _binary_csv(header, header=True)
    return ReadSpec("csv", read, parse, convert)


# recbole atomic files ----------------------------------------------------------------

def _recbole_names(header: list[str]) -> list[str]:
    return [h.split(":", 1)[0] for h in header]


def convert_recbole(raw: pa.Table) -> pa.Table:
    n = raw.num_rows
    text, bad_enc = _text_columns(raw, ("user_id", "item_id"))
    if "timestamp" in raw.column_names:
        ts, bad_ts = unix_seconds(raw.column("timestamp"))
    else:
        ts, bad_ts = pa.nulls(n, S.TS_TYPE), np.zeros(n, bool)
    return converted(
        n, user_id=text["user_id"], item_id=text["item_id"], behavior=pa.array(["view"] * n, pa.string()),
        ts=ts, parse_error=first_error(n, (bad_enc, "broken encoding"), (bad_ts, "unparseable timestamp")),
    )


def _recbole_spec(files, fs):
    header = read_csv_header(files[0], fs, delimiter="\t")
    names = _recbole_names(header)
    for c in ("user_id", "item_id"):
        if c not in names:
            raise InputError(f"{files[0]}: RecBole .inter file lacks column {c!r} (header: {' '.join(header)})")
    read = pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=16 << 20)
    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False)
    convert = pacsv.ConvertOptions(column_types={c: pa.binary() for c in names}, strings_can_be_null=False)
    return ReadSpec("csv", read, parse, convert)


def _recbole_items(path: str, items_path: str | None) -> pa.Table | None:
    data = _side_file(path, items_path, ".item")
    if data is None:
        return None
    lines = data.decode("utf-8").splitlines()
    names = _recbole_names(lines[0].split("\t"))
    rows = [line.split("\t") for line in lines[1:] if line]
    cols = {name: [r[i] if i < len(r) else None for r in rows] for i, name in enumerate(names)}
    title = cols.get("movie_title") or cols.get("title")
    classes = cols.get("class") or cols.get("categories") or cols.get("genre")
    columns = {
        S.ITEM_ID: cols["item_id"],
        S.TITLE: title,
        # Several categories of one item are joined with "|" (the contract's multi-value form).
        S.CATEGORY: ["|".join(c.split()) if c else None for c in classes] if classes else None,
        S.DESCRIPTION: [f"released {y}" if y else None for y in cols["release_year"]]
        if "release_year" in cols else None,
    }
    return pa.table({k: v for k, v in columns.items() if v is not None})


def _side_file(path: str, items_path: str | None, suffix: str) -> bytes | None:
    """The catalogue file: ``items_path`` if given, else the first file beside ``path``
    whose name ends in ``suffix`` (None when there is none)."""
    if items_path is not None:
        fs, inner = io.filesystem(items_path)
    else:
        fs, _ = io.filesystem(path)
        found = [f for f in _siblings(path) if f.endswith(suffix)]
        if not found:
            return None
        inner = found[0]
    with fs.open_input_stream(inner) as f:
        return f.read()


def _siblings(path: str) -> list[str]:
    """Files beside ``path`` (itself a file or folder), in the filesystem's own form."""
    fs, inner = io.filesystem(path)
    info = fs.get_file_info(inner)
    folder = inner if info.type == pafs.FileType.Directory else os.path.dirname(inner)
    prefix = "s3://" if io.is_s3(path) else ""
    return io.expand(prefix + folder)


# order-only formats -----------------------------------------------------------------

def _events_from_sequences(users: list[str], seqs: list[list[str]], splits: list[list[str]] | None = None) -> pa.Table:
    lengths = np.fromiter((len(s) for s in seqs), np.int64, len(seqs))
    items = [i for s in seqs for i in s]
    user_col = np.repeat(np.asarray(users, dtype=object), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    position = np.arange(len(items)) - starts
    cols = {"user_id": pa.array(user_col, pa.string()), "item_id": pa.array(items, pa.string()),
            "position": pa.array(position, pa.int64())}
    if splits is not None:
        cols["split"] = pa.array([x for s in splits for x in s], pa.string())
    return pa.table(cols)


def parse_sasrec(path: str, data: bytes) -> pa.Table:
    """``uid iid`` per line, a user's lines in time order."""
    users, seqs, index = [], [], {}
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise InputError(f"{path}:{lineno}: expected 'user item', got {line[:80]!r}")
        u, i = parts
        if u not in index:
            index[u] = len(users)
            users.append(u)
            seqs.append([])
        seqs[index[u]].append(i)
    return _events_from_sequences(users, seqs)


def parse_s3rec(path: str, data: bytes) -> pa.Table:
    """``uid i1 i2 ...``: one user per line, items in time order."""
    users, seqs = [], []
    for line in data.decode("utf-8").splitlines():
        parts = line.split()
        if parts:
            users.append(parts[0])
            seqs.append(parts[1:])
    return _events_from_sequences(users, seqs)


def convert_order_only(raw: pa.Table) -> pa.Table:
    n = raw.num_rows
    return converted(
        n, user_id=raw.column("user_id"), item_id=raw.column("item_id"),
        behavior=pa.array(["view"] * n, pa.string()),
        ts=order_only_ts(raw.column("position").to_numpy()),
        split=_col(raw, "split", n), parse_error=pa.nulls(n, pa.string()),
    )


def _files_spec(parser):
    return lambda files, fs: ReadSpec("files", parse_file=parser)


def _s3rec_items(path: str, items_path: str | None) -> pa.Table | None:
    data = _side_file(path, items_path, "item2attributes.json")
    if data is None:
        return None
    attrs = json.loads(data)
    ids = list(attrs)
    # Attribute ids only (categories and brand): kept in order as a "."-joined path.
    return pa.table({S.ITEM_ID: ids, S.CATEGORY: [".".join(str(a) for a in attrs[i]) for i in ids]})


# unisrec ----------------------------------------------------------------------------

_UNISREC_SPLITS = {".train.inter": "train", ".valid.inter": "valid", ".test.inter": "test"}


def parse_unisrec(paths: list[str], fs: pafs.FileSystem) -> pa.Table:
    """Rebuild every user's sequence from UniSRec's augmented split files.

    Each ``.inter`` row is (user, the last <=50 items before the target, target).
    Every event is the target of exactly one row, except each user's first item,
    which only ever appears as the one-item prefix of its earliest training row.
    Rows of a user are listed latest first in the training file, so a target's
    position is counted from the end of the user's training rows.
    """
    by_split: dict[str, list[list[str]]] = {}
    for path in paths:
        split = next(s for suffix, s in _UNISREC_SPLITS.items() if path.endswith(suffix))
        with fs.open_input_stream(path) as f:
            lines = f.read().decode("utf-8").splitlines()
        if not lines or not lines[0].startswith("user_id"):
            raise InputError(f"{path}: not a UniSRec .inter file (header {lines[0][:80] if lines else ''!r})")
        by_split[split] = [line.split("\t") for line in lines[1:] if line]
    missing = [s for s in ("train", "valid", "test") if s not in by_split]
    if missing:
        raise InputError(f"UniSRec input lacks the {', '.join(missing)} file(s)")
    seqs: dict[str, list[tuple[str, str]]] = {}
    first: dict[str, str] = {}
    for user, prefix, target in by_split["train"]:
        seqs.setdefault(user, []).append((target, "train"))
        p = prefix.split()
        if len(p) == 1:
            first[user] = p[0]
    for split in ("valid", "test"):
        for user, prefix, target in by_split[split]:
            if user not in seqs:
                seqs[user] = []
                first.setdefault(user, prefix.split()[0])
            seqs[user].append((target, split))
    users, items, splits = [], [], []
    for user, rows in seqs.items():
        train = [r for r in rows if r[1] == "train"][::-1]  # file order is latest first
        rest = [r for r in rows if r[1] != "train"]
        ordered = ([(first[user], "train")] if user in first else []) + train + sorted(
            rest, key=lambda r: r[1] == "test")
        users.append(user)
        items.append([i for i, _ in ordered])
        splits.append([s for _, s in ordered])
    return _events_from_sequences(users, items, splits)


def _unisrec_maps(paths: list[str], fs) -> tuple[dict[str, str], dict[str, str]]:
    maps = []
    for suffix in (".item2index", ".user2index"):
        found = [p for p in paths if p.endswith(suffix)]
        mapping = {}
        if found:
            with fs.open_input_stream(found[0]) as f:
                for line in f.read().decode("utf-8").splitlines():
                    if line:
                        key, idx = line.split("\t")
                        mapping[idx] = key
        maps.append(mapping)
    return maps[0], maps[1]


def read_unisrec_events(path: str) -> pa.Table:
    """The whole UniSRec folder as one raw table (these files are small by construction)."""
    fs, _ = io.filesystem(path)
    files = _siblings(path)
    inters = [f for f in files if f.endswith(tuple(_UNISREC_SPLITS))]
    table = parse_unisrec(inters, fs)
    item_map, user_map = _unisrec_maps(files, fs)
    # Ids in the .inter files are indices; map them back to ASINs so items join their text.
    if item_map:
        table = table.set_column(1, "item_id", pa.array([item_map.get(i, i) for i in table["item_id"].to_pylist()]))
    if user_map:
        table = table.set_column(0, "user_id", pa.array([user_map.get(u, u) for u in table["user_id"].to_pylist()]))
    return table.append_column(PATH_COL, pa.array([unisrec_source(files)] * table.num_rows, pa.string()))


def unisrec_source(files: list[str]) -> str:
    """The name UniSRec events are accounted under: the three split files together."""
    inters = sorted(f for f in files if f.endswith(tuple(_UNISREC_SPLITS)))
    return inters[0].rsplit(".", 2)[0] + ".{train,valid,test}.inter"


def _unisrec_items(path: str, items_path: str | None) -> pa.Table | None:
    data = _side_file(path, items_path, ".text")
    if data is None:
        return None
    lines = data.decode("utf-8").splitlines()
    ids, titles, cats, brands = [], [], [], []
    for line in lines[1:]:
        if not line:
            continue
        item, text = line.split("\t", 1)
        # "title. category path. brand." -- titles may hold ". " themselves, so split
        # from the right: the last two sentences are category path and brand.
        parts = [p.strip() for p in re.split(r"\.\s", text.strip().rstrip(".").strip() + " ")]
        parts = [p for p in parts if p] or [""]
        title = ". ".join(parts[:-2]) if len(parts) >= 3 else parts[0]
        ids.append(item)
        titles.append(title)
        cats.append(parts[-2] if len(parts) >= 3 else None)
        brands.append(parts[-1] if len(parts) >= 3 else None)
    return pa.table({S.ITEM_ID: ids, S.TITLE: titles, S.CATEGORY: cats, S.BRAND: brands,
                     S.DESCRIPTION: [line.split("\t", 1)[1].strip() for line in lines[1:] if line]})


ADAPTERS: dict[str, Adapter] = {
    "events": Adapter(
        "events", "the interest event contract (Parquet, CSV or JSON Lines); items via --items",
        (".parquet", ".pq", ".csv", ".csv.gz", ".jsonl", ".json", ".ndjson"), S.EVENTS_REQUIRED,
        convert_events, _tabular_spec, items=lambda path, items_path: items_from_table_files(items_path)),
    "taobao": Adapter(
        "taobao", "Taobao UserBehavior CSV without header: user,item,category,behavior(pv/cart/fav/buy),unix_ts",
        (".csv",), tuple(TAOBAO_COLUMNS), convert_taobao, _taobao_spec),
    "rees46": Adapter(
        "rees46", "REES46 e-commerce events CSV (event_time,event_type,product_id,...,user_session)",
        (".csv", ".csv.gz"), tuple(REES46_COLUMNS), convert_rees46, _rees46_spec),
    "sasrec": Adapter(
        "sasrec", "'uid iid' lines, time-ordered per user (SASRec / BERT4Rec files); order only",
        (".txt",), ("user_id", "item_id", "position"), convert_order_only, _files_spec(parse_sasrec)),
    "s3rec": Adapter(
        "s3rec", "'uid i1 i2 ...' lines (S3-Rec files) with a sibling *_item2attributes.json; order only",
        (".txt",), ("user_id", "item_id", "position"), convert_order_only, _files_spec(parse_s3rec),
        items=_s3rec_items),
    "recbole": Adapter(
        "recbole", "RecBole atomic files: .inter (user_id, item_id, timestamp) and a sibling .item",
        (".inter",), ("user_id", "item_id"), convert_recbole, _recbole_spec, items=_recbole_items),
    "unisrec": Adapter(
        "unisrec", "UniSRec split files .train/.valid/.test.inter with .text item text (given split kept)",
        None, ("user_id", "item_id", "position"), convert_order_only, _files_spec(None), items=_unisrec_items),
}


def get(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise InputError(f"unknown format {name!r}; choose one of: {', '.join(ADAPTERS)}") from None
