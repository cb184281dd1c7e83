"""The synthetic generator: exact sizes, determinism, and the planted signal it promises."""

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from interest.config import ConfigError
from interest.data.synthetic import SyntheticConfig, generate, leaf_categories


def load(path):
    return (pq.read_table(path / "events"), pq.read_table(path / "items.parquet"),
            pq.read_table(path / "ground_truth.parquet"))


def test_sizes_are_exact_and_output_is_deterministic(tmp_path):
    cfg = SyntheticConfig(users=120, items=80, events=3001, seed=3, events_per_file=1000)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(cfg, str(a))
    generate(cfg, str(b))
    generate(SyntheticConfig(users=120, items=80, events=3001, seed=4, events_per_file=1000), str(c))
    ea, ia, ga = load(a)
    assert ea.num_rows == 3001 and ia.num_rows == 80
    assert len(list((a / "events").iterdir())) >= 3
    assert ea.equals(load(b)[0]) and ia.equals(load(b)[1])
    assert not ea.equals(load(c)[0])
    users_with_events = set(ea.column("user_id").to_pylist())
    assert set(ga.column("user_id").to_pylist()) == users_with_events


def test_events_follow_planted_interests(synthetic_small):
    events, items, truth = load(synthetic_small)
    cat = dict(zip(items["item_id"].to_pylist(), items["category"].to_pylist()))
    gt = {r["user_id"]: r for r in truth.to_pylist()}
    hits = [cat[i] in (gt[u]["interests_late"] if t >= gt[u]["drift_at"] else gt[u]["interests_early"])
            for u, i, t in zip(events["user_id"].to_pylist(), events["item_id"].to_pylist(),
                               events["ts"].to_pylist())]
    # 10% of sessions are noise (and may land in an interest by chance), the rest follow interests.
    assert 0.88 < np.mean(hits) < 0.97
    drifted = [r for r in truth.to_pylist() if r["interests_early"] != r["interests_late"]]
    assert 0.15 < len(drifted) / truth.num_rows < 0.45


def test_funnel_buys_follow_carts_and_popularity_is_skewed(synthetic_small):
    events, _, _ = load(synthetic_small)
    rows = list(zip(events["session_id"].to_pylist(), events["item_id"].to_pylist(),
                    events["behavior"].to_pylist()))
    carts = {(s, i) for s, i, b in rows if b == "cart"}
    buys = [(s, i) for s, i, b in rows if b == "buy"]
    assert buys and all(b in carts for b in buys)
    counts = np.sort(pc.value_counts(events["item_id"]).field("counts").to_numpy())[::-1]
    assert counts[: len(counts) // 10].sum() > 0.3 * counts.sum()  # top 10% of items: > 30% of events


def test_chinese_titles_and_taxonomy(tmp_path):
    generate(SyntheticConfig(users=20, items=64, events=200, zh_titles=1.0), str(tmp_path))
    titles = pq.read_table(tmp_path / "items.parquet")["title"].to_pylist()
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in titles)
    taxonomy = pq.read_table(tmp_path / "taxonomy.parquet")
    leaves = [c for c, _, _ in leaf_categories()]
    assert set(leaves) <= set(taxonomy["category"].to_pylist())
    assert all(taxonomy["name_zh"].to_pylist())


def test_bad_sizes_fail_clearly():
    with pytest.raises(ConfigError, match="items must be >= 32"):
        SyntheticConfig(items=5)
    with pytest.raises(ConfigError, match="noise must lie in"):
        SyntheticConfig(noise=2)
