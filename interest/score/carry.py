"""Rows carried over from the previous partition, for the users an incremental night
does not score again (:mod:`interest.pipeline`).

Ray tasks, one per few files, started before the scoring pass and run beside it. The
module imports no torch: each task starts in a fresh worker, and importing the scoring
module there cost seconds (4.4 s for a 5k-user night, against 0.2 s once warm)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from interest import io
from interest import schemas as S
from interest.score.summary import summarize


CARRIED = "carried-"  # the files of rows carried over, beside the scored ones
_CARRY_TASKS = 16  # per table: few enough that task overhead stays small, enough to spread


class Carrying:
    """A table's rows being carried over (:func:`carry`): Ray tasks that run beside the
    scoring pass; :meth:`result` waits for them."""

    def __init__(self, refs: list):
        self.refs = refs

    def result(self) -> dict[str, Any]:
        """The users and rows carried and the summaries of the rows (:func:`summarize`)."""
        import ray

        done = [r for part in ray.get(self.refs) for r in part]
        return {"users": sum(r["users"] for r in done), "rows": sum(r["rows"] for r in done),
                "summaries": [r["summary"] for r in done if r["rows"]]}


def carry(files: list[str], folder: str, drop: pa.Array, prepared: str) -> Carrying:
    """Start copying a table's published rows (``files``, one batch of users each) into
    ``folder``, but those of the users in ``drop`` (scored again)."""
    import ray

    io.makedirs(folder)
    vocab = ray.put(io.read_parquet(io.join(prepared, "vocab", "items.parquet"),
                                    columns=[S.ITEM_ID]).column(S.ITEM_ID).combine_chunks())
    drop = ray.put(drop)
    step = max(1, -(-len(files) // _CARRY_TASKS))
    task = ray.remote(_carry_files)
    return Carrying([task.remote(files[i:i + step], folder, drop, vocab) for i in range(0, len(files), step)])


def _carry_files(paths: list[str], folder: str, drop: pa.Array, vocab: pa.Array) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        rows = io.read_parquet(path)
        rows = rows.filter(pc.invert(pc.is_in(rows.column(S.USER_ID), value_set=drop)))
        if rows.num_rows:  # named after the file it comes from: a retried task rewrites it
            io.write_parquet(rows, io.join(folder, CARRIED + path.rstrip("/").rsplit("/", 1)[-1]))
        out.append({"users": pc.count_distinct(rows.column(S.USER_ID)).as_py(), "rows": rows.num_rows,
                    "summary": summarize(rows, vocab) if rows.num_rows else {}})
    return out
