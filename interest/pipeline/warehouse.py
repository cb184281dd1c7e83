"""The warehouse layout: Hive partitions published atomically, run manifests, verification.

Each table lives at ``OUT/<table>/dt=YYYY-MM-DD/part-*.parquet``; ``dt`` is the folder,
not a column (DuckDB's ``hive_partitioning``, Spark, Hive and Trino read it from the
path). A run writes its partitions under ``OUT/_staging/<run_id>.<attempt>/`` (outside every
table's folder, so no reader's glob of a table picks them up; a new folder for each
attempt, since the workers of a killed attempt may still be writing for a while), then
publishes each partition whole:

- the staged folder takes the partition's place in one ``renameat2(RENAME_EXCHANGE)``,
  an atomic swap of two folders (Linux); a reader listing the partition sees the old
  files or the new ones, never a mix and never nothing. Where the call is missing
  (another OS, a filesystem without it) it is two renames, old aside then new in: for
  that instant a reader sees no partition, still never half of one;
- a crash before the swap leaves the previous partition as it was; a finished
  attempt's files wait under ``_staging`` for the rerun, which publishes them, and an
  unfinished one is discarded and scored again.

Every published partition holds ``_SUCCESS`` (the run that wrote it): Parquet readers
skip files starting with ``_``. The run manifest ``OUT/_runs/<run_id>.json`` is written
last; :func:`verify` checks a partition against it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import os
import shutil
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from interest import io
from interest import schemas as S

RUNS = "_runs"
STAGING = "_staging"


def partition(out: str, table: str, day: str) -> str:
    return io.join(out, table, f"dt={day}")


def staged(out: str, attempt: str, table: str, day: str) -> str:
    """A partition as scoring attempt ``attempt`` (``<run_id>.<random>``) writes it."""
    return io.join(out, STAGING, attempt, table, f"dt={day}")


def attempts(out: str, run_id: str) -> list[str]:
    """The scoring attempts of ``run_id`` under ``OUT/_staging``."""
    folder = os.path.join(out, STAGING)
    return sorted(a for a in os.listdir(folder) if a.startswith(run_id + ".")) if os.path.isdir(folder) else []


def discard_attempts(out: str, run_id: str) -> None:
    """Remove ``run_id``'s scoring attempts, and the staging folder once it is empty."""
    for attempt in attempts(out, run_id):
        shutil.rmtree(os.path.join(out, STAGING, attempt), ignore_errors=True)
    folder = os.path.join(out, STAGING)
    if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)


def published_by(folder: str) -> str | None:
    """The run id that published the partition ``folder``, or None."""
    marker = io.join(folder, io.SUCCESS)
    return io.read_json(marker).get("run_id") if io.exists(marker) else None


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False
    where the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish(staged_folder: str, final: str, run_id: str) -> None:
    """Make the staged partition the published one, whole (see the module's docstring)."""
    if io.is_s3(final):
        raise io.InputError(f"{final}: publishing partitions to S3 is not supported yet; write the warehouse to a "
                            "local or shared filesystem")
    io.write_json({"run_id": run_id, "published": dt.datetime.now(dt.timezone.utc).isoformat()},
                  io.join(staged_folder, io.SUCCESS))
    os.makedirs(os.path.dirname(final), exist_ok=True)
    if not os.path.exists(final):
        os.rename(staged_folder, final)
        return
    if not _exchange(staged_folder, final):
        aside = staged_folder + ".replaced"
        os.rename(final, aside)
        os.rename(staged_folder, final)
        staged_folder = aside
    shutil.rmtree(staged_folder)  # after the swap it holds the replaced partition


def manifest_path(out: str, run_id: str) -> str:
    return io.join(out, RUNS, f"{run_id}.json")


def manifests(out: str) -> list[dict[str, Any]]:
    """Every run manifest of ``out``, oldest first."""
    folder = io.join(out, RUNS)
    if not io.exists(folder):
        return []
    found = [io.read_json(io.join(folder, os.path.basename(p))) for p in io.expand(folder) if p.endswith(".json")]
    return sorted(found, key=lambda m: m.get("finished") or "")


def latest_published(out: str, day: str | None = None, *, other_than: str | None = None) -> dict[str, Any] | None:
    """The newest published manifest (of ``day`` when given), except run ``other_than``."""
    done = [m for m in manifests(out) if m.get("status") == "published" and m["run_id"] != other_than
            and (day is None or m["dt"] == day)]
    return done[-1] if done else None


def verify(out: str, day: str) -> list[str]:
    """What is wrong with ``day``'s partitions: completeness (every user of the prepared
    data in every per-user table), uniqueness of each table's key, schemas, and row
    counts against the run manifest. Empty when all holds."""
    manifest = latest_published(out, day)
    if manifest is None:
        return [f"no published run for dt={day} in {io.join(out, RUNS)}"]
    problems = []
    users = None
    vocab = io.join(manifest["input"]["prepared"], "vocab", "users")
    if io.exists(vocab):
        users = pc.unique(io.read_parquet(vocab, columns=[S.USER_ID]).column(S.USER_ID))
    else:
        problems.append(f"cannot check completeness: the prepared users {vocab} are gone")
    for table, info in manifest["tables"].items():
        folder = partition(out, table, day)
        if not io.exists(folder):
            problems.append(f"{table}: partition {folder} is missing")
            continue
        if published_by(folder) != manifest["run_id"]:
            problems.append(f"{table}: {folder} was published by run {published_by(folder)}, not by the manifest's "
                            f"{manifest['run_id']}")
        fs, inner = io.filesystem(folder)
        data = pads.dataset(inner, filesystem=fs, format="parquet")
        problems += _schema_problems(table, data.schema)
        rows = data.to_table(columns=[c for c in dict.fromkeys(S.OUTPUT_KEYS[table] + (S.USER_ID,))
                                      if c in data.schema.names])
        if rows.num_rows != info["rows"]:
            problems.append(f"{table}: {rows.num_rows:,} rows, the manifest says {info['rows']:,}")
        keys = list(S.OUTPUT_KEYS[table])
        if all(k in rows.column_names for k in keys):
            # Single-threaded: Acero's thread pool can fail ("thread index out of range")
            # in a process whose Arrow threads Ray or a test has already used.
            dup = rows.group_by(keys, use_threads=False).aggregate([([], "count_all")]).filter(pc.greater(pc.field("count_all"), 1))
            if dup.num_rows:
                first = dup.slice(0, 1).to_pylist()[0]
                problems.append(f"{table}: {dup.num_rows:,} duplicated ({', '.join(keys)}), e.g. "
                                f"{ {k: first[k] for k in keys} }")
        if users is not None and table != "tag_audiences" and S.USER_ID in rows.column_names:
            have = pc.unique(rows.column(S.USER_ID))
            missing = pc.filter(users, pc.invert(pc.is_in(users, have)))
            extra = pc.filter(have, pc.invert(pc.is_in(have, users)))
            if len(missing):
                problems.append(f"{table}: {len(missing):,} of {len(users):,} users have no rows, e.g. "
                                f"{missing[0].as_py()!r}")
            if len(extra):
                problems.append(f"{table}: {len(extra):,} users not in the prepared data, e.g. {extra[0].as_py()!r}")
    return problems


def _schema_problems(table: str, schema: pa.Schema) -> list[str]:
    want = S.OUTPUTS[table]
    if schema.names != want.names:
        return [f"{table}: columns {schema.names}, expected {want.names}"]
    return [f"{table}: column {f.name!r} is {schema.field(f.name).type}, expected {f.type}"
            for f in want if not schema.field(f.name).type.equals(f.type)]
