"""What every task gives the shared machinery: config, model, batches, loss, validation.

Training (:mod:`interest.train.loop`), evaluation and scoring loop over a task through
this interface, so adding a task means writing these methods, not another loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
import torch.nn as nn

from interest.config import ConfigError


@dataclass
class TrainConfig:
    """Optimisation settings shared by every task.

    Args:
        epochs: upper bound; early stopping usually ends training sooner.
        batch_size: examples per step on each worker.
        lr, weight_decay: AdamW.
        patience: epochs without improvement of ``metric`` on validation before stopping.
        metric: validation metric that picks the best checkpoint.
        seed: model initialisation and data order; a run with the same seed repeats.
        eval_batch_size: users scored at once during validation.
        cache: keep the training data in Ray's object store after the first epoch
            (spilled to disk when it does not fit) instead of re-reading Parquet every epoch.
    """

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3
    metric: str = "ndcg@10"
    seed: int = 0
    eval_batch_size: int = 1024
    cache: bool = True

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("train.epochs, train.batch_size and train.eval_batch_size must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.patience < 1:
            raise ConfigError("train.patience must be >= 1")


@dataclass
class Meta:
    """Facts about the prepared dataset a model is built for (sizes, item popularity)."""

    n_items: int
    n_users: int
    item_counts: np.ndarray = field(repr=False)


class Task:
    """Base class of a task; subclasses set ``name`` and ``config_cls`` and implement the rest."""

    name: ClassVar[str]
    config_cls: ClassVar[type]

    def build_model(self, cfg: Any, meta: Meta) -> nn.Module:
        raise NotImplementedError

    def train_columns(self) -> list[str]:
        """Columns of the prepared ``sequences`` table the task reads."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, np.ndarray], cfg: Any, meta: Meta,
             device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def validate(self, model: nn.Module, batches: Iterable[dict[str, np.ndarray]], cfg: Any, meta: Meta,
                 device: torch.device, split: str = "valid") -> dict[str, float]:
        """Sums over the given users (so workers' results can be added), with ``users``."""
        raise NotImplementedError

    def metrics_from_sums(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("users", 0), 1)
        return {k: v / n for k, v in sums.items() if k != "users"} | {"users": sums.get("users", 0)}
