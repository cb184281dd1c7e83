"""The warehouse layout: Hive partitions published atomically, run manifests, verification.

Each table lives at ``OUT/<table>/dt=YYYY-MM-DD/part-*.parquet``; ``dt`` is the folder,
not a column (DuckDB's ``hive_partitioning``, Spark, Hive and Trino read it from the
path). Each scoring attempt (``<run_id>.<random>``: a new one each time, since the
workers of a killed attempt may still be writing for a while) writes its own folder,
outside every table's folder, so no reader's glob of a table picks it up. Then each
partition is published whole:

- **Local or shared filesystem.** Attempts write under ``OUT/_staging/``. The staged
  folder takes the partition's place in one ``renameat2(RENAME_EXCHANGE)``, an atomic
  swap of two folders (Linux): a reader listing the partition sees the old files or the
  new ones, never a mix and never nothing. Where the call is missing (another OS, a
  filesystem without it) it is two renames, old aside then new in: for that instant a
  reader sees no partition, still never half of one.
- **S3**, which has no rename. Attempts write under ``OUT/_data/<attempt>/<table>/dt=D/``
  and the files stay there. Publishing points readers at them: ``OUT/_published/<table>.json``
  lists, per ``dt``, the run, its folder and its files, and is replaced in one PUT
  (S3 PUTs are atomic and read-after-write consistent), so a reader that follows it
  (DuckDB via ``getvariable``, or a metastore's ``ALTER TABLE ... SET LOCATION``) sees
  the old run's files or the new run's, never a mix. The replaced run's files are kept
  until the next publish of that ``dt``, so queries already running finish; older
  ones are deleted. Nothing appears under ``OUT/<table>/`` on S3: a glob there would
  have no atomic view to give.

A crash before publication leaves the previous partition as it was; a finished
attempt waits for the rerun, which publishes it, and an unfinished one is discarded
and scored again. Every published folder holds ``_SUCCESS`` (the run that wrote it;
Parquet readers skip files starting with ``_``). The pointer files are written on both
kinds of storage; the run manifest ``OUT/_runs/<run_id>.json`` is written last, and
:func:`verify` checks a day's partitions against it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import logging
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from interest import io
from interest import schemas as S
from interest.data import privacy
from interest.score.batch import renumbered

log = logging.getLogger(__name__)

RUNS = "_runs"
STAGING = "_staging"  # local: attempts, swapped into the partitions when published
DATA = "_data"  # S3: attempts, where the files stay once published
PUBLISHED = "_published"  # <table>.json: what readers should read, per dt


def partition(out: str, table: str, day: str) -> str:
    return io.join(out, table, f"dt={day}")


def attempts_root(out: str) -> str:
    return io.join(out, DATA if io.is_s3(out) else STAGING)


def staged(out: str, attempt: str, table: str, day: str) -> str:
    """A partition as scoring attempt ``attempt`` (``<run_id>.<random>``) writes it."""
    return io.join(attempts_root(out), attempt, table, f"dt={day}")


def home(out: str, table: str, day: str, attempt: str) -> str:
    """Where a published partition's files are: the partition folder locally, the
    attempt's own folder on S3."""
    return staged(out, attempt, table, day) if io.is_s3(out) else partition(out, table, day)


def attempts(out: str, run_id: str) -> list[str]:
    """The scoring attempts of ``run_id``."""
    return [a for a in io.children(attempts_root(out), folders=True) if a.startswith(run_id + ".")]


def discard_attempts(out: str, prefix: str, keep: set[str] = frozenset()) -> None:
    """Remove the attempts whose name starts with ``prefix`` (a run id and its dot, or a
    day), except ``keep``; and the staging folder once it is empty."""
    root = attempts_root(out)
    for attempt in io.children(root, folders=True):
        if attempt.startswith(prefix) and attempt not in keep:
            try:
                io.remove(io.join(root, attempt))
            except OSError as exc:  # a killed attempt's workers still writing: the next run's clean-up
                log.warning("could not remove the scoring attempt %s yet: %s", attempt, exc)
    if not io.is_s3(out) and os.path.isdir(root) and not os.listdir(root):
        os.rmdir(root)


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


def publish(staged_folder: str, final: str, run_id: str) -> str:
    """Make the staged partition the published one, whole (see the module's docstring);
    returns where its files now are: ``final`` locally, the staged folder on S3 (which
    :func:`point` then names)."""
    io.write_json({"run_id": run_id, "published": dt.datetime.now(dt.timezone.utc).isoformat()},
                  io.join(staged_folder, io.SUCCESS))
    if io.is_s3(staged_folder):
        return staged_folder
    os.makedirs(os.path.dirname(final), exist_ok=True)
    if not os.path.exists(final):
        os.rename(staged_folder, final)
        return final
    if not _exchange(staged_folder, final):
        aside = staged_folder + ".replaced"
        os.rename(final, aside)
        os.rename(staged_folder, final)
        staged_folder = aside
    io.remove(staged_folder)  # after the swap it holds the replaced partition
    return final


def publish_attempt(out: str, attempt: str, tables: list[str], day: str, run_id: str
                    ) -> tuple[dict[str, tuple[str, list[str]]], set[str]]:
    """Publish ``tables``' partitions of ``day`` that ``attempt`` staged, one table after
    another, each whole (:func:`publish`, then :func:`point`). Returns (each table's
    location and files, the attempts the pointers named before).

    Each table's partition is published in one step, so whatever fails midway (S3
    unreachable: a :class:`interest.io.StorageError` naming the bucket, once the client's
    retries are spent) leaves every partition whole: the tables done so far are the new
    run's, the rest the previous run's. A rerun publishes the rest; doing a table twice
    changes nothing."""
    published, replaced = {}, set()
    with io.storage_errors(out, f"publishing {day}"):
        for table in tables:
            folder, final = staged(out, attempt, table, day), partition(out, table, day)
            if io.exists(folder):
                location = publish(folder, final, run_id)
            elif published_by(final) == run_id:  # swapped in before a crash
                location = final
            else:
                raise io.InputError(f"{folder} is gone and {final} was not published by run {run_id}: "
                                    "rerun with --force to score again")
            files, before = point(out, table, day, run_id, location)
            if before:
                replaced.add(attempt_of(out, before))
            published[table] = (location, files)
    return published, replaced - {None}


def pointer_path(out: str, table: str) -> str:
    return io.join(out, PUBLISHED, f"{table}.json")


def pointer(out: str, table: str) -> list[dict[str, Any]]:
    """``table``'s published partitions, a record per dt: dt, run_id, location, files
    (full paths: what a reader reads)."""
    path = pointer_path(out, table)
    return io.read_json(path) if io.exists(path) else []


def current(out: str, table: str, day: str) -> dict[str, Any] | None:
    """The published partition of ``table`` for ``day``, or None."""
    return next((p for p in pointer(out, table) if p["dt"] == day), None)


def point(out: str, table: str, day: str, run_id: str, location: str) -> tuple[list[str], str | None]:
    """Point readers of ``table``'s ``day`` at ``location``, in one write; returns (the
    files, the location it replaces). One writer at a time: the nightly job."""
    files = [f"s3://{f}" if io.is_s3(location) else f for f in io.expand(location)]
    entries = pointer(out, table)
    before = next((p["location"] for p in entries if p["dt"] == day), None)
    entries = sorted([p for p in entries if p["dt"] != day] +
                     [{"dt": day, "run_id": run_id, "location": location, "files": files}], key=lambda p: p["dt"])
    io.write_json(entries, pointer_path(out, table))
    return files, before


def attempt_of(out: str, location: str) -> str | None:
    """The attempt whose folder holds ``location`` (S3), or None (a local partition)."""
    root = attempts_root(out).rstrip("/") + "/"
    return location[len(root):].split("/", 1)[0] if location.startswith(root) else None


def live_attempts(out: str, day: str) -> set[str]:
    """The attempts readers are pointed at for ``day`` (S3): never to be deleted."""
    tables = [n[:-len(".json")] for n in io.children(io.join(out, PUBLISHED)) if n.endswith(".json")]
    found = {attempt_of(out, p["location"]) for t in tables for p in pointer(out, t) if p["dt"] == day}
    return found - {None}


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
    mapping = (manifest.get("privacy") or {}).get("mapping")
    if mapping:  # pseudonymised: every prepared user's pseudonym, from the day's mapping
        source, column = mapping["path"], "pseudonym"
    else:
        source, column = io.join(manifest["input"]["prepared"], "vocab", "users"), S.USER_ID
    if io.exists(source):
        users = pc.unique(io.read_parquet(source, columns=[column]).column(column))
    else:
        problems.append(f"cannot check completeness: the users {source} are gone")
    for table, info in manifest["tables"].items():
        folder = home(out, table, day, manifest["attempt"])  # from ``out``: a copied warehouse checks itself
        if not io.exists(folder):
            problems.append(f"{table}: partition {folder} is missing")
            continue
        if published_by(folder) != manifest["run_id"]:
            problems.append(f"{table}: {folder} was published by run {published_by(folder)}, not by the manifest's "
                            f"{manifest['run_id']}")
        entry = current(out, table, day)
        if entry is None or entry["run_id"] != manifest["run_id"]:
            problems.append(f"{table}: {pointer_path(out, table)} points readers at run "
                            f"{entry and entry['run_id']}, not at the manifest's {manifest['run_id']}")
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


# --- forget requests ------------------------------------------------------------------------

def mapping_partition(mapping: str, day: str) -> str:
    """Where a day's (user_id, pseudonym) table goes (``privacy.mapping``)."""
    return io.join(mapping, f"dt={day}")


def forget_earlier_days(out: str, today: str, forget: pa.Array, key: bytes | None, *,
                        mapping: str | None = None) -> dict[str, dict[str, int]]:
    """Remove the users of ``forget`` (raw ids) from every day published before
    ``today``: each table's partition is rewritten without their rows and published in
    its place as any partition is (the files that held them are deleted), and the day's
    manifest gets the new row counts. ``key``: days written with pseudonyms hold the ids'
    HMACs under it. Also each day's pseudonym mapping under ``mapping``. Returns, per
    rewritten day, the rows removed per table."""
    ids = forget if key is None else pa.concat_arrays([forget, privacy.pseudonyms(forget, key)])
    newest: dict[str, dict[str, Any]] = {}
    for m in manifests(out):  # oldest first: the last of a day is the one published
        if m.get("status") == "published" and m["dt"] != today:
            newest[m["dt"]] = m
    done = {}
    for day, manifest in sorted(newest.items()):
        removed = _forget_day(out, day, manifest, ids)
        if removed:
            done[day] = removed
    if mapping:
        for name in io.children(mapping, folders=True):
            day = name.removeprefix("dt=")
            if name.startswith("dt=") and day != today:
                _rewrite_without(mapping_partition(mapping, day), forget)
    return done


def _forget_day(out: str, day: str, manifest: dict[str, Any], ids: pa.Array) -> dict[str, int]:
    """Rewrite ``day``'s partitions without the users ``ids``; {} where none held them."""
    run_id, old_attempt = manifest["run_id"], manifest["attempt"]
    attempt = f"{run_id}.forget-{uuid.uuid4().hex[:8]}"
    removed = {}
    for table in manifest["tables"]:
        source, target = home(out, table, day, old_attempt), staged(out, attempt, table, day)
        removed[table] = 0
        if table == "tag_audiences":  # ranks run across files: renumbered per tag after the filter
            data = io.read_parquet(source)
            kept = data.filter(pc.invert(pc.is_in(data.column(S.USER_ID), value_set=ids)))
            removed[table] = data.num_rows - kept.num_rows
            io.write_parquet(S.conform(renumbered(kept, S.TAG), S.OUTPUTS[table], what=table),
                             io.join(target, "part-00000.parquet"))
            continue
        paths = [f"s3://{f}" if io.is_s3(source) else f for f in io.expand(source, (".parquet",))]
        for path in paths:  # a file at a time: memory of one batch of users
            data = io.read_parquet(path)
            kept = data.filter(pc.invert(pc.is_in(data.column(S.USER_ID), value_set=ids)))
            removed[table] += data.num_rows - kept.num_rows
            io.write_parquet(kept, io.join(target, os.path.basename(path)))
    if not any(removed.values()):
        discard_attempts(out, attempt)
        return {}
    published, _ = publish_attempt(out, attempt, list(manifest["tables"]), day, run_id)
    for table, (location, files) in published.items():
        info = manifest["tables"][table]
        info.update(rows=info["rows"] - removed[table], path=location, files=[f.rsplit("/", 1)[-1] for f in files])
    manifest["attempt"] = attempt
    manifest.setdefault("forgotten", []).append({"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                                 "rows_removed": removed})
    io.write_json(manifest, manifest_path(out, run_id))
    if io.is_s3(out):  # the replaced files held the forgotten users: not kept for running queries
        discard_attempts(out, run_id + ".", keep={attempt})
    return removed


def _rewrite_without(folder: str, forget: pa.Array) -> None:
    """A mapping partition without the users ``forget``, replaced whole; untouched when
    none of them is there."""
    data = io.read_parquet(folder)
    kept = data.filter(pc.invert(pc.is_in(data.column(S.USER_ID), value_set=forget)))
    if kept.num_rows == data.num_rows:
        return
    publication = io.Publication(folder, overwrite=True)
    try:
        io.write_parquet(kept, io.join(publication.path, "part-00000.parquet"))
        publication.commit()
    except BaseException:
        publication.abort()
        raise
