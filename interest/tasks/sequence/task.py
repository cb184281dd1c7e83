"""Task ``sequence``: predict each user's next items and next behaviour type."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import pyarrow as pa
import torch
import torch.nn as nn
import torch.nn.functional as F

from interest import io
from interest import schemas as S
from interest.common.evidence import N as EVIDENCE, as_ids, leading, pick
from interest.common.space import Choice, Float, Space
from interest.config import ConfigError
from interest.common.events import event_counts, training_steps, windows
from interest.common.topn import seen_pairs, top_n, top_of_rows
from interest.evaluate.metrics import metrics_from_ranks, ranks_from_scores
from interest.schemas import N_BEHAVIORS
from interest.tasks.base import Meta, Task, TrainConfig, load_meta, unwrap
from interest.tasks.losses import full_softmax_loss, sampled_softmax_loss
from interest.tasks.sequence.model import PRESETS, SequenceModel, SequenceModelConfig, gap_buckets
from interest.tasks.sequence.transitions import THROUGH, ItemTransitions
from interest.text.embed import prepared_item_vectors

LOSSES = ("full", "sampled")
KS = (10, 20)
# Weights of the item transitions tried on the validation targets (``transitions=None``).
TRANSITION_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass
class SequenceConfig:
    """Args:
        model: architecture (``model.kind`` sasrec or gru); ``preset`` fills it from PRESETS.
        train: optimisation; batches of 64, lr 3e-3 and one refit epoch by default.
        loss: ``full`` softmax over the catalogue, or ``sampled`` (in-batch + uniform
            negatives with log-q correction) for catalogues too large for it.
        negatives: uniform negatives per step (``sampled``).
        behavior_weight: weight of the next-behaviour loss beside the next-item loss.
        mask_seen: validation masks items already in the user's history.
        embeddings: item vector store of ``interest embed-items``: item embeddings then
            add a learned projection of each item's text vector (None: ids only).
        encoder: the encoder whose vectors to read from ``embeddings`` (None: the default).
        transitions: weight ``w`` of first-order item transitions in the next-item
            distribution, ``(1 - w) network + w P(next | last item)``
            (:mod:`~interest.tasks.sequence.transitions`); None: chosen on the validation
            targets after training among TRANSITION_WEIGHTS (0 included) and written into
            the run's config; 0: the network alone. Early stopping sees the network
            alone either way (:meth:`SequenceTask.early_stopping_config`).
    """

    PATHS: ClassVar[tuple[str, ...]] = ("embeddings", "encoder")  # local paths (train.loop.absolute_paths)
    preset: str | None = None
    model: SequenceModelConfig = field(default_factory=SequenceModelConfig)
    # Small batches at a higher rate: on the Amazon files (8-40k users) 256 users a step gave
    # too few steps an epoch, and early stopping ended training before it had learned
    # (Scientific NDCG@10 .017 at 256 / 1e-3, .071 at 64 / 3e-3 with the refit).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=64, lr=3e-3, refit=1))
    loss: str = "full"
    negatives: int = 1024
    behavior_weight: float = 0.2
    mask_seen: bool = True
    embeddings: str | None = None
    encoder: str | None = None
    transitions: float | None = None

    def __post_init__(self):
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
            defaults = SequenceModelConfig()
            for k, v in PRESETS[self.preset].items():
                if getattr(self.model, k) == getattr(defaults, k):  # explicit settings win
                    setattr(self.model, k, v)
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.transitions is not None and not 0 <= self.transitions < 1:
            raise ConfigError(f"transitions must be in [0, 1) or None (chosen on validation), got {self.transitions}")
        if self.model.kind not in ("sasrec", "gru"):
            raise ConfigError(f"model.kind must be sasrec or gru, got {self.model.kind!r}")
        if self.model.kind == "sasrec" and self.model.dim % self.model.heads:
            raise ConfigError(f"model.dim ({self.model.dim}) must be divisible by model.heads ({self.model.heads})")


def behavior_transitions(prepared: str) -> tuple[np.ndarray, int]:
    """(N_BEHAVIORS + 1, N_BEHAVIORS) log P(next behaviour | last behaviour + 1) over
    consecutive training events (row 0: a user's first event), add-one smoothed, and the
    number of behaviour types the training events hold."""
    counts = np.zeros((N_BEHAVIORS + 1, N_BEHAVIORS))
    for before, after in training_steps(prepared, "behaviors"):
        np.add.at(counts, (before + 1, after), 1)
    smoothed = counts + 1
    return np.log(smoothed / smoothed.sum(1, keepdims=True)).astype(np.float32), int(np.count_nonzero(counts.sum(0)))


def _last_items(sub: dict[str, np.ndarray], ends: np.ndarray) -> np.ndarray:
    return np.array([sub["items"][r][ends[r] - 1] for r in range(len(ends))], np.int64)


def _tensors(device, *arrays):
    return [torch.as_tensor(a, device=device) for a in arrays]


# What `interest tune` searches by default (a YAML file narrows or replaces it).
SEARCH_SPACE: Space = {
    "train.lr": Float(1e-4, 1e-2, log=True),
    "train.batch_size": Choice((64, 128, 256)),
    "model.dim": Choice((32, 64, 128)),
    "model.dropout": Float(0.0, 0.5),
    "model.max_len": Choice((20, 50, 100)),
    "transitions": Choice((0.0, 0.1, 0.3)),
}


class SequenceTask(Task):
    name = "sequence"
    config_cls = SequenceConfig
    search_space = SEARCH_SPACE
    evaluation = "next_item"
    output = "user_next_actions"
    LENGTH_GROUPS = 4

    def load_meta(self, cfg: SequenceConfig, prepared: str) -> Meta:
        meta = load_meta(prepared)
        meta.extra["prepared"] = prepared  # item transitions are counted when first needed
        meta.extra["item_ids"] = io.read_parquet(io.join(prepared, "vocab", "items.parquet"),
                                                 columns=[S.ITEM_ID]).column(S.ITEM_ID).combine_chunks()
        if cfg.embeddings:
            meta.extra["vectors"] = torch.as_tensor(prepared_item_vectors(prepared, cfg.embeddings, cfg.encoder)[0])
        meta.extra["transitions"], meta.extra["behavior_types"] = behavior_transitions(prepared)
        if cfg.loss == "sampled":  # the log-q correction: how often training met each item
            meta.extra["train_counts"] = event_counts(prepared, meta.n_items, (0,))
        return meta

    def frozen(self, cfg: SequenceConfig, meta: Meta) -> dict[str, Any]:
        if cfg.transitions:  # counted over every event, as scoring reads them
            self.item_transitions(meta, "score")
        return {k: v for k, v in meta.extra.items() if k != "prepared"}

    def thawed(self, cfg: SequenceConfig, extra: dict[str, Any]) -> dict[str, Any]:
        return {**extra, "prepared": None}  # nothing more is counted from the data

    def build_model(self, cfg: SequenceConfig, meta: Meta) -> nn.Module:
        model = SequenceModel(meta.n_items, cfg.model, meta.extra.get("vectors"))
        with torch.no_grad():
            model.transitions.copy_(torch.as_tensor(meta.extra["transitions"]))
            if meta.extra["behavior_types"] < 2:
                # One behaviour type (the Amazon files): its embedding is a constant input
                # that says nothing, and at N(0, 1) it drowned the items (bert4rec test
                # NDCG@10 .0279 -> .0300, with the positions' scale). It learns from zero.
                model.behavior.weight.zero_()
        return model

    def loss(self, model, batch, cfg: SequenceConfig, meta: Meta, device):
        n_train = batch["n_train"].astype(np.int64)
        keep = np.flatnonzero(n_train >= 2)  # a user needs an input and a target
        if not len(keep):
            return None, {}
        # Users sorted by length and cut into groups, each padded to its own longest:
        # most histories are short, and one long user would otherwise pad all of them.
        keep = keep[np.argsort(n_train[keep], kind="stable")]
        states, t_items, t_behaviors, lasts = [], [], [], []
        for group in np.array_split(keep, min(len(keep), self.LENGTH_GROUPS)):
            sub = {k: v[group] for k, v in batch.items()}
            length = min(cfg.model.max_len + 1, int(n_train[group].max()))
            items, behaviors, gaps = _tensors(device, *windows(sub, n_train[group], length))
            h = model(items[:, :-1], behaviors[:, :-1], gap_buckets(gaps[:, :-1]))  # (B, T, D)
            valid = (items[:, 1:] > 0) & (items[:, :-1] > 0)
            states.append(h[valid])
            t_items.append(items[:, 1:][valid] - 1)
            t_behaviors.append(behaviors[:, 1:][valid] - 1)
            lasts.append(behaviors[:, :-1][valid])
        s, t_item, t_behavior = torch.cat(states), torch.cat(t_items), torch.cat(t_behaviors)  # (N, D), (N,)
        core = unwrap(model)
        if cfg.loss == "full":
            item_loss = full_softmax_loss(s, t_item, core.item_table()[1:])
        else:
            counts = meta.extra["train_counts"]
            log_q = torch.log(torch.as_tensor(counts, dtype=torch.float32, device=device).clamp(min=1)
                              / max(float(counts.sum()), 1.0))
            item_loss = sampled_softmax_loss(s, t_item, core.item_table()[1:], log_q, cfg.negatives)
        behavior_loss = F.cross_entropy(core.behavior_logits(s, torch.cat(lasts)), t_behavior)
        loss = item_loss + cfg.behavior_weight * behavior_loss
        return loss, {"item_loss": item_loss.item(), "behavior_loss": behavior_loss.item(), "examples": len(s)}

    @torch.no_grad()
    def user_states(self, model, sub: dict[str, np.ndarray], ends: np.ndarray, cfg: SequenceConfig,
                    device) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, D) state of each user of ``sub`` after its events [0, end), and (U, 5) the
        logits of the next behaviour type."""
        items, behaviors, gaps = windows(sub, ends, min(cfg.model.max_len, int(ends.max())))
        items, behaviors, gaps = _tensors(device, items, behaviors, gaps)
        core = unwrap(model)
        states = core(items, behaviors, gap_buckets(gaps))[:, -1]
        return states, core.behavior_logits(states, behaviors[:, -1])

    @torch.no_grad()
    def predict(self, model, batch, cfg: SequenceConfig, device, split: str = "valid"):
        """States after each user's history and the held-out target of ``split``.

        Returns (rows, user states (U, D), behaviour logits (U, 5), target items,
        target behaviours, histories, latest items) for the users that have a target; the
        states' item scores are :meth:`item_scores`.
        """
        n_train = batch["n_train"].astype(np.int64)
        n_valid = batch["n_valid"].astype(np.int64)
        ends = n_train if split == "valid" else n_train + n_valid
        has = (n_valid > 0) if split == "valid" else (batch["n_test"].astype(np.int64) > 0)
        has &= ends > 0
        rows = np.flatnonzero(has)
        if len(rows) == 0:
            return rows, None, None, None, None, [], None
        sub = {k: v[rows] for k, v in batch.items()}
        ends = ends[rows]
        states, behavior_logits = self.user_states(model, sub, ends, cfg, device)
        target_items = np.array([sub["items"][r][ends[r]] for r in range(len(rows))], np.int64)
        target_behaviors = np.array([sub["behaviors"][r][ends[r]] for r in range(len(rows))], np.int64)
        history = [np.unique(np.asarray(sub["items"][r][:ends[r]], np.int64)) for r in range(len(rows))]
        return rows, states, behavior_logits, target_items, target_behaviors, history, _last_items(sub, ends)

    @torch.no_grad()
    def score(self, model, batch: dict[str, np.ndarray], cfg: SequenceConfig, meta: Meta, device, *,
              top_k: int = 10, evidence: int = EVIDENCE) -> pa.Table:
        """Each user's next actions (:data:`interest.schemas.NEXT_ACTIONS`) after everything
        the user did: the top-k items, excluding those already seen when ``mask_seen``
        (as in evaluation), and the most likely next behaviour type. With item transitions
        the (U, n_items) mixture is formed for the batch's users, as in evaluation."""
        ends = sum(batch[c].astype(np.int64) for c in ("n_train", "n_valid", "n_test"))
        rows = np.flatnonzero(ends > 0)
        if not len(rows):
            return S.NEXT_ACTIONS.empty_table()
        sub, ends = {k: v[rows] for k, v in batch.items()}, ends[rows]
        states, behavior_logits = self.user_states(model, sub, ends, cfg, device)
        # Repeated items are masked twice, harmlessly: no np.unique per user (2% of scoring).
        exclude = [np.asarray(sub["items"][r][:ends[r]], np.int64) for r in range(len(rows))] if cfg.mask_seen \
            else None
        if cfg.transitions:
            scores, top = top_of_rows(self.item_scores(model, states, cfg, meta, "score", _last_items(sub, ends)),
                                      top_k, exclude)  # log-probabilities
            probs = torch.exp(scores).cpu().numpy()
        else:
            scores, top, lse = top_n(states, unwrap(model).item_table()[1:], top_k, exclude)
            probs = torch.exp(scores - lse[:, None]).cpu().numpy()
        proof = self.evidence(model, sub, ends, top, cfg, meta, device, evidence)
        top = top.cpu().numpy()
        behavior = torch.softmax(behavior_logits, 1).cpu().numpy()
        kept = np.isfinite(scores.cpu().numpy())  # fewer unseen items than top_k
        user_rows, ranks = np.nonzero(kept)
        item_ids = meta.extra["item_ids"]
        return pa.table({
            S.USER_ID: pa.array(sub[S.USER_ID][user_rows].tolist(), pa.string()),
            "rank": pa.array(ranks + 1, pa.int16()),
            S.ITEM_ID: pa.array(item_ids.take(pa.array(top[user_rows, ranks])).to_pylist(), pa.string()),
            "probability": pa.array(probs[user_rows, ranks], pa.float32()),
            "next_behavior": pa.array(np.asarray(S.BEHAVIORS)[behavior.argmax(1)][user_rows], pa.string()),
            "behavior_probability": pa.array(behavior.max(1)[user_rows], pa.float32()),
            S.EVIDENCE: as_ids(proof, user_rows, ranks, item_ids),
        }, schema=S.NEXT_ACTIONS)

    def evidence(self, model, sub: dict[str, np.ndarray], ends: np.ndarray, top: torch.Tensor, cfg: SequenceConfig,
                 meta: Meta, device, n: int) -> np.ndarray:
        """Each row's ``n`` items of evidence (:mod:`interest.common.evidence`): the
        network's drops without each item; with item transitions, the user's last item
        first where the row's item followed it in the data."""
        if not n:
            return np.full((len(ends), 1, top.shape[1]), -1)
        windowed = _tensors(device, *windows(sub, ends, min(cfg.model.max_len, int(ends.max()))))
        items, behaviors, gaps = windowed[0], windowed[1], gap_buckets(windowed[2])
        proof = pick(*unwrap(model).removal_drops(items, behaviors, gaps, top), len(ends), n)
        if cfg.transitions:
            last = _last_items(sub, ends)
            owner, followers, _ = self.item_transitions(meta, "score").rows(last)
            follows = set(zip(owner.tolist(), followers.tolist()))
            top = top.cpu().numpy()
            for u, k in zip(*np.nonzero(np.isfinite(top))):
                if (u, int(top[u, k])) in follows:
                    proof[u, :, k] = leading(proof[u, :, k], int(last[u]))
        return proof

    def item_transitions(self, meta: Meta, split: str) -> ItemTransitions:
        """The transitions counted on the events before ``split``'s targets, once per process."""
        key = f"transitions_{split}"
        if key not in meta.extra:
            meta.extra[key] = ItemTransitions.count(meta.extra["prepared"], meta.n_items, THROUGH[split])
        return meta.extra[key]

    def item_scores(self, model, states: torch.Tensor, cfg: SequenceConfig, meta: Meta, split: str,
                    last: np.ndarray) -> torch.Tensor:
        """The network's scores; with item transitions, log-probabilities of the mixture."""
        scores = unwrap(model).item_scores(states)
        if not cfg.transitions:
            return scores
        return self.item_transitions(meta, split).log_mix(scores, last, cfg.transitions)

    def early_stopping_config(self, cfg: SequenceConfig) -> SequenceConfig:
        """The network alone: the item transitions' weight, chosen or fixed, is a setting
        of the finished network, and an epoch is picked for what the network learned."""
        return replace(cfg, transitions=0.0)

    def choose_settings(self, cfg: SequenceConfig, meta: Meta,
                        valid_metric: Callable[[SequenceConfig], float]) -> tuple[dict, float]:
        """The weight of the item transitions, when not set, chosen on validation."""
        if cfg.transitions is not None:
            return {}, math.nan
        found = {w: valid_metric(replace(cfg, transitions=w)) for w in TRANSITION_WEIGHTS}
        weight = max(found, key=found.get)  # the first of equals: the smaller weight
        return {"transitions": weight}, found[weight]

    @torch.no_grad()
    def validate(self, model, batches: Iterable[dict[str, np.ndarray]], cfg: SequenceConfig, meta: Meta, device,
                 split: str = "valid") -> dict[str, float]:
        sums = {f"{m}@{k}": 0.0 for k in KS for m in ("hr", "ndcg")} | {"mrr": 0.0, "behavior_acc": 0.0, "users": 0}
        for batch in batches:
            rows, states, blogits, t_items, t_beh, history, last = self.predict(model, batch, cfg, device, split)
            if not len(rows):
                continue
            seen = seen_pairs(history, device) if cfg.mask_seen else (None, None)
            scores = self.item_scores(model, states, cfg, meta, split, last)
            ranks = ranks_from_scores(scores, torch.as_tensor(t_items, device=device), *seen)
            means = metrics_from_ranks(ranks.cpu().numpy(), KS)
            for key in sums.keys() & means.keys() - {"users"}:
                sums[key] += means[key] * len(rows)  # sums, so that workers' results can be added
            sums["behavior_acc"] += float((blogits.argmax(1).cpu().numpy() == t_beh).sum())
            sums["users"] += len(rows)
        return sums
