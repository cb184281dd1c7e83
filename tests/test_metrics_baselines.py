"""Ranking metrics against a brute-force reference; EASE against a dense reference."""

import numpy as np
import pytest
import torch

from interest.common.events import interaction_matrix
from interest.evaluate.baselines import EASE, GRIDS, ItemKNN, Popularity, grid_search, select_rows
from interest.evaluate.metrics import (full_ranking, metrics_from_ranks, multilabel_per_user, multilabel_sums,
                                      paired_bootstrap, ranks_from_scores, sampled_ranking, top_k_per_user,
                                      top_k_sums)


def brute_force_rank(scores, target, seen):
    """Other unmasked items scored at least as high as the target (ties count against it)."""
    others = [i for i in range(len(scores)) if i != target and i not in set(seen)]
    if target in set(seen):
        return len(others)
    return sum(scores[i] >= scores[target] for i in others)


def test_full_ranking_matches_brute_force_in_chunks():
    rng = np.random.default_rng(0)
    n_users, n_items = 37, 23
    scores = rng.integers(0, 5, (n_users, n_items)).astype(np.float32)  # many ties
    targets = rng.integers(0, n_items, n_users)
    seen = [rng.choice(n_items, rng.integers(0, 6), replace=False) for _ in range(n_users)]
    seen = [s[s != t] for s, t in zip(seen, targets)]
    ranks = full_ranking(lambda idx: torch.as_tensor(scores[idx]), np.arange(n_users), targets, seen, chunk=5)
    assert ranks.tolist() == [brute_force_rank(scores[u], targets[u], seen[u]) for u in range(n_users)]


def test_ranks_with_distinct_scores_masks_and_masked_targets_match_brute_force():
    # Distinct scores take the counting path; a few planted ties and masked targets the exact one.
    rng = np.random.default_rng(1)
    n_users, n_items = 64, 50
    scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    scores[:4, 7] = scores[:4, 3]  # ties in four rows
    targets = rng.integers(0, n_items, n_users)
    seen = [rng.choice(n_items, rng.integers(0, 8), replace=False) for _ in range(n_users)]
    seen[5] = np.union1d(seen[5], [targets[5]])  # a masked target
    rows = torch.as_tensor(np.repeat(np.arange(n_users), [len(s) for s in seen]))
    cols = torch.as_tensor(np.concatenate(seen).astype(np.int64))
    ranks = ranks_from_scores(torch.as_tensor(scores), torch.as_tensor(targets), rows, cols)
    assert ranks.tolist() == [brute_force_rank(scores[u], targets[u], seen[u]) for u in range(n_users)]
    assert ranks[5] >= n_items - len(seen[5])

def test_constant_scores_get_the_worst_rank_among_ties_whatever_the_index():
    # Issue 19: ties were settled by item index, and the index followed popularity over
    # every split, test included; a target at index 0 got rank 0.
    ranks = ranks_from_scores(torch.zeros(3, 10), torch.tensor([0, 5, 9]))
    assert ranks.tolist() == [9, 9, 9]
    # Tied with two of ten, masked items aside: after both, whatever the indices.
    scores = torch.tensor([[1.0, 5.0, 5.0, 0.0, 5.0, 2.0]])
    for target in (1, 2, 4):
        assert ranks_from_scores(scores, torch.tensor([target])).item() == 2
    rows, cols = torch.tensor([0]), torch.tensor([4])
    assert ranks_from_scores(scores, torch.tensor([1]), rows, cols).item() == 1  # a masked item is no tie


def test_nan_scores_count_against_the_target():
    scores = torch.tensor([[1.0, float("nan"), 0.5], [float("nan"), 2.0, 3.0]])
    assert ranks_from_scores(scores, torch.tensor([0, 0])).tolist() == [1, 2]


def test_top_k_metrics_count_ties_against_the_targets():
    # Constant scores: no target is ever in the top 10 of 20 items however they are indexed.
    sums = top_k_sums(torch.zeros(2, 20), [np.array([0, 1]), np.array([19])], [np.array([5]), np.array([])], ks=(10,))
    assert sums["recall@10"] == 0 and sums["ndcg@10"] == 0 and sums["users"] == 2
    # A distinct top score is a hit; a seen item above it is masked.
    scores = torch.zeros(1, 20)
    scores[0, 3], scores[0, 4] = 2.0, 3.0
    sums = top_k_sums(scores, [np.array([3])], [np.array([4])], ks=(1,))
    assert sums["recall@1"] == 1.0


def test_multilabel_ties_count_against_the_relevant_tags():
    relevant = np.array([[True, False, False, False]])
    sums = multilabel_sums(np.zeros((1, 4)), relevant, k=1)  # the relevant tag at index 0
    assert sums["p@1"] == 0.0 and sums["map"] == pytest.approx(0.25)
    sums = multilabel_sums(np.array([[1.0, 0, 0, 0]]), relevant, k=1)
    assert sums["p@1"] == 1.0 and sums["map"] == 1.0


def test_per_user_figures_name_their_users_and_skip_those_without_targets():
    scores = torch.zeros(3, 20)
    scores[0, 3] = scores[2, 7] = 1.0
    rows, values = top_k_per_user(scores, [np.array([3]), np.array([], np.int64), np.array([7, 8])], None, ks=(1,))
    assert rows.tolist() == [0, 2]  # the user without a target is not measured
    assert values["recall@1"].tolist() == [1.0, 0.5] and values["ndcg@1"].tolist() == [1.0, 1.0]
    relevant = np.array([[False, True], [False, False], [True, False]])
    rows, values = multilabel_per_user(np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), relevant, k=1)
    assert rows.tolist() == [0, 2] and values["p@1"].tolist() == [1.0, 0.0] and values["map"].tolist() == [1.0, 0.5]


def test_the_paired_bootstrap_separates_a_small_consistent_gain_from_noise():
    rng = np.random.default_rng(0)
    easy = rng.random(2000)  # users differ far more than the models do
    diff, lo, hi = paired_bootstrap(easy, easy + 0.01 + rng.normal(0, 0.02, 2000))
    assert 0 < lo < diff < hi and abs(diff - 0.01) < 0.002
    diff, lo, hi = paired_bootstrap(easy, easy + rng.normal(0, 0.02, 2000))
    assert lo < 0 < hi  # no gain: the interval holds zero
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


def test_masked_target_ranks_last_among_unmasked():
    ranks = ranks_from_scores(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    assert ranks.item() == 2


def test_metric_values():
    m = metrics_from_ranks(np.array([0, 1, 10, 50]), ks=(10,))
    assert m["hr@10"] == 0.5
    assert np.isclose(m["ndcg@10"], (1 + 1 / np.log2(3)) / 4)
    assert np.isclose(m["mrr"], (1 + 1 / 2 + 1 / 11 + 1 / 51) / 4)


def test_sampled_ranking_is_never_worse_than_full():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(20, 500)).astype(np.float32)
    targets = rng.integers(0, 500, 20)
    seen = [np.zeros(0, np.int64)] * 20
    fn = lambda idx: torch.as_tensor(scores[idx])  # noqa: E731
    full = full_ranking(fn, np.arange(20), targets, seen)
    sampled = sampled_ranking(fn, np.arange(20), targets, seen, 500)
    assert (sampled <= full).all() and sampled.max() <= 100


def test_ease_matches_dense_reference():
    rng = np.random.default_rng(2)
    dense = (rng.random((30, 12)) < 0.3).astype(np.float64)
    users, items = np.nonzero(dense)
    x = interaction_matrix(users, items, 30, 12)
    model = EASE(lam=5.0).fit(x)
    g = dense.T @ dense + 5.0 * np.eye(12)
    p = np.linalg.inv(g)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    assert np.allclose(model.b_.numpy(), b, atol=1e-4)
    rows = np.array([3, 7])
    assert np.allclose(model.score(select_rows(x, rows)).numpy(), dense[rows] @ b, atol=1e-4)


def test_itemknn_matches_dense_reference():
    rng = np.random.default_rng(3)
    dense = (rng.random((40, 15)) < 0.3).astype(np.float64)
    users, items = np.nonzero(dense)
    k = 4
    model = ItemKNN(k=k, shrink=1.0).fit(interaction_matrix(users, items, 40, 15))
    n = dense.sum(0)
    sim = dense.T @ dense / (np.sqrt(np.outer(n, n)) + 1.0)
    np.fill_diagonal(sim, 0.0)
    ref = np.zeros_like(sim)
    for i in range(15):  # each item keeps its k most similar (none tied at the cut in this draw)
        top = np.argsort(-sim[i], kind="stable")[:k]
        ref[i, top] = sim[i, top]
    assert np.allclose(model.sim_.to_dense().numpy(), ref, atol=1e-6)
    rows = np.array([0, 5, 9])
    x = interaction_matrix(users, items, 40, 15)
    assert np.allclose(model.score(select_rows(x, rows)).numpy(), dense[rows] @ ref, atol=1e-5)


def test_popularity_counts_training_events():
    pop = Popularity().fit(np.array([2, 2, 0]), n_items=4)
    assert pop.score(2).tolist() == [[1, 0, 2, 0]] * 2


def test_macro_auc_against_pairwise_definition_and_single_class():
    from interest.evaluate.harness import macro_auc

    y = np.array([0, 0, 1, 1, 2])
    scores = np.array([[0.9, 0.1, 0], [0.4, 0.6, 0], [0.5, 0.5, 0], [0.2, 0.8, 0], [0.3, 0.3, 0.4]])

    def pairwise(k):
        pos, neg = scores[y == k, k], scores[y != k, k]
        return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])

    assert np.isclose(macro_auc(y, scores), np.mean([pairwise(k) for k in range(3)]))
    assert macro_auc(np.zeros(4, int), np.random.rand(4, 5)) is None


@pytest.mark.parametrize("peak, grid_end", [(4000.0, "up"), (3.0, "down")])
def test_grid_search_goes_past_the_end_of_its_grid_while_the_metric_rises(peak, grid_end):
    # Issue 19: EASE's validation metric still rose at the largest lambda of the grid, and
    # that lambda was used. A unimodal metric peaking beyond either end is found.
    measured = []

    def measure(lam):
        measured.append(lam)
        return -abs(np.log(lam) - np.log(peak)), f"fitted {lam}"

    value, payload, searched = grid_search("ease", measure, "ndcg@10")
    grid = GRIDS["ease"][1]
    assert value == pytest.approx(peak, rel=0.5) and payload == f"fitted {value}"
    beyond = [v for v in searched if v > max(grid)] if grid_end == "up" else [v for v in searched if v < min(grid)]
    assert beyond and searched == measured
    # ... and stops one step after the peak.
    assert (max(searched) if grid_end == "up" else min(searched)) != value


def test_grid_search_inside_the_grid_stops_once_the_metric_falls():
    value, _, searched = grid_search("itemknn", lambda k: (-abs(k - 50), None), "recall@20")
    assert value == 50 and searched == [20, 50, 100]
    value, _, searched = grid_search("itemknn", lambda k: (-abs(k - 3), None), "recall@20")
    assert value == 2 and searched == [20, 50, 10, 5, 2, 1]  # halving from 20; k a whole number >= 1


def test_reliability_bins_add_up_over_batches_and_ece_measures_the_gap():
    from interest.evaluate.metrics import Reliability

    rng = np.random.default_rng(0)
    p = rng.random(20_000)
    honest, whole = Reliability(), Reliability()
    for lo in range(0, len(p), 3000):  # in batches, as evaluation adds them
        honest.add(p[lo:lo + 3000], rng.random(len(p[lo:lo + 3000])) < p[lo:lo + 3000])
    whole.add(p, p > 2)  # never happens: the gap is the mean probability
    h, w = honest.as_dict(), whole.as_dict()
    assert h["n"] == w["n"] == len(p) and sum(b["n"] for b in h["bins"]) == len(p) and len(h["bins"]) == 10
    assert h["ece"] < 0.02 and w["ece"] == pytest.approx(p.mean())
    assert all(abs(b["probability"] - b["frequency"]) < 0.05 for b in h["bins"])
    one = Reliability()
    one.add(np.array([1.0, 0.0]), np.array([True, False]))  # the edges fall in the end bins
    assert one.as_dict() == {"bins": [{"n": 1, "probability": 0.0, "frequency": 0.0},
                                      {"n": 1, "probability": 1.0, "frequency": 1.0}], "ece": 0.0, "n": 2}
