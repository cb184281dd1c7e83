"""Batch inference: score every user of a prepared dataset, for one task or all of them
in one pass, as Parquet.

A Ray Data job. The prepared users are read once and streamed through an actor pool
of :class:`Scorer`: each actor loads every model it serves once, in ``__init__`` (the
item tables stay in the actor for every batch), and each batch of users becomes the
rows of every output table, completed with the fallback for users a model cannot
score (:mod:`interest.score.fallback`), checked against the table's schema
(:data:`interest.schemas.OUTPUTS`) and written as one Parquet file per table. Files are
named by the batch's first user, so a batch retried after an actor's failure rewrites
its own files instead of adding duplicates.

``interest score`` (:func:`score`) runs one task and publishes its folder atomically;
``interest pipeline`` (:mod:`interest.pipeline`) runs every task in one pass. Task
``zeroshot`` scores the new tags of a tags file; its ``tag_audiences`` table (each tag's
top users across all users) is a top-N reduce on Ray Data over ``user_zeroshot``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from interest import io
from interest import schemas as S
from interest.config import ConfigError
from interest.data.privacy import pseudonymize
from interest.common.events import drop_events
from interest.score.carry import Carrying
from interest.score.fallback import Fallback, complete, for_table, item_counts
from interest.score.summary import Summary, summarize
from interest.tasks import Task
from interest.tasks.zeroshot.newtags import read_for
from interest.train import frozen
from interest.train.checkpoint import load_frozen

log = logging.getLogger(__name__)


@dataclass
class Output:
    """One table of a scoring pass: the run that scores it, where its files go, the
    parameters fitted once on the driver (calibration, new tags' vectors) and the
    fallback of users the model cannot score, and the prepared columns the task reads."""

    task: str
    run: str
    table: str
    folder: str
    params: dict[str, Any]
    fallback: Fallback
    columns: list[str]
    withheld: pa.Array | None = None  # item ids never written (items under an excluded tag)

    @property
    def scalars(self) -> dict[str, Any]:
        """The parameters worth a report: numbers and strings."""
        return {k: v for k, v in self.params.items() if isinstance(v, (int, float, str))}


def plan(run: str, prepared: str, folder: str, *, top_k: int = 10, tags: str | None = None,
         behavior_counts: dict[str, int] | None = None, batch_size: int = 512,
         withheld: pa.Array | None = None) -> Output:
    """The :class:`Output` of ``run`` on the driver: the model loaded once here to fit its
    scoring parameters on the validation users. ``tags``: the new tags file of task
    ``zeroshot`` (required there, refused elsewhere). ``withheld``: item ids this table
    must never name (its model's and its fallback's rows)."""
    import ray.data

    task, cfg, model, meta, kept = load_frozen(run, prepared)
    if type(task).score is Task.score:
        raise ConfigError(f"task {task.name} has no batch scoring yet; it scores in `interest evaluate`")
    inputs = {}
    if task.scores_new_tags:
        inputs = {"prepared": prepared, "new_tags": read_for(tags, prepared) if tags else None}
    elif tags:
        raise ConfigError(f"new tags are scored by task zeroshot; {run} is a {task.name} run")
    withheld = withheld if withheld is not None and len(withheld) and S.ITEM_ID in S.OUTPUTS[task.output].names \
        else None
    if withheld is not None and kept:  # items new since the training: the model never names them
        withheld = withheld.filter(pc.is_in(withheld, value_set=kept["item_ids"])) or None

    def fitted() -> dict[str, Any]:
        sequences = ray.data.read_parquet(io.join(prepared, "sequences")).select_columns(task.train_columns())
        params = task.score_params(model, cfg, meta, sequences.iter_batches(batch_size=batch_size,
                                                                            batch_format="numpy"), **inputs)
        items = (kept["item_ids"], kept["item_counts"]) if kept else item_counts(prepared)
        fallback = for_table(task.output, items, top_k, behavior_counts=kept.get("behavior_counts", behavior_counts),
                             meta=meta, tag_names=params.get("tag_names", ()), withheld=withheld)
        return {"params": params, "fallback": dataclasses.asdict(fallback)}

    # A run that keeps its training's state keeps these too, fitted at its first scoring
    # (the calibration's validation users and the new tags' example users act later on).
    state = frozen.score_state(run, [top_k, _digest(tags), _digest(withheld)], fitted) if kept else fitted()
    params = {**state["params"], "top_k": top_k}
    return Output(task.name, run, task.output, folder, params, Fallback(**state["fallback"]), task.train_columns(),
                  withheld)


def _digest(what: str | pa.Array | None) -> str | None:
    """What a file (its bytes) or an array (its values) holds, in a few characters."""
    if what is None:
        return None
    data = io.read_bytes(what) if isinstance(what, str) else "\n".join(map(str, what.to_pylist())).encode()
    return hashlib.sha256(data).hexdigest()[:16]


class Scorer:
    """Ray Data actor: every output's model, loaded once; a batch of users -> one file
    per output table, and a one-row summary of what was written."""

    def __init__(self, outputs: list[Output], prepared: str, use_gpu: bool = False, key: bytes | None = None):
        self.key = key  # pseudonymise the user ids (privacy.pseudonymize); in memory only
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.loaded = []
        for o in outputs:
            task, cfg, model, meta, _ = load_frozen(o.run, prepared)
            self.loaded.append((o, task, cfg, model.to(self.device), meta))
        self.vocab = io.read_parquet(io.join(prepared, "vocab", "items.parquet"),
                                     columns=[S.ITEM_ID]).column(S.ITEM_ID).combine_chunks()
        # Each batch allocates and frees tensors and Arrow buffers; glibc keeps the freed
        # pages, fragmented, and the actor grew with the users it scored (1.0 GB after
        # 50k users, 1.4 GB after 200k). Handing them back after each batch keeps it
        # flat. Absent outside glibc. Arrow's own pool (mimalloc) keeps its freed pages
        # out of malloc_trim's reach: with it the actors still grew 20% from 50k to 200k
        # users (bench/score.py), so this process's Arrow allocates with malloc too.
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        self.trim = getattr(libc, "malloc_trim", None)
        if self.trim is not None:
            pa.set_memory_pool(pa.system_memory_pool())

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        users = batch[S.USER_ID].tolist()
        name = f"part-{int(batch[S.USER_IDX].min()):012d}.parquet"
        out: dict[str, list] = {"users": [len(users)]}
        for o, task, cfg, model, meta in self.loaded:
            known = known_items(batch, meta.n_items)
            if o.withheld is None:
                rows = task.score(model, known, cfg, meta, self.device, **o.params)
            else:
                rows, out[f"withheld:{o.table}"] = self.withholding(o, task, cfg, model, meta, known)
            rows = complete(rows, users, o.table, o.fallback)
            if self.key is not None:
                rows = pseudonymize(rows, self.key)
            io.write_parquet(rows, io.join(o.folder, name))
            out[f"rows:{o.table}"] = [rows.num_rows]
            out[f"summary:{o.table}"] = [json.dumps(summarize(rows, self.vocab))]
        if self.trim is not None:
            self.trim(0)
        return out

    def withholding(self, o: Output, task, cfg, model, meta, batch: dict[str, np.ndarray]
                    ) -> tuple[pa.Table, list[int]]:
        """The model's rows without ``o.withheld``'s items, ``top_k`` per user all the same:
        it ranks twice ``top_k`` items, and again twice as many for the users left short
        (those whose top items are mostly withheld: the very users of the interest), up
        to ``top_k`` plus every withheld item. Also [the rows withheld from the first
        ``top_k`` ranks]."""
        k = o.params["top_k"]
        cap = k + len(o.withheld)
        fetch, todo, parts, counted = min(cap, 2 * k), batch, [], None
        while True:
            raw = task.score(model, todo, cfg, meta, self.device, **{**o.params, "top_k": fetch})
            kept, withheld = withhold(raw, o.withheld, k)
            if counted is None:  # the first pass ranked every user's top k
                counted = withheld
            full = {r["values"] for r in pc.value_counts(kept.column(S.USER_ID)).to_pylist() if r["counts"] >= k}
            short = set(pc.unique(raw.column(S.USER_ID)).to_pylist()) - full if raw.num_rows else set()
            if not short or fetch >= cap:
                parts.append(kept)
                break
            parts.append(kept.filter(pc.invert(pc.is_in(kept.column(S.USER_ID), value_set=pa.array(list(short))))))
            again = np.fromiter((u in short for u in todo[S.USER_ID]), bool, len(todo[S.USER_ID]))
            todo, fetch = {c: v[again] for c, v in todo.items()}, min(cap, 2 * fetch)
        return pa.concat_tables(parts), counted


def known_items(batch: dict[str, np.ndarray], n_items: int) -> dict[str, np.ndarray]:
    """``batch`` without the events of items a model of ``n_items`` items does not know
    (indices only grow: items new since its training). A user left with no event gets
    the fallback."""
    items = batch["items"]
    flat = np.concatenate(list(items)) if len(items) and sum(len(x) for x in items) else np.zeros(0, np.int64)
    unknown = flat >= n_items
    return drop_events(batch, unknown) if unknown.any() else batch


def withhold(rows: pa.Table, items: pa.Array, top_k: int) -> tuple[pa.Table, list[int]]:
    """``rows`` (each user's, ranked) without the ``items``, ranked again without gaps and
    cut to ``top_k`` per user; and [how many of the first ``top_k`` ranks named one]."""
    gone = pc.fill_null(pc.is_in(rows.column(S.ITEM_ID), value_set=items), False)
    counted = pc.sum(pc.and_(gone, pc.less_equal(rows.column("rank"), top_k))).as_py() or 0
    kept = renumbered(rows.filter(pc.invert(gone)), S.USER_ID)
    if S.EVIDENCE in kept.column_names:  # naming a withheld item as evidence would reveal it too
        hidden = set(items.to_pylist())
        at = kept.schema.get_field_index(S.EVIDENCE)
        kept = kept.set_column(at, kept.schema.field(at), pa.array(
            [[e for e in row if e not in hidden] for row in kept.column(at).to_pylist()], kept.schema.field(at).type))
    return kept.filter(pc.less_equal(kept.column("rank"), top_k)), [counted]


def renumbered(table: pa.Table, key: str) -> pa.Table:
    """``table`` with each ``key``'s ranks 1, 2, ... again, in their order (after rows
    were taken out)."""
    ordered = table.sort_by([(key, "ascending"), ("rank", "ascending")])
    ranks = pa.array(positions_in_groups(ordered.column(key)) + 1, ordered.schema.field("rank").type)
    return ordered.set_column(ordered.schema.get_field_index("rank"), "rank", ranks)


def positions_in_groups(keys: pa.ChunkedArray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal ``keys`` (sorted by key)."""
    keys = keys.to_numpy(zero_copy_only=False)
    first = np.concatenate([[0], np.flatnonzero(keys[1:] != keys[:-1]) + 1]) if len(keys) else np.zeros(0, int)
    return np.arange(len(keys)) - np.repeat(first, np.diff(np.concatenate([first, [len(keys)]])))


def score_users(outputs: list[Output], prepared: str, *, batch_size: int = 512, concurrency: int = 1,
                num_gpus: float = 0, progress: Callable[[int, int], None] | None = None,
                key: bytes | None = None, users: str = "sequences",
                carried: dict[str, Carrying] | None = None) -> dict[str, Any]:
    """Score every user of ``prepared`` for every output in one pass; returns users,
    rows per table and each table's merged summary. ``progress(users, rows)`` is called
    as batches finish. ``key``: write each user id's HMAC under it instead of the id
    (:mod:`interest.data.privacy`). ``users``: the folder of ``prepared`` whose users
    are scored (``changed``: those with new events). ``carried``: per table, rows being
    carried over (:func:`carry`), waited for at the end and counted in: their rows, their
    summaries, and their users as ``carried_users``."""
    import ray.data

    columns = list(dict.fromkeys(c for o in outputs for c in o.columns))
    for o in outputs:
        io.makedirs(o.folder)
    sequences = ray.data.read_parquet(io.join(prepared, users))
    # An actor scores a block at a time, and Ray Data reads a few small files as one
    # block: one actor would score every user while the others wait (measured: half the
    # rate of plain torch with 2 actors). Blocks of a few batches keep every actor busy.
    sequences.context.target_max_block_size = block_bytes(prepared, 4 * batch_size)
    sequences = sequences.select_columns(columns)
    extra = {"num_gpus": num_gpus} if num_gpus else {}
    stats = sequences.map_batches(Scorer, fn_constructor_args=(outputs, prepared, bool(num_gpus), key),
                                  batch_size=batch_size, batch_format="numpy",
                                  compute=ray.data.ActorPoolStrategy(size=concurrency), **extra)
    n_users, rows, withheld = 0, Counter(), Counter()
    summaries = {o.table: Summary() for o in outputs}
    for row in stats.iter_rows():
        n_users += int(row["users"])
        for o in outputs:
            rows[o.table] += int(row[f"rows:{o.table}"])
            summaries[o.table].add(json.loads(row[f"summary:{o.table}"]))
            if o.withheld is not None:
                withheld[o.table] += int(row[f"withheld:{o.table}"])
        if progress:
            progress(n_users, sum(rows.values()))
    kept = 0
    for table, carrying in (carried or {}).items():
        done = carrying.result()
        rows[table] += done["rows"]
        kept = done["users"]  # the same users in every table
        for part in done["summaries"]:
            summaries[table].add(part)
    return {"users": n_users, "carried_users": kept, "rows": dict(rows), "summary": {t: m.as_dict() for t, m in summaries.items()},
            "withheld": dict(withheld)}


def block_bytes(prepared: str, users: int) -> int:
    """Bytes in memory of about ``users`` prepared sequences (at least 1 MiB), from the
    Parquet footers' uncompressed sizes."""
    fs, inner = io.filesystem(io.join(prepared, "sequences"))
    rows = size = 0
    for fragment in pads.dataset(inner, filesystem=fs, format="parquet").get_fragments():
        meta = fragment.metadata
        rows += meta.num_rows
        size += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return max(1 << 20, int(size / max(rows, 1) * users))



def top_per_group(batch: pa.Table, key: str, by: str, n: int) -> pa.Table:
    """The ``n`` rows of highest ``by`` of each ``key`` in ``batch`` (ties: lower user id first)."""
    ordered = batch.sort_by([(key, "ascending"), (by, "descending"), (S.USER_ID, "ascending")])
    return ordered.filter(pa.array(positions_in_groups(ordered.column(key)) < n))


def _ranked(batch: pa.Table, n: int) -> pa.Table:
    """One tag's candidates -> its top ``n`` users, ranked (``tag_audiences``)."""
    top = top_per_group(batch, S.TAG, "score", n)
    top = top.append_column("rank", pa.array(np.arange(1, top.num_rows + 1), pa.int32()))
    return S.conform(top, S.OUTPUTS["tag_audiences"], what="tag_audiences")


def audiences(scores: str, n: int, tags: int):
    """Each tag's top ``n`` users across every user of the ``user_zeroshot`` table at
    ``scores``: each block keeps its own top ``n`` per tag, then one group per tag merges
    those (``blocks x n`` rows a tag, never every user's). Users the model could not
    score (score 0, no history) are not an audience. ``tags``: how many there are, the
    shuffle's partitions (Ray Data's default of 200 costs seconds each for a few tags)."""
    import ray.data

    fs, inner = io.filesystem(scores)
    columns = [c for c in S.OUTPUTS["tag_audiences"].names if c != "rank"]
    partial = ray.data.read_parquet(inner, filesystem=fs, columns=columns).filter(
        expr=f"{S.SOURCE} == 'model'").map_batches(top_per_group, fn_kwargs={"key": S.TAG, "by": "score", "n": n},
                                                    batch_format="pyarrow")
    return partial.groupby(S.TAG, num_partitions=max(1, min(tags, 64))).map_groups(
        _ranked, fn_kwargs={"n": n}, batch_format="pyarrow")


def write_audiences(scores: str, folder: str, n: int, tags: int) -> int:
    """``tag_audiences`` of the ``user_zeroshot`` files at ``scores`` into ``folder``; its rows."""
    fs, inner = io.filesystem(folder)
    audiences(scores, n, tags).write_parquet(inner, filesystem=fs)
    return io.count_rows(folder)


def score(run: str, prepared: str, out: str, *, top_k: int = 10, concurrency: int = 1, batch_size: int = 512,
          overwrite: bool = False, tags: str | None = None, audience: int = 1000) -> dict[str, Any]:
    """Score every user with ``run`` into ``out``, published atomically; returns a report
    (users, rows, seconds, calibration). ``tags``: the new tags file of task ``zeroshot``,
    whose ``audience`` best users per tag make the ``tag_audiences`` table."""
    start = time.time()
    prepared = prepared if io.is_s3(prepared) else os.path.abspath(prepared)
    run = run if io.is_s3(run) else os.path.abspath(run)
    if audience < 1:
        raise ConfigError(f"audience must be >= 1 user per tag, got {audience}")
    publication = io.Publication(out, overwrite=overwrite)
    try:
        output = plan(run, prepared, publication.path, top_k=top_k, tags=tags, batch_size=batch_size)
        zeroshot = output.table == "user_zeroshot"
        if zeroshot:
            output.folder = io.join(publication.path, "user_zeroshot")
        done = score_users([output], prepared, batch_size=batch_size, concurrency=concurrency)
        report = {"task": output.task, "run": run, "users": done["users"], "rows": done["rows"][output.table],
                  "top_k": top_k, **output.scalars, "summary": done["summary"][output.table],
                  "seconds": round(time.time() - start, 1)}
        if zeroshot:
            rows = write_audiences(output.folder, io.join(publication.path, "tag_audiences"), audience,
                                   len(output.params["tag_names"]))
            report.update(tags=output.params["tag_names"], audience=audience, audience_rows=rows)
        io.write_json(report, io.join(publication.path, "_report.json"))  # "_": Parquet readers skip it
        publication.commit()
    except BaseException:
        publication.abort()
        raise
    log.info("scored %s: %d rows in %.1f s -> %s", run, report["rows"], report["seconds"], out)
    return report
