"""`interest discover`: spherical k-means finds planted blobs, groups of the synthetic
catalogue's item vectors follow its planted text (a leaf category, or a brand no tag
names, listed first), and the command writes its table."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from interest import schemas as S
from interest.config import ConfigError
from interest.tasks.zeroshot import discover as D
from interest.tasks.zeroshot.discover import DiscoverConfig, discover, spherical_kmeans
from ray_jobs import discover as job


def blobs(k: int, per: int, dim: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``k`` tight blobs of unequal sizes around random directions, shuffled; (points, blob of each)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=1)
    truth = np.repeat(np.arange(k), [per + 7 * b for b in range(k)])
    points = centres[truth] + 0.05 * torch.randn(len(truth), dim, generator=g)
    order = torch.randperm(len(truth), generator=g)
    return points[order] * 3.0, truth[order.numpy()]  # scaled: the k-means normalises


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_planted_blobs(seed):
    x, truth = blobs(k=6, per=20, dim=16, seed=seed)
    found = spherical_kmeans(x, 6, seed=seed)
    labels = found.labels.numpy()
    # The same partition: each blob is one group and each group one blob.
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 6 and len({t for t, _ in pairs}) == 6 and len({g for _, g in pairs}) == 6
    assert found.iterations < 50, "stops once assignments settle"
    assert torch.allclose(found.centroids.norm(dim=1), torch.ones(6))
    assert (found.similarity > 0.9).all()


def test_kmeans_leaves_no_group_empty():
    # Four distinct points, three of them repeated: k = 4 needs every distinct point as a centre,
    # and k = n forces the farthest-point re-seeding whenever two centres coincide.
    x = torch.tensor([[1.0, 0, 0]] * 5 + [[0, 1.0, 0]] * 3 + [[0, 0, 1.0]] * 2 + [[1.0, 1.0, 0]])
    for k in (4, len(x)):
        labels = spherical_kmeans(x, k, seed=3).labels
        assert torch.bincount(labels, minlength=k).min() >= 1
    with pytest.raises(ValueError):
        spherical_kmeans(x, len(x) + 1)


def test_config_checks():
    with pytest.raises(ConfigError, match="covered"):
        DiscoverConfig(embeddings="store", covered=0.0)
    with pytest.raises(ConfigError, match="tag_source"):
        DiscoverConfig(embeddings="store", tag_source="leaves")
    with pytest.raises(ConfigError, match="groups"):
        DiscoverConfig(embeddings="store", groups=0)


def test_groups_follow_the_planted_text(prepared_small, bow_store):
    """The synthetic item text plants two attributes: the leaf category (which the tags
    carry) and the brand (which no tag carries, and which the text names twice: in the
    title and as the brand). Groups follow one or the other; category groups are covered
    by a tag, and the least covered groups, listed first, are the brands."""
    encoder, store = bow_store
    cfg = DiscoverConfig(embeddings=str(store), encoder=str(encoder), groups=32, seed=0)
    table, report = discover(str(prepared_small), cfg)
    assert table.schema.equals(S.DISCOVERED_GROUPS)
    assert S.conform(table, S.DISCOVERED_GROUPS).equals(table)
    assert report["items_clustered"] == 400 and report["items_without_vectors"] == 0
    assert report["groups"] == table.num_rows == 32 and sorted(table.column("group").to_pylist()) == list(range(32))
    assert sum(table.column("items").to_pylist()) == 400
    coverage = np.array(table.column("coverage").to_pylist())
    assert (np.diff(coverage) >= 0).all(), "least covered first"
    assert report["covered_groups"] == sum(table.column("covered").to_pylist()) == (coverage >= cfg.covered).sum()

    items = pq.read_table(prepared_small / "items")
    ids = items.column(S.ITEM_ID).to_pylist()
    category, brand, title = (dict(zip(ids, items.column(c).to_pylist())) for c in (S.CATEGORY, S.BRAND, S.TITLE))
    typical = table.column("typical_item_ids").to_pylist()
    assert all(len(t) == min(cfg.titles, n) for t, n in zip(typical, table.column("items").to_pylist()))
    assert [[title[i] for i in t] for t in typical] == table.column("typical_titles").to_pylist()
    one_category = np.array([len({category[i] for i in t}) == 1 for t in typical])
    one_brand = np.array([len({brand[i] for i in t}) == 1 for t in typical])
    assert (one_category | one_brand).mean() >= 0.8, "typical items share a category or a brand"
    assert one_category.sum() >= 5 and coverage[one_category & ~one_brand].mean() >= 0.8
    assert one_brand[:16].mean() >= 0.8, "the least covered half is the brands, which no tag names"
    assert coverage[one_brand & ~one_category].mean() < cfg.covered

    again, _ = discover(str(prepared_small), cfg)
    assert again.equals(table)
    other, _ = discover(str(prepared_small), DiscoverConfig(embeddings=str(store), encoder=str(encoder),
                                                           groups=32, seed=1))
    assert not other.equals(table), "the seed is used"


def test_items_without_vectors_are_left_out(prepared_small, bow_store, monkeypatch):
    """Items the store has no vector for (zeros) are counted, never clustered; a null
    title shows as the item id."""
    encoder, store = bow_store
    real = D.prepared_item_vectors

    def some_missing(prepared, store, encoder):
        vectors, items = real(prepared, store, encoder)
        vectors[:10] = 0
        return vectors, items.set_column(items.schema.get_field_index(S.TITLE), S.TITLE,
                                         pa.nulls(items.num_rows, pa.string()))

    monkeypatch.setattr(D, "prepared_item_vectors", some_missing)
    table, report = discover(str(prepared_small), DiscoverConfig(embeddings=str(store), encoder=str(encoder),
                                                                 groups=8, titles=50))
    assert report["items_without_vectors"] == 10 and report["items_clustered"] == 390
    assert sum(table.column("items").to_pylist()) == 390
    missing = set(pq.read_table(prepared_small / "items").sort_by(S.ITEM_IDX).column(S.ITEM_ID)[:10].to_pylist())
    shown = [i for t in table.column("typical_item_ids").to_pylist() for i in t]
    assert len(shown) == 8 * 50 - sum(max(0, 50 - n) for n in table.column("items").to_pylist())
    assert not missing & set(shown)
    assert table.column("typical_titles").to_pylist() == table.column("typical_item_ids").to_pylist()


def test_command_writes_groups_and_refuses_to_overwrite(prepared_small, bow_store, tmp_path, capsys):
    encoder, store = bow_store
    out = tmp_path / "groups.parquet"
    argv = ["--data", str(prepared_small), "--embeddings", str(store), "--encoder", str(encoder),
            "--out", str(out), "--groups", "8", "--titles", "3"]
    assert job.main(argv) == 0
    written = pq.read_table(out)
    assert written.schema.equals(S.DISCOVERED_GROUPS) and written.num_rows == 8
    printed = capsys.readouterr().out
    assert printed.count("\ngroup ") + printed.startswith("group ") == 8
    assert '"items_clustered": 400' in printed.splitlines()[-1]

    before = out.stat().st_mtime_ns
    assert job.main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == before
    assert job.main(argv + ["--overwrite", "--groups", "4"]) == 0
    assert pq.read_table(out).num_rows == 4
