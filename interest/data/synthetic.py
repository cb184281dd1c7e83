"""A synthetic e-commerce log with planted, known user interests.

Deterministic per seed and vectorised (10M events in well under a minute), it writes
the contract tables plus ground truth so tests and benchmarks can check that models
recover the planted signal:

- a two-level category taxonomy with English and Chinese names;
- items with titles built from brand, attribute words and category (a share of them in
  Chinese), a price, and Zipf-like popularity within their category;
- users with 1-3 latent interest categories; some users' interests drift: one interest
  is replaced by another at a point in their timeline (``drift_at``);
- optionally (``personas``), correlated interests: each user has a persona (an outdoor
  type, a home cook, a parent, ...: :data:`PERSONAS`, groups of related leaves across top
  levels), and the user's interests lean toward the persona's leaves, as real shoppers'
  do. By default interests are independent, and nothing learned about one category says
  anything about another: zero-shot transfer needs the personas;
- sessions: a session browses one category (an interest, or noise), each viewed item
  may be faved and carted, and a cart may become a purchase (a view -> cart -> buy funnel).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from interest import io
from interest import schemas as S
from interest.config import ConfigError

log = logging.getLogger(__name__)

# (path, English name, Chinese name, brands, English nouns) per leaf, grouped by top level.
TAXONOMY: dict[tuple[str, str, str], list[tuple[str, str, str]]] = {
    ("electronics", "Electronics", "电子产品"): [
        ("smartphone", "Smartphone", "智能手机"), ("laptop", "Laptop", "笔记本电脑"),
        ("headphones", "Headphones", "耳机"), ("camera", "Camera", "相机")],
    ("apparel", "Apparel", "服装"): [
        ("dress", "Dress", "连衣裙"), ("sneakers", "Sneakers", "运动鞋"),
        ("jacket", "Jacket", "夹克"), ("handbag", "Handbag", "手提包")],
    ("home", "Home", "家居"): [
        ("sofa", "Sofa", "沙发"), ("lamp", "Lamp", "台灯"), ("bedding", "Bedding", "床上用品"),
        ("cookware", "Cookware", "炊具")],
    ("beauty", "Beauty", "美妆"): [
        ("lipstick", "Lipstick", "口红"), ("skincare", "Skincare", "护肤品"),
        ("perfume", "Perfume", "香水"), ("shampoo", "Shampoo", "洗发水")],
    ("sports", "Sports", "运动"): [
        ("yoga_mat", "Yoga mat", "瑜伽垫"), ("bicycle", "Bicycle", "自行车"),
        ("tent", "Tent", "帐篷"), ("dumbbell", "Dumbbell", "哑铃")],
    ("books", "Books", "图书"): [
        ("novel", "Novel", "小说"), ("cookbook", "Cookbook", "食谱"),
        ("comic", "Comic", "漫画"), ("textbook", "Textbook", "教材")],
    ("toys", "Toys", "玩具"): [
        ("lego", "Building blocks", "积木"), ("puzzle", "Puzzle", "拼图"),
        ("doll", "Doll", "玩偶"), ("rc_car", "RC car", "遥控车")],
    ("food", "Food", "食品"): [
        ("coffee", "Coffee", "咖啡"), ("tea", "Tea", "茶叶"), ("snacks", "Snacks", "零食"),
        ("chocolate", "Chocolate", "巧克力")],
}
BRANDS = ["Acme", "Nova", "Zenith", "Lumo", "Orbit", "Kite", "Polar", "Maple", "Vertex", "Aria",
          "小米", "华为", "海尔", "李宁", "安踏", "百雀羚"]
ADJECTIVES = ["classic", "premium", "compact", "deluxe", "eco", "smart", "ultra", "soft", "portable", "vintage"]
COLORS = [("black", "黑色"), ("white", "白色"), ("red", "红色"), ("blue", "蓝色"), ("green", "绿色"), ("gold", "金色")]
TOP_PRICE = {"electronics": 300.0, "apparel": 60.0, "home": 120.0, "beauty": 30.0, "sports": 80.0,
             "books": 20.0, "toys": 35.0, "food": 12.0}
START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
# Personas (``SyntheticConfig.personas``): related leaves, across top levels, that one kind
# of shopper buys together. Every leaf is in at least one.
PERSONAS: dict[str, tuple[str, ...]] = {
    "outdoor": ("sports.tent", "sports.bicycle", "apparel.jacket", "apparel.sneakers", "electronics.camera",
                "food.snacks"),
    "fitness": ("sports.yoga_mat", "sports.dumbbell", "apparel.sneakers", "electronics.headphones", "food.tea",
                "beauty.shampoo"),
    "home_cook": ("home.cookware", "books.cookbook", "food.coffee", "food.tea", "food.chocolate", "home.lamp"),
    "parent": ("toys.lego", "toys.puzzle", "toys.doll", "books.comic", "home.bedding", "food.snacks"),
    "tech": ("electronics.smartphone", "electronics.laptop", "electronics.headphones", "toys.rc_car",
             "books.textbook", "electronics.camera"),
    "style": ("apparel.dress", "apparel.handbag", "beauty.lipstick", "beauty.perfume", "beauty.skincare"),
    "homemaker": ("home.sofa", "home.lamp", "home.bedding", "home.cookware", "books.novel"),
    "student": ("books.textbook", "books.novel", "electronics.laptop", "food.coffee", "apparel.sneakers"),
}


def leaf_categories() -> list[tuple[str, str, str]]:
    """(path, English name, Chinese name) of every leaf, in a fixed order."""
    return [(f"{top}.{leaf}", f"{top_en} > {en}", f"{top_zh} > {zh}")
            for (top, top_en, top_zh), leaves in TAXONOMY.items() for leaf, en, zh in leaves]


def taxonomy_table() -> pa.Table:
    rows = []
    for (top, top_en, top_zh), leaves in TAXONOMY.items():
        rows.append((top, top_en, top_zh, None))
        rows.extend((f"{top}.{leaf}", en, zh, top) for leaf, en, zh in leaves)
    return pa.table(list(zip(*rows)), schema=S.TAXONOMY)


@dataclass
class SyntheticConfig:
    """Size and shape of the synthetic log.

    Args:
        users, items, events: sizes; ``events`` is exact.
        seed: everything is a function of the seed.
        days: span of the log from 2024-01-01.
        noise: share of sessions that browse a random category instead of an interest.
        drift: share of users whose interests change during the log.
        personas: chance that a user's first interest is one of their persona's leaves
            (:data:`PERSONAS`; later ones lean there too, drawn without repeats with the
            same odds per leaf), and that a noise session browses one of them; 0, the
            default: independent interests and uniform noise, and the generator's output
            is what it was before personas existed.
        zh_titles: share of items with Chinese titles.
        events_per_file: about this many events per file (bounds the generator's memory,
            and gives readers files to parallelise over).
        format: ``parquet`` or ``csv`` for the events files.
    """

    users: int = 1000
    items: int = 2000
    events: int = 50_000
    seed: int = 0
    days: int = 30
    noise: float = 0.1
    drift: float = 0.3
    personas: float = 0.0
    zh_titles: float = 0.2
    events_per_file: int = 250_000
    format: str = "parquet"

    def __post_init__(self):
        for name in ("users", "items", "events", "days", "events_per_file"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.items < len(leaf_categories()):
            raise ConfigError(f"items must be >= {len(leaf_categories())} (one per leaf category)")
        for name in ("noise", "drift", "zh_titles"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must lie in [0, 1]")
        if not 0 <= self.personas < 1:
            raise ConfigError("personas must lie in [0, 1)")
        if self.format not in ("parquet", "csv"):
            raise ConfigError(f"format must be parquet or csv, got {self.format!r}")


def _ids(prefix: str, idx: np.ndarray, width: int) -> pa.Array:
    text = pc.utf8_lpad(pc.cast(pa.array(idx), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(pa.scalar(prefix), text, "")


class Catalogue:
    """Items and their per-category popularity (the sampling tables of the generator)."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator):
        leaves = leaf_categories()
        n_cat, m = len(leaves), cfg.items
        # Every leaf gets at least one item; the rest follow a mild skew over categories.
        weights = rng.dirichlet(np.full(n_cat, 3.0))
        cat = np.concatenate([np.arange(n_cat), rng.choice(n_cat, size=m - n_cat, p=weights)])
        cat = cat[rng.permutation(m)]
        self.category = cat
        order = np.lexsort((rng.random(m), cat))  # items grouped by category, random rank inside
        self.items_by_cat = order
        counts = np.bincount(cat, minlength=n_cat)
        self.cat_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(m) - np.repeat(self.cat_start, counts)
        p = 1.0 / (rank + 1.0) ** 1.1  # Zipf-like popularity within a category
        cdf = np.zeros(m)
        for c in range(n_cat):
            s, e = self.cat_start[c], self.cat_start[c] + counts[c]
            cdf[s:e] = np.cumsum(p[s:e]) / p[s:e].sum()
        # One searchsorted for all categories: category c's cdf lives in (c, c + 1].
        self.flat_cdf = cdf + np.repeat(np.arange(n_cat), counts)
        self.n_cat = n_cat
        self.ids = _ids("I", np.arange(m), 7)
        top = np.array([leaves[c][0].split(".")[0] for c in range(n_cat)])
        self.price = np.round(np.array([TOP_PRICE[t] for t in top])[cat] * rng.lognormal(0, 0.5, m), 2)
        self.table = self._table(cfg, rng, leaves)

    def _table(self, cfg, rng, leaves) -> pa.Table:
        m = len(self.category)
        brand = rng.integers(0, len(BRANDS), m)
        adj = rng.integers(0, len(ADJECTIVES), m)
        color = rng.integers(0, len(COLORS), m)
        zh = rng.random(m) < cfg.zh_titles
        names = [(en.split(" > ")[1], z.split(" > ")[1]) for _, en, z in leaves]
        titles = [
            f"{BRANDS[b]} {COLORS[c][1]}{names[k][1]}" if z else f"{BRANDS[b]} {ADJECTIVES[a]} {COLORS[c][0]} {names[k][0]}"
            for b, a, c, k, z in zip(brand, adj, color, self.category, zh)
        ]
        desc = [f"{ADJECTIVES[a]} {names[k][0].lower()} by {BRANDS[b]}" for b, a, k in zip(brand, adj, self.category)]
        return pa.table({
            S.ITEM_ID: self.ids, S.TITLE: titles, S.CATEGORY: [leaves[k][0] for k in self.category],
            S.BRAND: [BRANDS[b] for b in brand], S.PRICE: self.price, S.DESCRIPTION: desc,
        }, schema=S.ITEMS)

    def sample(self, cat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pos = np.searchsorted(self.flat_cdf, cat + rng.random(len(cat)) * (1 - 1e-12), side="left")
        return self.items_by_cat[np.minimum(pos, len(self.flat_cdf) - 1)]


class Users:
    """Latent interests (early and late), drift points and event counts of every user."""

    def __init__(self, cfg: SyntheticConfig, n_cat: int, rng: np.random.Generator):
        n = cfg.users
        self.k = rng.choice([1, 2, 3], size=n, p=[0.3, 0.45, 0.25])
        # Interests without repeats: the first k of a random permutation of categories.
        draw = rng.random((n, n_cat))
        self.persona = self.member = None  # each user's persona; which leaves each persona holds
        if cfg.personas:
            # A weighted permutation (Efraimidis-Spirakis: sort by u ** (1 / weight)), the
            # persona's m leaves weighted so that the first pick is among them with
            # probability p: m w / (m w + n_cat - m) = p.
            leaves = [c for c, _, _ in leaf_categories()]
            self.persona = rng.integers(0, len(PERSONAS), n)
            self.member = member = np.array([[leaf in group for leaf in leaves]
                                             for group in PERSONAS.values()])  # (P, n_cat)
            m = member.sum(1, keepdims=True)
            weight = np.where(member, cfg.personas * (n_cat - m) / (m * (1 - cfg.personas)), 1.0)
            draw = -draw ** (1.0 / weight[self.persona])
        perm = np.argsort(draw, axis=1)
        self.early = perm[:, :3].copy()
        self.late = self.early.copy()
        self.drifts = rng.random(n) < cfg.drift
        slot = rng.integers(0, self.k)
        self.late[self.drifts, slot[self.drifts]] = perm[self.drifts, 3]
        self.weights = rng.dirichlet(np.ones(3), size=n) * (np.arange(3) < self.k[:, None])
        self.weights /= self.weights.sum(1, keepdims=True)
        self.drift_frac = np.where(self.drifts, rng.uniform(0.3, 0.7, n), 2.0)
        activity = rng.lognormal(0, 1.0, n)
        self.n_events = rng.multinomial(cfg.events, activity / activity.sum())
        self.ids = _ids("U", np.arange(n), 7)

    def ground_truth(self, cfg: SyntheticConfig) -> pa.Table:
        leaves = [c for c, _, _ in leaf_categories()]
        has = np.flatnonzero(self.n_events > 0)
        span = cfg.days * 86400
        drift_at = [START + dt.timedelta(seconds=float(min(self.drift_frac[u], 1.0) * span)) for u in has]
        return pa.table({
            S.USER_ID: self.ids.take(pa.array(has)),
            "interests_early": [[leaves[c] for c in self.early[u, : self.k[u]]] for u in has],
            "interests_late": [[leaves[c] for c in self.late[u, : self.k[u]]] for u in has],
            "drift_at": drift_at,
            "persona": [None] * len(has) if self.persona is None else [list(PERSONAS)[p] for p in self.persona[has]],
        }, schema=S.GROUND_TRUTH)


def events_for(users: np.ndarray, u: Users, cat: Catalogue, cfg: SyntheticConfig,
               rng: np.random.Generator, block: int = 0) -> pa.Table:
    """Events of a block of users, sorted by user then time."""
    n_u = u.n_events[users]
    users, n_u = users[n_u > 0], n_u[n_u > 0]
    n_slots = int(n_u.sum())
    owner = np.repeat(np.arange(len(users)), n_u)  # local user of each slot
    # Sessions: a user's first slot opens one; later slots open one with p=0.25.
    first = np.zeros(n_slots, bool)
    first[np.concatenate([[0], np.cumsum(n_u)[:-1]])] = True
    opens = first | (rng.random(n_slots) < 0.25)
    session = np.cumsum(opens) - 1
    s_owner = owner[opens]
    n_sess = len(s_owner)
    # Session start times: sorted uniform draws per user over the log's span.
    t = rng.random(n_sess)
    t = t[np.lexsort((t, s_owner))]
    gu = users[s_owner]
    late = t > u.drift_frac[gu]
    interests = np.where(late[:, None], u.late[gu], u.early[gu])
    pick = (rng.random(n_sess)[:, None] > np.cumsum(u.weights[gu], 1)).sum(1)
    s_cat = interests[np.arange(n_sess), np.minimum(pick, 2)]
    noisy = rng.random(n_sess) < cfg.noise
    s_cat[noisy] = rng.integers(0, cat.n_cat, noisy.sum())
    if u.persona is not None:
        # Exploring leans toward the persona too: a camper browses jackets before buying one.
        lean = np.flatnonzero(noisy & (rng.random(n_sess) < cfg.personas))
        member = u.member[u.persona[gu[lean]]]  # (n, n_cat)
        s_cat[lean] = (rng.random(len(lean))[:, None] * member.sum(1, keepdims=True) >= np.cumsum(member, 1)).sum(1)
    item = cat.sample(s_cat[session], rng)
    # The funnel: every slot is a view (or a click), then maybe fav, cart, and buy after cart.
    fav = rng.random(n_slots) < 0.06
    cart = rng.random(n_slots) < 0.12
    buy = cart & (rng.random(n_slots) < 0.4)
    present = np.stack([np.ones(n_slots, bool), fav, cart, buy], 1)
    base = np.where(rng.random(n_slots) < 0.2, S.BEHAVIOR_CODE["click"], S.BEHAVIOR_CODE["view"])
    codes = np.stack([base, np.full(n_slots, 2), np.full(n_slots, 3), np.full(n_slots, 4)], 1)
    flat = present.ravel()
    behavior = codes.ravel()[flat]
    sub = np.tile(np.arange(4), n_slots)[flat]
    slot = np.repeat(np.arange(n_slots), present.sum(1))
    # Keep exactly n_u events per user (the funnel adds events beyond the slots).
    ev_owner = owner[slot]
    starts = np.concatenate([[0], np.cumsum(np.bincount(ev_owner, minlength=len(users)))[:-1]])
    keep = (np.arange(len(slot)) - starts[ev_owner]) < n_u[ev_owner]
    slot, behavior, sub = slot[keep], behavior[keep], sub[keep]
    # Time: session start + ~45 s per earlier slot of the session + 5 s per funnel step.
    gap = rng.exponential(45.0, n_slots)
    csum = np.cumsum(gap)
    in_session = csum - csum[np.flatnonzero(opens)][session]
    span_us = cfg.days * 86400 * 1_000_000
    start_us = int(START.timestamp() * 1_000_000)
    ts = start_us + (t[session[slot]] * span_us).astype(np.int64) + ((in_session[slot] + 5.0 * sub) * 1e6).astype(np.int64)
    sess_ids = pc.binary_join_element_wise(
        pa.scalar(f"s{block}-"), pc.cast(pa.array(session[slot]), pa.string()), "")
    return pa.table({
        S.USER_ID: u.ids.take(pa.array(users[owner[slot]])),
        S.ITEM_ID: cat.ids.take(pa.array(item[slot])),
        S.BEHAVIOR: pa.array(np.array(S.BEHAVIORS)[behavior]),
        S.TS: pa.array(ts, pa.int64()).cast(S.TS_TYPE),
        S.SESSION_ID: sess_ids,
        S.PRICE: cat.price[item[slot]],
    }, schema=S.EVENTS)


def generate(cfg: SyntheticConfig, out: str) -> dict:
    """Write ``events/``, ``items.parquet``, ``ground_truth.parquet`` and ``taxonomy.parquet``."""
    root = np.random.SeedSequence(cfg.seed)
    rng_items, rng_users = (np.random.default_rng(s) for s in root.spawn(2))
    cat = Catalogue(cfg, rng_items)
    users = Users(cfg, cat.n_cat, rng_users)
    io.write_parquet(cat.table, io.join(out, "items.parquet"))
    io.write_parquet(users.ground_truth(cfg), io.join(out, "ground_truth.parquet"))
    io.write_parquet(taxonomy_table(), io.join(out, "taxonomy.parquet"))
    total, n_files = 0, 0
    users_per_file = max(1, round(cfg.users * cfg.events_per_file / cfg.events))
    blocks = range(0, cfg.users, users_per_file)
    for i, lo in enumerate(blocks):
        # Each file has its own stream, so files can be generated in any order.
        rng = np.random.default_rng([cfg.seed, i])
        table = events_for(np.arange(lo, min(lo + users_per_file, cfg.users)), users, cat, cfg, rng, i)
        if table.num_rows == 0:
            continue
        path = io.join(out, "events", f"part-{i:05d}.{'csv' if cfg.format == 'csv' else 'parquet'}")
        if cfg.format == "csv":
            fs, inner = io.filesystem(path)
            fs.create_dir(os.path.dirname(inner), recursive=True)
            with fs.open_output_stream(inner) as f:
                pacsv.write_csv(table, f)
        else:
            io.write_parquet(table, path)
        total += table.num_rows
        n_files += 1
        log.info("generate: %d/%d event files, %d events", i + 1, len(blocks), total)
    return {"events": total, "users": int((users.n_events > 0).sum()), "items": cfg.items, "files": n_files,
            "out": out}
