"""Candidate interest groups: item text vectors clustered, for a person to name.

Items are grouped by a spherical k-means over their text vectors (``interest
embed-items``). Each group shows how well one existing tag covers it (the share of its
items carrying that tag) and its most typical titles (nearest its centroid). Groups no
tag covers well come first: they are the interests the tag vocabulary is missing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import torch

from interest import io
from interest import schemas as S
from interest.common import tags as L
from interest.config import ConfigError
from interest.text.embed import prepared_item_vectors

log = logging.getLogger(__name__)
CHUNK = 8192  # items per similarity block: memory stays at CHUNK x k floats, not n_items x k


@dataclass
class DiscoverConfig:
    """Args:
        embeddings: item vector store of ``interest embed-items``.
        groups: clusters (k).
        iterations: most k-means rounds; it stops earlier once no item changes group.
        seed: seeds the k-means++ initialisation; the same seed gives the same groups.
        titles: typical titles shown per group (its items nearest the centroid).
        covered: a group counts as covered when one tag carries at least this share of
            its items.
        taxonomy: Parquet of tags (tag, description, categories); None: derive tags from
            the item categories by ``tag_source`` (levels, tokens, whole) and ``separator``.
        tag_source: how tags are derived from categories, as in task ``tags``.
        separator: separator of category paths.
        encoder: the encoder whose vectors to read; None: the packaged default.
    """

    embeddings: str
    groups: int = 20
    iterations: int = 50
    seed: int = 0
    titles: int = 5
    covered: float = 0.5
    taxonomy: str | None = None
    tag_source: str = "levels"
    separator: str = "."
    encoder: str | None = None

    def __post_init__(self):
        if not self.embeddings:
            raise ConfigError("embeddings (the item vector store) is required")
        if self.groups < 1:
            raise ConfigError(f"groups must be >= 1, got {self.groups}")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if self.titles < 1:
            raise ConfigError(f"titles must be >= 1, got {self.titles}")
        if not 0.0 < self.covered <= 1.0:
            raise ConfigError(f"covered must be in (0, 1], got {self.covered}")
        if self.tag_source not in L.TAG_SOURCES:
            raise ConfigError(f"tag_source must be one of {', '.join(L.TAG_SOURCES)}, got {self.tag_source!r}")


class Clusters(NamedTuple):
    centroids: torch.Tensor  # (k, D), unit length
    labels: torch.Tensor  # (N,) int64, the group of each point
    similarity: torch.Tensor  # (N,) cosine of each point to its group's centroid
    iterations: int  # rounds run


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, cosine) of each row of ``x`` to its nearest centroid, CHUNK rows at a time."""
    labels = torch.empty(len(x), dtype=torch.int64)
    best = torch.empty(len(x), dtype=x.dtype)
    for start in range(0, len(x), CHUNK):
        sim = x[start:start + CHUNK] @ centroids.T  # (CHUNK, k)
        best[start:start + CHUNK], labels[start:start + CHUNK] = sim.max(dim=1)
    return labels, best


def _own_similarity(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) cosine of each row to its own centroid, CHUNK rows at a time."""
    return torch.cat([(x[s:s + CHUNK] * centroids[labels[s:s + CHUNK]]).sum(1) for s in range(0, len(x), CHUNK)])


def _plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeds: each next centre drawn with probability ~ squared cosine distance
    to the nearest centre so far. One (N,) vector of distances is kept, not (N, k)."""
    n = len(x)
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    dist = (1.0 - x @ x[first]).clamp_(min=0.0).double()  # (N,)
    for _ in range(1, k):
        weights = dist.square()
        total = float(weights.sum())
        if total > 0:
            # cumsum + searchsorted rather than torch.multinomial, which caps categories at 2**24.
            draw = torch.rand(1, generator=generator, dtype=torch.float64) * total
            nxt = min(int(torch.searchsorted(weights.cumsum(0), draw)), n - 1)
        else:  # every point sits on a centre already: take the first not yet chosen
            taken = set(chosen)
            nxt = next(i for i in range(n) if i not in taken)
        chosen.append(nxt)
        dist = torch.minimum(dist, (1.0 - x @ x[nxt]).clamp_(min=0.0).double())
    return x[chosen].clone()


def _reseed_empty(labels: torch.Tensor, sim: torch.Tensor, k: int) -> None:
    """Give every empty group the point farthest from its own centroid, taken from a group
    that keeps at least one point (so no other group empties). Edits ``labels`` and ``sim``."""
    counts = torch.bincount(labels, minlength=k)
    for group in torch.nonzero(counts == 0).flatten().tolist():
        movable = counts[labels] > 1
        far = int(torch.where(movable, sim, torch.inf).argmin())
        counts[labels[far]] -= 1
        counts[group] += 1
        labels[far] = group
        sim[far] = 1.0  # it is its new group's centre: never the farthest again


def spherical_kmeans(x: torch.Tensor, k: int, *, iterations: int = 50, seed: int = 0) -> Clusters:
    """Cluster the rows of ``x`` (N, D) by cosine into ``k`` groups, none empty.

    Rows are L2-normalised; centroids are the normalised means of their groups (the
    spherical k-means of Dhillon & Modha). Deterministic for a ``seed`` on one machine."""
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    x = torch.nn.functional.normalize(x.float(), dim=1)
    generator = torch.Generator().manual_seed(seed)
    centroids = _plus_plus(x, k, generator)  # (k, D)
    previous = None
    for rounds in range(1, iterations + 1):
        labels, sim = _nearest(x, centroids)
        _reseed_empty(labels, sim, k)
        if previous is not None and torch.equal(labels, previous):
            break  # the centroids already are these groups' means
        previous = labels
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)  # (k, D)
        centroids = torch.nn.functional.normalize(sums, dim=1)
    return Clusters(centroids, previous, _own_similarity(x, centroids, previous), rounds)


def _coverage(tags: L.TagSpace, items: np.ndarray, labels: np.ndarray, k: int) -> tuple[list[str | None], np.ndarray]:
    """Per group, the tag carried by the largest share of its items and that share. Ties go
    to the tag with fewer items in the catalogue: at equal share ``sports.tent`` names a
    group better than ``sports``."""
    sizes = np.bincount(labels, minlength=k)
    if tags.n_tags == 0:
        return [None] * k, np.zeros(k, np.float32)
    # An item carries each of its tags once, so summing 1 per (item, tag) counts items.
    share = tags.matrix(labels, items, np.ones(len(items), np.float32), k) / sizes[:, None]  # (k, n_tags)
    catalogue = np.bincount(tags.indices, minlength=tags.n_tags)
    best_tags, coverage = [], share.max(axis=1)
    for g in range(k):
        if coverage[g] == 0:
            best_tags.append(None)
            continue
        tied = np.flatnonzero(share[g] == coverage[g])
        best_tags.append(tags.tags[tied[np.argmin(catalogue[tied])]])
    return best_tags, coverage.astype(np.float32)


def discover(prepared: str, cfg: DiscoverConfig) -> tuple[pa.Table, dict[str, Any]]:
    """Candidate interest groups of a prepared dataset's items (:data:`schemas.DISCOVERED_GROUPS`),
    least covered by an existing tag first, and a report."""
    start = time.time()
    if not io.exists(io.join(prepared, "items")):
        raise io.InputError(f"{prepared} is not a prepared dataset (no items/); run `interest prepare` first")
    vectors, items = prepared_item_vectors(prepared, cfg.embeddings, cfg.encoder)  # (n_items, D)
    tags = L.build(items, taxonomy=cfg.taxonomy, source=cfg.tag_source, separator=cfg.separator)
    rows = np.flatnonzero(np.any(vectors != 0, axis=1))  # all zeros: no stored vector
    if len(rows) < cfg.groups:
        raise io.InputError(f"only {len(rows)} of {len(vectors)} items have a vector; "
                            f"fewer than groups={cfg.groups}")
    clusters = spherical_kmeans(torch.from_numpy(vectors[rows]), cfg.groups, iterations=cfg.iterations,
                                seed=cfg.seed)
    labels, sim = clusters.labels.numpy(), clusters.similarity.numpy()
    best_tags, coverage = _coverage(tags, rows, labels, cfg.groups)

    # Most typical items: within each group, highest cosine to the centroid first.
    order = np.lexsort((-sim, labels))
    bounds = np.searchsorted(labels[order], np.arange(cfg.groups + 1))
    ids = items.column(S.ITEM_ID).to_pylist()
    titles = items.column(S.TITLE).to_pylist() if S.TITLE in items.column_names else [None] * len(ids)
    typical = [rows[order[bounds[g]:bounds[g + 1]][:cfg.titles]] for g in range(cfg.groups)]

    sizes = np.diff(bounds)
    rank = np.lexsort((np.arange(cfg.groups), -sizes, coverage))  # least covered, then largest, first
    table = pa.table({
        "group": pa.array(rank, pa.int32()),
        "items": pa.array(sizes[rank], pa.int32()),
        "best_tag": pa.array([best_tags[g] for g in rank], pa.string()),
        "coverage": pa.array(coverage[rank], pa.float32()),
        "covered": pa.array(coverage[rank] >= cfg.covered),
        "typical_item_ids": [[ids[i] for i in typical[g]] for g in rank],
        "typical_titles": [[titles[i] or ids[i] for i in typical[g]] for g in rank],
    }, schema=S.DISCOVERED_GROUPS)
    report = {"items_clustered": len(rows), "items_without_vectors": len(vectors) - len(rows),
              "groups": cfg.groups, "covered_groups": int((coverage >= cfg.covered).sum()),
              "iterations": clusters.iterations, "seconds": round(time.time() - start, 1)}
    log.info("%d items in %d groups (%d covered by a tag, %d items without vectors) in %.1f s",
             report["items_clustered"], cfg.groups, report["covered_groups"], report["items_without_vectors"],
             report["seconds"])
    return table, report
