"""What every task gives the shared machinery: config, model, batches, loss, validation.

Training (:mod:`interest.train.loop`), evaluation and scoring loop over a task through
this interface, so adding a task means writing these methods, not another loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch
import torch.nn as nn

from interest import schemas as S
from interest.config import ConfigError
from interest.data.prepared import load_report
from interest.common.space import Space
from interest.evaluate.metrics import means_from_sums


@dataclass
class TrainConfig:
    """Optimisation settings shared by every task.

    Args:
        epochs: upper bound; early stopping usually ends training sooner.
        batch_size: examples per step on each worker.
        lr, weight_decay: AdamW.
        patience: epochs without improvement of ``metric`` on validation before stopping.
        plateau_decay: the learning rate is multiplied by this after each epoch without
            improvement (1: constant): at a plateau, smaller steps can still find a
            better point where a constant rate circles around it.
        metric: validation metric that picks the best checkpoint.
        seed: model initialisation and data order; a run with the same seed repeats.
        eval_batch_size: users scored at once during validation.
        valid_users: validate each epoch on a fixed sample of about this many users (those
            first in :func:`uniform_hash` order, the order tasks that hold users out also
            use); 0: every user. Full-ranking validation over a large catalogue can cost a
            third of an epoch, and early stopping needs a trend, not every user.
        cache: keep the training data in Ray's object store after the first epoch
            (spilled to disk when it does not fit) instead of re-reading Parquet every epoch.
        refit: epochs trained after early stopping, from the best weights, on the training
            and validation events together, as the baselines are refit before the test:
            on a time split the validation period is the most recent behaviour, which the
            test resembles most. The checkpoint then holds the refit weights; the reported
            validation figures stay those of the best epoch before it (after the refit the
            validation events are training data).
        precision: ``fp32``, or ``bf16``: the training forward pass under
            ``torch.autocast`` (matrix products in bfloat16, float32 weights, optimiser and
            accumulation), and the catalogue softmax's products in bfloat16. About 2x faster
            where the hardware has bfloat16 units (CPUs with AVX512-BF16 or AMX, recent
            GPUs); validation and scoring stay in float32.
        events: ``split``: train on the training events, validate on the validation
            events; ``all``: every event, the validation and test periods included, is
            training data and nothing is validated: the last epoch's weights are the
            result. The nightly pipeline's refit (``interest pipeline``) trains so, for a
            fixed number of epochs from the weights its gated run chose, as the baselines
            are refit on every event, so that published scores know yesterday's behaviour.
        memory_mb: budget of one training step's activations on each worker, in MB. A
            batch whose users would need more (the task's estimate per user,
            :meth:`Task.step_mb`) runs in micro-batches of the users that fit, their
            gradients summed before one update: the same step, in bounded memory,
            whatever ``batch_size``. Workers also ask Ray for this memory, so a run that
            cannot fit fails before training instead of being killed in it.
    """

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3
    plateau_decay: float = 1.0
    metric: str = "ndcg@10"
    seed: int = 0
    eval_batch_size: int = 1024
    valid_users: int = 0
    cache: bool = True
    refit: int = 0
    precision: str = "fp32"
    memory_mb: int = 2048
    events: str = "split"

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("train.epochs, train.batch_size and train.eval_batch_size must be >= 1")
        if self.valid_users < 0:
            raise ConfigError(f"train.valid_users must be >= 0 (0: every user), got {self.valid_users}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.patience < 1:
            raise ConfigError("train.patience must be >= 1")
        if not 0 < self.plateau_decay <= 1:
            raise ConfigError(f"train.plateau_decay must be in (0, 1], got {self.plateau_decay}")
        if self.refit < 0:
            raise ConfigError(f"train.refit must be >= 0, got {self.refit}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.precision must be fp32 or bf16, got {self.precision!r}")
        if self.events not in ("split", "all"):
            raise ConfigError(f"train.events must be split or all, got {self.events!r}")
        if self.events == "all" and self.refit:
            raise ConfigError("train.refit refits on the validation events; with train.events=all they are "
                              "already training data: set train.refit=0")
        if self.memory_mb < 1:
            raise ConfigError(f"train.memory_mb must be >= 1, got {self.memory_mb}")


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, out of its DDP wrapper when it has one."""
    return model.module if hasattr(model, "module") else model


@dataclass
class Meta:
    """Facts about the prepared dataset a model is built for."""

    n_items: int
    n_users: int
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # what a task loads for itself


def uniform_hash(idx: np.ndarray) -> np.ndarray:
    """A number in [0, 1) per index, fixed by a multiplicative hash: a repeatable way to
    hold a share of users or items out (those below the share)."""
    h = (idx.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2 ** 32)
    return h.astype(np.float64) / 2 ** 32


def load_meta(prepared: str) -> Meta:
    report = load_report(prepared)
    return Meta(n_items=report["items"]["total"], n_users=report["users"])


class Task:
    """Base class of a task; subclasses set ``name`` and ``config_cls`` and implement the rest."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    # Validate the model before the first epoch, so its initial weights are kept unless an
    # epoch beats them: for tasks whose untrained model already gives a baseline's answer.
    validate_initial: ClassVar[bool] = False
    # How :mod:`interest.evaluate.harness` measures the task on the test split (a key of
    # its PROTOCOLS): the evaluator looks tasks up, a task never imports the evaluator.
    evaluation: ClassVar[str]
    # The warehouse table its scores make (a key of interest.schemas.OUTPUTS).
    output: ClassVar[str]
    # Scoring reads a file of new tags (``interest score --tags``) into ``score_params``.
    scores_new_tags: ClassVar[bool] = False

    # The ranges `interest tune` searches by default, declared beside the task's config.
    search_space: ClassVar[Space] = {}

    def space(self, cfg: Any) -> Space:
        """The default search space for ``cfg`` (a model kind may have its own)."""
        return dict(self.search_space)

    def load_meta(self, cfg: Any, prepared: str) -> Meta:
        """Sizes of the prepared dataset, plus whatever else the task reads (runs on every worker)."""
        return load_meta(prepared)

    def frozen(self, cfg: Any, meta: Meta) -> dict[str, Any]:
        """What of ``meta.extra`` scoring reads, to keep with a trained run
        (:mod:`interest.train.frozen`): everything by default; a task materialises what it
        computes lazily and leaves out what it rebuilds (:meth:`thawed`)."""
        return dict(meta.extra)

    def thawed(self, cfg: Any, extra: dict[str, Any]) -> dict[str, Any]:
        """``meta.extra`` again from what :meth:`frozen` kept."""
        return extra

    def build_model(self, cfg: Any, meta: Meta) -> nn.Module:
        raise NotImplementedError

    def closed_form(self, cfg: Any) -> bool:
        """Whether ``cfg``'s model is fitted in one solve (:meth:`fit_closed_form`), not trained."""
        return False

    def fit_closed_form(self, model: nn.Module, cfg: Any, meta: Meta, prepared: str,
                        valid_metric: Any) -> dict[str, Any]:
        """Fit a closed-form model in place (``valid_metric(model)`` scores a candidate on
        the validation users); returns the parameters it chose."""
        raise NotImplementedError

    def train_columns(self) -> list[str]:
        """Columns of the prepared ``sequences`` table the task reads."""
        return [S.USER_IDX, S.USER_ID, "items", "behaviors", "ts", "n_train", "n_valid", "n_test"]

    def step_mb(self, cfg: Any, meta: Meta) -> tuple[float, str]:
        """(MB of activations one row of a training batch, a user, adds to a training
        step; what sets it, to name in an error). 0 where it is too small to matter: the
        batch then runs whole. The loop cuts batches into micro-batches by it."""
        return 0.0, ""

    def param_groups(self, model: nn.Module, cfg: Any) -> list[dict[str, Any]]:
        """Optimizer parameter groups; a group without ``lr`` uses ``train.lr``."""
        return [{"params": list(model.parameters())}]

    def loss(self, model: nn.Module, batch: dict[str, np.ndarray], cfg: Any, meta: Meta,
             device: torch.device) -> tuple[torch.Tensor | None, dict[str, float]]:
        """(training loss, figures to log) of one batch: the model called once; or (None,
        {}) without calling it when the batch holds nothing to learn (the training loop
        has the workers skip that step together). The loss is a mean over examples, and
        ``figures["examples"]`` says how many, so micro-batches add up to the batch's mean."""
        raise NotImplementedError

    def predict(self, model: nn.Module, batch: dict[str, np.ndarray], cfg: Any, device: torch.device,
                split: str = "valid") -> tuple:
        """(rows, user states, behaviour logits, target items, target behaviours, histories,
        latest items) of the users in ``batch`` that have a ``split`` target."""
        raise NotImplementedError

    def item_scores(self, model: nn.Module, states: torch.Tensor, cfg: Any, meta: Meta, split: str,
                    last: np.ndarray) -> torch.Tensor:
        """(U, n_items) scores of every item for the users whose states are given, before
        the ``split`` target (``valid``, ``test``, or ``score``: after every event), whose
        latest items are ``last`` (U,)."""
        raise NotImplementedError

    def early_stopping_config(self, cfg: Any) -> Any:
        """The config the validation that picks the best epoch runs under (default the
        run's): a task whose settings are chosen after training validates without them."""
        return cfg

    def choose_settings(self, cfg: Any, meta: Meta,
                        valid_metric: Callable[[Any], float]) -> tuple[dict[str, Any], float]:
        """Settings chosen on the validation users once training has ended (before the
        refit), ``valid_metric(cfg)`` scoring the best weights under a candidate config:
        (the chosen top-level config values, their validation metric), or ({}, nan) for
        none. The loop writes them into the run's config, which evaluation and scoring read."""
        return {}, math.nan

    def validate(self, model: nn.Module, batches: Iterable[dict[str, np.ndarray]], cfg: Any, meta: Meta,
                 device: torch.device, split: str = "valid") -> dict[str, float]:
        """Sums over the given users (so workers' results can be added), with ``users``."""
        raise NotImplementedError

    def score_params(self, model: nn.Module, cfg: Any, meta: Meta,
                     valid_batches: Iterable[dict[str, np.ndarray]]) -> dict[str, Any]:
        """Keyword arguments of :meth:`score` fitted once before scoring (calibration)."""
        return {}

    def score(self, model: nn.Module, batch: dict[str, np.ndarray], cfg: Any, meta: Meta, device: torch.device,
              **params: Any):
        """The task's output rows (an Arrow table of its schema) for the users in ``batch``."""
        raise NotImplementedError

    def metrics_from_sums(self, sums: dict[str, float]) -> dict[str, float]:
        return means_from_sums(sums)
