"""Embed every item's text once, and read the vectors back.

The store is a folder of runs, ``STORE/run-<time>-<id>/part-*.parquet``
(:data:`interest.schemas.ITEM_EMBEDDINGS`), each complete once its ``_SUCCESS`` marker
exists. Rows are keyed by item id, encoder and a hash of the text, so a rerun embeds
only items that are new, whose text changed, or that another encoder has not seen;
nothing is rewritten.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from interest import io
from interest import schemas as S
from interest.text import encoder as E

log = logging.getLogger(__name__)
TEXT = "text"


@dataclass
class EmbedConfig:
    """Args:
        encoder: Hugging Face model folder or hub name; None: the packaged default.
        batch_size: items per encoder call.
        max_length: tokens per item text.
        concurrency: encoder actors (each loads the model once).
        use_gpu: one GPU per actor.
    """

    encoder: str | None = None
    batch_size: int = 256
    max_length: int = 64
    concurrency: int = 1
    use_gpu: bool = False


def complete_runs(store: str) -> list[str]:
    """The store's finished runs, oldest first (run names start with their time)."""
    if not io.exists(store):
        return []
    fs, inner = io.filesystem(store)
    runs = [i.base_name for i in fs.get_file_info(pafs.FileSelector(inner)) if i.type == pafs.FileType.Directory
            and i.base_name.startswith("run-")]
    return [io.join(store, r) for r in sorted(runs) if io.is_complete(io.join(store, r))]


def read_store(store: str, model_id: str, columns: list[str]) -> pa.Table:
    """Rows of ``model_id`` in every complete run, later runs last."""
    parts = []
    for run in complete_runs(store):
        t = io.read_parquet(run, columns=list(dict.fromkeys(columns + ["model"])))
        parts.append(t.filter(pc.equal(t["model"], model_id)).select(columns))
    if not parts:
        return pa.table({c: pa.array([], S.ITEM_EMBEDDINGS.field(c).type) for c in columns})
    return pa.concat_tables(parts)


def _keys(item_ids, hashes) -> np.ndarray:
    return np.char.add(np.char.add(np.asarray(item_ids, dtype=str), "\x00"), np.asarray(hashes, dtype=str))


def _render(batch: pa.Table, done: np.ndarray) -> pa.Table:
    """Ray Data batch function: item text and its hash; drops items already embedded."""
    texts = E.item_texts(batch)
    hashes = [E.text_hash(t) for t in texts]
    keep = ~np.isin(_keys(batch[S.ITEM_ID].to_pylist(), hashes), done)
    return pa.table({S.ITEM_ID: batch[S.ITEM_ID], TEXT: texts, "text_hash": hashes}).filter(pa.array(keep))


class ItemEncoder:
    """Ray Data actor: loads the encoder once, then maps batches of item texts to vectors."""

    def __init__(self, encoder: str | None, max_length: int, use_gpu: bool):
        import torch

        self.model_id, self.tokenizer, self.model = E.load(encoder)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.max_length = max_length

    def __call__(self, batch: pa.Table) -> pa.Table:
        v = E.encode(batch[TEXT].to_pylist(), self.tokenizer, self.model, max_length=self.max_length,
                     batch_size=max(batch.num_rows, 1), device=self.device)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1]).cast(pa.list_(pa.float32()))
        return pa.table({S.ITEM_ID: batch[S.ITEM_ID], "model": pa.array([self.model_id] * batch.num_rows),
                         "text_hash": batch["text_hash"], "vector": vectors}, schema=S.ITEM_EMBEDDINGS)


def items_source(path: str) -> str:
    """The items table of a prepared dataset, or ``path`` itself (Parquet of the items schema)."""
    prepared_items = io.join(path, "items")
    if io.exists(io.join(path, "prepare_report.json")) and io.exists(prepared_items):
        return prepared_items
    if not io.exists(path):
        raise io.InputError(f"items {path} not found")
    return path


def embed_items(items: str, store: str, cfg: EmbedConfig) -> dict[str, Any]:
    """Embed the items of ``items`` (a prepared dataset or an items Parquet) not yet in ``store``."""
    import ray.data

    start = time.time()
    source = items_source(items)
    model_id, _ = E.resolve(cfg.encoder)  # a missing model fails here, before Ray Data starts
    fs, inner = io.filesystem(source if io.is_s3(source) else os.path.abspath(source))  # workers' cwd differs
    names = pads.dataset(inner, filesystem=fs, format="parquet").schema.names
    if S.ITEM_ID not in names:
        raise S.SchemaError(f"items {source}: required column {S.ITEM_ID!r} is missing")
    done = read_store(store, model_id, [S.ITEM_ID, "text_hash"])
    done_keys = _keys(done[S.ITEM_ID].to_pylist(), done["text_hash"].to_pylist())
    ds = ray.data.read_parquet(inner, filesystem=fs).select_columns(
        [c for c in (S.ITEM_ID, S.TITLE, S.CATEGORY, S.BRAND) if c in names])
    total = ds.count()
    todo = ds.map_batches(_render, fn_kwargs={"done": done_keys}, batch_format="pyarrow")
    vectors = todo.map_batches(ItemEncoder, fn_constructor_args=(cfg.encoder, cfg.max_length, cfg.use_gpu),
                               batch_size=cfg.batch_size, batch_format="pyarrow",
                               compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
                               num_gpus=1 if cfg.use_gpu else 0)
    store = store if io.is_s3(store) else os.path.abspath(store)
    run = io.join(store, f"run-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}")
    fs, inner = io.filesystem(run)
    vectors.write_parquet(inner, filesystem=fs)
    written = io.count_rows(run)
    if written:
        io.write_json({"complete": True, "model": model_id, "items": written}, io.join(run, io.SUCCESS))
    report = {"model": model_id, "items": total, "embedded": written, "already_embedded": total - written,
              "run": run if written else None, "seconds": round(time.time() - start, 1)}
    log.info("embedded %d of %d items with %s (%d unchanged) in %.1f s", written, total, model_id, total - written,
             report["seconds"])
    return report


def item_vectors(store: str, model_id: str, items: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(len(items), dim) vectors for ``items`` (item_id, title, category, brand) in order,
    from the store's rows of the items' current text; and a mask of the items found."""
    texts = E.item_texts(items)
    want = _keys(items[S.ITEM_ID].to_pylist(), [E.text_hash(t) for t in texts])
    stored = read_store(store, model_id, [S.ITEM_ID, "text_hash", "vector"])
    if stored.num_rows == 0:
        raise io.InputError(f"no item vectors of {model_id} in {store}; run `interest embed-items` first")
    have = _keys(stored[S.ITEM_ID].to_pylist(), stored["text_hash"].to_pylist())
    dim = len(stored["vector"][0])
    flat = stored["vector"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
    index = {k: i for i, k in enumerate(have)}  # later runs overwrite earlier ones
    rows = np.array([index.get(k, -1) for k in want], np.int64)
    found = rows >= 0
    out = np.zeros((len(want), dim), np.float32)
    out[found] = flat[rows[found]]
    return out, found


def prepared_item_vectors(prepared: str, store: str, encoder: str | None = None) -> tuple[np.ndarray, pa.Table]:
    """(n_items, dim) vectors of a prepared dataset's items in ``item_idx`` order, and its
    item table in that order. Items without a stored vector of their current text get
    zeros, with a warning: the model still runs, and a rerun of embed-items fills them."""
    items = io.read_parquet(io.join(prepared, "items")).sort_by(S.ITEM_IDX)
    model_id, _ = E.resolve(encoder)  # a missing encoder fails here, on the driver
    vectors, found = item_vectors(store, model_id, items)
    if not found.all():
        log.warning("%d of %d items have no vector of %s in %s (zeros used); rerun embed-items",
                    (~found).sum(), len(found), model_id, store)
    return vectors, items
