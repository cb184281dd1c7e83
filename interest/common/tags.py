"""The tag vocabulary, which items carry which tags, and users' tag labels (tasks
``tags`` and ``zeroshot``).

Tags come from a taxonomy table (:data:`interest.schemas.TAGS`: a tag, its description
and the item categories it covers) or are derived from the items' categories: every
level of a path (``levels``: ``a``, ``a.b``, ``a.b.c``), every token (``tokens``:
genres), the category itself (``whole``), or the category and every other category of
the catalogue that starts it, word for word (``prefixes``: paths whose separators were
lost, as Amazon's "Industrial & Scientific Lab Supplies Beakers", whose levels are the
shorter paths other items carry).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from interest import io
from interest import schemas as S
from interest.config import ConfigError
from interest.common.events import ragged

log = logging.getLogger(__name__)
TAG_SOURCES = ("levels", "tokens", "whole", "prefixes")
# Label weight of each behaviour (schemas.BEHAVIORS order: view, click, fav, cart, buy).
BEHAVIOR_WEIGHTS = (0.2, 0.4, 0.6, 0.8, 1.0)


def check_settings(tag_source: str, behavior_weights: list[float], valid_share: float) -> None:
    """The settings tasks ``tags`` and ``zeroshot`` share, checked as their configs are built."""
    if tag_source not in TAG_SOURCES:
        raise ConfigError(f"tag_source must be one of {', '.join(TAG_SOURCES)}, got {tag_source!r}")
    if len(behavior_weights) != len(S.BEHAVIORS):
        raise ConfigError(f"behavior_weights needs {len(S.BEHAVIORS)} values ({', '.join(S.BEHAVIORS)})")
    if not 0 < valid_share < 1:
        raise ConfigError("valid_share must be between 0 and 1")


@dataclass
class TagSpace:
    """Tags and the CSR map item_idx -> tag indices (``indptr``, ``indices``)."""

    tags: list[str]
    descriptions: list[str]
    indptr: np.ndarray
    indices: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)
    # Items that carried an excluded tag (``build``'s ``exclude``): a recommendation of
    # one would reveal the interest the tag names.
    withheld_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def n_tags(self) -> int:
        return len(self.tags)

    def of(self, item: int) -> np.ndarray:
        return self.indices[self.indptr[item]:self.indptr[item + 1]]

    def matrix(self, rows: np.ndarray, items: np.ndarray, weights: np.ndarray, n_rows: int,
               reduce: str = "sum") -> np.ndarray:
        """(n_rows, n_tags): for each event (row, item, weight), the weight added (``sum``)
        or maxed (``max``) into each tag of the item."""
        event, at = _expand(self.indptr, items)
        out = np.zeros((n_rows, self.n_tags), np.float32)
        w = np.asarray(weights, np.float32)[event]
        (np.maximum if reduce == "max" else np.add).at(out, (np.asarray(rows, np.int64)[event], self.indices[at]), w)
        return out

    def pairs(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Keys ``a * n_tags + b`` for every tag ``a`` of ``before[i]`` and ``b`` of ``after[i]``."""
        event, at = _expand(self.indptr, before)
        entry, at_after = _expand(self.indptr, np.asarray(after, np.int64)[event])
        return self.indices[at][entry] * self.n_tags + self.indices[at_after]


@dataclass
class TagTransitions:
    """P(tag b among the next event's tags | tag a among the event's tags), counted over
    consecutive events: a sparse (n_tags, n_tags) matrix as CSR rows, each summing to 1."""

    n_tags: int
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    @classmethod
    def count(cls, tags: TagSpace, steps: Iterable[tuple[np.ndarray, np.ndarray]]) -> "TagTransitions":
        """From (before, after) item arrays; ``before`` -1 (no event) is skipped. Only the
        pairs that occur are kept, so memory follows them, not n_tags squared."""
        keys, counts = np.zeros(0, np.int64), np.zeros(0)
        for before, after in steps:
            keep = before >= 0
            new, c = np.unique(tags.pairs(before[keep], after[keep]), return_counts=True)
            keys, inverse = np.unique(np.concatenate([keys, new]), return_inverse=True)
            counts = np.bincount(inverse, weights=np.concatenate([counts, c]), minlength=len(keys))
        a, b = np.divmod(keys, tags.n_tags)  # sorted by a: CSR rows in order
        totals = np.bincount(a, weights=counts, minlength=tags.n_tags)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(a, minlength=tags.n_tags))])
        return cls(tags.n_tags, indptr, b, (counts / np.maximum(totals[a], 1)).astype(np.float32))

    def after(self, tags: TagSpace, items: np.ndarray) -> np.ndarray:
        """(len(items), n_tags): the next event's tag distribution after an event on each
        item, averaged over the item's tags; zeros for -1 (no event) and untagged items."""
        items = np.asarray(items, np.int64)
        out = np.zeros((len(items), self.n_tags), np.float32)
        rows = np.flatnonzero(items >= 0)
        event, at = _expand(tags.indptr, items[rows])
        degree = np.bincount(event, minlength=len(rows)).astype(np.float32)
        entry, at_next = _expand(self.indptr, tags.indices[at])
        np.add.at(out, (rows[event[entry]], self.indices[at_next]), self.data[at_next] / degree[event[entry]])
        return out


def _expand(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries of CSR ``rows``: (which of ``rows`` each belongs to, its position in
    the CSR arrays)."""
    rows = np.asarray(rows, np.int64)
    return ragged(indptr[rows], indptr[rows + 1] - indptr[rows])


def derive_tags(category: str | None, source: str, separator: str) -> list[str]:
    if not category:
        return []
    if source == "whole" or not separator:
        return [category]
    parts = [p for p in category.split(separator) if p]
    if source == "tokens":
        return list(dict.fromkeys(parts))
    return [separator.join(parts[:k]) for k in range(1, len(parts) + 1)]


def excluded(tag: str, exclude: Iterable[str], separator: str = ".") -> bool:
    """Whether ``tag`` is one of ``exclude`` or lies under one of them (a tag-path prefix:
    ``health`` excludes ``health.vitamins``)."""
    return any(tag == p or tag.startswith(p + (separator or " ")) for p in exclude)


def build(items: pa.Table, *, taxonomy: str | None = None, source: str = "levels", separator: str = ".",
          exclude: Iterable[str] = ()) -> TagSpace:
    """Tags of the prepared ``items`` (item_idx, category), from ``taxonomy`` when given.
    Tags ``exclude`` names (:func:`excluded`: sensitive interests) are left out of the
    vocabulary, so they are never a label nor a prediction; the items that carried one
    are the space's ``withheld_items``."""
    if source not in TAG_SOURCES:
        raise ConfigError(f"tag_source must be one of {', '.join(TAG_SOURCES)}, got {source!r}")
    items = items.sort_by(S.ITEM_IDX)
    categories = items.column(S.CATEGORY).to_pylist() if S.CATEGORY in items.column_names else [None] * len(items)
    per_item: list[list[int]] = []
    if taxonomy:
        table = S.conform(io.read_parquet(taxonomy), S.TAGS, what=f"taxonomy {taxonomy}")
        tags = table.column(S.TAG).to_pylist()
        descriptions = [d or t for t, d in zip(tags, table.column(S.DESCRIPTION).to_pylist())]
        covers: dict[str, list[int]] = {}
        for t, cats in enumerate(table.column("categories").to_pylist()):
            for c in cats:
                covers.setdefault(c, []).append(t)
        for cat in categories:
            # An item carries a tag that covers its category or any ancestor of it.
            found = [t for prefix in derive_tags(cat, "levels", separator) for t in covers.get(prefix, [])]
            per_item.append(sorted(set(found)))
    elif source == "prefixes":
        known = set(filter(None, categories))
        names = {}
        for cat in categories:
            words = (cat or "").split()
            found = [p for p in (" ".join(words[:k]) for k in range(1, len(words) + 1)) if p in known]
            per_item.append([names.setdefault(t, len(names)) for t in found])
        tags = list(names)
        descriptions = list(tags)
    else:
        names: dict[str, int] = {}
        for cat in categories:
            per_item.append([names.setdefault(t, len(names)) for t in derive_tags(cat, source, separator)])
        tags = list(names)
        descriptions = list(tags)
    exclude = list(exclude)
    withheld = np.zeros(0, np.int64)
    if exclude:
        drop = np.array([excluded(t, exclude, separator) for t in tags], bool)
        withheld = items.column(S.ITEM_IDX).to_numpy()[[bool(drop[p].any()) if p else False for p in per_item]]
        new = np.cumsum(~drop) - 1
        per_item = [[int(new[t]) for t in p if not drop[t]] for p in per_item]
        tags = [t for t, d in zip(tags, drop) if not d]
        descriptions = [t for t, d in zip(descriptions, drop) if not d]
    lengths = np.array([len(p) for p in per_item], np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.array([t for p in per_item for t in p], np.int64)
    used = np.bincount(indices, minlength=len(tags))
    report = {"tags": len(tags), "tags_without_items": [t for t, n in zip(tags, used) if n == 0],
              "items_without_tags": int((lengths == 0).sum()), "items": len(per_item)}
    if report["tags_without_items"]:
        log.warning("%d of %d tags cover no item category: %s", len(report["tags_without_items"]), len(tags),
                    ", ".join(report["tags_without_items"][:10]))
    if exclude:
        report["excluded_tags"] = int(len(drop) - len(tags))
        report["withheld_items"] = int(len(withheld))
    return TagSpace(tags, descriptions, indptr, indices, report, np.asarray(withheld, np.int64))


def read_user_labels(path: str, tags: TagSpace) -> dict[str, list[int]]:
    """User-supplied (user_id, tag) labels; tags outside the vocabulary are an error."""
    table = S.conform(io.read_parquet(path), S.USER_TAGS, what=f"labels {path}")
    index = {t: i for i, t in enumerate(tags.tags)}
    unknown = sorted(set(table.column(S.TAG).to_pylist()) - index.keys())
    if unknown:
        raise S.SchemaError(f"labels {path}: {len(unknown)} tags not in the vocabulary, e.g. {unknown[:5]}")
    out: dict[str, list[int]] = {}
    for u, t in zip(table.column(S.USER_ID).to_pylist(), table.column(S.TAG).to_pylist()):
        out.setdefault(u, []).append(index[t])
    return out
