"""Checkpoints that load without unpickling arbitrary objects.

A checkpoint folder holds ``model.safetensors`` (latest weights), ``best.safetensors``
(weights of the best validation epoch so far), ``optimizer.pt`` (tensors and numbers
only, read with ``weights_only=True``), ``state.json`` (epoch, best metric, the task's
config) and ``items.parquet`` (the item vocabulary the model's indices refer to).
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from interest import io
from interest.tasks.base import unwrap

MODEL = "model.safetensors"
BEST = "best.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"
VOCAB = "items.parquet"


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's weights (unwrapping DDP)."""
    core = unwrap(model)
    return {k: v.detach().cpu().clone().contiguous() for k, v in core.state_dict().items()}


def save(folder: str, model: nn.Module, best: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None,
         state: dict, vocab_path: str) -> None:
    """``optimizer`` None: a closed-form model, nothing to resume."""
    os.makedirs(folder, exist_ok=True)
    save_file(weights(model), os.path.join(folder, MODEL))
    save_file(best, os.path.join(folder, BEST))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), os.path.join(folder, OPTIMIZER))
    with open(os.path.join(folder, STATE), "w") as f:
        json.dump(state, f, indent=2)
    fs, inner = io.filesystem(vocab_path)
    with fs.open_input_stream(inner) as src, open(os.path.join(folder, VOCAB), "wb") as dst:
        dst.write(src.read())


def load_state(folder: str) -> dict:
    with open(os.path.join(folder, STATE)) as f:
        return json.load(f)


def read_weights(folder: str, which: str = MODEL) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, which))


def load_optimizer(folder: str, optimizer: torch.optim.Optimizer) -> None:
    optimizer.load_state_dict(torch.load(os.path.join(folder, OPTIMIZER), weights_only=True))
