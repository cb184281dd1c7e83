"""Batch inference: score every user of a prepared dataset with a trained run, as Parquet.

A Ray Data job: the prepared sequences are streamed through an actor pool of
:class:`Scorer` (the model loads once per actor, in ``__init__``), each batch becomes
the task's output rows, checked against their schema, and the folder is published
atomically (:class:`interest.io.Publication`).
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
from interest.config import ConfigError
from interest.tasks import Task
from interest.train.checkpoint import load_model

log = logging.getLogger(__name__)


class Scorer:
    """Ray Data actor: the run's model, mapping batches of users to scored rows."""

    def __init__(self, run: str, prepared: str, params: dict[str, Any]):
        self.task, self.cfg, self.model, _, self.meta = load_model(run, prepared)
        self.params = params

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return self.task.score(self.model, batch, self.cfg, self.meta, torch.device("cpu"), **self.params)


def score(run: str, prepared: str, out: str, *, top_k: int = 10, concurrency: int = 1, batch_size: int = 512,
          overwrite: bool = False) -> dict[str, Any]:
    """Score every user with ``run``; returns a report (users, rows, seconds, calibration)."""
    import ray.data

    start = time.time()
    prepared = prepared if io.is_s3(prepared) else os.path.abspath(prepared)
    run = run if io.is_s3(run) else os.path.abspath(run)
    task, cfg, model, state, meta = load_model(run, prepared)
    if type(task).score is Task.score:
        raise ConfigError(f"task {task.name} has no batch scoring yet; it scores in `interest evaluate`")
    publication = io.Publication(out, overwrite=overwrite)
    sequences = ray.data.read_parquet(io.join(prepared, "sequences")).select_columns(task.train_columns())
    params = task.score_params(model, cfg, meta, sequences.iter_batches(batch_size=batch_size, batch_format="numpy"))
    params["top_k"] = top_k
    try:
        rows = sequences.map_batches(Scorer, fn_constructor_args=(run, prepared, params), batch_size=batch_size,
                                     batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=concurrency))
        fs, inner = io.filesystem(publication.path)
        rows.write_parquet(inner, filesystem=fs)
        written = io.count_rows(publication.path)
        report = {"task": task.name, "run": run, "rows": written, "top_k": top_k,
                  **{k: v for k, v in params.items() if k != "top_k"}, "seconds": round(time.time() - start, 1)}
        io.write_json(report, io.join(publication.path, "_report.json"))  # "_": Parquet readers skip it
        publication.commit()
    except BaseException:
        publication.abort()
        raise
    log.info("scored %s: %d rows in %.1f s -> %s", task.name, written, report["seconds"], out)
    return report
