"""One user's outputs and why: the rows a run scores for the user, with each row's
evidence written out as the user's own events (titles, behaviour, when), for a person
who asks "why am I shown this?" (``interest explain``).

The rows are those the nightly job writes (the same model, frozen state, scoring
parameters and fallback: :func:`interest.score.batch.plan`), scored in this process for
one user.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from interest import io
from interest import schemas as S
from interest.config import ConfigError
from interest.score.batch import known_items, plan
from interest.score.fallback import complete
from interest.train.checkpoint import load_frozen


@dataclass
class Explanation:
    """A user's scored rows (the run's output table) and what they rest on."""

    user_id: str
    task: str
    table: str
    rows: pa.Table
    events: list[tuple[dt.datetime, str, str]]  # (when, behaviour, item id), oldest first
    items: dict[str, tuple[str | None, str | None]] = field(repr=False)  # item id -> (title, category)


def explain(run: str, prepared: str, user_id: str, *, top_k: int = 10, tags: str | None = None) -> Explanation:
    """Score ``user_id`` of ``prepared`` with ``run`` as the nightly job would."""
    output = plan(run, prepared, "", top_k=top_k, tags=tags)
    task, cfg, model, meta, _ = load_frozen(run, prepared)
    fs, inner = io.filesystem(io.join(prepared, "sequences"))
    found = pads.dataset(inner, filesystem=fs, format="parquet").to_table(
        columns=list(dict.fromkeys(task.train_columns() + ["ts"])), filter=pc.field(S.USER_ID) == user_id)
    if not found.num_rows:
        raise ConfigError(f"user {user_id!r} is not in {prepared}")
    batch = {c: found.column(c).to_numpy(zero_copy_only=False) for c in found.column_names}
    rows = task.score(model, known_items(batch, meta.n_items), cfg, meta, torch.device("cpu"), **output.params)
    rows = complete(rows, [user_id], output.table, output.fallback)
    vocab = io.read_parquet(io.join(prepared, "vocab", "items.parquet"), columns=[S.ITEM_ID]).column(S.ITEM_ID)
    items = np.asarray(batch["items"][0], np.int64)
    events = [(as_datetime(t), S.BEHAVIORS[int(b)], vocab[int(i)].as_py())
              for t, b, i in zip(batch["ts"][0], batch["behaviors"][0], items)]
    wanted = {e[2] for e in events} | set(_named(rows))
    catalogue = io.read_parquet(io.join(prepared, "items"))
    catalogue = catalogue.filter(pc.is_in(catalogue.column(S.ITEM_ID), value_set=pa.array(sorted(wanted))))
    texts = {r[S.ITEM_ID]: (r.get(S.TITLE), r.get(S.CATEGORY)) for r in catalogue.to_pylist()}
    return Explanation(user_id, task.name, output.table, rows, events, texts)


def as_datetime(value) -> dt.datetime:
    """A prepared timestamp (numpy datetime64 in microseconds, UTC) as a datetime."""
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(
        microseconds=int(np.datetime64(value, "us").astype(np.int64)))


def _named(rows: pa.Table) -> list[str]:
    """Item ids a table's rows name: their items and their evidence."""
    out = rows.column(S.ITEM_ID).to_pylist() if S.ITEM_ID in rows.column_names else []
    for column in (S.EVIDENCE, S.MATCHED_ITEMS):
        if column in rows.column_names:
            out += [i for row in rows.column(column).to_pylist() for i in row]
    return out


def render(e: Explanation, recent: int = 10) -> str:
    """``e`` as text a person reads: the user's latest events, then each row with the
    events behind it."""
    def item(i: str) -> str:
        title, category = e.items.get(i, (None, None))
        return i + (f' "{title}"' if title else "") + (f" ({category})" if category else "")

    last = {}  # item -> its latest event
    for when, behavior, i in e.events:
        last[i] = (when, behavior)
    lines = [f"user {e.user_id}: {len(e.events):,} events" + (
        f" from {e.events[0][0]:%Y-%m-%d} to {e.events[-1][0]:%Y-%m-%d}; the latest {min(recent, len(e.events))}:"
        if e.events else "")]
    lines += [f"  {when:%Y-%m-%d %H:%M}  {behavior:<5} {item(i)}" for when, behavior, i in e.events[-recent:]]
    lines.append(f"\n{e.table} ({e.task}):")
    value = next(c for c in ("probability", "score") if c in e.rows.column_names)
    for r in e.rows.sort_by("rank").to_pylist():
        what = item(r[S.ITEM_ID]) if S.ITEM_ID in r else r[S.TAG]
        extra = f", next {r['next_behavior']} {r['behavior_probability']:.2f}" if "next_behavior" in r else ""
        lines.append(f"{r['rank']:>3}. {what}  {value} {r[value]:.4g}{extra}  [{r[S.SOURCE]}]")
        for i in r.get(S.EVIDENCE) or []:
            when, behavior = last.get(i, (None, "?"))
            lines.append(f"       because of {behavior} {item(i)}" + (f" on {when:%Y-%m-%d}" if when else ""))
        if r.get(S.MATCHED_ITEMS):
            lines.append(f"       the tag's example items the user has: {', '.join(map(item, r[S.MATCHED_ITEMS]))}")
        if r.get(S.MATCHED_WORDS):
            lines.append(f"       the tag's words in them: {', '.join(r[S.MATCHED_WORDS])}")
        if r[S.SOURCE] != "model":
            lines.append(f"       (the {r[S.SOURCE]} fallback: nothing the model knows in this user's history)")
    return "\n".join(lines)
