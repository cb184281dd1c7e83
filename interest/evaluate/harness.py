"""Evaluate a trained run on held-out events, beside baselines computed in the same run.

Targets, histories and masks are shared by the model and every baseline, so their
numbers differ only by the scores. Users are streamed from the prepared dataset in
batches; item scores exist for one batch at a time.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from interest import config as C
from interest import io
from interest import schemas as S
from interest.evaluate.baselines import EASE, ItemKNN, Popularity, interaction_matrix
from interest.evaluate.metrics import (Protocol, means_from_sums, metrics_from_ranks, ranks_from_scores, seen_pairs,
                                      top_k_sums)
from interest.tasks import get_task
from interest.train import checkpoint as ckpt

log = logging.getLogger(__name__)
KS = (1, 10, 20)
# Each baseline's grid, searched on the validation targets: (parameter, values, factory).
GRIDS = {
    "ease": ("lambda", (20.0, 50.0, 100.0, 250.0, 500.0), EASE),
    "itemknn": ("k", (20, 50, 100, 200), ItemKNN),
}
BLEND_WEIGHTS = (0.2, 0.35, 0.5, 0.65, 0.8)


def latest_checkpoint(run: str) -> str:
    found = sorted(p for p in glob.glob(os.path.join(run, "checkpoint_*")) if os.path.isdir(p))
    if not found:
        raise io.InputError(f"no checkpoint in {run}; train first (`interest train ... --out {run}`)")
    return found[-1]


def load_model(run: str, prepared: str, which: str = ckpt.BEST):
    """(task, config, model in eval mode, training state, meta) of the run's latest checkpoint."""
    folder = latest_checkpoint(run)
    state = ckpt.load_state(folder)
    task = get_task(state["task"])
    cfg = C.from_dict(task.config_cls, state["config"])
    meta = task.load_meta(cfg, prepared)
    model = task.build_model(cfg, meta)
    try:
        model.load_state_dict(ckpt.read_weights(folder, which))
    except RuntimeError as exc:
        raise io.InputError(f"{run} was trained on another dataset than {prepared}: {str(exc)[:200]}") from None
    return task, cfg, model.eval(), state, meta


@dataclass
class Collected:
    """Per held-out user: target, history, latest item, model ranks and behaviour predictions."""

    split: str = "test"
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


def read_events(prepared: str, columns: list[str], splits: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Columns of the prepared events in ``splits`` (0 train, 1 valid, 2 test), streamed."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray.data

    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    ds = ray.data.read_parquet(io.join(prepared, "events")).select_columns(list(dict.fromkeys(columns + [S.SPLIT])))
    wanted = pa.array(splits, pa.int8())
    for b in ds.iter_batches(batch_size=1 << 20, batch_format="pyarrow"):
        b = b.filter(pc.is_in(b[S.SPLIT], value_set=wanted))
        for c in columns:
            parts[c].append(b[c].to_numpy())
    return {c: np.concatenate(v) if v else np.zeros(0, np.int64) for c, v in parts.items()}


def train_events(prepared: str, splits: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    ev = read_events(prepared, [S.USER_IDX, S.ITEM_IDX], splits)
    return ev[S.USER_IDX], ev[S.ITEM_IDX]


def history_matrix(histories: list[np.ndarray], n_items: int) -> torch.Tensor:
    lengths = [len(h) for h in histories]
    rows = np.repeat(np.arange(len(histories)), lengths)
    cols = np.concatenate(histories) if histories else np.zeros(0, np.int64)
    return interaction_matrix(rows, cols, len(histories), n_items)


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """Each user's scores to mean 0, standard deviation 1, so two models' scores can be mixed."""
    return (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True).clamp(min=1e-9)


def grid_search(name: str, grid: tuple, measure, metric: str) -> tuple[Any, Any, list]:
    """(best value, its payload, values tried) of ``measure(value) -> (valid metric,
    payload)`` over the ordered ``grid``; stops once the metric falls, the grid being
    ordered and the metric unimodal in it (past the peak)."""
    best, searched = None, []
    for value in grid:
        searched.append(value)
        score, payload = measure(value)
        log.info("%s %s=%g: valid %s %.4f", name, GRIDS[name][0], value, metric, score)
        if best is not None and score < best[1]:
            break
        best = (value, score, payload)
    return best[0], best[2], searched


def tuned_baseline(name: str, prepared: str, n_users: int, n_items: int, valid: Collected, test: Collected,
                   protocol: Protocol, model_scores=None) -> dict[str, Any]:
    """Baseline ``name`` with its parameter chosen on the validation targets, refit on
    train + valid for the test targets.

    With ``model_scores(states, last, split)``, also the blend ``(1 - w) z(model) + w z(baseline)`` of
    per-user standardised scores, ``w`` chosen on the validation targets (returned under
    ``"blend"``): sequence models and item-item models make different mistakes, and
    mixing them is the field's usual answer when neither wins everywhere.
    """
    param, grid, factory = GRIDS[name]
    if name == "ease" and n_items > EASE.MAX_ITEMS:
        return {"skipped": f"{n_items} items: above EASE's dense limit of {EASE.MAX_ITEMS}"}

    def ranks(baseline, c: Collected, weights: tuple[float, ...]) -> dict[float, np.ndarray]:
        """Ranks under the baseline alone (weight 1) and under each blend weight."""
        states = torch.cat(c.states) if model_scores is not None else None
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

    x = interaction_matrix(*train_events(prepared, (0,)), n_users, n_items)
    weights = (1.0, *BLEND_WEIGHTS) if model_scores is not None else (1.0,)

    def measure(value):
        # Every blend weight is ranked in the same pass as the baseline: the scores are
        # computed once per chunk, and only the cheap ranking repeats.
        by_weight = ranks(factory(value).fit(x), valid, weights)
        return ndcg(by_weight[1.0]), by_weight

    value, by_weight, searched = grid_search(name, grid, measure, "ndcg@10")
    weight = None
    if model_scores is not None:
        weight = max(BLEND_WEIGHTS, key=lambda w: ndcg(by_weight[w]))
        log.info("model + %s: weight %.2f, valid ndcg@10 %.4f", name, weight, ndcg(by_weight[weight]))
    refit = factory(value).fit(interaction_matrix(*train_events(prepared, (0, 1)), n_users, n_items))
    tested = ranks(refit, test, (1.0,) if weight is None else (1.0, weight))
    result = {**metrics_from_ranks(tested[1.0], KS), param: value, f"{param}_chosen_on": "valid ndcg@10",
              f"{param}_searched": searched}
    if weight is not None:
        result["blend"] = {**metrics_from_ranks(tested[weight], KS), "weight": weight, param: value,
                           "weight_chosen_on": "valid ndcg@10"}
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


def macro_auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """One-vs-rest ROC AUC averaged over the classes present with both outcomes (ties count
    half); None when no class has both (a single behaviour type, as in order-only data)."""
    aucs = []
    for k in range(scores.shape[1]):
        pos = y == k
        if pos.all() or not pos.any():
            continue
        s = scores[:, k]
        order = np.argsort(s, kind="mergesort")
        ranks = np.empty(len(s))
        sorted_s = s[order]
        # average ranks over ties
        _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
        avg = first + (counts - 1) / 2.0 + 1
        ranks[order] = np.repeat(avg, counts)
        n_pos, n_neg = pos.sum(), (~pos).sum()
        aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else None


@torch.no_grad()
def evaluate_next_item(task, model, cfg, meta, prepared: str, protocol: Protocol,
                       baselines: tuple[str, ...] = ("popularity",), batch_size: int = 1024) -> dict[str, Any]:
    """Next-item ranking and next-behaviour metrics of a sequence model beside the baselines."""
    test = collect(task, model, cfg, meta, prepared, protocol, batch_size, network=True)
    results: dict[str, Any] = {"protocol": protocol.as_dict(), "model": metrics_from_ranks(test.cat("ranks"), KS)}
    if test.network_ranks:  # the network alone, to show what the item transitions add
        results["model"]["transitions"] = cfg.transitions
        results["network"] = metrics_from_ranks(test.cat("network_ranks"), KS)
    _, items = train_events(prepared, (0, 1))  # everything before the test events
    pop = Popularity().fit(items, meta.n_items)
    results["popularity"] = metrics_from_ranks(
        _baseline_ranks(lambda lo, hi, hist: pop.score(hi - lo), test, protocol), KS)
    tuned = [b for b in baselines if b in GRIDS]
    if tuned:
        valid = collect(task, model, cfg, meta, prepared, Protocol(**{**protocol.as_dict(), "split": "valid"}),
                        batch_size)
        for name in tuned:
            results[name] = tuned_baseline(name, prepared, meta.n_users, meta.n_items, valid, test, protocol,
                                           model_scores=lambda states, last, split: task.item_scores(
                                               model, states, cfg, meta, split, last))
            if "blend" in results[name]:
                results[f"model+{name}"] = results[name].pop("blend")
    train_behaviors = read_events(prepared, [S.BEHAVIOR], (0,))[S.BEHAVIOR].astype(np.int64)
    majority = int(np.bincount(train_behaviors, minlength=len(S.BEHAVIORS)).argmax())
    results["behavior"] = behavior_metrics(test, majority)
    return results


@torch.no_grad()
def evaluate(run: str, prepared: str, *, protocol: Protocol | None = None, baselines: tuple[str, ...] = ("popularity",),
             batch_size: int = 1024) -> dict[str, Any]:
    """Test metrics of a run and of the baselines in the same pass, each with its protocol."""
    start = time.time()
    task, cfg, model, state, meta = load_model(run, prepared)
    results = task.evaluate(model, cfg, meta, prepared, protocol=protocol, baselines=baselines,
                            batch_size=batch_size)
    results.update(task=task.name, run=run, prepared=prepared, best_epoch=state.get("best_epoch"),
                   seconds=round(time.time() - start, 1))
    return results


@torch.no_grad()
def evaluate_top_n(task, model, cfg, meta, prepared: str, baselines: tuple[str, ...] = ("popularity",),
                   batch_size: int = 1024, ks: tuple[int, ...] = (10, 20)) -> dict[str, Any]:
    """Top-N metrics (Recall@k, NDCG@k over each user's new items of the test split, every
    item ranked, seen items masked) of a ``recommend`` model beside the baselines, each
    tuned baseline's parameter chosen on the validation users; with held-out items
    (``cfg.holdout_items``), also their cold-start recall against a category baseline."""
    import ray.data

    protocol = Protocol(split="test", target="new items of the split", mask_seen=True)
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
                _add(sums, top_k_sums(scores, warm_targets, users.history, ks))
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
        users, items = train_events(prepared, splits)
        keep = ~cold[items]
        return users[keep], items[keep]

    pop = Popularity().fit(events((0, 1))[1], meta.n_items)
    results["popularity"] = top_k(lambda x: pop.score(x.shape[0]), test)
    metric = f"recall@{max(ks)}"
    for name in tuned:
        param, grid, factory = GRIDS[name]
        if name == "ease" and meta.n_items > EASE.MAX_ITEMS:
            results[name] = {"skipped": f"{meta.n_items} items: above EASE's dense limit of {EASE.MAX_ITEMS}"}
            continue
        x = interaction_matrix(*events((0,)), meta.n_users, meta.n_items)
        value, _, searched = grid_search(name, grid, lambda v: (top_k(factory(v).fit(x).score, got["valid"])[metric],
                                                                None), metric)
        refit = factory(value).fit(interaction_matrix(*events((0, 1)), meta.n_users, meta.n_items))
        results[name] = {**top_k(refit.score, test), param: value, f"{param}_chosen_on": f"valid {metric}",
                         f"{param}_searched": searched}
    if cold.any():
        results["cold_start"] = cold_start(torch.cat(cold_rows), test["cold_history"], test["cold"], cold,
                                           item_categories(prepared, meta.n_items), ks)
    return results


def cold_start(model_scores: torch.Tensor, histories: list[np.ndarray], cold_targets: list[np.ndarray],
               cold: np.ndarray, categories: np.ndarray, ks: tuple[int, ...]) -> dict[str, Any]:
    """Recall@k and NDCG@k of the held-out items a user took up in the test split, ranked
    among the held-out items only, for the model and for "the user's favourite category
    first": cold items ordered by how many of the user's history items share their
    category, ties in a fixed random order (no popularity is known for an item nobody
    has touched, and the item index follows popularity over every split)."""
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

