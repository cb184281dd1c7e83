"""Task ``zeroshot``: every user's interest in tags that training never saw.

A user encoder (behaviour over item text vectors) and a tag encoder (a tag's text through
a learned projection, the same one the items' texts go through: :mod:`.model`) are
trained contrastively on the tags that exist, CLIP-style: each user against the tags of
their later window (the other tags as negatives), each tag against the users of the
batch (the users without it as negatives), and each user against an item of their window
(the batch's other items as negatives). A new tag given as text is then scored by one
product; given as example items, by the mean of their projected text vectors; as example
users, by the mean of their user vectors (prototypes); given several ways, by the mean of
all of them, the text counting as ``text_weight`` examples.

Protocol: as for ``tags`` (future window). ``holdout`` tags are removed from everything
the model sees: the tag vocabulary, and every event on their items, in training and in
histories at scoring; ``interest evaluate`` then judges them (or ``judge``) by ranking the
users who never touched them before the test window.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch
import torch.nn as nn

from interest import io
from interest import schemas as S
from interest.common.space import Choice, Float, Space
from interest.common import tags as L
from interest.common.events import future_windows, windows
from interest.config import ConfigError
from interest.evaluate.metrics import auc
from interest.tasks.base import Meta, Task, TrainConfig, load_meta, uniform_hash, unwrap
from interest.tasks.zeroshot.model import ZeroShotModel, ZeroShotModelConfig
from interest.tasks.zeroshot.newtags import NewTag
from interest.text import encoder as E
from interest.text.embed import prepared_item_vectors

log = logging.getLogger(__name__)
EVIDENCE = 3


@dataclass
class ZeroShotConfig:
    """Args:
        model: the user encoder's facets, dropout and history length.
        train: optimisation; ``train.metric`` is ``auc``: per tag, how well the held-out
            users who take the tag up in their later window, never having touched it
            before, are ranked above those who do not (the zero-shot question, asked of
            the training tags), averaged over tags. Batches of 32 users and patience 5:
            on synthetic data with personas, batches of 128 gave 20 steps an epoch and
            stopped before learning (held-out AUC .588 vs .624 at 32, measured with an
            earlier version of the model), and the validation AUC moves by a few
            hundredths from epoch to epoch.
        embeddings: item vector store of ``interest embed-items`` (required).
        encoder: the encoder of those vectors, which also reads the tags' text.
        taxonomy, tag_source, separator, exclude_tags: the tags, as in task ``tags``;
            a new tag under an excluded prefix is not scored.
        holdout: tags removed from everything the model sees (vocabulary and every event
            on their items), to measure zero-shot quality on them.
        judge: tags ``interest evaluate`` judges (default: ``holdout``); a model trained
            with every tag and judged on a fold's tags is the protocol's ceiling.
        behavior_weights: label weight of view, click, fav, cart, buy.
        valid_share: share of users held out of training for validation (0.2: a fifth
            of the users, since a per-tag AUC over few users is noisy; .640 vs .624
            held-out AUC on one fold of synthetic data with personas, patience 5, the
            earlier model).
        text_max_length: tokens of a tag's text.
        text_weight: how many examples a tag's text counts as when examples are given too.
        item_loss: weight of the item-level contrastive term (each user against an item
            of their window, the batch's other items as negatives), which trains the
            text projection on thousands of item texts, not a few hundred tag names (on
            synthetic data it lifted 20-example-item prototypes from .612 to .643 AUC,
            the earlier model); 0: tags alone.
    """

    PATHS: ClassVar[tuple[str, ...]] = ("taxonomy", "encoder", "embeddings")
    model: ZeroShotModelConfig = field(default_factory=ZeroShotModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(metric="auc", lr=3e-3, epochs=20, batch_size=32,
                                                                            patience=5))
    embeddings: str | None = None
    encoder: str | None = None
    taxonomy: str | None = None
    tag_source: str = "levels"
    separator: str = "."
    exclude_tags: list[str] = field(default_factory=list)
    holdout: list[str] = field(default_factory=list)
    judge: list[str] = field(default_factory=list)
    behavior_weights: list[float] = field(default_factory=lambda: list(L.BEHAVIOR_WEIGHTS))
    valid_share: float = 0.2
    text_max_length: int = 64
    text_weight: float = 2.0
    item_loss: float = 1.0

    def __post_init__(self):
        if not self.embeddings:
            raise ConfigError("task zeroshot needs embeddings=STORE (run `interest embed-items` first)")
        L.check_settings(self.tag_source, self.behavior_weights, self.valid_share)
        if self.text_weight < 0:
            raise ConfigError("text_weight must be >= 0")


def tag_text(tag: str, description: str | None, separator: str) -> str:
    """What the encoder reads for a tag: its name, path levels as "a > b", and its
    description when it says more than the name."""
    name = " > ".join(p for p in tag.split(separator) if p) if separator else tag
    name = name.replace("_", " ")
    return f"{name}: {description}" if description and description not in (tag, name) else name


def encode_texts(texts: list[str], encoder: str | None, max_length: int) -> torch.Tensor:
    """(len(texts), H) unit vectors of ``texts`` under ``encoder``."""
    _, tokenizer, model = E.load(encoder)
    return torch.as_tensor(E.encode(texts, tokenizer, model, max_length=max_length))


def visible(batch: dict[str, np.ndarray], blocked: np.ndarray) -> dict[str, np.ndarray]:
    """``batch`` of prepared sequences without the events on ``blocked`` items, split counts
    recomputed: what a model that never saw those items reads."""
    if not blocked.any():
        return batch
    out = {k: v for k, v in batch.items()}
    lists = {c: [] for c in ("items", "behaviors", "ts")}
    counts = {c: np.zeros(len(batch[S.USER_IDX]), np.int32) for c in ("n_train", "n_valid", "n_test")}
    for r in range(len(batch[S.USER_IDX])):
        items = np.asarray(batch["items"][r])
        keep = ~blocked[items]
        bounds = np.cumsum([0, batch["n_train"][r], batch["n_valid"][r], batch["n_test"][r]])
        for c, lo, hi in zip(counts, bounds[:-1], bounds[1:]):
            counts[c][r] = keep[lo:hi].sum()
        for c in lists:
            lists[c].append(np.asarray(batch[c][r])[keep])
    for c, values in lists.items():
        column = np.empty(len(values), object)
        column[:] = values
        out[c] = column
    return {**out, **counts}


@dataclass
class Examples:
    rows: np.ndarray  # rows of the batch
    items: np.ndarray  # (B, T) item_idx + 1, left-padded
    behaviors: np.ndarray  # (B, T) behaviour + 1
    target: np.ndarray  # (B, n_tags) label weights of the later window
    before: np.ndarray | None  # (B, n_tags) the tag is among the history's (valid, test only)
    next_item: np.ndarray  # (B,) a random item of the later window (-1: none)


# What `interest tune` searches by default (a YAML file narrows or replaces it).
SEARCH_SPACE: Space = {
    "train.lr": Float(1e-4, 1e-2, log=True),
    "train.batch_size": Choice((32, 64, 128)),
    "model.facets": Choice((1, 2, 4, 8)),
    "model.dropout": Float(0.0, 0.5),
    "model.anchor": Float(0.0, 0.9),
    "model.max_len": Choice((20, 50, 100)),
}


class ZeroShotTask(Task):
    name = "zeroshot"
    config_cls = ZeroShotConfig
    search_space = SEARCH_SPACE
    evaluation = "zeroshot"
    output = "user_zeroshot"
    scores_new_tags = True

    def load_meta(self, cfg: ZeroShotConfig, prepared: str) -> Meta:
        meta = load_meta(prepared)
        vectors, items = prepared_item_vectors(prepared, cfg.embeddings, cfg.encoder)
        tags = L.build(items, taxonomy=cfg.taxonomy, source=cfg.tag_source, separator=cfg.separator,
                       exclude=cfg.exclude_tags)
        index = {t: i for i, t in enumerate(tags.tags)}
        unknown = sorted((set(cfg.holdout) | set(cfg.judge)) - index.keys())
        if unknown:
            raise ConfigError(f"holdout/judge tags not in {prepared}'s tags: {', '.join(unknown[:10])}")
        held = np.array([index[t] for t in cfg.holdout], np.int64)
        owner = np.repeat(np.arange(meta.n_items), np.diff(tags.indptr))  # the item of each (item, tag) entry
        blocked = np.zeros(meta.n_items, bool)
        blocked[owner[np.isin(tags.indices, held)]] = True
        covered = np.bincount(tags.indices[~blocked[owner]], minlength=tags.n_tags) > 0
        trained = np.flatnonzero(covered & ~np.isin(np.arange(tags.n_tags), held))
        if len(trained) < 2:
            raise ConfigError(f"{len(trained)} tag(s) left to train on in {prepared} (no categories? give taxonomy=PATH)")
        texts = [tag_text(t, d, cfg.separator) for t, d in zip(tags.tags, tags.descriptions)]
        meta.extra.update(vectors=torch.as_tensor(vectors), tags=tags, blocked=blocked, trained=trained,
                          tag_vectors=encode_texts(texts, cfg.encoder, cfg.text_max_length),
                          item_ids=items.column(S.ITEM_ID).to_pylist(),
                          categories=_column(items, S.CATEGORY), titles=_column(items, S.TITLE))
        log.debug("zeroshot: %d tags to train on, %d held out (%d items' events hidden)", len(trained), len(held),
                  blocked.sum())
        return meta

    def build_model(self, cfg: ZeroShotConfig, meta: Meta) -> nn.Module:
        return ZeroShotModel(meta.extra["vectors"], cfg.model)

    def step_mb(self, cfg: ZeroShotConfig, meta: Meta) -> tuple[float, str]:
        """A training user is up to two examples (its later window and a random cut of its
        own history), each ``model.max_len`` events of (H,) text vectors through the metric,
        its normalisation, dropout and the facets' pooling (about six (T, H) tensors kept
        for the backward pass), and a row of scores against every training tag and the
        batch's items."""
        t, h, n = cfg.model.max_len, meta.extra["vectors"].shape[1], len(meta.extra["trained"])
        return 2 * 4 * (6 * t * h + 3 * n + cfg.model.facets * (t + h)) / 2 ** 20, \
            f"model.max_len={t} events of {h}-dim item vectors, {n} tags"

    def judged(self, cfg: ZeroShotConfig, meta: Meta) -> np.ndarray:
        index = {t: i for i, t in enumerate(meta.extra["tags"].tags)}
        return np.array([index[t] for t in (cfg.judge or cfg.holdout)], np.int64)

    def examples(self, batch: dict[str, np.ndarray], cfg: ZeroShotConfig, meta: Meta, phase: str) -> Examples | None:
        """Users of ``batch`` in ``phase`` (train, valid, test, score) with their history and
        the tags of their later window (:func:`interest.common.events.future_windows`, as
        for ``tags``); histories never hold ``holdout`` items."""
        tags: L.TagSpace = meta.extra["tags"]
        batch = visible(batch, meta.extra["blocked"])
        if phase == "score":
            ends = sum(batch[c].astype(np.int64) for c in ("n_train", "n_valid", "n_test"))
            rows, window_ends = np.arange(len(ends)), ends
        else:  # validation and test rank users with no history too, as new tags will
            rows, ends, window_ends = future_windows(batch, phase, uniform_hash(batch[S.USER_IDX]) < cfg.valid_share,
                                                     require_history=phase == "train")
        if not len(rows):
            return None
        sub = {k: v[rows] for k, v in batch.items()}
        items, behaviors, _ = windows(sub, ends, min(cfg.model.max_len, max(int(ends.max()), 1)))
        weights = np.asarray(cfg.behavior_weights, np.float32)

        def tag_matrix(lo, hi, reduce):
            """(users, n_tags): behaviour weights of the tags of events [lo, hi) of each user."""
            ev_items, ev_behaviors = ([np.asarray(sub[c][i][lo[i]:hi[i]], np.int64) for i in range(len(rows))]
                                      for c in ("items", "behaviors"))
            return tags.matrix(np.repeat(np.arange(len(rows)), hi - lo), np.concatenate(ev_items),
                               weights[np.concatenate(ev_behaviors)], len(rows), reduce=reduce)

        target = tag_matrix(ends, window_ends, "max") if phase != "score" else np.zeros((len(rows), 0), np.float32)
        # Only validation asks what the history already held; training and scoring would
        # spend a pass over every history event on it.
        before = tag_matrix(np.zeros(len(rows), np.int64), ends, "max") > 0 if phase in ("valid", "test") else None
        at = ends + (np.random.random(len(rows)) * (window_ends - ends)).astype(np.int64)
        next_item = np.array([sub["items"][i][a] if a < e else -1 for i, (a, e) in enumerate(zip(at, window_ends))],
                             np.int64)
        return Examples(rows, items, behaviors, target, before, next_item)

    @staticmethod
    def _users(model, ex: Examples, device) -> tuple[torch.Tensor, torch.Tensor]:
        return unwrap(model).encode_users(torch.as_tensor(ex.items, device=device),
                                          torch.as_tensor(ex.behaviors, device=device))

    def loss(self, model, batch, cfg: ZeroShotConfig, meta: Meta, device):
        ex = self.examples(batch, cfg, meta, "train")
        trained = meta.extra["trained"]
        if ex is not None:
            keep = ex.target[:, trained].max(1) > 0  # windows without a training tag teach nothing
            ex = Examples(ex.rows[keep], ex.items[keep], ex.behaviors[keep], ex.target[keep], None, ex.next_item[keep])
        if ex is None or len(ex.rows) < 2:
            return None, {}
        core = unwrap(model)
        users, bias = model(torch.as_tensor(ex.items, device=device), torch.as_tensor(ex.behaviors, device=device))
        tags = core.encode_text(meta.extra["tag_vectors"][trained].to(device))
        logits = core.logits(users, bias, tags)  # (B, N)
        y = torch.as_tensor(ex.target[:, trained], device=device)
        user_loss, tag_loss = symmetric_losses(logits, y)
        figures = {"loss_users": user_loss.item(), "loss_tags": tag_loss.item(), "examples": len(ex.rows)}
        loss = (user_loss + tag_loss) / 2
        if cfg.item_loss:
            # Items as tags of one item each: a user against a random item of their window,
            # the batch's other items as negatives. Thousands of item texts, not a few
            # hundred tag names, teach the text projection: what example items and new
            # tag texts go through.
            nxt = torch.as_tensor(ex.next_item, device=device)
            items = core.encode_text(core.item_vectors[nxt + 1])  # row 0 (padding) for -1, masked below
            same = ((nxt[:, None] == nxt[None, :]) & (nxt[:, None] >= 0)).float()
            item_users, item_items = symmetric_losses(core.logits(users, bias, items), same)
            loss = loss + cfg.item_loss * (item_users + item_items) / 2
            figures["loss_items"] = (item_users + item_items).item() / 2
        return loss, figures

    def collect(self, model, batches: Iterable[dict[str, np.ndarray]], cfg: ZeroShotConfig, meta: Meta, device,
                split: str, tags: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, took up, eligible), each (users, len(tags)), of the users with a
        ``split`` window: eligible where the user had not touched the tag before it."""
        scores, positive, eligible = [], [], []
        core = unwrap(model)
        encoded = core.encode_text(meta.extra["tag_vectors"][tags].to(device))
        for batch in batches:
            ex = self.examples(batch, cfg, meta, split)
            if ex is None:
                continue
            users, bias = self._users(model, ex, device)
            scores.append(core.logits(users, bias, encoded).cpu().numpy())
            positive.append(ex.target[:, tags] > 0)
            eligible.append(~ex.before[:, tags])
        if not scores:
            return (np.zeros((0, len(tags))),) * 3
        return np.concatenate(scores), np.concatenate(positive), np.concatenate(eligible)

    @torch.no_grad()
    def validate(self, model, batches, cfg: ZeroShotConfig, meta: Meta, device, split: str = "valid"):
        trained = meta.extra["trained"]
        scores, positive, eligible = self.collect(model, batches, cfg, meta, device, split, trained)
        # Summed per tag over this worker's users: workers' AUCs are averaged, each over
        # about the same number of users (the shards are even).
        aucs = [a for j in range(len(trained))
                if (a := auc(scores[eligible[:, j], j], positive[eligible[:, j], j])) is not None]
        return {"auc": float(np.sum(aucs)), "tags": len(aucs), "users": len(scores)}

    def metrics_from_sums(self, sums: dict[str, float]) -> dict[str, float]:
        # NaN, not 0, where no tag was measurable: "nothing measured" is no score at all.
        return {"auc": sums["auc"] / sums["tags"] if sums["tags"] else math.nan, "tags": sums["tags"],
                "users": sums["users"]}

    @torch.no_grad()
    def test_users(self, model, batch: dict[str, np.ndarray], cfg: ZeroShotConfig, meta: Meta, device
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]:
        """(user vectors, biases, the visible batch) of every user of ``batch``, read from
        what they did before the test split, ``holdout`` items hidden."""
        vis = visible(batch, meta.extra["blocked"])
        ends = vis["n_train"].astype(np.int64) + vis["n_valid"]
        items, behaviors, _ = windows(vis, ends, min(cfg.model.max_len, max(int(ends.max()), 1)))
        users, bias = unwrap(model).encode_users(torch.as_tensor(items, device=device),
                                                 torch.as_tensor(behaviors, device=device))
        return users, bias, vis

    # --- new tags: vectors from text, example items, example users -------------------------

    @torch.no_grad()
    def new_tag_vectors(self, model, cfg: ZeroShotConfig, meta: Meta, prepared: str,
                        new: list[NewTag]) -> np.ndarray:
        """(len(new), H) unit vectors of new tags (:func:`prototype`): from the tag's text,
        its example items' text vectors and its example users' vectors. A tag given by
        examples without a description is its examples alone: its name may be a label
        ("campaign 42") that says nothing."""
        model = model.eval()
        text = model.encode_text(encode_texts([tag_text(t.tag, t.description, cfg.separator) for t in new],
                                              cfg.encoder, cfg.text_max_length))
        item_index = {x: i for i, x in enumerate(meta.extra["item_ids"])}
        wanted = sorted({u for t in new for u in t.example_user_ids})
        users = torch.as_tensor(self.user_vectors(model, cfg, meta, prepared, wanted))  # (len(wanted), facets * H)
        user_index = {u: i for i, u in enumerate(wanted)}
        return torch.stack([
            prototype(model, cfg, v if t.description or not (t.example_item_ids or t.example_user_ids) else None,
                      meta.extra["vectors"][[item_index[x] for x in t.example_item_ids]],
                      users[[user_index[u] for u in t.example_user_ids]])
            for t, v in zip(new, text)]).numpy()

    @torch.no_grad()
    def user_vectors(self, model, cfg: ZeroShotConfig, meta: Meta, prepared: str, user_ids: list[str]) -> np.ndarray:
        """(len(user_ids), facets * H) vectors of users, read from everything they did."""
        if not user_ids:
            return np.zeros((0, model.facets * model.dim), np.float32)
        fs, inner = io.filesystem(io.join(prepared, "sequences"))
        table = pads.dataset(inner, filesystem=fs, format="parquet").to_table(
            columns=self.train_columns(), filter=pc.field(S.USER_ID).isin(user_ids))
        batch = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
        ex = self.examples(batch, cfg, meta, "score")
        users, _ = self._users(model, ex, torch.device("cpu"))
        found = dict(zip(batch[S.USER_ID][ex.rows], users.numpy()))
        return np.stack([found[u] for u in user_ids])

    def score_params(self, model, cfg: ZeroShotConfig, meta: Meta, valid_batches, prepared: str = "",
                     new_tags: list[NewTag] | None = None) -> dict[str, Any]:
        if not new_tags:
            raise ConfigError("task zeroshot scores new tags: give --tags FILE (tag, description, "
                              "example_item_ids, example_user_ids)")
        kept = [t for t in new_tags if not L.excluded(t.tag, cfg.exclude_tags, cfg.separator)]
        if not kept:
            raise ConfigError(f"every new tag ({', '.join(t.tag for t in new_tags)}) is excluded by exclude_tags")
        new_tags = kept  # a sensitive new tag is not scored at all
        index = {x: i for i, x in enumerate(meta.extra["item_ids"])}
        return {"tag_names": [t.tag for t in new_tags],
                "tag_vectors": self.new_tag_vectors(model, cfg, meta, prepared, new_tags),
                "tag_examples": [[index[x] for x in t.example_item_ids] for t in new_tags],
                "tag_words": [sorted(set(re.findall(WORD, f"{t.tag} {t.description}".lower()))) for t in new_tags]}

    @torch.no_grad()
    def score(self, model, batch: dict[str, np.ndarray], cfg: ZeroShotConfig, meta: Meta, device, *,
              tag_names: list[str], tag_vectors: np.ndarray, tag_examples: list[list[int]] | None = None,
              tag_words: list[list[str]] | None = None, top_k: int = 10, evidence: int = EVIDENCE) -> pa.Table:
        """Every user's score for every new tag (:data:`interest.schemas.USER_ZEROSHOT`),
        ranked within the user, with the history items closest to the tag as evidence, and
        what of the tag matched: its example items in the user's history, and its words
        (``tag_words``) in the evidence items' titles and categories."""
        ex = self.examples(batch, cfg, meta, "score")
        if ex is None:
            return S.USER_ZEROSHOT.empty_table()
        tags = torch.as_tensor(tag_vectors, device=device)
        users, bias = self._users(model, ex, device)
        scores = model.logits(users, bias, tags).cpu().numpy()  # (B, K)
        rank = np.argsort(np.argsort(-scores, 1, kind="stable"), 1) + 1
        # Evidence: the user's items whose projected text lies closest to the tag.
        items = torch.as_tensor(ex.items, device=device)
        near = torch.einsum("btd,kd->bkt", model.encode_text(model.item_vectors[items]), tags)
        near = near.masked_fill((items == 0)[:, None, :], float("-inf"))
        order = torch.argsort(near, dim=2, descending=True, stable=True)[:, :, :4 * evidence].cpu().numpy()
        item_ids = meta.extra["item_ids"]
        user_ids = batch[S.USER_ID][ex.rows]
        B, K = scores.shape
        examples = [set(e) for e in tag_examples or [[] for _ in range(K)]]
        # Each tag's words by their stem (as items' words are matched), written as the tag has them.
        wanted = [{stem(w): w for w in tag or [] if stem(w) in words(w)} for tag in tag_words or [[]] * K]
        texts = (meta.extra.get("titles") or [None] * len(item_ids), meta.extra["categories"])
        out = {S.USER_ID: np.repeat(user_ids, K), S.TAG: np.tile(np.asarray(tag_names, object), B),
               "rank": rank.reshape(-1), "score": scores.reshape(-1), S.EVIDENCE: [], S.MATCHED_ITEMS: [],
               S.MATCHED_WORDS: []}
        for b in range(B):
            history = set((ex.items[b][ex.items[b] > 0] - 1).tolist())
            for k in range(K):
                picked = []
                for t in order[b, k]:
                    i = int(ex.items[b, t])
                    if i and i - 1 not in picked:
                        picked.append(i - 1)
                    if len(picked) == evidence:
                        break
                out[S.EVIDENCE].append([item_ids[i] for i in picked])
                out[S.MATCHED_ITEMS].append([item_ids[i] for i in sorted(examples[k] & history)])
                found = set().union(*(words(text[i]) for i in picked for text in texts)) if wanted[k] else set()
                out[S.MATCHED_WORDS].append(sorted(w for s, w in wanted[k].items() if s in found))
        return pa.table(out, schema=S.USER_ZEROSHOT)


# Words too common to say why a user matched a tag.
STOPWORDS = frozenset("and are but for from has have her his its not of off our out the their them they this "
                      "those with you your".split())


WORD = r"[^\W\d_]+"  # a run of letters: categories split at their separators too


def stem(word: str) -> str:
    """``word`` without an English plural's ``s``, so that "tents" meets "Tent"."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


@functools.lru_cache(maxsize=1 << 16)
def words(text: str | None) -> frozenset[str]:
    """The stems of the words of ``text`` a tag and an item can share: lower-cased, of
    three letters or more, or two in scripts such as Chinese whose words are short,
    common English words left out."""
    found = re.findall(WORD, (text or "").lower())
    return frozenset(stem(w) for w in found if (len(w) >= 3 or (len(w) == 2 and not w.isascii()))
                     and w not in STOPWORDS)


def _column(items: pa.Table, name: str) -> list:
    return items.column(name).to_pylist() if name in items.column_names else [None] * len(items)


def symmetric_losses(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's two directions for (B, N) scores and label weights ``y``: each row's labels
    as a distribution over the columns, and each column's over the rows (rows or columns
    without a label left out)."""
    rows, cols = y.sum(1) > 0, y.sum(0) > 0
    yr, yc = y[rows], y[:, cols]
    by_row = -(yr / yr.sum(1, keepdim=True) * torch.log_softmax(logits[rows], 1)).sum(1).mean()
    by_col = -(yc / yc.sum(0, keepdim=True) * torch.log_softmax(logits[:, cols], 0)).sum(0).mean()
    return by_row, by_col


def prototype(model, cfg: ZeroShotConfig, text: torch.Tensor | None, item_vectors: torch.Tensor,
              user_vectors: torch.Tensor) -> torch.Tensor:
    """A tag's unit vector from its encoded text (H,) or None, its example items' text
    vectors (n, H) and its example users' vectors (m, facets * H): the mean of all of them
    as tags, the text counting as ``cfg.text_weight`` examples."""
    core = unwrap(model)
    parts = [] if text is None else [cfg.text_weight * text[None]]
    if len(item_vectors):
        parts.append(core.encode_text(item_vectors))
    if len(user_vectors):
        parts.append(core.as_tag(user_vectors.float()))
    return torch.nn.functional.normalize(torch.cat(parts).sum(0), dim=-1)
