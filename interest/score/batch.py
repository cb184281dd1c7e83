"""Batch inference: score every user of a prepared dataset with a trained run, as Parquet.

A Ray Data job: the prepared sequences are streamed through an actor pool of
:class:`Scorer` (the model loads once per actor, in ``__init__``), each batch becomes
the task's output rows, checked against their schema, and the folder is published
atomically (:class:`interest.io.Publication`). Task ``zeroshot`` scores the new tags of
a tags file and writes two tables: ``user_zeroshot`` (every user, every tag) and
``tag_audiences`` (each tag's top users across all users, a top-N reduce on Ray Data).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from interest import io
from interest import schemas as S
from interest.config import ConfigError
from interest.tasks import Task
from interest.tasks.zeroshot.newtags import read_for
from interest.train.checkpoint import load_model

log = logging.getLogger(__name__)


class Scorer:
    """Ray Data actor: the run's model, mapping batches of users to scored rows."""

    def __init__(self, run: str, prepared: str, params: dict[str, Any]):
        self.task, self.cfg, self.model, _, self.meta = load_model(run, prepared)
        self.params = params

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return self.task.score(self.model, batch, self.cfg, self.meta, torch.device("cpu"), **self.params)


def top_per_group(batch: pa.Table, key: str, by: str, n: int) -> pa.Table:
    """The ``n`` rows of highest ``by`` of each ``key`` in ``batch`` (ties: lower user id first)."""
    ordered = batch.sort_by([(key, "ascending"), (by, "descending"), (S.USER_ID, "ascending")])
    keys = ordered.column(key).to_numpy(zero_copy_only=False)
    first = np.concatenate([[0], np.flatnonzero(keys[1:] != keys[:-1]) + 1]) if len(keys) else np.zeros(0, int)
    starts = np.repeat(first, np.diff(np.concatenate([first, [len(keys)]])))
    return ordered.filter(pa.array(np.arange(len(keys)) - starts < n))


def _ranked(batch: pa.Table, n: int) -> pa.Table:
    """One tag's candidates -> its top ``n`` users, ranked (:data:`interest.schemas.TAG_AUDIENCES`)."""
    top = top_per_group(batch, S.TAG, "score", n)
    return S.conform(top.append_column("rank", pa.array(np.arange(1, top.num_rows + 1), pa.int32())),
                     S.TAG_AUDIENCES, what="tag_audiences")


def audiences(scores: str, n: int):
    """Each tag's top ``n`` users across every user of the ``user_zeroshot`` table at
    ``scores``: each block keeps its own top ``n`` per tag, then one group per tag merges
    those (``blocks x n`` rows a tag, never every user's)."""
    import ray.data

    fs, inner = io.filesystem(scores)
    partial = ray.data.read_parquet(inner, filesystem=fs, columns=[S.TAG, S.USER_ID, "score"]).map_batches(
        top_per_group, fn_kwargs={"key": S.TAG, "by": "score", "n": n}, batch_format="pyarrow")
    return partial.groupby(S.TAG).map_groups(_ranked, fn_kwargs={"n": n}, batch_format="pyarrow")


def score(run: str, prepared: str, out: str, *, top_k: int = 10, concurrency: int = 1, batch_size: int = 512,
          overwrite: bool = False, tags: str | None = None, audience: int = 1000) -> dict[str, Any]:
    """Score every user with ``run``; returns a report (users, rows, seconds, calibration).
    ``tags``: the new tags file of task ``zeroshot``, whose ``audience`` best users per
    tag make the ``tag_audiences`` table."""
    import ray.data

    start = time.time()
    prepared = prepared if io.is_s3(prepared) else os.path.abspath(prepared)
    run = run if io.is_s3(run) else os.path.abspath(run)
    task, cfg, model, state, meta = load_model(run, prepared)
    if type(task).score is Task.score:
        raise ConfigError(f"task {task.name} has no batch scoring yet; it scores in `interest evaluate`")
    inputs = {}
    if audience < 1:
        raise ConfigError(f"audience must be >= 1 user per tag, got {audience}")
    if task.scores_new_tags:
        inputs = {"prepared": prepared, "new_tags": read_for(tags, prepared) if tags else None}
    elif tags:
        raise ConfigError(f"--tags is for task zeroshot; {run} is a {task.name} run")
    publication = io.Publication(out, overwrite=overwrite)
    sequences = ray.data.read_parquet(io.join(prepared, "sequences")).select_columns(task.train_columns())
    params = task.score_params(model, cfg, meta, sequences.iter_batches(batch_size=batch_size, batch_format="numpy"),
                               **inputs)
    params["top_k"] = top_k
    try:
        rows = sequences.map_batches(Scorer, fn_constructor_args=(run, prepared, params), batch_size=batch_size,
                                     batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=concurrency))
        table = io.join(publication.path, "user_zeroshot") if task.scores_new_tags else publication.path
        fs, inner = io.filesystem(table)
        rows.write_parquet(inner, filesystem=fs)
        written = io.count_rows(table)
        report = {"task": task.name, "run": run, "rows": written, "top_k": top_k,
                  **{k: v for k, v in params.items() if k != "top_k" and isinstance(v, (int, float, str))},
                  "seconds": round(time.time() - start, 1)}
        if task.scores_new_tags:
            fs, inner = io.filesystem(io.join(publication.path, "tag_audiences"))
            audiences(table, audience).write_parquet(inner, filesystem=fs)
            report.update(tags=params["tag_names"], audience=audience,
                          audience_rows=io.count_rows(io.join(publication.path, "tag_audiences")))
        io.write_json(report, io.join(publication.path, "_report.json"))  # "_": Parquet readers skip it
        publication.commit()
    except BaseException:
        publication.abort()
        raise
    log.info("scored %s: %d rows in %.1f s -> %s", task.name, written, report["seconds"], out)
    return report
