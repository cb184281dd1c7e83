"""Task ``recommend``: the top N items each user is likely to take up next.

Examples come from the prepared sequences. Training cuts each user's training events at
random points: the events before a cut are the history, a new item (one the history
does not hold) among the ``window`` events after it is the target. Validation and test
mirror the split: the history is everything before the valid (test) events, the targets
are the split's items the history does not hold, and every item is ranked (seen items
masked), Recall@k and NDCG@k over a user's targets.

``model.kind`` picks a trained two-tower network or a closed-form model (EASE, ItemKNN,
popularity); the closed-form ones fit in one solve (see :meth:`fit_closed_form`) and
then evaluate and score like the network.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import pyarrow as pa
import torch
import torch.nn as nn

from interest import io
from interest import schemas as S
from interest.common.evidence import N as EVIDENCE, as_ids, pick
from interest.common.space import Choice, Float, Int, Space
from interest.common.events import event_counts, history_matrix, interaction_matrix, user_items, windows
from interest.common.topn import top_n, top_of_rows
from interest.config import ConfigError
from interest.evaluate.baselines import EASE, GRIDS, ItemKNN, grid_search
from interest.evaluate.metrics import top_k_sums
from interest.tasks.base import Meta, Task, TrainConfig, load_meta, uniform_hash, unwrap
from interest.tasks.losses import full_softmax_loss, sampled_softmax_loss
from interest.tasks.recommend.model import KINDS, ItemItem, PopularityModel, RecommendModelConfig, TwoTower
from interest.text.embed import prepared_item_vectors

log = logging.getLogger(__name__)
KS = (10, 20)
LOSSES = ("auto", "full", "sampled")
EXCLUDE = ("bought", "seen", "none")
BUY = S.BEHAVIORS.index("buy")


@dataclass
class RecommendConfig:
    """Args:
        model: which model and its sizes (``model.kind``).
        train: optimisation; ``train.metric`` is ``recall@20`` on the validation users.
            ``train.batch_size`` counts users, each giving up to ``samples`` examples; 8
            keeps a small dataset's epoch at enough steps (MovieLens 100K's 943 users on
            two workers: 59 steps, where 32 made 15 and stopped early before learning).
        loss: ``full`` softmax over the catalogue, ``sampled`` (in-batch + uniform
            negatives, log-q corrected), or ``auto``: full up to ``full_max_items``.
        full_max_items: largest catalogue ``auto`` trains with the full softmax.
        negatives: uniform negatives per step (``sampled``).
        samples: most training examples (distinct cut points) per user and epoch.
        window: events after a cut whose new items are its targets. 1 (the next event,
            when it is new) measured best on both protocols: on leave-last-out it is
            what the test asks, and on MovieLens' time split it beat 10 too (Recall@20
            .1376 vs .1263, both at batches of 8 and patience 8), the nearest event
            being the least noisy label.
        embeddings: item vector store of ``interest embed-items``; the item tower adds
            each item's text vector, which is what reaches cold items (None: ids only).
        encoder: the encoder whose vectors to read from ``embeddings`` (None: the default).
        exclude: items kept out of a user's scored top N: those the user ``bought``,
            everything ``seen``, or ``none``. Evaluation always masks everything seen.
        holdout_items: share of items held out of training entirely (their events
            dropped), to measure cold start: evaluation reports their recall separately.
    """

    PATHS: ClassVar[tuple[str, ...]] = ("embeddings", "encoder")  # local paths (train.loop.absolute_paths)
    model: RecommendModelConfig = field(default_factory=RecommendModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(metric="recall@20", lr=3e-3, epochs=30,
                                                                            batch_size=8, patience=4, refit=1))
    loss: str = "auto"
    full_max_items: int = 200_000
    negatives: int = 1024
    samples: int = 64
    window: int = 1
    embeddings: str | None = None
    encoder: str | None = None
    exclude: str = "bought"
    holdout_items: float = 0.0

    def __post_init__(self):
        if self.model.kind not in KINDS:
            raise ConfigError(f"model.kind must be one of {', '.join(KINDS)}, got {self.model.kind!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.exclude not in EXCLUDE:
            raise ConfigError(f"exclude must be one of {', '.join(EXCLUDE)}, got {self.exclude!r}")
        if not 0 <= self.holdout_items < 1:
            raise ConfigError("holdout_items must lie in [0, 1)")
        if self.samples < 1 or self.window < 1:
            raise ConfigError("samples and window must be >= 1")
        if self.model.layers < 0 or (self.model.layers and self.model.dim % self.model.heads):
            raise ConfigError(f"model.layers must be >= 0, and with layers model.dim ({self.model.dim}) a "
                              f"multiple of model.heads ({self.model.heads})")


@dataclass
class Users:
    """Users of a batch with what a model needs to score them."""

    rows: np.ndarray  # rows of the batch
    items: np.ndarray  # (U, T) recent history, item_idx + 1, left-padded
    behaviors: np.ndarray  # (U, T) behaviour + 1
    history: list[np.ndarray]  # distinct item_idx of the whole history
    targets: list[np.ndarray]  # distinct new item_idx of the split, per user (none when scoring)
    bought: list[np.ndarray] | None = None


# What `interest tune` searches by default (a YAML file narrows or replaces it): the
# two-tower's training, or the one setting of a closed-form model (a single-step trial).
SEARCH_SPACE: Space = {
    "train.lr": Float(1e-4, 1e-2, log=True),
    "train.batch_size": Choice((64, 128, 256)),
    "model.dim": Choice((32, 64, 128)),
    "model.dropout": Float(0.0, 0.5),
    "model.id_dropout": Float(0.0, 0.5),
    "model.max_len": Choice((50, 100, 200)),
}
CLOSED_FORM_SPACES: dict[str, Space] = {
    "ease": {"model.lam": Float(1.0, 1e4, log=True)},
    "itemknn": {"model.k": Int(5, 500, log=True)},
}


class RecommendTask(Task):
    name = "recommend"
    config_cls = RecommendConfig
    search_space = SEARCH_SPACE

    def space(self, cfg: RecommendConfig) -> Space:
        if cfg.model.kind == "two_tower":
            return dict(SEARCH_SPACE)
        if cfg.model.kind not in CLOSED_FORM_SPACES:
            raise ConfigError(f"model.kind {cfg.model.kind} has nothing to search")
        return dict(CLOSED_FORM_SPACES[cfg.model.kind])
    evaluation = "top_n"
    output = "user_recommendations"

    def load_meta(self, cfg: RecommendConfig, prepared: str) -> Meta:
        meta = load_meta(prepared)
        meta.extra["item_ids"] = io.read_parquet(io.join(prepared, "vocab", "items.parquet"),
                                                 columns=[S.ITEM_ID]).column(S.ITEM_ID).combine_chunks()
        cold = uniform_hash(np.arange(meta.n_items)) < cfg.holdout_items
        meta.extra["cold"] = cold
        # Items the model learns from: with a refit, the validation events' too.
        train_counts = event_counts(prepared, meta.n_items, (0, 1) if cfg.train.refit else (0,))
        train_counts[cold] = 0
        meta.extra["train_counts"] = train_counts
        if cfg.embeddings and cfg.model.kind == "two_tower":
            meta.extra["vectors"] = torch.as_tensor(prepared_item_vectors(prepared, cfg.embeddings, cfg.encoder)[0])
        return meta

    def build_model(self, cfg: RecommendConfig, meta: Meta) -> nn.Module:
        kind = cfg.model.kind
        if kind == "two_tower":
            return TwoTower(meta.n_items, cfg.model, meta.extra.get("vectors"),
                            torch.as_tensor(meta.extra["train_counts"] > 0))
        if kind == "popularity":
            return PopularityModel(meta.n_items)
        if kind == "ease" and meta.n_items > EASE.MAX_ITEMS:
            raise ConfigError(f"model.kind=ease needs a dense {meta.n_items:,}^2 matrix; above "
                              f"{EASE.MAX_ITEMS:,} items use model.kind=itemknn or two_tower")
        return ItemItem(meta.n_items, dense=kind == "ease")

    def closed_form(self, cfg: RecommendConfig) -> bool:
        return cfg.model.kind != "two_tower"

    def fit_closed_form(self, model: nn.Module, cfg: RecommendConfig, meta: Meta, prepared: str,
                        valid_metric: Callable[[nn.Module], float]) -> dict[str, Any]:
        """Fit a closed-form model in place; returns its chosen parameters.

        An open regulariser (``model.lam``, ``model.k`` None) is searched on the
        validation users with the model fitted on the training events; the chosen one is
        refitted on training + validation events, the history the test users have (as
        the evaluation's baselines are).
        """
        def matrix(splits):
            users, items = user_items(prepared, splits)
            keep = ~meta.extra["cold"][items]
            return interaction_matrix(users[keep], items[keep], meta.n_users, meta.n_items)

        if cfg.model.kind == "popularity":
            _, items = user_items(prepared, (0, 1))
            counts = np.bincount(items[~meta.extra["cold"][items]], minlength=meta.n_items)
            model.counts = torch.as_tensor(counts, dtype=torch.float32)
            return {}
        name = cfg.model.kind
        param, _, factory = GRIDS[name]
        fixed = cfg.model.lam if name == "ease" else cfg.model.k
        if fixed is None:
            x = matrix((0,))
            value, _, searched = grid_search(name, lambda v: (valid_metric(model.set(_matrix(factory(v).fit(x)))),
                                                              None), cfg.train.metric)
            chosen = {param: value, f"{param}_searched": searched, f"{param}_chosen_on": f"valid {cfg.train.metric}"}
        else:
            value = fixed
            chosen = {param: value}
        model.set(_matrix(factory(value).fit(matrix((0, 1)))))
        return chosen

    def users(self, batch: dict[str, np.ndarray], cfg: RecommendConfig, meta: Meta, phase: str) -> Users | None:
        """The users of ``batch`` in ``phase`` (valid, test, score) with their histories;
        for valid and test only those with a new item in the split. Items held out of
        training (``holdout_items``) are never validation targets: early stopping and the
        closed-form models' search see the items they can learn, as the test's warm
        metrics do; the test keeps them, for the evaluator's cold-start rows."""
        n_train, n_valid, n_test = (batch[c].astype(np.int64) for c in ("n_train", "n_valid", "n_test"))
        ends = {"valid": n_train, "test": n_train + n_valid, "score": n_train + n_valid + n_test}[phase]
        stops = {"valid": n_train + n_valid, "test": n_train + n_valid + n_test, "score": ends}[phase]
        cold = meta.extra["cold"]
        rows, history, targets, bought = [], [], [], []
        for r in np.flatnonzero(ends > 0):
            seq = np.asarray(batch["items"][r], np.int64)
            past = np.unique(seq[:ends[r]])
            if phase != "score":  # scoring has no targets (3% of its time went here)
                new = np.setdiff1d(seq[ends[r]:stops[r]], past)
                if phase == "valid":
                    new = new[~cold[new]]
                if not len(new):
                    continue
                targets.append(new)
            rows.append(r)
            history.append(past)
            if phase == "score":
                beh = np.asarray(batch["behaviors"][r][:ends[r]], np.int64)
                bought.append(np.unique(seq[:ends[r]][beh == BUY]))
        if not rows:
            return None
        rows = np.asarray(rows)
        sub = {k: v[rows] for k, v in batch.items()}
        items, behaviors = self._recent(sub, ends[rows], cfg, cold)
        if cold.any():  # held-out items are unknown to the models: out of histories too
            history = [h[~cold[h]] for h in history]
        return Users(rows, items, behaviors, history, targets, bought or None)

    @staticmethod
    def _recent(sub, ends, cfg: RecommendConfig, cold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        items, behaviors, _ = windows(sub, ends, min(cfg.model.max_len, max(int(ends.max()), 1)))
        if cold.any():
            held = (items > 0) & cold[np.maximum(items - 1, 0)]
            items, behaviors = np.where(held, 0, items), np.where(held, 0, behaviors)
        return items, behaviors

    def scores(self, model: nn.Module, users: Users, cfg: RecommendConfig, device) -> torch.Tensor:
        """(U, n_items) scores of every item for ``users``."""
        core = unwrap(model)
        if isinstance(core, TwoTower):
            return core.scores(torch.as_tensor(users.items, device=device),
                               torch.as_tensor(users.behaviors, device=device))
        return core(history_matrix(users.history, core.n_items).to(device))

    def loss(self, model, batch, cfg: RecommendConfig, meta: Meta, device):
        n_train = batch["n_train"].astype(np.int64)
        cold = meta.extra["cold"]
        rows, cuts, targets = [], [], []
        for r in np.flatnonzero(n_train >= 2):
            seq = np.asarray(batch["items"][r][:n_train[r]], np.int64)
            # Distinct cuts: a short history is not repeated within an epoch, a long one
            # gives more examples (a small catalogue of long histories needs the steps).
            for cut in 1 + np.random.permutation(n_train[r] - 1)[:cfg.samples]:
                after = seq[cut:cut + cfg.window]
                new = after[~np.isin(after, seq[:cut]) & ~cold[after]]
                if len(new):
                    rows.append(r)
                    cuts.append(cut)
                    targets.append(new[np.random.randint(len(new))])
        if not rows:
            return None, {}
        rows = np.asarray(rows)
        sub = {k: v[rows] for k, v in batch.items()}
        items, behaviors = self._recent(sub, np.asarray(cuts), cfg, cold)
        states, table = model(torch.as_tensor(items, device=device), torch.as_tensor(behaviors, device=device))
        t = torch.as_tensor(np.asarray(targets), device=device)
        if cfg.loss == "full" or (cfg.loss == "auto" and meta.n_items <= cfg.full_max_items):
            loss = full_softmax_loss(states, t, table[1:])
        else:
            counts = torch.as_tensor(meta.extra["train_counts"], dtype=torch.float32, device=device)
            log_q = torch.log(counts.clamp(min=1) / counts.sum().clamp(min=1))
            loss = sampled_softmax_loss(states, t, table[1:], log_q, cfg.negatives)
        return loss, {"item_loss": loss.item(), "examples": len(rows)}

    @torch.no_grad()
    def validate(self, model, batches: Iterable[dict[str, np.ndarray]], cfg: RecommendConfig, meta: Meta, device,
                 split: str = "valid") -> dict[str, float]:
        sums = {f"{m}@{k}": 0.0 for k in KS for m in ("recall", "ndcg")} | {"users": 0}
        for batch in batches:
            users = self.users(batch, cfg, meta, split)
            if users is None:
                continue
            for key, v in top_k_sums(self.scores(model, users, cfg, device), users.targets, users.history, KS).items():
                sums[key] += v
        return sums

    @torch.no_grad()
    def score(self, model, batch: dict[str, np.ndarray], cfg: RecommendConfig, meta: Meta, device, *,
              top_k: int = 10, evidence: int = EVIDENCE) -> pa.Table:
        """Each user's top-k items (:data:`interest.schemas.RECOMMENDATIONS`) after
        everything the user did, without the items ``exclude`` names, each with up to
        ``evidence`` items of the user's behind it (:mod:`interest.common.evidence`)."""
        users = self.users(batch, cfg, meta, "score")
        if users is None:
            return S.RECOMMENDATIONS.empty_table()
        exclude = {"bought": users.bought, "seen": users.history, "none": None}[cfg.exclude]
        core = unwrap(model)
        if isinstance(core, TwoTower):
            items, behaviors = torch.as_tensor(users.items, device=device), torch.as_tensor(users.behaviors, device=device)
            states, table = core(items, behaviors)
            scores, top, _ = top_n(states, table[1:], top_k, exclude, lse=False)
            found = core.removal_drops(items, behaviors, top) if evidence else None
        else:  # closed-form models give whole rows of scores
            scores, top = top_of_rows(self.scores(model, users, cfg, device), top_k, exclude)
            found = self.item_item_drops(core, users, top) if evidence else None
        proof = pick(*found, len(users.rows), evidence) if found else np.full((len(users.rows), 1, top.shape[1]), -1)
        scores, top = scores.cpu().numpy(), top.cpu().numpy()
        user_rows, ranks = np.nonzero(np.isfinite(scores))  # fewer allowed items than top_k
        item_ids = meta.extra["item_ids"]
        return pa.table({
            S.USER_ID: pa.array(batch[S.USER_ID][users.rows][user_rows].tolist(), pa.string()),
            "rank": pa.array(ranks + 1, pa.int16()),
            S.ITEM_ID: pa.array(item_ids.take(pa.array(top[user_rows, ranks])).to_pylist(), pa.string()),
            "score": pa.array(scores[user_rows, ranks], pa.float32()),
            S.EVIDENCE: as_ids(proof, user_rows, ranks, item_ids),
        }, schema=S.RECOMMENDATIONS)

    @staticmethod
    def item_item_drops(core: nn.Module, users: Users, top: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`TwoTower.removal_drops`, for a model whose score is a sum over the
        history: each history item's drop is its weight towards the row's item (popularity
        reads no history: nothing is evidence)."""
        lengths = np.fromiter((len(h) for h in users.history), np.int64, len(users.history))
        owner = torch.as_tensor(np.repeat(np.arange(len(lengths)), lengths), device=top.device)
        history = torch.as_tensor(np.concatenate(users.history) if lengths.sum() else np.zeros(0, np.int64),
                                  device=top.device)
        if not isinstance(core, ItemItem):
            owner, history = owner[:0], history[:0]
        targets = top[owner]  # (G, K)
        drops = core.weights(history[:, None].expand_as(targets), targets) if len(owner) else \
            torch.zeros(targets.shape, device=top.device)
        return drops, owner, history + 1


def _matrix(fitted: EASE | ItemKNN) -> torch.Tensor:
    return fitted.b_ if isinstance(fitted, EASE) else fitted.sim_
