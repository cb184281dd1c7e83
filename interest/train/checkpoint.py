"""Checkpoints that load without unpickling arbitrary objects.

A checkpoint folder holds ``model.safetensors`` (latest weights), ``best.safetensors``
(weights of the best validation epoch so far; after a refit, the refit weights),
``prerefit.safetensors`` (after a refit: the best epoch's weights from before it, for
choices made on the validation events the refit trained on), ``optimizer.pt`` (tensors
and numbers only, read with ``weights_only=True``), ``state.json`` (epoch, best metric,
the task's config) and ``items.parquet`` (the item vocabulary the model's indices refer
to). :func:`load_model` is how evaluation and scoring read a run.

Training writes a checkpoint in a local folder and Ray Train copies it to the run's
storage; the readers here take a run on local disk or ``s3://`` alike.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn as nn
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save_file

from interest import config as C
from interest import io
from interest.tasks import Meta, Task, get_task
from interest.tasks.base import unwrap
from interest.train import frozen

MODEL = "model.safetensors"
BEST = "best.safetensors"
PREREFIT = "prerefit.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"
VOCAB = "items.parquet"


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's weights (unwrapping DDP)."""
    core = unwrap(model)
    return {k: v.detach().cpu().clone().contiguous() for k, v in core.state_dict().items()}


def save(folder: str, model: nn.Module, best: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None,
         state: dict, vocab_path: str, prerefit: dict[str, torch.Tensor] | None = None) -> None:
    """``optimizer`` None: a closed-form model, nothing to resume."""
    os.makedirs(folder, exist_ok=True)
    save_file(weights(model), os.path.join(folder, MODEL))
    save_file(best, os.path.join(folder, BEST))
    if prerefit is not None:
        save_file(prerefit, os.path.join(folder, PREREFIT))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), os.path.join(folder, OPTIMIZER))
    with open(os.path.join(folder, STATE), "w") as f:
        json.dump(state, f, indent=2)
    fs, inner = io.filesystem(vocab_path)
    with fs.open_input_stream(inner) as src, open(os.path.join(folder, VOCAB), "wb") as dst:
        dst.write(src.read())


def load_state(folder: str) -> dict:
    return io.read_json(io.join(folder, STATE))


def read_weights(folder: str, which: str = MODEL) -> dict[str, torch.Tensor]:
    if io.is_s3(folder):
        return load_bytes(io.read_bytes(io.join(folder, which)))
    return load_file(os.path.join(folder, which))  # memory-mapped


def load_optimizer(folder: str, optimizer: torch.optim.Optimizer) -> None:
    optimizer.load_state_dict(torch.load(os.path.join(folder, OPTIMIZER), weights_only=True))


def has_weights(folder: str, which: str) -> bool:
    return io.exists(io.join(folder, which))


def latest_checkpoint(run: str) -> str:
    """The newest ``checkpoint_*`` folder of ``run`` (Ray Train numbers them in order)."""
    found = [io.join(run, name) for name in io.children(run, folders=True) if name.startswith("checkpoint_")]
    if not found:
        raise io.InputError(f"no checkpoint in {run}; train first (`interest train ... --out {run}`)")
    return found[-1]


def latest(run: str) -> tuple[str, dict, Task, object]:
    """(folder, training state, task, config) of the run's latest checkpoint."""
    folder = latest_checkpoint(run)
    state = load_state(folder)
    task = get_task(state["task"])
    return folder, state, task, C.from_dict(task.config_cls, state["config"])


def load_model(run: str, prepared: str, which: str = BEST) -> tuple[Task, object, nn.Module, dict, Meta]:
    """(task, config, model in eval mode, training state, meta) of the run's latest
    checkpoint, with the meta computed from ``prepared``."""
    folder, state, task, cfg = latest(run)
    meta = task.load_meta(cfg, prepared)
    return task, cfg, _built(task, cfg, meta, folder, which, run, prepared), state, meta


def load_frozen(run: str, prepared: str) -> tuple[Task, object, nn.Module, Meta, dict]:
    """(task, config, model in eval mode, meta, the rest of the frozen state) of a run to
    score with: the meta of its training when the run kept it (:mod:`frozen`), so its
    scores do not move with other users' later events; else computed from ``prepared``
    (a run trained before runs kept it), with no frozen state ({})."""
    if not frozen.exists(run):
        task, cfg, model, _, meta = load_model(run, prepared)
        return task, cfg, model, meta, {}
    folder, _, task, cfg = latest(run)
    meta, kept = frozen.load(task, cfg, run, prepared)
    return task, cfg, _built(task, cfg, meta, folder, BEST, run, prepared), meta, kept


def model_before_refit(run: str, prepared: str, task: Task, cfg, meta: Meta, model: nn.Module) -> nn.Module:
    """The run's best weights from before its refit (in eval mode), for choices made on
    the validation events, which the refit trained on; ``model`` when there was no refit."""
    folder = latest_checkpoint(run)
    if not has_weights(folder, PREREFIT):
        return model
    return _built(task, cfg, meta, folder, PREREFIT, run, prepared)


def _built(task: Task, cfg, meta: Meta, folder: str, which: str, run: str, prepared: str) -> nn.Module:
    model = task.build_model(cfg, meta)
    try:
        model.load_state_dict(read_weights(folder, which))
    except RuntimeError as exc:
        raise io.InputError(f"{run} was trained on another dataset than {prepared}: {str(exc)[:200]}") from None
    return model.eval()
