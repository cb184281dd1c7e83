"""Exact chunked top-N search: the same answer as a full sort, exclusions honoured."""

import numpy as np
import torch

from interest.common.topn import top_n


def test_chunked_top_n_matches_a_full_sort_and_never_returns_excluded_items():
    torch.manual_seed(0)
    users, items = torch.randn(7, 5), torch.randn(53, 5)
    items[40] = items[3]  # a tie across chunks: the lower index must come first
    rng = np.random.default_rng(0)
    exclude = [rng.choice(53, size=k, replace=False) for k in (0, 1, 5, 20, 52, 53, 3)]
    scores, idx, lse = top_n(users, items, 10, exclude, chunk=8)
    full = users @ items.t()
    assert torch.allclose(lse, full.logsumexp(1))
    for u, ex in enumerate(exclude):
        s = full[u].clone()
        s[torch.as_tensor(ex, dtype=torch.long)] = float("-inf")
        want = torch.sort(s, descending=True, stable=True).indices[:10]
        kept = torch.isfinite(scores[u])
        assert kept.sum() == min(10, 53 - len(ex))
        assert torch.equal(idx[u][kept], want[:int(kept.sum())])
        assert not set(idx[u][kept].tolist()) & set(ex.tolist())
    assert top_n(users, items, 100)[1].shape == (7, 53)  # n above the catalogue


def test_without_lse_the_top_n_is_unchanged_and_repeated_exclusions_are_harmless():
    torch.manual_seed(1)
    users, items = torch.randn(4, 6), torch.randn(30, 6)
    exclude = [np.array([2, 2, 7, 2]), np.array([], np.int64), np.array([29, 29]), np.arange(30)]
    scores, idx, lse = top_n(users, items, 5, exclude, chunk=8)
    s2, i2, none = top_n(users, items, 5, [np.unique(e) for e in exclude], chunk=8, lse=False)
    assert none is None and torch.equal(idx, i2) and torch.equal(scores, s2)
    assert not torch.isfinite(scores[3]).any()  # every item excluded
