"""What a model reads besides its weights, frozen with it when its training ends.

Scoring reads more than weights: item vectors, item and tag transitions, the tag
space, tag priors, item popularity (the fallback), each computed from the prepared
data (:meth:`Task.load_meta`). Computed again on later data, they move. So a model
reused on a later night would score a user whose events did not change differently
because *other* users acted, and an incremental night, which carries that user's rows
over unchanged, would disagree with a full one. Instead each run keeps them, as of its
training, in ``RUN/frozen/``: scoring reads them there (:func:`load`), and the model
keeps the items it was trained with (indices only grow, so a later dataset's first
``n_items`` items are the same ones; later items are unknown to it until it is trained
again).

Stored without pickle, like the checkpoints: arrays in ``meta.safetensors``, the rest
in ``meta.json``, and objects only of the few classes in :data:`CLASSES`, rebuilt from
their fields.

The scoring parameters fitted on the validation users (calibration, new tags' vectors)
and the fallback rows are frozen too, at the run's first scoring (in the pipeline, the
night it is trained): :func:`score_state`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from interest import io
from interest import schemas as S
from interest.common.tags import TagSpace, TagTransitions
from interest.data.prepared import load_report
from interest.tasks import Meta, Task
from interest.tasks.sequence.transitions import ItemTransitions

FOLDER = "frozen"
META_JSON = "meta.json"
ARRAYS = "meta.safetensors"
# The classes a frozen meta may hold, rebuilt from their fields (never unpickled).
CLASSES = {c.__name__: c for c in (TagSpace, TagTransitions, ItemTransitions)}


def folder(run: str) -> str:
    return io.join(run, FOLDER)


def exists(run: str) -> bool:
    return io.exists(io.join(folder(run), META_JSON))


def freeze(task: Task, cfg: Any, prepared: str, run: str) -> None:
    """Compute what ``run``'s model reads from ``prepared`` and store it in the run."""
    meta = task.load_meta(cfg, prepared)
    extra = task.frozen(cfg, meta)
    vocab = io.read_parquet(io.join(prepared, "vocab", "items.parquet"), columns=[S.ITEM_ID, S.COUNT])
    days = load_report(prepared)["days"]
    state = {"n_items": meta.n_items, "n_users": meta.n_users, "extra": extra,
             # the fallback's popularity and behaviour mix, as of the training
             "item_ids": vocab.column(S.ITEM_ID).combine_chunks(),
             "item_counts": vocab.column(S.COUNT).fill_null(0).to_numpy().astype(np.int64),
             "behavior_counts": {b: int(sum(c[i] for c in days.values())) for i, b in enumerate(S.BEHAVIORS)}}
    _write(state, folder(run))


def load(task: Task, cfg: Any, run: str, prepared: str) -> tuple[Meta, dict[str, Any]]:
    """(the meta the run's model was trained with, the rest of its frozen state:
    ``item_ids``, ``item_counts``, ``behavior_counts``). Fails when ``prepared``'s items
    do not begin with the run's: its indices would name other items."""
    state = _read(folder(run))
    ids = io.read_parquet(io.join(prepared, "vocab", "items.parquet"), columns=[S.ITEM_ID]).column(S.ITEM_ID)
    mine = state["item_ids"]
    if len(ids) < len(mine) or not ids.slice(0, len(mine)).combine_chunks().equals(mine):
        raise io.InputError(f"{run} was trained on items that {prepared} does not begin with (another dataset, "
                            f"or one prepared again from scratch): train it again, or prepare incrementally")
    meta = Meta(n_items=state.pop("n_items"), n_users=state.pop("n_users"))
    meta.extra = task.thawed(cfg, state.pop("extra"))
    return meta, state


def score_state(run: str, key: Any, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The scoring state of ``run`` under ``key`` (what it depends on besides the run: the
    new tags file, the withheld items), computed once by ``compute`` and kept in the
    run's frozen folder."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = io.join(folder(run), f"score-{digest}")
    if io.exists(io.join(path, META_JSON)):
        return _read(path)
    state = compute()
    _write(state, path)
    return state


def _write(state: dict[str, Any], where: str) -> None:
    arrays: dict[str, np.ndarray] = {}
    doc = _encode(state, "", arrays)
    io.write_bytes(save_arrays(arrays), io.join(where, ARRAYS))
    io.write_json(doc, io.join(where, META_JSON))  # last: its presence says the folder is whole


def _read(where: str) -> dict[str, Any]:
    return _decode(io.read_json(io.join(where, META_JSON)), load_arrays(io.read_bytes(io.join(where, ARRAYS))))


# --- the codec: JSON for values, safetensors for arrays, named classes for objects -----

def _encode(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, torch.Tensor):
        arrays[path] = value.detach().cpu().contiguous().numpy()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return {"__list__": [_encode(v, f"{path}.{i}", arrays) for i, v in enumerate(value.tolist())]}
        arrays[path] = np.ascontiguousarray(value)
        return {"__array__": path}
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return {"__arrow__": value.to_pylist(), "type": str(value.type)}
    if type(value).__name__ in CLASSES and isinstance(value, CLASSES[type(value).__name__]):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)} if dataclasses.is_dataclass(
            value) else vars(value)
        return {"__object__": type(value).__name__, "fields": _encode(fields, path, arrays)}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"frozen meta {path or '<root>'}: keys must be strings")
        return {k: _encode(v, f"{path}.{k}" if path else k, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{path}.{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"frozen meta {path}: a {type(value).__name__} cannot be frozen (give the task's "
                    f"`frozen` a way to store it, or leave it out)")


def _decode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return torch.from_numpy(arrays[value["__tensor__"]].copy())
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__list__" in value:
            return np.asarray([_decode(v, arrays) for v in value["__list__"]], object)
        if "__arrow__" in value:
            return pa.array(value["__arrow__"], _ARROW_TYPES.get(value["type"]))
        if "__object__" in value:
            return CLASSES[value["__object__"]](**_decode(value["fields"], arrays))
        return {k: _decode(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    return value


_ARROW_TYPES = {"string": pa.string(), "large_string": pa.large_string(), "int64": pa.int64(), "int32": pa.int32()}
