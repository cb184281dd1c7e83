"""Evaluate a trained run on the test split, beside baselines computed in the same run.

Targets, histories and masks are shared by the model and every baseline, so their
numbers differ only by the scores. Users are streamed from the prepared dataset in
batches; item scores exist for one batch at a time.

Nothing reported is chosen on the test split, and nothing chosen on the validation
events was fitted on them: a baseline's parameter is chosen with the baseline fitted on
the training events, then refitted on training + validation for the test; a blend's
weight is chosen with the model's weights from before its refit (the refit trains on the
validation events, ``prerefit.safetensors``), then the run's final weights are tested.
The evaluator looks the task up (:data:`PROTOCOLS`); no task imports it.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch

from interest import io
from interest import schemas as S
from interest.common.events import history_matrix, interaction_matrix, read_events, user_items
from interest.common.topn import seen_pairs
from interest.config import ConfigError
from interest.evaluate.baselines import EASE, GRIDS, Popularity, grid_search
from interest.evaluate.metrics import (Protocol, Reliability, auc, means_from_sums, metrics_from_ranks,
                                      multilabel_per_user, per_rank, ranks_from_scores, recall_at, sums_over_users,
                                      top_k_per_user, top_k_sums)
from interest.tasks.zeroshot.task import prototype
from interest.train import checkpoint as ckpt

log = logging.getLogger(__name__)
KS = (1, 10, 20)
# Weights w of the blend (1 - w) model + w baseline, chosen on the validation targets.
# The ends are the model alone and the baseline alone, so the search spans the segment.
BLEND_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class PerUser:
    """The model's test figure for each user, by ``user_idx``: two runs on the same
    prepared data are compared user by user (a paired bootstrap), not by their means."""

    metric: str
    users: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    def add(self, users: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """``values``: every metric of these users; the one this collects is kept."""
        if self.metric not in values:
            raise ConfigError(f"per-user figures of {self.metric!r}: this evaluation measures "
                              f"{', '.join(values)} per user")
        self.users.append(np.asarray(users, np.int64))
        self.values.append(np.asarray(values[self.metric], np.float64))

    def table(self) -> pa.Table:
        cat = (lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype))
        return pa.table({S.USER_IDX: cat(self.users, np.int64), self.metric: cat(self.values, np.float64)})


@dataclass
class Collected:
    """Per held-out user: target, history, latest item, model ranks and behaviour predictions."""

    split: str = "test"
    users: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    target_behaviors: list[np.ndarray] = field(default_factory=list)
    last_behaviors: list[np.ndarray] = field(default_factory=list)
    histories: list[np.ndarray] = field(default_factory=list)
    lasts: list[np.ndarray] = field(default_factory=list)
    ranks: list[np.ndarray] = field(default_factory=list)
    network_ranks: list[np.ndarray] = field(default_factory=list)  # without item transitions, where mixed in
    states: list[torch.Tensor] = field(default_factory=list)
    behavior_probs: list[np.ndarray] = field(default_factory=list)

    def cat(self, name: str) -> np.ndarray:
        parts = getattr(self, name)
        return np.concatenate(parts) if parts else np.zeros(0)


def collect(task, model, cfg, meta, prepared: str, protocol: Protocol, batch_size: int = 1024,
            network: bool = False) -> Collected:
    """``network``: also rank by the network alone where item transitions are mixed in."""
    import ray.data

    out = Collected(split=protocol.split)
    ds = ray.data.read_parquet(io.join(prepared, "sequences")).select_columns(task.train_columns())
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        rows, states, blogits, t_items, t_beh, history, last = task.predict(model, batch, cfg, torch.device("cpu"),
                                                                            protocol.split)
        if not len(rows):
            continue
        seen = seen_pairs(history) if protocol.mask_seen else (None, None)
        targets = torch.as_tensor(t_items)
        scores = task.item_scores(model, states, cfg, meta, protocol.split, last)
        out.ranks.append(ranks_from_scores(scores, targets, *seen).numpy())
        if network and getattr(cfg, "transitions", None):
            network_scores = task.item_scores(model, states, replace(cfg, transitions=0.0), meta, protocol.split, last)
            out.network_ranks.append(ranks_from_scores(network_scores, targets, *seen).numpy())
        out.users.append(batch[S.USER_IDX][rows])
        out.lasts.append(last)
        out.states.append(states)
        out.behavior_probs.append(torch.softmax(blogits, 1).numpy())
        out.targets.append(t_items)
        out.target_behaviors.append(t_beh)
        ends = batch["n_train"][rows].astype(np.int64) + (batch["n_valid"][rows].astype(np.int64)
                                                          if protocol.split == "test" else 0)
        out.last_behaviors.append(np.array([batch["behaviors"][r][e - 1] for r, e in zip(rows, ends)], np.int64))
        out.histories.extend(history)
    return out


def _ranks_by(scores_fn, c: Collected, protocol: Protocol, chunk: int = 1024) -> dict[Any, np.ndarray]:
    """Ranks of every test target under each of the scorings ``scores_fn(lo, hi, histories)``
    returns as a dict, in one pass: chunks of users share their history masks."""
    targets = c.cat("targets").astype(np.int64)
    ranks: dict[Any, list[np.ndarray]] = {}
    for lo in range(0, len(targets), chunk):
        hi = min(lo + chunk, len(targets))
        hist = c.histories[lo:hi]
        seen = seen_pairs(hist) if protocol.mask_seen else (None, None)
        t = torch.as_tensor(targets[lo:hi])
        for key, scores in scores_fn(lo, hi, hist).items():
            ranks.setdefault(key, []).append(ranks_from_scores(scores, t, *seen).numpy())
    return {key: np.concatenate(r) for key, r in ranks.items()}


def _baseline_ranks(scores_fn, c: Collected, protocol: Protocol) -> np.ndarray:
    return _ranks_by(lambda lo, hi, hist: {None: scores_fn(lo, hi, hist)}, c, protocol).get(None, np.zeros(0))


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """Each user's scores to mean 0, standard deviation 1, so two models' scores can be mixed."""
    return (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True).clamp(min=1e-9)


def tuned_baseline(name: str, prepared: str, n_users: int, n_items: int, valid: Collected, test: Collected,
                   protocol: Protocol, model_scores: Callable | None = None) -> dict[str, Any]:
    """Baseline ``name`` with its parameter chosen on the validation targets (fitted on
    the training events), refitted on training + validation events for the test targets.

    With ``model_scores(states, last, split)`` (the scores of the model that collected
    that split's states), also the blend ``(1 - w) z(model) + w z(baseline)`` of per-user
    standardised scores, ``w`` chosen on the validation targets at the chosen parameter
    (returned under ``"blend"``): sequence models and item-item models make different
    mistakes, and mixing them is the field's usual answer when neither wins everywhere.
    """
    param, _, factory = GRIDS[name]
    if name == "ease" and n_items > EASE.MAX_ITEMS:
        return {"skipped": f"{n_items} items: above EASE's dense limit of {EASE.MAX_ITEMS}"}

    def ranks(baseline, c: Collected, weights: tuple[float, ...]) -> dict[float, np.ndarray]:
        """Ranks under each weight of the blend (1: the baseline alone)."""
        states = torch.cat(c.states) if weights != (1.0,) else None
        lasts = c.cat("lasts").astype(np.int64)

        def scores(lo, hi, hist):
            s = baseline.score(history_matrix(hist, n_items))
            if states is None:
                return {1.0: s}
            zm, zb = standardize(model_scores(states[lo:hi], lasts[lo:hi], c.split)), standardize(s)
            return {w: s if w == 1 else (1 - w) * zm + w * zb for w in weights}

        return _ranks_by(scores, c, protocol)

    def ndcg(r: np.ndarray) -> float:
        return metrics_from_ranks(r, KS).get("ndcg@10", 0.0)

    x = interaction_matrix(*user_items(prepared, (0,)), n_users, n_items)

    def measure(value) -> tuple[float, Any]:
        fitted = factory(value).fit(x)
        return ndcg(ranks(fitted, valid, (1.0,))[1.0]), fitted

    value, fitted, searched = grid_search(name, measure, "ndcg@10")
    weight = None
    if model_scores is not None:
        by_weight = ranks(fitted, valid, BLEND_WEIGHTS)  # every weight ranked in one pass over the users
        weight = max(BLEND_WEIGHTS, key=lambda w: ndcg(by_weight[w]))  # the first of equals: the model's side
        log.info("model + %s: weight %.2f, valid ndcg@10 %.4f", name, weight, ndcg(by_weight[weight]))
    del fitted
    refit = factory(value).fit(interaction_matrix(*user_items(prepared, (0, 1)), n_users, n_items))
    tested = ranks(refit, test, (1.0,) if weight is None else (1.0, weight))
    result = {**metrics_from_ranks(tested[1.0], KS), param: value, f"{param}_chosen_on": "valid ndcg@10",
              f"{param}_searched": searched}
    if weight is not None:
        result["blend"] = {**metrics_from_ranks(tested[weight], KS), "weight": weight, param: value,
                           "weight_chosen_on": "valid ndcg@10, model weights before the refit"}
    return result


def behavior_metrics(c: Collected, majority: int) -> dict[str, dict[str, float]]:
    y = c.cat("target_behaviors").astype(np.int64)
    if len(y) == 0:
        return {}
    probs = np.concatenate(c.behavior_probs)
    last = c.cat("last_behaviors").astype(np.int64)
    one_hot = np.eye(probs.shape[1])
    return {
        "model": {"accuracy": float((probs.argmax(1) == y).mean()), "macro_auc": macro_auc(y, probs)},
        "majority": {"accuracy": float((y == majority).mean()),
                     "macro_auc": macro_auc(y, one_hot[np.full_like(y, majority)])},
        "repeat_last": {"accuracy": float((y == last).mean()), "macro_auc": macro_auc(y, one_hot[last])},
    }


def behavior_calibration(c: Collected) -> dict[str, Any]:
    """The reliability of the next behaviour as published (``user_next_actions``): the
    most likely behaviour's probability against how often it came next."""
    probs, y = np.concatenate(c.behavior_probs), c.cat("target_behaviors").astype(np.int64)
    diagram = Reliability()
    diagram.add(probs.max(1), probs.argmax(1) == y)
    return diagram.as_dict()


def macro_auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """One-vs-rest ROC AUC averaged over the classes present with both outcomes (ties count
    half); None when no class has both (a single behaviour type, as in order-only data)."""
    aucs = [a for k in range(scores.shape[1]) if (a := auc(scores[:, k], y == k)) is not None]
    return float(np.mean(aucs)) if aucs else None


@torch.no_grad()
def evaluate_next_item(task, model, chooser, cfg, meta, prepared: str, protocol: Protocol,
                       baselines: tuple[str, ...] = ("popularity",), batch_size: int = 1024,
                       per_user: PerUser | None = None) -> dict[str, Any]:
    """Next-item ranking and next-behaviour metrics of a sequence model beside the
    baselines; ``chooser()`` loads the model as it was before its refit (blend weights)."""
    test = collect(task, model, cfg, meta, prepared, protocol, batch_size, network=True)
    results: dict[str, Any] = {"protocol": protocol.as_dict(), "model": metrics_from_ranks(test.cat("ranks"), KS)}
    if per_user is not None:
        per_user.add(test.cat("users"), per_rank(test.cat("ranks"), KS))
    if test.network_ranks:  # the network alone, to show what the item transitions add
        results["model"]["transitions"] = cfg.transitions
        results["network"] = metrics_from_ranks(test.cat("network_ranks"), KS)
    _, items = user_items(prepared, (0, 1))  # everything before the test events
    pop = Popularity().fit(items, meta.n_items)
    results["popularity"] = metrics_from_ranks(
        _baseline_ranks(lambda lo, hi, hist: pop.score(hi - lo), test, protocol), KS)
    tuned = [b for b in baselines if b in GRIDS]
    if tuned:
        before_refit = chooser()
        valid = collect(task, before_refit, cfg, meta, prepared, replace(protocol, split="valid"), batch_size)
        by_split = {"valid": before_refit, "test": model}
        for name in tuned:
            results[name] = tuned_baseline(name, prepared, meta.n_users, meta.n_items, valid, test, protocol,
                                           model_scores=lambda states, last, split: task.item_scores(
                                               by_split[split], states, cfg, meta, split, last))
            if "blend" in results[name]:
                results[f"model+{name}"] = results[name].pop("blend")
    train_behaviors = read_events(prepared, [S.BEHAVIOR], (0,))[S.BEHAVIOR].astype(np.int64)
    majority = int(np.bincount(train_behaviors, minlength=len(S.BEHAVIORS)).argmax())
    results["behavior"] = behavior_metrics(test, majority)
    if results["behavior"]:
        results["calibration"] = {"next_behavior": behavior_calibration(test)}
    return results


@torch.no_grad()
def evaluate_top_n(task, model, chooser, cfg, meta, prepared: str, protocol: Protocol,
                   baselines: tuple[str, ...] = ("popularity",), batch_size: int = 1024,
                   per_user: PerUser | None = None, ks: tuple[int, ...] = (10, 20)) -> dict[str, Any]:
    """Top-N metrics (Recall@k, NDCG@k over each user's new items of the test split, every
    item ranked, seen items masked) of a ``recommend`` model beside the baselines, each
    tuned baseline's parameter chosen on the validation users; with held-out items
    (``cfg.holdout_items``), also their cold-start recall against a category baseline."""
    import ray.data

    protocol = replace(protocol, target="new items of the split", mask_seen=True)
    tuned = [b for b in baselines if b in GRIDS]
    phases = ("valid", "test") if tuned else ("test",)
    got: dict[str, dict[str, list]] = {p: {"history": [], "targets": [], "cold": [], "cold_history": []}
                                         for p in phases}
    cold = meta.extra["cold"]
    sums: dict[str, float] = {}
    cold_rows: list[np.ndarray] = []
    ds = ray.data.read_parquet(io.join(prepared, "sequences")).select_columns(task.train_columns())
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        for phase in phases:
            users = task.users(batch, cfg, meta, phase)
            if users is None:
                continue
            warm_targets = [t[~cold[t]] for t in users.targets]
            got[phase]["history"].extend(users.history)
            got[phase]["targets"].extend(warm_targets)
            if phase == "test":
                scores = task.scores(model, users, cfg, torch.device("cpu"))
                kept, values = top_k_per_user(scores, warm_targets, users.history, ks)
                _add(sums, sums_over_users(kept, values))
                if per_user is not None:
                    per_user.add(batch[S.USER_IDX][users.rows[kept]], values)
                if cold.any():  # only users who took up a held-out item: bounded memory
                    cold_targets = [t[cold[t]] for t in users.targets]
                    some = [i for i, t in enumerate(cold_targets) if len(t)]
                    got[phase]["cold"].extend(cold_targets[i] for i in some)
                    got[phase]["cold_history"].extend(users.history[i] for i in some)
                    cold_rows.append(scores[some][:, torch.as_tensor(np.flatnonzero(cold))])
    test = got["test"]
    results: dict[str, Any] = {"protocol": protocol.as_dict(), "model": means_from_sums(sums)}
    if not test["history"]:
        return results

    def top_k(score, c: dict[str, list], chunk: int = 1024) -> dict[str, float]:
        """Metrics of ``score(sparse history rows)`` on the users of ``c``."""
        out: dict[str, float] = {}
        for lo in range(0, len(c["history"]), chunk):
            hist = c["history"][lo:lo + chunk]
            _add(out, top_k_sums(score(history_matrix(hist, meta.n_items)), c["targets"][lo:lo + chunk], hist, ks))
        return means_from_sums(out)

    def events(splits):
        users, items = user_items(prepared, splits)
        keep = ~cold[items]
        return users[keep], items[keep]

    pop = Popularity().fit(events((0, 1))[1], meta.n_items)
    results["popularity"] = top_k(lambda x: pop.score(x.shape[0]), test)
    metric = f"recall@{max(ks)}"
    for name in tuned:
        param, _, factory = GRIDS[name]
        if name == "ease" and meta.n_items > EASE.MAX_ITEMS:
            results[name] = {"skipped": f"{meta.n_items} items: above EASE's dense limit of {EASE.MAX_ITEMS}"}
            continue
        x = interaction_matrix(*events((0,)), meta.n_users, meta.n_items)
        value, _, searched = grid_search(name, lambda v: (top_k(factory(v).fit(x).score, got["valid"])[metric], None),
                                         metric)
        refit = factory(value).fit(interaction_matrix(*events((0, 1)), meta.n_users, meta.n_items))
        results[name] = {**top_k(refit.score, test), param: value, f"{param}_chosen_on": f"valid {metric}",
                         f"{param}_searched": searched}
    if cold.any():
        results["cold_start"] = cold_start(torch.cat(cold_rows), test["cold_history"], test["cold"], cold,
                                           item_categories(prepared, meta.n_items), ks)
    return results


@torch.no_grad()
def evaluate_tags(task, model, chooser, cfg, meta, prepared: str, protocol: Protocol,
                  baselines: tuple[str, ...] = (), batch_size: int = 256,
                  per_user: PerUser | None = None) -> dict[str, Any]:
    """Test-window P@k, R@k and mAP of a ``tags`` model, tag popularity and the user's own
    most frequent tags so far, over the same users; and users scored per second."""
    import ray.data

    k = task.K
    tags = meta.extra["tags"]
    # Tag popularity: behaviour-weighted over every event before the targets.
    ev = read_events(prepared, [S.ITEM_IDX, S.BEHAVIOR], (0, 1))
    weights = np.asarray(cfg.behavior_weights, np.float32)
    popularity = tags.matrix(np.zeros(len(ev[S.ITEM_IDX]), np.int64), ev[S.ITEM_IDX],
                             weights[ev[S.BEHAVIOR].astype(np.int64)], 1)[0]
    popularity = popularity / max(float(popularity.max()), 1.0)
    methods = ("model", "popularity", "history")
    sums = {m: {f"p@{k}": 0.0, f"r@{k}": 0.0, "map": 0.0, "users": 0} for m in methods}
    model_s, users = 0.0, 0
    ds = ray.data.read_parquet(io.join(prepared, "sequences")).select_columns(task.train_columns())
    # The probabilities as scoring publishes them: each user's top k tags, at the
    # temperature fitted on the validation windows.
    temperature = task.calibrate(model, ds.iter_batches(batch_size=batch_size, batch_format="numpy"), cfg, meta,
                                 torch.device("cpu"))
    calibration = Reliability()
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        users += len(batch[S.USER_IDX])
        ex = task.examples(batch, cfg, meta, "test")
        if ex is None:
            continue
        start = time.perf_counter()
        logits, _ = task.forward(model, ex, cfg, meta, torch.device("cpu"))
        model_s += time.perf_counter() - start
        scored = {"model": logits.numpy(), "popularity": np.broadcast_to(popularity, ex.target.shape),
                  "history": ex.prior[:, 0] + 1e-3 * popularity}  # the user's own tags, the rest by popularity
        for m in methods:
            kept, values = multilabel_per_user(scored[m], ex.target > 0, k)
            _add(sums[m], sums_over_users(kept, values))
            if m == "model" and per_user is not None:
                per_user.add(batch[S.USER_IDX][ex.rows[kept]], values)
        top = np.argsort(-scored["model"], axis=1, kind="stable")[:, :k]
        calibration.add(torch.sigmoid(torch.take_along_dim(logits, torch.as_tensor(top), 1) / temperature).numpy(),
                        np.take_along_axis(ex.target > 0, top, 1))
    results: dict[str, Any] = {"protocol": {**protocol.as_dict(), "k": k, "ranking": "every tag",
                                            "target": "tags of the later window"
                                            if meta.extra.get("labels") is None else "supplied labels",
                                            "ties": "against the relevant tags: irrelevant ones rank first"}}
    for m in methods:
        results[m] = task.metrics_from_sums(sums[m])
    results["model"]["users_per_s"] = round(results["model"]["users"] / max(model_s, 1e-9), 1)
    results["calibration"] = {"tags": {**calibration.as_dict(), "temperature": temperature,
                                       "of": f"each user's top {k} tags"}}
    results["tags"] = tags.report
    results["users"] = {"read": users, "with_labels": int(sums["model"]["users"]),
                        "without_labels": users - int(sums["model"]["users"])}
    return results


def tag_parents(tags: list[str], separator: str) -> dict[int, str]:
    """Tag index -> its parent: the longest other tag that starts it, at a separator or a
    space (category paths whose separators were lost, as in Amazon's "A B C" paths)."""
    found = {}
    for j, t in enumerate(tags):
        ends = [p for p in tags if p != t and any(t.startswith(p + s) for s in (separator, " ") if s)]
        if ends:
            found[j] = max(ends, key=len)
    return found


def under(categories: list[str | None], parent: str, separator: str) -> np.ndarray:
    """Items whose category is ``parent`` or lies under it."""
    return np.array([bool(c) and (c == parent or any(c.startswith(parent + s) for s in (separator, " ") if s))
                     for c in categories])


@torch.no_grad()
def evaluate_zeroshot(task, model, chooser, cfg, meta, prepared: str, protocol: Protocol,
                      baselines: tuple[str, ...] = (), batch_size: int = 1024,
                      per_user: PerUser | None = None, *, min_positives: int = 10,
                      shots: tuple[int, ...] = (1, 5, 20), k: int = 100, seed: int = 0) -> dict[str, Any]:
    """Zero-shot quality on the run's held-out tags (``judge``, else ``holdout``): for each
    tag, the users with test events who never touched it before are ranked by score; the
    positives are those whose test events include it (users without an event before the
    test, whom every method ties, are left out). Per-tag AUC and Recall@k for the
    model from the tag's text alone, from text and ``shots`` example items or example
    users (drawn at random, ``seed``: the users drawn are positives, left out of the
    ranking, and drawn only where ``min_positives`` remain), and for the baselines:
    random, activity (most events first), text match
    (cosine of the user's mean history item vector with the tag's text vector, no
    training) and the share of the user's events under the tag's parent, where tags are
    paths. Tags with fewer than ``min_positives`` positives are skipped, and said so."""
    import ray.data

    if per_user is not None:
        raise ConfigError("zero-shot quality is measured per held-out tag, not per user: compare two runs by "
                          "their tags' figures")
    judged = task.judged(cfg, meta)
    if not len(judged):
        raise ConfigError("nothing to judge: train with holdout=[TAG, ...] (or judge=[...]) to measure zero-shot "
                          "quality on tags the model never saw")
    tags = meta.extra["tags"]
    vectors = meta.extra["vectors"]
    parents = tag_parents(tags.tags, cfg.separator)
    parent_items = {j: under(meta.extra["categories"], parents[j], cfg.separator) for j in judged if j in parents}
    cols = {name: [] for name in ("users", "bias", "mean", "activity", "before", "after", "parent")}
    ds = ray.data.read_parquet(io.join(prepared, "sequences")).select_columns(task.train_columns())
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        tested = batch["n_test"] > 0
        if not tested.any():
            continue
        batch = {c: v[tested] for c, v in batch.items()}
        users, bias, vis = task.test_users(model, batch, cfg, meta, torch.device("cpu"))
        vis_ends = vis["n_train"].astype(np.int64) + vis["n_valid"]
        has = vis_ends > 0  # a user with no history before the test is a tie for every method
        if not has.any():
            continue
        users, bias, vis_ends = users[torch.as_tensor(has)], bias[torch.as_tensor(has)], vis_ends[has]
        batch, vis = ({c: v[has] for c, v in b.items()} for b in (batch, vis))
        ends = batch["n_train"].astype(np.int64) + batch["n_valid"]
        n = len(ends)
        history = [np.asarray(vis["items"][r][:vis_ends[r]], np.int64) for r in range(n)]
        full = [np.asarray(batch["items"][r], np.int64) for r in range(n)]

        def carries(lists):
            lengths = [len(x) for x in lists]
            flat = np.concatenate(lists) if sum(lengths) else np.zeros(0, np.int64)
            return tags.matrix(np.repeat(np.arange(n), lengths), flat, np.ones(len(flat), np.float32), n,
                               reduce="max")[:, judged] > 0

        cols["before"].append(carries([f[:e] for f, e in zip(full, ends)]))
        cols["after"].append(carries([f[e:] for f, e in zip(full, ends)]))
        cols["users"].append(users.numpy())
        cols["bias"].append(bias.numpy())
        cols["activity"].append(vis_ends.astype(np.float64))
        cols["mean"].append(np.stack([vectors[h].mean(0).numpy() if len(h) else np.zeros(vectors.shape[1], np.float32)
                                      for h in history]))
        cols["parent"].append(np.stack([[parent_items[j][h].mean() if j in parent_items and len(h) else 0.0
                                         for j in judged] for h in history]).reshape(n, len(judged)))
    got = {c: np.concatenate(v) for c, v in cols.items()}
    core = model.module if hasattr(model, "module") else model
    text = core.encode_text(meta.extra["tag_vectors"][judged])  # (J, H)
    mean = got["mean"] / np.maximum(np.linalg.norm(got["mean"], axis=1, keepdims=True), 1e-9)
    users, bias = torch.as_tensor(got["users"]), torch.as_tensor(got["bias"])
    owner = np.repeat(np.arange(meta.n_items), np.diff(tags.indptr))
    rng = np.random.default_rng(seed)
    per_tag, skipped = {}, {}
    for jj, j in enumerate(judged):
        name = tags.tags[j]
        eligible = ~got["before"][:, jj]
        positive = got["after"][eligible, jj]
        if positive.sum() < min_positives:
            skipped[name] = f"{int(positive.sum())} positive users (needs {min_positives})"
            continue
        idx = np.flatnonzero(eligible)

        def measured(scores, keep=None):
            s, y = (scores, positive) if keep is None else (scores[keep], positive[keep])
            return {"auc": auc(s, y), f"recall@{k}": recall_at(s, y, k)}

        def model_scores(vector):
            return core.logits(users[idx], bias[idx], vector[None]).squeeze(1).numpy()

        row = {"users": int(len(idx)), "positives": int(positive.sum()),
               "model": measured(model_scores(text[jj])),
               "random": measured(rng.random(len(idx))),
               "activity": measured(got["activity"][idx]),
               "text_match": measured(mean[idx] @ meta.extra["tag_vectors"][j].numpy())}
        if j in parent_items:
            row["parent_share"] = measured(got["parent"][idx, jj])
        items_of = owner[tags.indices == j]
        fans = np.flatnonzero(positive)
        row["few_shot"] = {"items": {}, "users": {}}
        for n_shots in shots:
            examples = vectors[rng.choice(items_of, min(n_shots, len(items_of)), replace=False)]
            row["few_shot"]["items"][str(n_shots)] = measured(
                model_scores(prototype(core, cfg, text[jj], examples, users[:0])))["auc"]
            if n_shots + min_positives <= len(fans):  # enough positives left to rank after the seeds
                seeds = rng.choice(fans, n_shots, replace=False)
                keep = np.ones(len(idx), bool)
                keep[seeds] = False
                row["few_shot"]["users"][str(n_shots)] = measured(
                    model_scores(prototype(core, cfg, text[jj], vectors[:0], users[idx[seeds]])), keep)["auc"]
        per_tag[name] = row
    results: dict[str, Any] = {
        "protocol": {**protocol.as_dict(), "ranking": "users with events before and in the test window who never "
                                                      "touched the tag before it",
                     "target": "the tag among the user's test events", "min_positives": min_positives,
                     "ties": "half (AUC); against the positives at the cut (recall)"},
        "tags": per_tag, "skipped": skipped, "holdout": list(cfg.holdout), "judged": [tags.tags[j] for j in judged]}
    results.update(summarize_zeroshot(list(per_tag.values()), k))
    return results


def summarize_zeroshot(rows: list[dict[str, Any]], k: int = 100) -> dict[str, Any]:
    """Per-method mean and standard error over tags of per-tag figures (the rows of
    :func:`evaluate_zeroshot`, pooled over folds by the bench), and the few-shot means."""
    def mean_se(values):
        v = np.array([x for x in values if x is not None], np.float64)
        if not len(v):
            return None, None
        return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None

    out: dict[str, Any] = {}
    methods = dict.fromkeys(m for r in rows for m in r if isinstance(r[m], dict) and "auc" in r[m])
    for m in methods:
        have = [r[m] for r in rows if m in r]
        a, a_se = mean_se(x["auc"] for x in have)
        rc, rc_se = mean_se(x[f"recall@{k}"] for x in have)
        out[m] = {"auc": a, "auc_se": a_se, f"recall@{k}": rc, f"recall@{k}_se": rc_se, "tags": len(have)}
    out["few_shot"] = {kind: {n: mean_se(r["few_shot"][kind].get(n) for r in rows)[0]
                              for n in dict.fromkeys(n for r in rows for n in r["few_shot"][kind])}
                       for kind in ("items", "users")}
    return out


# How each task is measured (a task's ``evaluation``).
PROTOCOLS: dict[str, Callable[..., dict[str, Any]]] = {
    "next_item": evaluate_next_item,
    "top_n": evaluate_top_n,
    "tags": evaluate_tags,
    "zeroshot": evaluate_zeroshot,
}


@torch.no_grad()
def evaluate(run: str, prepared: str, *, protocol: Protocol | None = None, baselines: tuple[str, ...] = ("popularity",),
             batch_size: int = 1024, per_user: bool = False) -> dict[str, Any]:
    """Test metrics of a run and of the baselines in the same pass, each with its protocol.

    Only the test split is reported: the validation events chose the epoch, the
    baselines' parameters and the blend weights, so a figure measured on them is not an
    estimate of anything (the best epoch's validation figures are in the run's state).

    ``per_user``: also the model's figure of the run's validation metric
    (``train.metric``) for each test user, as a table under ``"per_user"``."""
    start = time.time()
    if protocol is not None and protocol.split != "test":
        raise ConfigError(f"evaluation reports the test split, not {protocol.split!r}: the validation events chose "
                          "the epoch and every parameter (their figures are in the run's state.json)")
    task, cfg, model, state, meta = ckpt.load_model(run, prepared)
    chooser = functools.partial(ckpt.model_before_refit, run, prepared, task, cfg, meta, model)  # loaded if used
    protocol = protocol or Protocol(mask_seen=getattr(cfg, "mask_seen", True))
    collected = PerUser(cfg.train.metric) if per_user else None
    results = PROTOCOLS[task.evaluation](task, model, chooser, cfg, meta, prepared, protocol, baselines, batch_size,
                                         collected)
    if collected is not None:
        results["per_user"] = collected.table()
    results.update(task=task.name, run=run, prepared=prepared, best_epoch=state.get("best_epoch"),
                   seconds=round(time.time() - start, 1))
    return results


def cold_start(model_scores: torch.Tensor, histories: list[np.ndarray], cold_targets: list[np.ndarray],
               cold: np.ndarray, categories: np.ndarray, ks: tuple[int, ...]) -> dict[str, Any]:
    """Recall@k and NDCG@k of the held-out items a user took up in the test split, ranked
    among the held-out items only, for the model and for "the user's favourite category
    first": cold items ordered by how many of the user's history items share their
    category, ties in a fixed random order (no popularity is known for an item nobody
    has touched). Ties of the model's scores count against the target, as everywhere."""
    cold_idx = np.flatnonzero(cold)
    position = np.full(len(cold), -1, np.int64)
    position[cold_idx] = np.arange(len(cold_idx))
    targets = [position[t] for t in cold_targets]
    n_cat = int(categories.max()) + 2
    jitter = torch.as_tensor(np.random.default_rng(0).random(len(cold_idx)) * 0.5, dtype=torch.float32)
    affinity = torch.zeros(len(histories), n_cat)
    for u, h in enumerate(histories):
        affinity[u] += torch.as_tensor(np.bincount(categories[h] + 1, minlength=n_cat), dtype=torch.float32)
    affinity[:, 0] = 0  # items without a category say nothing about the user's taste
    baseline = affinity[:, torch.as_tensor(categories[cold_idx] + 1)] + jitter
    out = {"items": int(len(cold_idx)), "protocol": "test users' held-out items, ranked among the held-out items"}
    for name, scores in (("model", model_scores), ("favourite_category", baseline)):
        out[name] = means_from_sums(top_k_sums(scores, targets, None, ks))
    return out


def item_categories(prepared: str, n_items: int) -> np.ndarray:
    """A category code per item (-1: none), by the item's full category string."""
    items = io.read_parquet(io.join(prepared, "items"))
    codes = np.full(n_items, -1, np.int64)
    if S.CATEGORY in items.column_names:
        cat = items.column(S.CATEGORY).combine_chunks().dictionary_encode()
        idx = cat.indices.to_numpy(zero_copy_only=False)
        valid = ~np.asarray(cat.is_null())
        codes[items.column(S.ITEM_IDX).to_numpy()[valid]] = idx[valid]
    return codes


def _add(sums: dict[str, float], more: dict[str, float]) -> None:
    for k, v in more.items():
        sums[k] = sums.get(k, 0.0) + v

