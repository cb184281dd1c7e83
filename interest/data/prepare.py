"""``interest prepare``: raw logs -> a clean, split, indexed dataset, on Ray.

The job runs in three passes so memory stays bounded however large the input:

1. **stage** (Ray Data, streaming): read -> adapter -> validate -> write Parquet
   partitioned by ``hash(user_id) % buckets``; rows that fail a rule go to bucket -1
   with their original values and reason. The driver receives only per-file row
   counts, per-item counts and a timestamp sample, never events.
2. **count** (one Ray task per bucket, one column read): distinct users per bucket,
   so user indices can be contiguous. The item vocabulary is built on the driver
   from the item counts: O(items), never O(events).
3. **finish** (one Ray task per bucket): sort by user and time, drop exact
   duplicates, map ids to indices, assign the split, build capped per-user
   sequences, write the prepared tables. A bucket holds about ``rows / buckets``
   events, and ``buckets`` grows with the input, so each task's memory does not.

The prepared folder (local or ``s3://``) is published atomically (:class:`io.Publication`):

    events/      PREPARED_EVENTS, every kept event with indices and split
    sequences/   SEQUENCES, one row per user
    items/       PREPARED_ITEMS, the catalogue (event-derived attributes where no catalogue)
    vocab/       users/ (USER_VOCAB) and items.parquet (ITEM_VOCAB)
    changed/     SEQUENCES of the users with new events (incremental preparations only)
    quarantine/  events/ and items.parquet (QUARANTINE)
    prepare_report.json   accounting of every input row, config, split, counts
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq
from ray.data import Datasink

from interest import config as C
from interest import io
from interest import schemas as S
from interest.config import ConfigError
from interest.data import adapters, privacy
from interest.data.adapters import PATH_COL, InputError
from interest.data.csv_source import MALFORMED, read_csv_stream
from interest.data.prepared import FORMAT_VERSION, REPORT, load_report
from interest.data.validate import Bounds, event_reasons, quarantine_table, validate_items

log = logging.getLogger(__name__)

BUCKET = "_bucket"
SPLIT_METHODS = ("leave_last", "time", "given")
# Staged rows: kept events (reason null) or quarantined rows (record set), one schema.
STAGED = pa.schema(
    [f.with_nullable(True) for f in S.STAGED_EVENTS]
    + [pa.field(S.CATEGORY, pa.string()), pa.field(S.BRAND, pa.string()), pa.field(S.TITLE, pa.string()),
       pa.field(S.REASON, pa.string()), pa.field(S.RECORD, pa.string()), pa.field(BUCKET, pa.int32())]
)
# Events per bucket of the finish pass: its sort and copies take ~1 KB per event, so
# four concurrent tasks stay near 1 GB.
_BUCKET_ROWS = 250_000


@dataclass
class SplitConfig:
    """How events are split into train / valid / test.

    Args:
        method: ``leave_last`` (per user, the last ``k`` events are test and the ``k``
            before them validation; a user keeps at least one training event),
            ``time`` (global cutoffs) or ``given`` (the source's own split, UniSRec).
        k: events per user held out for each of valid and test (``leave_last``).
        test_start: ``time``: events at or after this ISO time are test.
        valid_start: ``time``: events at or after this (and before ``test_start``) are validation.
        test_frac: ``time`` without cutoffs: the test cutoff is this quantile of time from the end.
        valid_frac: likewise for validation, before the test cutoff.
    """

    method: str = "leave_last"
    k: int = 1
    test_start: str | None = None
    valid_start: str | None = None
    test_frac: float = 0.1
    valid_frac: float = 0.1

    def __post_init__(self):
        if self.method not in SPLIT_METHODS:
            raise ConfigError(f"split.method must be one of {', '.join(SPLIT_METHODS)}, got {self.method!r}")
        if self.k < 1:
            raise ConfigError(f"split.k must be >= 1, got {self.k}")
        if not (0 <= self.valid_frac < 1 and 0 < self.test_frac < 1 and self.valid_frac + self.test_frac < 1):
            raise ConfigError("split.test_frac and split.valid_frac must lie in [0, 1) and sum below 1")
        for name in ("test_start", "valid_start"):
            value = getattr(self, name)
            if value is not None:
                try:
                    dt.datetime.fromisoformat(value)
                except ValueError:
                    raise ConfigError(f"split.{name} must be an ISO date or time, got {value!r}") from None


@dataclass
class PrepareConfig:
    """Configuration of ``interest prepare``.

    Args:
        input: file, folder, glob or ``s3://`` path of the event logs.
        format: adapter name (:data:`interest.data.adapters.ADAPTERS`).
        items: optional items catalogue (Parquet/CSV/JSONL); some formats find theirs beside the input.
        out: output folder, local or ``s3://``.
        split: the train / valid / test split.
        max_len: per-user sequences keep the most recent ``max_len`` events.
        buckets: user-hash partitions of the middle passes (0: from the input size).
        ts_unit: unit of numeric timestamps in the ``events`` format (s, ms, us).
        min_ts: timestamps before this are absurd and quarantined.
        max_ts: timestamps after this are absurd (default: one day after now).
        overwrite: replace an existing output folder.
        extends: an earlier prepared dataset whose item indices this one keeps: its items
            first, at the same indices, then the items new to this data (see
            :func:`build_items`), so a model trained on it applies to this one.
        forget: a table of user ids (Parquet, CSV, JSON lines; column ``user_id``) whose
            events are dropped before anything is staged: they reach no prepared table
            and no quarantine record, and the accounting counts them as ``forgotten``.
        incremental: when ``out`` already holds a preparation of the same settings, read
            only the input files it has not read, and update it (:func:`prepare`): users
            and items keep their indices, new ones get the next, and ``changed/`` holds
            the users with new events. Otherwise (or when a file read before changed or
            went, or the forget list changed) everything is prepared again, and the
            report's ``update`` says why.
    """

    input: str = ""
    format: str = "events"
    items: str | None = None
    out: str = ""
    split: SplitConfig = field(default_factory=SplitConfig)
    max_len: int = 200
    buckets: int = 0
    ts_unit: str = "s"
    min_ts: str = "1990-01-01"
    max_ts: str | None = None
    overwrite: bool = False
    extends: str | None = None
    forget: str | None = None
    incremental: bool = False

    def __post_init__(self):
        if not self.input:
            raise ConfigError("prepare needs an input path")
        if not self.out:
            raise ConfigError("prepare needs an output path (--out)")
        adapters.get(self.format)
        if self.max_len < 2:
            raise ConfigError(f"max_len must be >= 2, got {self.max_len}")
        if self.buckets < 0:
            raise ConfigError("buckets must be >= 0")
        if self.ts_unit not in ("s", "ms", "us"):
            raise ConfigError(f"ts_unit must be s, ms or us, got {self.ts_unit!r}")
        try:
            Bounds.parse(self.min_ts, self.max_ts)
        except ValueError as exc:
            raise ConfigError(f"min_ts/max_ts: {exc}") from None
        if self.split.method == "given" and self.format not in ("unisrec", "events"):
            raise ConfigError(f"split.method=given needs a source with its own split; {self.format!r} has none")


# --- pass 1: stage --------------------------------------------------------------------

def stage_batch(raw: pa.Table, *, fmt: str, ts_unit: str, min_ts: str, max_ts: str | None,
                buckets: int, require_split: bool, forget: pa.Array | None = None) -> pa.Table:
    """Convert and validate one raw batch into staged rows (pure; runs in Ray Data).

    Valid rows get their user's bucket; quarantined rows get bucket -1, their reason
    and their original values. Rows of a ``forget`` user get bucket -2 and nothing but
    their source file: counted, never written.
    """
    adapter = adapters.get(fmt)
    if PATH_COL in raw.column_names:
        source = raw.column(PATH_COL).combine_chunks().cast(pa.string())
        raw = raw.drop_columns([PATH_COL])
    else:
        source = pa.array(["<input>"] * raw.num_rows, pa.string())
    parts = []
    if MALFORMED in raw.column_names:  # lines the CSV reader could not split into fields
        malformed = pc.is_valid(raw.column(MALFORMED))
        if pc.any(malformed).as_py():
            lines = pa.table({"line": raw.column(MALFORMED).filter(malformed)})
            gone = _names_forgotten(lines.column("line"), forget)
            keep, sources = pc.invert(gone), source.filter(malformed)
            parts.append(_forgotten(sources.filter(gone)))
            lines = lines.filter(keep)
            parts.append(_quarantined(lines, pa.array(["malformed row"] * lines.num_rows), sources.filter(keep)))
            raw, source = raw.filter(pc.invert(malformed)), source.filter(pc.invert(malformed))
        raw = raw.drop_columns([MALFORMED])
    missing = [c for c in adapter.required if c not in raw.column_names]
    if missing:
        name = source[0].as_py() if len(source) else "input"
        raise InputError(f"{name}: required column(s) {', '.join(missing)} missing "
                         f"(found {', '.join(raw.column_names)}) for format {fmt!r}")
    convert = functools.partial(adapter.convert, ts_unit=ts_unit) if fmt == "events" else adapter.convert
    conv = convert(raw)
    if forget is not None and len(forget):
        gone = pc.fill_null(pc.is_in(conv.column(S.USER_ID), value_set=forget), False)
        parts.append(_forgotten(source.filter(gone)))
        stay = pc.invert(gone)
        raw, conv, source = raw.filter(stay), conv.filter(stay), source.filter(stay)
    reasons = event_reasons(conv, Bounds.parse(min_ts, max_ts))
    if require_split:
        missing_split = pc.and_(pc.is_null(reasons), pc.is_null(conv.column(S.SPLIT)))
        reasons = pc.if_else(missing_split, pa.scalar("missing split"), reasons)
    bad = pc.is_valid(reasons)
    good = pc.invert(bad)
    kept = conv.filter(good)
    kept_cols = {f.name: kept.column(f.name) for f in STAGED if f.name in kept.column_names}
    kept_cols[S.SOURCE_FILE] = source.filter(good)
    kept_cols[BUCKET] = pa.array(bucket_of(kept.column(S.USER_ID), buckets), pa.int32())
    parts.append(_with_schema(kept_cols, kept.num_rows))
    parts.append(_quarantined(raw.filter(bad), reasons.filter(bad), source.filter(bad)))
    return pa.concat_tables(parts)


FORGOTTEN_BUCKET = -2


def _forgotten(source: pa.Array) -> pa.Table:
    """Rows of forgotten users as staged: their source file only, to be counted."""
    return _with_schema({S.SOURCE_FILE: source, BUCKET: pa.array(np.full(len(source), FORGOTTEN_BUCKET, np.int32))},
                        len(source))


def _names_forgotten(lines: pa.Array, forget: pa.Array | None) -> pa.Array:
    """Whether each malformed line has a forgotten user id among its fields (it cannot
    be parsed, so it is not quarantined with that id in it)."""
    if forget is None or not len(forget):
        return pa.array(np.zeros(len(lines), bool))
    ids = set(forget.to_pylist())
    return pa.array([bool(ids & set(re.split(r"[,;\t ]+", (line or "").strip()))) for line in lines.to_pylist()])


def _quarantined(raw: pa.Table, reasons: pa.Array, source: pa.Array) -> pa.Table:
    q = quarantine_table(raw, reasons, source)
    cols = {name: q.column(name) for name in q.column_names}
    cols[BUCKET] = pa.array(np.full(q.num_rows, -1, np.int32))
    return _with_schema(cols, q.num_rows)


def _with_schema(cols: dict[str, Any], n: int) -> pa.Table:
    return pa.Table.from_arrays(
        [cols[f.name].cast(f.type) if f.name in cols else pa.nulls(n, f.type) for f in STAGED], schema=STAGED)


_POLY = np.uint64(0x100000001B3)  # FNV-64 prime, as the base of a polynomial string hash


def bucket_of(user_ids: pa.Array, buckets: int) -> np.ndarray:
    """Stable hash partition of users: the same bucket on every worker and every run.

    A polynomial hash over the UTF-8 bytes, computed on Arrow's buffers with numpy (no
    Python objects, so it costs milliseconds per million ids), then a murmur3 finaliser
    so that ids differing only in their last characters spread over all buckets.
    """
    arr = user_ids.combine_chunks() if isinstance(user_ids, pa.ChunkedArray) else user_ids
    # A user has many events: hash each distinct id once.
    encoded = pc.dictionary_encode(arr)
    return _hash_strings(encoded.dictionary, buckets)[np.asarray(pc.fill_null(encoded.indices, 0))] if len(
        encoded.dictionary) else np.zeros(len(arr), np.int32)


def _hash_strings(arr: pa.Array, buckets: int) -> np.ndarray:
    arr = arr.cast(pa.large_string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.int32)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset: arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    start, end = offsets[:-1], offsets[1:]
    lengths = end - start
    h = np.zeros(n, np.uint64)
    if lengths.sum():
        span = data[start[0]: end[-1]].astype(np.uint64) + np.uint64(1)
        pos_in_string = np.arange(len(span)) - np.repeat(start - start[0], lengths)
        powers = np.cumprod(np.full(int(lengths.max()), _POLY, np.uint64))
        nonempty = lengths > 0
        with np.errstate(over="ignore"):
            h[nonempty] = np.add.reduceat(span * powers[pos_in_string], (start - start[0])[nonempty])
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return (h % np.uint64(buckets)).astype(np.int32)


class BucketSink(Datasink):
    """Writes staged rows as one file per (write task, block, bucket).

    Ray's partitioned ``write_parquet`` measured 3x slower here than writing each
    bucket's slice directly, and staged files are temporary, so they are Arrow IPC
    files (LZ4), about 6x faster to write than Parquet. Each
    write also returns what the driver needs before the bucket pass, all of it
    O(files + items), never O(events): rows per source file (the report's ``input``),
    item event counts and attributes (the item vocabulary), and a sample of
    timestamps (the time split's quantile cutoffs).
    """

    TS_SAMPLE = 2000  # per block: quantiles need a sample, not every timestamp

    def __init__(self, root: str):
        self.root = root
        self.rows_by_source: dict[str, int] = {}
        self.forgotten_by_source: dict[str, int] = {}
        self.items: list[pa.Table] = []
        self.ts_sample: list[np.ndarray] = []

    def write(self, blocks, ctx) -> dict[str, Any]:
        counts: dict[str, int] = {}
        forgotten: dict[str, int] = {}
        items, samples = [], []
        for i, block in enumerate(blocks):
            gone = pc.equal(block.column(BUCKET), FORGOTTEN_BUCKET)
            if pc.any(gone).as_py():  # counted as input, and as forgotten; never written
                for source, n in _count_by(block.column(S.SOURCE_FILE).filter(gone)).items():
                    counts[source] = counts.get(source, 0) + n
                    forgotten[source] = forgotten.get(source, 0) + n
                block = block.filter(pc.invert(gone))
            if block.num_rows == 0:
                continue
            bucket = block.column(BUCKET).to_numpy()
            order = np.argsort(bucket, kind="stable")
            block = block.take(pa.array(order)).drop_columns([BUCKET])
            bounds = np.flatnonzero(np.diff(bucket[order])) + 1
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(order)]):
                part = io.join(self.root, f"{BUCKET}={int(bucket[order[lo]])}", f"{ctx.task_idx:05d}-{i:05d}.arrow")
                io.write_arrow(block.slice(lo, hi - lo), part)
            for source, n in _count_by(block.column(S.SOURCE_FILE)).items():
                counts[source] = counts.get(source, 0) + n
            kept = block.slice(int(np.searchsorted(bucket[order], 0)))  # quarantined rows (-1) sort first
            if kept.num_rows:
                items.append(aggregate(kept, S.ITEM_ID, {S.COUNT: (S.ITEM_ID, "count"), **_LAST_ATTRS}))
                ts = kept.column(S.TS).combine_chunks().cast(pa.int64()).to_numpy()
                rng = np.random.default_rng([ctx.task_idx, i])
                samples.append(rng.choice(ts, size=min(self.TS_SAMPLE, len(ts)), replace=False))
            del block, kept
            pa.default_memory_pool().release_unused()
        return {"sources": counts, "forgotten": forgotten, "items": items, "ts_sample": samples}

    def on_write_complete(self, write_result) -> None:
        for r in write_result.write_returns:
            for source, n in r["sources"].items():
                self.rows_by_source[source] = self.rows_by_source.get(source, 0) + n
            for source, n in r["forgotten"].items():
                self.forgotten_by_source[source] = self.forgotten_by_source.get(source, 0) + n
            self.items.extend(r["items"])
            self.ts_sample.extend(r["ts_sample"])


def _check_inputs(adapter: adapters.Adapter, files: list[str], fs: pafs.FileSystem, cfg: PrepareConfig) -> None:
    """Fail fast, on the driver, on files that are unreadable or lack a required column."""
    for f in files:
        info = fs.get_file_info(f)
        if info.type != pafs.FileType.File:
            raise InputError(f"{f}: not a readable file")
        if cfg.format != "events":
            continue
        kind = adapters._file_kind(f)
        if kind == "parquet":
            try:
                names = pq.read_schema(f, filesystem=fs).names
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"{f}: not a Parquet file ({exc})") from None
        elif kind == "csv":
            names = adapters.read_csv_header(f, fs)
        else:
            continue
        missing = [c for c in S.EVENTS_REQUIRED if c not in names]
        if missing:
            raise InputError(f"{f}: required column(s) {', '.join(missing)} missing (found {', '.join(names)})")


def _read(adapter: adapters.Adapter, files: list[str], fs: pafs.FileSystem, cfg: PrepareConfig):
    """A Ray Data dataset of raw batches, each with the path of its file.

    One row per input file, read by :func:`read_files` in bounded batches. (Ray's own
    ``read_parquet`` measured slower here and held on to memory across the files of
    a task, so its memory grew with the input; this keeps one batch per task.)
    """
    import ray.data

    if cfg.format == "unisrec":  # several small files make one set of sequences
        return ray.data.from_arrow(adapters.read_unisrec_events(cfg.input))
    spec = adapter.read_spec(files, fs)
    return ray.data.from_items([{PATH_COL: f} for f in files], override_num_blocks=len(files)).map_batches(
        read_files, fn_kwargs=dict(spec=spec, fs=fs, fmt=cfg.format), batch_size=1, batch_format="pyarrow")


READ_BATCH_ROWS = 1 << 18  # bounds a staging task at a few hundred MB


def read_files(batch: pa.Table, *, spec: adapters.ReadSpec, fs: pafs.FileSystem, fmt: str) -> Iterator[pa.Table]:
    """Raw tables of the files named in ``batch``, at most ``READ_BATCH_ROWS`` rows each."""
    for path in batch.column(PATH_COL).to_pylist():
        try:
            for table in _iter_file(path, spec, fs):
                yield table.append_column(PATH_COL, pa.array([path] * table.num_rows, pa.string()))
        except InputError:
            raise
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{path}: cannot read as {fmt} ({spec.kind}): {str(exc).splitlines()[0]}") from None


def _iter_file(path: str, spec: adapters.ReadSpec, fs: pafs.FileSystem) -> Iterator[pa.Table]:
    if spec.kind == "parquet":
        with fs.open_input_file(path) as f:
            for rb in pq.ParquetFile(f).iter_batches(batch_size=READ_BATCH_ROWS):
                yield pa.Table.from_batches([rb])
    elif spec.kind == "csv":
        with fs.open_input_stream(path, compression="detect") as f:
            yield from read_csv_stream(f, spec.csv_read, spec.csv_parse, spec.csv_convert)
    elif spec.kind == "json":
        with fs.open_input_stream(path, compression="detect") as f:
            yield pajson.read_json(f)
    else:
        with fs.open_input_stream(path) as f:
            yield spec.parse_file(path, f.read())


def auto_buckets(files: list[str], fs: pafs.FileSystem) -> int:
    """Enough buckets for about ``_BUCKET_ROWS`` events each, so a finish task's memory
    is the same at 1M events as at 1B."""
    rows = 0
    for f in files:
        if f.endswith((".parquet", ".pq")):
            rows += pq.read_metadata(f, filesystem=fs).num_rows
        else:  # text: ~40 bytes per event at the least (Taobao's rows), so this overestimates
            rows += (fs.get_file_info(f).size or 0) // 40
    return int(min(8192, max(4, math.ceil(rows / _BUCKET_ROWS))))


# --- pass 2: dedup ------------------------------------------------------------------------

SORT_KEYS = [(S.USER_ID, "ascending"), (S.TS, "ascending"), ("_b", "ascending"), (S.ITEM_ID, "ascending")]


def dedup_table(t: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """Sort by user and time (funnel order within a second) and drop exact duplicates.

    Returns the deduplicated table and the mask of removed rows over the sorted input.
    """
    code = pc.index_in(t.column(S.BEHAVIOR), value_set=pa.array(S.BEHAVIORS))
    t = t.append_column("_b", code).sort_by(SORT_KEYS)
    n = t.num_rows
    dup = np.zeros(n, bool)
    if n > 1:
        same = np.ones(n - 1, bool)
        for name in (S.USER_ID, S.TS, "_b", S.ITEM_ID):
            col = t.column(name).combine_chunks()
            same &= np.asarray(pc.fill_null(pc.equal(col.slice(1), col.slice(0, n - 1)), False))
        dup[1:] = same
    return t.filter(pa.array(~dup)).drop_columns(["_b"]), dup


def _bucket_dir(staging: str, bucket: int) -> str:
    return io.join(staging, "staged", f"{BUCKET}={bucket}")


def _staged_columns() -> list[str]:
    return [f.name for f in STAGED if f.name not in (S.REASON, S.RECORD, BUCKET)]


def read_bucket(staging: str, bucket: int, columns: list[str]) -> pa.Table | None:
    path = _bucket_dir(staging, bucket)
    if not io.exists(path):
        return None
    return io.read_arrow(path, columns=columns)  # buckets >= 0 hold valid rows only


def count_users(staging: str, bucket: int, before: str | None = None) -> dict[str, Any]:
    """Distinct users of a bucket, so user indices can be contiguous: one column read.
    ``before``: the preparation being updated, whose users are not counted (they keep
    their indices)."""
    t = read_bucket(staging, bucket, [S.USER_ID])
    if t is None:
        return {"bucket": bucket, "users": 0}
    ids = pc.unique(t.column(S.USER_ID).combine_chunks())
    if before is not None:
        known = earlier_users(before, bucket)
        ids = ids.filter(pc.invert(pc.is_in(ids, value_set=known.column(S.USER_ID))))
    return {"bucket": bucket, "users": len(ids)}


PREVIOUS = "<previous>"  # the source file of the events an incremental preparation reads back
CHANGED = "changed"  # incremental: the sequences of the users with new events


def _part(bucket: int) -> str:
    return f"part-{bucket:05d}.parquet"


def earlier_users(before: str, bucket: int) -> pa.Table:
    """USER_VOCAB of a bucket of an earlier preparation (empty when it had none)."""
    path = io.join(before, "vocab", "users", _part(bucket))
    return io.read_parquet(path) if io.exists(path) else S.USER_VOCAB.empty_table()


def earlier_events(before: str, bucket: int) -> pa.Table | None:
    """A bucket's events of an earlier preparation as staged rows (source ``PREVIOUS``)."""
    path = io.join(before, "events", _part(bucket))
    if not io.exists(path):
        return None
    t = io.read_parquet(path)
    cols = {S.USER_ID: t.column(S.USER_ID), S.ITEM_ID: t.column(S.ITEM_ID), S.TS: t.column(S.TS),
            S.BEHAVIOR: pc.take(pa.array(S.BEHAVIORS), t.column(S.BEHAVIOR)),
            S.SPLIT: pc.take(pa.array(S.SPLITS), t.column(S.SPLIT)),
            S.SESSION_ID: t.column(S.SESSION_ID), S.PRICE: t.column(S.PRICE),
            S.SOURCE_FILE: pa.array([PREVIOUS] * t.num_rows, pa.string())}
    return _with_schema(cols, t.num_rows).select(_staged_columns())


_LAST_ATTRS = {c: (c, "last") for c in (S.CATEGORY, S.BRAND, S.TITLE, S.PRICE)}


def aggregate(t: pa.Table, key: str, specs: dict[str, tuple[str, str]]) -> pa.Table:
    """Group ``t`` by ``key``; ``specs`` maps each output column to (input column, function)."""
    out = t.group_by(key, use_threads=False).aggregate([(col, fn) for col, fn in specs.values()])
    return pa.table({key: out.column(key), **{name: out.column(f"{col}_{fn}") for name, (col, fn) in specs.items()}})


def _count_by(col) -> dict[str, int]:
    vc = pc.value_counts(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    return {v["values"].as_py(): v["counts"].as_py() for v in vc}


def quarantine_bucket(staging: str, out: str, part: str = "part-00000.parquet") -> dict[str, Any]:
    path = _bucket_dir(staging, -1)
    # Written even when empty, so queries over quarantine/ never fail for lack of a file.
    t = io.read_arrow(path, columns=[S.SOURCE_FILE, S.REASON, S.RECORD]) if io.exists(path) else (
        S.QUARANTINE.empty_table())
    io.write_parquet(S.conform(t, S.QUARANTINE, what="quarantine"), io.join(out, "quarantine", "events", part))
    return {"files": _count_by(t.column(S.SOURCE_FILE)), "reasons": _count_by(t.column(S.REASON))}


# --- pass 3: finish -----------------------------------------------------------------------

def assign_split(user_start: np.ndarray, user_len: np.ndarray, ts_us: np.ndarray, given: pa.Array | None,
                 method: str, k: int, cutoffs: tuple[int | None, int | None]) -> np.ndarray:
    """Split code (0 train, 1 valid, 2 test) of every event; rows sorted by user then time."""
    n = len(ts_us)
    if method == "given":
        return np.asarray(pc.index_in(given, value_set=pa.array(S.SPLITS))).astype(np.int8)
    if method == "time":
        valid_start, test_start = cutoffs
        split = np.zeros(n, np.int8)
        if valid_start is not None:
            split[ts_us >= valid_start] = 1
        split[ts_us >= test_start] = 2
        return split
    n_test = np.where(user_len > 1, np.minimum(k, user_len - 1), 0)
    n_valid = np.clip(np.minimum(k, user_len - n_test - 1), 0, None)
    end = np.repeat(user_start + user_len, user_len)
    from_end = end - np.arange(n) - 1
    split = np.zeros(n, np.int8)
    split[from_end < np.repeat(n_test + n_valid, user_len)] = 1
    split[from_end < np.repeat(n_test, user_len)] = 2
    return split


def build_sequences(user_idx: np.ndarray, user_ids: pa.Array, user_start: np.ndarray, user_len: np.ndarray,
                    items: np.ndarray, behaviors: np.ndarray, ts: pa.Array, split: np.ndarray,
                    max_len: int) -> pa.Table:
    """One row per user with the most recent ``max_len`` events, in time order."""
    n = len(items)
    end = np.repeat(user_start + user_len, user_len)
    keep = (end - np.arange(n) - 1) < max_len
    kept_len = np.minimum(user_len, max_len)
    offsets = np.concatenate([[0], np.cumsum(kept_len)]).astype(np.int32)
    owner = np.repeat(np.arange(len(user_len)), user_len)[keep]
    counts = np.zeros((len(user_len), 3), np.int32)
    np.add.at(counts, (owner, split[keep]), 1)
    off = pa.array(offsets, pa.int32())
    return pa.Table.from_arrays(
        [
            pa.array(user_idx, pa.int64()),
            user_ids,
            pa.ListArray.from_arrays(off, pa.array(items[keep], pa.int32())),
            pa.ListArray.from_arrays(off, pa.array(behaviors[keep], pa.int8())),
            pa.ListArray.from_arrays(off, ts.filter(pa.array(keep))),
            pa.array(counts[:, 0]), pa.array(counts[:, 1]), pa.array(counts[:, 2]),
            pa.array(user_len.astype(np.int32)),
        ],
        schema=S.SEQUENCES,
    )


def finish_bucket(staging: str, out: str, bucket: int, user_offset: int, vocab_ids: pa.Array,
                  split_cfg: dict[str, Any], cutoffs: tuple[int | None, int | None], max_len: int,
                  before: str | None = None) -> dict[str, Any]:
    """Deduplicate, index, split and write one bucket's events, users and sequences.

    ``before``: the preparation being updated. Its events of the bucket come first, so
    a new event that repeats one is the duplicate removed; its users keep their indices,
    and the new users take ``user_offset`` on, in the order of their ids."""
    empty = {"bucket": bucket, "users": 0, "events": 0, "split": [0, 0, 0], "truncated_users": 0,
             "users_with_test": 0, "files": {}, "item_counts": (np.zeros(0, np.int64), np.zeros(0, np.int64)),
             "days": {}, "new_users": 0, "changed": 0}
    t = read_bucket(staging, bucket, _staged_columns())
    if before is not None:
        parts = [x for x in (earlier_events(before, bucket), t) if x is not None]
        t = pa.concat_tables(parts, promote_options="permissive") if parts else None
    if t is None or t.num_rows == 0:
        return empty
    counted = _count_by(t.column(S.SOURCE_FILE))
    t, _ = dedup_table(t)
    after = _count_by(t.column(S.SOURCE_FILE))
    files = {f: {"kept": after.get(f, 0), "duplicates_removed": counted[f] - after.get(f, 0)} for f in counted}
    n = t.num_rows
    user = t.column(S.USER_ID).combine_chunks()
    change = np.ones(n, bool)
    if n > 1:
        change[1:] = ~np.asarray(pc.equal(user.slice(1), user.slice(0, n - 1)))
    user_start = np.flatnonzero(change)
    user_len = np.diff(np.append(user_start, n))
    first_ids = user.take(pa.array(user_start))
    user_idx = user_offset + np.arange(len(user_start), dtype=np.int64)
    new_users = changed = None
    if before is not None:
        known = earlier_users(before, bucket)
        at = pc.index_in(first_ids, value_set=known.column(S.USER_ID))
        new_users = np.asarray(pc.is_null(at))
        user_idx = np.where(new_users, user_offset + np.cumsum(new_users) - 1,
                            known.column(S.USER_IDX).to_numpy()[np.asarray(pc.fill_null(at, 0))])
        fresh = np.asarray(pc.not_equal(t.column(S.SOURCE_FILE), PREVIOUS))
        changed = np.add.reduceat(fresh.astype(np.int64), user_start) > 0  # a kept new event
    item_idx = np.asarray(pc.index_in(t.column(S.ITEM_ID), value_set=vocab_ids)).astype(np.int32)
    behavior = np.asarray(pc.index_in(t.column(S.BEHAVIOR), value_set=pa.array(S.BEHAVIORS))).astype(np.int8)
    ts = t.column(S.TS).combine_chunks()
    ts_us = ts.cast(pa.int64()).to_numpy()
    split = assign_split(user_start, user_len, ts_us, t.column(S.SPLIT).combine_chunks(), split_cfg["method"],
                         split_cfg["k"], cutoffs)
    events = pa.table({
        S.USER_IDX: np.repeat(user_idx, user_len), S.ITEM_IDX: item_idx, S.BEHAVIOR: behavior, S.TS: ts,
        S.SPLIT: split, S.USER_ID: user, S.ITEM_ID: t.column(S.ITEM_ID), S.SESSION_ID: t.column(S.SESSION_ID),
        S.PRICE: t.column(S.PRICE),
    })
    name = _part(bucket)
    io.write_parquet(S.conform(events, S.PREPARED_EVENTS, what="events"), io.join(out, "events", name))
    io.write_parquet(S.conform(pa.table({S.USER_IDX: user_idx, S.USER_ID: first_ids}), S.USER_VOCAB),
                     io.join(out, "vocab", "users", name))
    seqs = build_sequences(user_idx, first_ids, user_start, user_len, item_idx, behavior, ts, split, max_len)
    io.write_parquet(seqs, io.join(out, "sequences", name))
    if changed is not None:  # the users a night's scoring redoes
        io.write_parquet(seqs.filter(pa.array(changed)), io.join(out, CHANGED, name))
    items, counts = np.unique(item_idx, return_counts=True)
    return {"bucket": bucket, "users": len(user_start), "events": n, "files": files,
            "split": np.bincount(split, minlength=3).tolist(), "truncated_users": int((user_len > max_len).sum()),
            "users_with_test": int((seqs.column("n_test").to_numpy() > 0).sum()), "item_counts": (items, counts),
            "days": day_counts(ts_us, behavior),
            "new_users": int(new_users.sum()) if new_users is not None else len(user_start),
            "changed": int(changed.sum()) if changed is not None else len(user_start)}


def day_counts(ts_us: np.ndarray, behavior: np.ndarray) -> dict[str, list[int]]:
    """Events per UTC day and behaviour type: {"YYYY-MM-DD": [count per S.BEHAVIORS]} (the
    report's events-per-day chart; a few numbers per day, whatever the events)."""
    days = ts_us // 86_400_000_000
    keys, counts = np.unique(days * len(S.BEHAVIORS) + behavior, return_counts=True)
    out: dict[str, list[int]] = {}
    for key, n in zip(keys.tolist(), counts.tolist()):
        day = (dt.date(1970, 1, 1) + dt.timedelta(days=key // len(S.BEHAVIORS))).isoformat()
        out.setdefault(day, [0] * len(S.BEHAVIORS))[key % len(S.BEHAVIORS)] = n
    return out


# --- items ------------------------------------------------------------------------------

def build_items(event_items: list[pa.Table], catalogue: pa.Table | None, source: str,
                base: pa.Table | None = None) -> tuple[pa.Table, pa.Table, pa.Table | None, dict[str, int]]:
    """Item vocabulary and prepared items table from the events' items and the catalogue.

    An item's index says nothing about the data: items are numbered in the order of
    their ids, never by popularity, which would carry the test events into every index
    order (and so into any tie an evaluation settles by index). With ``base`` (the items
    table of an earlier prepared dataset, :attr:`PrepareConfig.extends`), its items keep
    their indices and items new to this data follow, again by id: later data extends the
    vocabulary and no index moves, so a trained model still applies. Catalogue items
    without events are indexed too, so cold items are reachable through their text.
    ``count`` (events per item) is filled in after deduplication.
    """
    parts = [t for t in event_items if t is not None and t.num_rows]
    ev = aggregate(pa.concat_tables(parts, promote_options="permissive"), S.ITEM_ID,
                   {S.COUNT: (S.COUNT, "sum"), **_LAST_ATTRS}) if parts else pa.table(
        {S.ITEM_ID: pa.array([], pa.string()), S.COUNT: pa.array([], pa.int64())})
    ev_ids = ev.column(S.ITEM_ID).combine_chunks()
    stats = {"catalogue_rows": 0, "catalogue_kept": 0, "catalogue_quarantined": 0, "catalogue_duplicates_removed": 0,
             "with_events": ev.num_rows, "catalogue_only": 0, "events_without_catalogue": ev.num_rows,
             "kept_from_base": 0}
    quarantined = None
    known = [ev_ids]
    if catalogue is not None:
        cat, quarantined, dups = validate_items(catalogue, source)
        cat_ids = cat.column(S.ITEM_ID).combine_chunks()
        known.append(cat_ids)
        stats.update(catalogue_rows=catalogue.num_rows, catalogue_kept=cat.num_rows,
                     catalogue_quarantined=quarantined.num_rows, catalogue_duplicates_removed=dups,
                     catalogue_only=int(pc.sum(pc.invert(pc.is_in(cat_ids, value_set=ev_ids))).as_py() or 0),
                     events_without_catalogue=int(pc.sum(pc.invert(pc.is_in(ev_ids, value_set=cat_ids))).as_py()
                                                  or 0))
    seen = pc.unique(pa.concat_arrays(known))
    ids = seen.take(pc.array_sort_indices(seen))
    if base is not None:
        base = base.sort_by(S.ITEM_IDX)
        base_ids = base.column(S.ITEM_ID).combine_chunks()
        if not np.array_equal(base.column(S.ITEM_IDX).to_numpy(), np.arange(base.num_rows)):
            raise InputError("the dataset to extend has gaps in its item indices; prepare it again")
        stats["kept_from_base"] = base.num_rows
        ids = pa.concat_arrays([base_ids, ids.filter(pc.invert(pc.is_in(ids, value_set=base_ids)))])
    vocab = pa.table({S.ITEM_IDX: pa.array(np.arange(len(ids), dtype=np.int32)), S.ITEM_ID: ids,
                      S.COUNT: pa.array(np.zeros(len(ids), np.int64))})
    vocab = S.conform(vocab, S.ITEM_VOCAB, what="item vocabulary")
    # Attributes: the catalogue's where it has the item, else what the events carried,
    # else the earlier dataset's.
    table = vocab.select([S.ITEM_IDX, S.ITEM_ID])
    if catalogue is not None:
        table = _fill_attributes(table, cat)
    if S.TITLE in ev.column_names:
        table = _fill_attributes(table, ev.select([S.ITEM_ID, S.TITLE, S.CATEGORY, S.BRAND, S.PRICE]))
    if base is not None:
        table = _fill_attributes(table, base.drop_columns([S.ITEM_IDX]))
    table = S.conform(table.sort_by(S.ITEM_IDX), S.PREPARED_ITEMS, what="items")
    return vocab, table, quarantined, stats


def _fill_attributes(table: pa.Table, source: pa.Table) -> pa.Table:
    """``table`` left-joined with ``source`` on the item id; an attribute ``table`` has
    already keeps its value where set, and takes ``source``'s where null."""
    shared = [c for c in source.column_names if c != S.ITEM_ID and c in table.column_names]
    joined = table.join(source, S.ITEM_ID, join_type="left outer", right_suffix="_new")
    for c in shared:
        merged = pc.coalesce(joined.column(c), joined.column(c + "_new"))
        joined = joined.set_column(joined.column_names.index(c), c, merged).drop_columns([c + "_new"])
    return joined


# --- the job -------------------------------------------------------------------------------

@dataclass
class Plan:
    """What :func:`plan` found: everything checked before any Ray work starts."""

    adapter: adapters.Adapter
    fs: pafs.FileSystem
    files: list[str]
    catalogue: pa.Table | None
    buckets: int
    base_items: pa.Table | None = None  # the items of the dataset ``extends`` names
    forget: pa.Array | None = None  # the user ids of ``forget``
    previous: dict[str, Any] | None = None  # incremental: the report of the preparation it updates
    update: dict[str, Any] = field(default_factory=dict)  # the report's ``update``: what was read, and why


def plan(cfg: PrepareConfig) -> Plan:
    """Check inputs and output on the driver, without Ray: a bad path, file, column or an
    existing output fails here, in seconds, with a message naming it."""
    adapter = adapters.get(cfg.format)
    fs, _ = io.filesystem(cfg.input)
    files = (adapters._siblings(cfg.input) if cfg.format == "unisrec" else io.expand(cfg.input, adapter.extensions))
    _check_inputs(adapter, files, fs, cfg)
    info = {f: file_info(fs, f) for f in files}
    forget_fp = privacy.forget_fingerprint(cfg.forget)
    previous, why = earlier(cfg, info, forget_fp) if cfg.incremental else (None, "incremental: false")
    io.check_writable(cfg.out, overwrite=cfg.overwrite or previous is not None)
    catalogue = adapter.items(cfg.input, cfg.items)
    base = None
    if previous is not None:
        base = io.read_parquet(io.join(cfg.out, "items"))
    elif cfg.extends:
        load_report(cfg.extends)  # a prepared dataset of this format, or a clear error
        base = io.read_parquet(io.join(cfg.extends, "items"))
    forget = privacy.read_forget(cfg.forget) if cfg.forget else None
    # ``id`` names this version of the folder, ``previous`` the one it updates: whoever
    # scored that one knows which users changed since (the pipeline's carry-over).
    update = {"mode": "full" if previous is None else "incremental", "why": why, "forget": forget_fp,
              "id": uuid.uuid4().hex[:12], "previous": (previous or {}).get("update", {}).get("id"),
              "generation": (previous or {}).get("update", {}).get("generation", 0) + 1, "file_info": info}
    if previous is not None:
        files = [f for f in files if f not in previous["files"]]
        update["new_files"] = files
        return Plan(adapter, fs, files, catalogue, previous["buckets"], base, forget, previous, update)
    return Plan(adapter, fs, files, catalogue, cfg.buckets or auto_buckets(files, fs), base, forget, None, update)


def file_info(fs: pafs.FileSystem, path: str) -> list[int]:
    """[size, modification time in s] of an input file: a file read before that changed
    changes it."""
    info = fs.get_file_info(path)
    return [info.size or 0, int(info.mtime.timestamp()) if info.mtime else 0]


# The settings an incremental preparation must share with the one it updates.
_SAME = ("format", "items", "split", "max_len", "ts_unit", "min_ts", "max_ts")


def earlier(cfg: PrepareConfig, info: dict[str, list[int]], forget_fp: str | None
            ) -> tuple[dict[str, Any] | None, str]:
    """(the report of the preparation at ``cfg.out`` that this one can update, why) or
    (None, why everything is read again)."""
    if not io.is_complete(cfg.out):
        return None, "no earlier preparation"
    try:
        report = load_report(cfg.out)
    except InputError as exc:
        return None, str(exc)
    if cfg.format == "unisrec":
        return None, "the unisrec format is one set of files, read whole"
    before = report["config"]
    changed = [k for k in _SAME if before.get(k) != C.to_dict(cfg).get(k)]
    if changed:
        return None, f"the settings changed since the earlier preparation: {', '.join(changed)}"
    if report.get("update", {}).get("forget") != forget_fp:
        return None, "the forget list changed: every file is read again without its users"
    seen = report.get("update", {}).get("file_info", {})
    for f in report["files"]:
        if f not in info:
            return None, f"{f}, read before, is gone: its events must go too"
        if seen.get(f) != info[f]:
            return None, f"{f} changed since it was read"
    return report, f"{len(info) - len(report['files'])} new file(s)"


def prepare(cfg: PrepareConfig, checked: Plan | None = None) -> dict[str, Any]:
    """Run the preparation job on the connected Ray cluster; returns the report.

    Incremental (:attr:`PrepareConfig.incremental`, and an earlier preparation at
    ``out`` it can update): only the new files are staged; each bucket's earlier events
    are read back from the prepared events and merged with its new ones (an event that
    repeats an earlier one counts as a duplicate of the new file), so users and items
    keep their indices and new ones get the next. ``changed/`` then holds the
    sequences of the users with new events, the users a night's scoring must redo.
    """
    import ray

    start = time.time()
    checked = checked or plan(cfg)
    adapter, fs, files, catalogue, buckets = (checked.adapter, checked.fs, checked.files, checked.catalogue,
                                              checked.buckets)
    previous = checked.previous
    log.info("prepare: %d %sinput file(s), format %s, %d buckets", len(files), "new " if previous else "",
             cfg.format, buckets)

    # Incremental: locally the publication is a sibling folder and the earlier preparation
    # stays in place until the commit; on S3 it is written in place, so the earlier one is
    # read from a copy (kept if this run fails, deleted once it is published).
    before = None
    if previous is not None:
        before = cfg.out.rstrip("/") + ".previous" if io.is_s3(cfg.out) else cfg.out
        if before != cfg.out:
            io.remove(before)
            io.copy_tree(cfg.out, before)
    pub = io.Publication(cfg.out, overwrite=cfg.overwrite or previous is not None)
    staging = io.join(pub.path, "_staging")
    try:
        sink = BucketSink(io.join(staging, "staged"))
        if files:
            ds = _read(adapter, files, fs, cfg).map_batches(
                stage_batch, batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
                fn_kwargs=dict(fmt=cfg.format, ts_unit=cfg.ts_unit, min_ts=cfg.min_ts, max_ts=cfg.max_ts,
                               buckets=buckets, require_split=cfg.split.method == "given", forget=checked.forget))
            log.info("prepare [1/3]: reading, validating and partitioning events")
            try:
                ds.write_datasink(sink)
            except Exception as exc:  # surface the user's problem, not Ray's wrapper around it
                cause = _root_cause(exc)
                if isinstance(cause, InputError):
                    raise InputError(str(cause).splitlines()[0]) from None
                raise

        log.info("prepare [2/3]: counting %susers of %d buckets", "new " if previous else "", buckets)
        refs = [ray.remote(count_users).remote(staging, b, before) for b in range(buckets)]
        part = f"part-{checked.update['generation'] - 1:05d}.parquet"  # one quarantine file per generation
        qref = ray.remote(quarantine_bucket).remote(staging, pub.path, part)
        users = _gather(refs, "count")
        quarantine = ray.get(qref)
        if before is not None:
            for name in io.children(io.join(before, "quarantine", "events")):
                if name.endswith(".parquet") and name != part:
                    io.write_bytes(io.read_bytes(io.join(before, "quarantine", "events", name)),
                                   io.join(pub.path, "quarantine", "events", name))

        vocab, items, items_quarantine, item_stats = build_items(sink.items, catalogue, cfg.items or cfg.input,
                                                                 checked.base_items)
        io.write_parquet(items, io.join(pub.path, "items", "part-00000.parquet"))
        if items_quarantine is not None:
            io.write_parquet(items_quarantine, io.join(pub.path, "quarantine", "items.parquet"))

        cutoffs = resolve_cutoffs(cfg.split, sink.ts_sample) if previous is None else earlier_cutoffs(previous)
        log.info("prepare [3/3]: deduplicating, splitting (%s) and building sequences", cfg.split.method)
        vocab_ref = ray.put(vocab.column(S.ITEM_ID).combine_chunks())
        first = previous["users"] if previous else 0  # new users' indices follow the earlier ones
        offsets = first + np.concatenate([[0], np.cumsum([r["users"] for r in users])])
        finish = ray.remote(finish_bucket)
        refs = [finish.remote(staging, pub.path, b, int(offsets[b]), vocab_ref, dataclasses.asdict(cfg.split),
                              cutoffs, cfg.max_len, before) for b in range(buckets)]
        b2 = _gather(refs, "finish")
        kept_counts = np.zeros(vocab.num_rows, np.int64)
        for r in b2:
            np.add.at(kept_counts, *r["item_counts"])
        vocab = vocab.set_column(vocab.schema.get_field_index(S.COUNT), S.COUNT, pa.array(kept_counts))
        io.write_parquet(vocab, io.join(pub.path, "vocab", "items.parquet"))
        sources = [adapters.unisrec_source(files)] if cfg.format == "unisrec" else files
        report = make_report(cfg, sources, sink.rows_by_source, buckets, b2, quarantine, vocab.num_rows, item_stats,
                             cutoffs, time.time() - start, forgotten=sink.forgotten_by_source, previous=previous)
        update = {**checked.update, "files_read": len(files)}
        if previous is not None:
            update.update(new_users=sum(r["new_users"] for r in b2), changed_users=sum(r["changed"] for r in b2))
        report["update"] = update
        io.remove(staging)
        io.write_json(report, io.join(pub.path, REPORT))
        pub.commit()
    except BaseException:
        pub.abort()
        raise
    if before is not None and before != cfg.out:
        io.remove(before)
    return report


def earlier_cutoffs(report: dict[str, Any]) -> tuple[int | None, int | None]:
    """The time split's cutoffs of an earlier preparation, in microseconds: an
    incremental one keeps them (new events after them are test events)."""
    def us(value: str | None) -> int | None:
        return None if value is None else int(dt.datetime.fromisoformat(value).timestamp() * 1_000_000)

    return us(report["split"]["valid_start"]), us(report["split"]["test_start"])


def _root_cause(exc: BaseException) -> BaseException:
    seen = exc
    while True:
        nxt = getattr(seen, "cause", None) or seen.__cause__
        if nxt is None or nxt is seen:
            return seen
        seen = nxt


def _gather(refs: list, what: str) -> list[dict[str, Any]]:
    import ray

    results, pending = {}, list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        r = ray.get(done[0])
        results[r["bucket"]] = r
        if len(results) == len(refs) or len(results) % max(1, len(refs) // 10) == 0:
            log.info("prepare: %s %d/%d buckets", what, len(results), len(refs))
    return [results[b] for b in sorted(results)]


def resolve_cutoffs(split: SplitConfig, ts_sample: list[np.ndarray]) -> tuple[int | None, int | None]:
    """(valid_start, test_start) in microseconds for the time split, else (None, None)."""
    if split.method != "time":
        return None, None

    def us(value: str) -> int:
        t = dt.datetime.fromisoformat(value)
        t = t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t
        return int(t.timestamp() * 1_000_000)

    if split.test_start:
        test = us(split.test_start)
        valid = us(split.valid_start) if split.valid_start else None
        return valid, test
    sample = np.concatenate([np.asarray(x, np.int64) for x in ts_sample if len(x)] or [np.zeros(1, np.int64)])
    test = int(np.quantile(sample, 1 - split.test_frac))
    valid = int(np.quantile(sample, 1 - split.test_frac - split.valid_frac)) if split.valid_frac else None
    return valid, test


def _merge_days(parts) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for part in parts:
        for day, counts in part.items():
            out[day] = [a + b for a, b in zip(out.get(day, [0] * len(counts)), counts)]
    return dict(sorted(out.items()))


def make_report(cfg, files, staged, buckets, b2, quarantine, n_items, item_stats, cutoffs, seconds,
                forgotten: dict[str, int] | None = None, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The accounting of every input row, per file and in total, plus split and size figures.

    ``input`` is what the staging pass read per source file; kept, quarantined and
    duplicate counts come from the later passes, ``forgotten`` from the staging pass,
    and they must add up. ``previous``: the report of the preparation this one updates,
    whose files keep their accounting (each of their events was read back and kept).
    """
    forgotten = forgotten or {}
    per_file = {f: {"input": staged.get(f, 0), "kept": 0, "quarantined": 0, "duplicates_removed": 0,
                    "forgotten": forgotten.get(f, 0)} for f in sorted(set(files) | set(staged))}
    read_back = {"kept": 0, "duplicates_removed": 0}
    for r in b2:
        for f, c in r["files"].items():
            counts = read_back if f == PREVIOUS else per_file[f]
            counts["kept"] += c["kept"]
            counts["duplicates_removed"] += c["duplicates_removed"]
    for f, n in quarantine["files"].items():
        per_file[f]["quarantined"] += n
    for f, d in per_file.items():
        if d["input"] != d["kept"] + d["quarantined"] + d["duplicates_removed"] + d["forgotten"]:
            raise RuntimeError(f"accounting mismatch for {f}: {d}")
    if previous is not None:
        if read_back != {"kept": previous["total"]["kept"], "duplicates_removed": 0}:
            raise RuntimeError(f"accounting mismatch: {previous['total']['kept']} earlier events, read back {read_back}")
        per_file = dict(sorted({**previous["files"], **per_file}.items()))
        reasons = dict(previous["quarantine_reasons"])
        for reason, n in quarantine["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + n
        quarantine = {**quarantine, "reasons": reasons}
    total = {k: sum(d[k] for d in per_file.values())
             for k in ("input", "kept", "quarantined", "duplicates_removed", "forgotten")}
    kept_written = sum(r["events"] for r in b2)
    if kept_written != total["kept"]:
        raise RuntimeError(f"accounting mismatch: {total['kept']} kept events counted, {kept_written} written")
    split_counts = np.sum([r["split"] for r in b2], axis=0).tolist() if b2 else [0, 0, 0]

    def iso(us):
        return None if us is None else dt.datetime.fromtimestamp(us / 1e6, dt.timezone.utc).isoformat()

    return {
        "config": dataclasses.asdict(cfg),
        "format_version": FORMAT_VERSION,
        "files": per_file,
        "total": total,
        "quarantine_reasons": quarantine["reasons"],
        "users": sum(r["users"] for r in b2),
        "items": {"total": n_items, **item_stats},
        "behaviors": list(S.BEHAVIORS),
        "split": {"method": cfg.split.method, "valid_start": iso(cutoffs[0]), "test_start": iso(cutoffs[1]),
                  "events": dict(zip(S.SPLITS, split_counts)),
                  "users_with_test": sum(r.get("users_with_test", 0) for r in b2)},
        "sequences": {"max_len": cfg.max_len, "truncated_users": sum(r["truncated_users"] for r in b2)},
        "days": _merge_days(r["days"] for r in b2),
        "buckets": buckets,
        "seconds": round(seconds, 2),
    }


def _event_counts(batch: pa.Table) -> pa.Table:
    """(split, behaviour) -> events and newest timestamp, of one block of prepared events."""
    return batch.group_by([S.SPLIT, S.BEHAVIOR]).aggregate([([], "count_all"), (S.TS, "max")])


def event_summary(prepared: str) -> dict[str, Any]:
    """Events per behaviour and the newest event of each split, in one distributed pass
    over the prepared events (a per-block aggregate, then a few rows merged here)."""
    import ray
    import ray.data

    fs, inner = io.filesystem(io.join(prepared, "events"))
    parts = ray.data.read_parquet(inner, filesystem=fs, columns=[S.SPLIT, S.BEHAVIOR, S.TS]).map_batches(
        _event_counts, batch_format="pyarrow").to_arrow_refs()
    table = pa.concat_tables(ray.get(parts)) if parts else pa.table({})
    behaviors, newest = {}, {}
    for row in table.to_pylist():
        name = S.BEHAVIORS[row[S.BEHAVIOR]]
        behaviors[name] = behaviors.get(name, 0) + row["count_all"]
        split = S.SPLITS[row[S.SPLIT]]
        newest[split] = max(newest.get(split, row[f"{S.TS}_max"]), row[f"{S.TS}_max"])
    return {"behaviors": behaviors, "newest": {k: v.isoformat() for k, v in newest.items()}}
