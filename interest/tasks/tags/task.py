"""Task ``tags``: a user's interest tags, as multi-label text classification.

Protocol (future window): a model reads a user's events up to a cutoff and predicts
the tags of the items the user engages with after it. Training users read the train
split and predict the validation window; a share of users (``valid_share``, by a hash
of the user index) is held out of training to pick the epoch. Test reads train +
validation and predicts the test window, for every user. Label weights follow the
behaviour (buy > cart > fav > click > view); a tag counts as relevant for the metrics
when any event of the window carries it. With ``labels`` (user-supplied user -> tag
rows) those are the targets, the model reads all of the user's events, and users are
hashed into train / valid / test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import numpy as np
import pyarrow as pa
import torch
import torch.nn as nn
import torch.nn.functional as F

from interest import io
from interest import schemas as S
from interest.common.space import Choice, Float, Space
from interest.config import ConfigError
from interest.common.events import future_windows, training_steps, windows
from interest.evaluate.metrics import multilabel_sums
from interest.tasks.base import Meta, Task, TrainConfig, load_meta, uniform_hash
from interest.common import tags as L
from interest.tasks.tags.model import CachedTagModel, FinetuneTagModel, TagModelConfig
from interest.text import encoder as E
from interest.text.embed import prepared_item_vectors

log = logging.getLogger(__name__)
MODES = ("cached", "finetune")
K = 5
RECENT = 5  # events that make up "recent" interests, beside the whole history
VISIT_GAP = 1800.0  # seconds of pause that start a new visit
PRIORS = 4
ROWS, STEPS = 16, 8  # training shapes are rounded up to these (see TagsTask.forward)


@dataclass
class TagsConfig:
    """Args:
        mode: ``cached`` (attention over precomputed item text vectors) or ``finetune``
            (the encoder reads the behaviour as text, trained end to end).
        model: sizes of the classifier.
        train: optimisation; ``train.metric`` is ``map`` on the held-out users.
        taxonomy: Parquet of tags (tag, description, categories); None: derive tags from
            the item categories by ``tag_source`` (levels, tokens, whole) and ``separator``.
        exclude_tags: tags, or tag-path prefixes, never used as labels nor predicted
            (sensitive interests; the pipeline fills it from ``privacy.exclude_tags``).
        labels: Parquet of user-supplied (user_id, tag) labels; None: the later window.
        encoder: Hugging Face encoder folder or name; None: the packaged default.
        embeddings: item vector store of ``interest embed-items`` (``cached``).
        text_max_length: tokens of rendered behaviour (``finetune``).
        encoder_lr: learning rate of the encoder's weights (``finetune``); the classifier
            and head use ``train.lr``.
        activation_checkpointing: keep only each encoder layer's input in the forward
            pass and rebuild its activations in the backward pass (``finetune``): about a
            fifth of the memory (MiniLM at 128 tokens: ~6 MB a text instead of ~32), for
            one more forward pass of each layer (REES46: 128-139 s an epoch, where 133 s
            was measured without it). ``train.memory_mb`` bounds a step either way.
        behavior_weights: label weight of view, click, fav, cart, buy.
        valid_share: share of users held out of training for validation.
        loss: ``softmax`` (listwise over tags: ranks a user's tags, what P@k and mAP
            measure) or ``bce`` (independent per tag); probabilities come from
            calibration on the held-out users either way.
    """

    # Local paths, made absolute for the workers (train.loop.absolute_paths).
    PATHS: ClassVar[tuple[str, ...]] = ("taxonomy", "labels", "encoder", "embeddings")
    mode: str = "cached"
    model: TagModelConfig = field(default_factory=TagModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(metric="map", lr=3e-3, epochs=20))
    taxonomy: str | None = None
    tag_source: str = "levels"
    separator: str = "."
    exclude_tags: list[str] = field(default_factory=list)
    labels: str | None = None
    encoder: str | None = None
    embeddings: str | None = None
    text_max_length: int = 128
    encoder_lr: float = 5e-5
    activation_checkpointing: bool = True
    behavior_weights: list[float] = field(default_factory=lambda: list(L.BEHAVIOR_WEIGHTS))
    valid_share: float = 0.1
    loss: str = "softmax"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "cached" and not self.embeddings:
            raise ConfigError("mode=cached needs embeddings=STORE (run `interest embed-items` first)")
        L.check_settings(self.tag_source, self.behavior_weights, self.valid_share)
        if self.loss not in ("softmax", "bce"):
            raise ConfigError(f"loss must be softmax or bce, got {self.loss!r}")


def tag_popularity(prepared: str, tags: L.TagSpace, behavior_weights: list[float]) -> np.ndarray:
    """Behaviour-weighted tag counts of the training events (split 0), plus one: the
    model's prior for tags a user has not shown. Streams the events a batch at a time."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    fs, inner = io.filesystem(io.join(prepared, "events"))
    weights = np.asarray(behavior_weights, np.float32)
    counts = np.ones(tags.n_tags, np.float32)
    for b in pads.dataset(inner, filesystem=fs, format="parquet").to_batches(
            columns=[S.ITEM_IDX, S.BEHAVIOR], filter=pc.field(S.SPLIT) == 0):
        counts += tags.matrix(np.zeros(b.num_rows, np.int64), b.column(S.ITEM_IDX).to_numpy(),
                              weights[b.column(S.BEHAVIOR).to_numpy().astype(np.int64)], 1)[0]
    return counts


@dataclass
class Examples:
    rows: np.ndarray  # rows of the batch
    items: np.ndarray  # (B, T) item_idx + 1, left-padded
    behaviors: np.ndarray  # (B, T) behaviour + 1
    prior: np.ndarray  # (B, PRIORS, n_tags) tag counts of the history (see TagsTask._history)
    target: np.ndarray  # (B, n_tags) label weights


# What `interest tune` searches by default (a YAML file narrows or replaces it).
SEARCH_SPACE: Space = {
    "train.lr": Float(1e-4, 1e-2, log=True),
    "train.batch_size": Choice((32, 64, 128)),
    "model.dim": Choice((32, 64, 128)),
    "model.dropout": Float(0.0, 0.5),
    "model.max_len": Choice((20, 50, 100)),
    # The tags' priors: how much each behaviour (view, click, fav, cart, buy) counts in a
    # user's tag counts and labels. The default ramp, every event alike, or purchases first.
    "behavior_weights": Choice((L.BEHAVIOR_WEIGHTS, (1.0, 1.0, 1.0, 1.0, 1.0), (0.05, 0.1, 0.4, 0.6, 1.0))),
}


class TagsTask(Task):
    name = "tags"
    config_cls = TagsConfig
    search_space = SEARCH_SPACE
    validate_initial = True  # the untrained head ranks as "the user's own tags" (see model._Head)
    evaluation = "tags"
    output = "user_tags"
    K = K  # P@K and R@K, in validation and evaluation

    def load_meta(self, cfg: TagsConfig, prepared: str) -> Meta:
        meta = load_meta(prepared)
        if cfg.mode == "cached":
            vectors, items = prepared_item_vectors(prepared, cfg.embeddings, cfg.encoder)
            meta.extra["vectors"] = torch.as_tensor(vectors)
        else:
            meta.extra["encoder_config"] = E.load_config(cfg.encoder)  # a missing encoder fails here, on the driver
            items = io.read_parquet(io.join(prepared, "items")).sort_by(S.ITEM_IDX)
            titles = items.column(S.TITLE).to_pylist() if S.TITLE in items.column_names else [None] * len(items)
            cats = items.column(S.CATEGORY).to_pylist() if S.CATEGORY in items.column_names else [None] * len(items)
            meta.extra["texts"] = [f"{t or ''} [{c or ''}]".strip() for t, c in zip(titles, cats)]
        tags = L.build(items, taxonomy=cfg.taxonomy, source=cfg.tag_source, separator=cfg.separator,
                       exclude=cfg.exclude_tags)
        if tags.n_tags < 2:
            raise ConfigError(f"{tags.n_tags} tag(s) in {prepared}'s items: nothing to classify "
                              "(no categories? give taxonomy=PATH)")
        meta.extra.update(tags=tags, popularity=torch.as_tensor(tag_popularity(prepared, tags, cfg.behavior_weights)),
                          transitions=L.TagTransitions.count(tags, training_steps(prepared, "items")),
                          labels=L.read_user_labels(cfg.labels, tags) if cfg.labels else None,
                          item_ids=items.column(S.ITEM_ID).to_pylist())
        return meta

    def frozen(self, cfg: TagsConfig, meta: Meta) -> dict[str, Any]:
        # The encoder's config is read again from the encoder; labels are for training.
        return {k: v for k, v in meta.extra.items() if k not in ("encoder_config", "labels", "tokenizer")}

    def thawed(self, cfg: TagsConfig, extra: dict[str, Any]) -> dict[str, Any]:
        if cfg.mode != "cached":
            extra["encoder_config"] = E.load_config(cfg.encoder)
        return {**extra, "labels": None}

    def build_model(self, cfg: TagsConfig, meta: Meta) -> nn.Module:
        tags = meta.extra["tags"]
        if cfg.mode == "cached":
            return CachedTagModel(tags.n_tags, PRIORS, meta.extra["popularity"], meta.extra["vectors"], cfg.model)
        _, tokenizer, encoder = E.load(cfg.encoder)
        meta.extra["tokenizer"] = tokenizer
        if cfg.activation_checkpointing:
            # Non-reentrant: works under DDP and with inputs that need no gradient.
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return FinetuneTagModel(tags.n_tags, PRIORS, meta.extra["popularity"], encoder.train(), cfg.model)

    def step_mb(self, cfg: TagsConfig, meta: Meta) -> tuple[float, str]:
        """A training user is up to two examples (its validation window and a random cut
        of its own history, :meth:`examples`). ``finetune``: each renders to up to
        ``text_max_length`` tokens through the encoder; ``cached``: label-wise attention,
        (tags, events) and (tags, dim) per example."""
        if cfg.mode == "finetune":
            per_text = E.activation_mb(meta.extra["encoder_config"], cfg.text_max_length, cfg.activation_checkpointing)
            return 2 * per_text, (f"text_max_length={cfg.text_max_length} tokens through the encoder, "
                                  f"activation_checkpointing={str(cfg.activation_checkpointing).lower()}")
        n, t, d = meta.extra["tags"].n_tags, cfg.model.max_len, cfg.model.dim
        return 2 * 4 * (n * (3 * t + 3 * d) + 8 * t * d) / 2 ** 20, f"{n} tags x model.max_len={t} events"

    def param_groups(self, model, cfg: TagsConfig) -> list[dict[str, Any]]:
        if cfg.mode == "cached":
            return super().param_groups(model, cfg)
        # A pretrained encoder takes the small steps fine-tuning needs; the new classifier
        # and head would barely move at that rate.
        encoder = list(model.encoder.parameters())
        ids = {id(p) for p in encoder}
        rest = [p for p in model.parameters() if id(p) not in ids]
        return [{"params": encoder, "lr": cfg.encoder_lr}, {"params": rest}]

    def examples(self, batch: dict[str, np.ndarray], cfg: TagsConfig, meta: Meta, phase: str) -> Examples | None:
        """The users of ``batch`` in ``phase`` (train, valid, test, score) that have labels.

        Training also cuts each training user's own train split at a random point and
        predicts the rest of it: every user with two or more events teaches the model,
        not only those active in the validation window.
        """
        tags: L.TagSpace = meta.extra["tags"]
        n_train, n_valid, n_test = (batch[c].astype(np.int64) for c in ("n_train", "n_valid", "n_test"))
        u = uniform_hash(batch[S.USER_IDX])  # users below valid_share are held out
        supplied = meta.extra.get("labels")
        if phase == "score":  # every user, reading everything they did; no labels
            ends = n_train + n_valid + n_test
            rows = np.flatnonzero(ends > 0)
            if not len(rows):
                return None
            sub = {k: v[rows] for k, v in batch.items()}
            items, behaviors, prior = self._history(sub, ends[rows], cfg, meta)
            return Examples(rows, items, behaviors, prior, np.zeros((len(rows), 0), np.float32))
        if supplied is not None:
            in_phase = {"train": u >= 2 * cfg.valid_share, "valid": u < cfg.valid_share,
                        "test": (u >= cfg.valid_share) & (u < 2 * cfg.valid_share)}[phase]
            ends = n_train + n_valid + n_test
            label_lists = [supplied.get(x, []) for x in batch[S.USER_ID]]
            rows = np.flatnonzero(in_phase & np.array([len(x) > 0 for x in label_lists]) & (ends > 0))
            ends, window_ends = ends[rows], ends[rows]
        else:
            rows, ends, window_ends = future_windows(batch, phase, u < cfg.valid_share)
        if not len(rows):
            return None
        sub = {k: v[rows] for k, v in batch.items()}
        items, behaviors, prior = self._history(sub, ends, cfg, meta)
        weights = np.asarray(cfg.behavior_weights, np.float32)
        if supplied is not None:
            target = np.zeros((len(rows), tags.n_tags), np.float32)
            for i, r in enumerate(rows):
                target[i, label_lists[r]] = 1.0
        else:
            lengths = window_ends - ends
            ev_items = np.concatenate([np.asarray(sub["items"][i][ends[i]:window_ends[i]], np.int64)
                                       for i in range(len(rows))])
            ev_behaviors = np.concatenate([np.asarray(sub["behaviors"][i][ends[i]:window_ends[i]], np.int64)
                                           for i in range(len(rows))])
            target = tags.matrix(np.repeat(np.arange(len(rows)), lengths), ev_items, weights[ev_behaviors],
                                 len(rows), reduce="max")
        keep = target.max(1) > 0  # window items without tags teach nothing
        if not keep.any():
            return None
        return Examples(rows[keep], items[keep], behaviors[keep], prior[keep], target[keep])

    @staticmethod
    def _history(sub, ends, cfg: TagsConfig, meta: Meta):
        """Left-padded (B, T) items + 1 and behaviours + 1 of events [end - T, end), and
        (B, PRIORS, n_tags) tag counts of those events: behaviour-weighted over all of
        them, over the latest RECENT, and visits (events after a VISIT_GAP pause), since
        a category met on many separate visits is an interest and one long visit may not
        be; and the tags that follow the latest event's in the training sequences (where
        interests go next, which counts of the past cannot say)."""
        items, behaviors, gaps = windows(sub, ends, min(cfg.model.max_len, max(int(ends.max()), 1)))
        weights = np.asarray(cfg.behavior_weights, np.float32)
        tags: L.TagSpace = meta.extra["tags"]
        r, c = np.nonzero(items)
        w = weights[behaviors[r, c] - 1]
        channels = []
        for keep, weight in ((slice(None), w), (c >= items.shape[1] - RECENT, w),
                             ((gaps[r, c] > VISIT_GAP) | (c == 0) | (items[r, np.maximum(c - 1, 0)] == 0), None)):
            rr, cc = r[keep], c[keep]
            channels.append(tags.matrix(rr, items[rr, cc] - 1, np.ones(len(rr), np.float32) if weight is None
                                        else weight[keep], len(ends)))
        channels.append(meta.extra["transitions"].after(tags, items[:, -1] - 1))
        return items, behaviors, np.stack(channels, 1)

    def forward(self, model, ex: Examples, cfg: TagsConfig, meta: Meta, device):
        """(logits (B, n_tags), attention (B, n_tags, T) or None).

        Training steps run on shapes rounded up (rows to a multiple of ROWS, events and
        tokens to a multiple of STEPS; the padding is empty and sliced off): under
        bfloat16 the CPU kernels are built and kept for every distinct shape, and with a
        new (examples, length) pair at nearly every step a worker grew by 80-170 MB an
        epoch (REES46, cached mode: 0.8 -> 1.5 GB over six epochs; flat at 0.78 GB with
        rounded shapes)."""
        rows = len(ex.rows)
        pad_rows = -rows % ROWS if model.training else 0
        prior = torch.as_tensor(np.pad(ex.prior, ((0, pad_rows), (0, 0), (0, 0)), constant_values=1.0), device=device)
        if cfg.mode == "cached":
            pad_t = -ex.items.shape[1] % STEPS if model.training else 0
            items, behaviors = (torch.as_tensor(np.pad(x, ((0, pad_rows), (pad_t, 0))), device=device)
                                for x in (ex.items, ex.behaviors))
            logits, att = model(items, behaviors, prior)
            return logits[:rows], att[:rows, :, pad_t:]
        texts = self.render(ex, meta) + [""] * pad_rows
        enc = meta.extra["tokenizer"](texts, padding=True, truncation=True, max_length=cfg.text_max_length,
                                      pad_to_multiple_of=STEPS if model.training else None,
                                      return_tensors="pt").to(device)
        logits, _ = model(enc["input_ids"], enc["attention_mask"], prior)
        return logits[:rows], None

    @staticmethod
    def render(ex: Examples, meta: Meta) -> list[str]:
        """Each user's events as text, most recent first: "buy: <title> [category]; view: ..."."""
        texts = meta.extra["texts"]
        out = []
        for items, behaviors in zip(ex.items, ex.behaviors):
            parts = [f"{S.BEHAVIORS[b - 1]}: {texts[i - 1]}" for i, b in zip(items[::-1], behaviors[::-1]) if i > 0]
            out.append("; ".join(parts))
        return out

    def loss(self, model, batch, cfg: TagsConfig, meta: Meta, device):
        ex = self.examples(batch, cfg, meta, "train")
        if ex is None:
            return None, {}
        logits, _ = self.forward(model, ex, cfg, meta, device)
        target = torch.as_tensor(ex.target, device=device)
        if cfg.loss == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, target)
        else:  # listwise: the user's label weights as a distribution over tags
            loss = -(target / target.sum(1, keepdim=True) * torch.log_softmax(logits, 1)).sum(1).mean()
        return loss, {cfg.loss: loss.item(), "examples": len(ex.rows)}

    @torch.no_grad()
    def validate(self, model, batches: Iterable[dict[str, np.ndarray]], cfg: TagsConfig, meta: Meta, device,
                 split: str = "valid") -> dict[str, float]:
        sums: dict[str, float] = {f"p@{K}": 0.0, f"r@{K}": 0.0, "map": 0.0, "users": 0}
        for batch in batches:
            ex = self.examples(batch, cfg, meta, split)
            if ex is None:
                continue
            logits, _ = self.forward(model, ex, cfg, meta, device)
            for key, v in multilabel_sums(logits.cpu().numpy(), ex.target > 0, K).items():
                sums[key] += v
        return sums

    @torch.no_grad()
    def calibrate(self, model, batches: Iterable[dict[str, np.ndarray]], cfg: TagsConfig, meta: Meta,
                  device) -> float:
        """The temperature T for which sigmoid(logit / T) has the lowest log loss on the
        held-out users' windows (they were never trained on)."""
        logits, targets = [], []
        for batch in batches:
            ex = self.examples(batch, cfg, meta, "valid")
            if ex is not None:
                logits.append(self.forward(model, ex, cfg, meta, device)[0].cpu())
                targets.append(torch.as_tensor(ex.target > 0, dtype=torch.float32))
        if not logits:
            return 1.0
        x, y = torch.cat(logits), torch.cat(targets)
        grid = torch.logspace(-1, 1, 41)
        losses = [F.binary_cross_entropy_with_logits(x / t, y).item() for t in grid]
        return float(grid[int(np.argmin(losses))])

    def score_params(self, model, cfg: TagsConfig, meta: Meta, valid_batches) -> dict[str, Any]:
        return {"temperature": self.calibrate(model, valid_batches, cfg, meta, torch.device("cpu"))}

    @torch.no_grad()
    def score(self, model, batch: dict[str, np.ndarray], cfg: TagsConfig, meta: Meta, device, *,
              temperature: float = 1.0, top_k: int = 10, evidence: int = 3) -> pa.Table:
        """Each user's top-k tags (:data:`interest.schemas.TAG_SCORES`) from everything the
        user did, with calibrated probabilities and the history items behind each tag:
        those that carry it (or, where none does, every event), ranked by the tag's
        attention (``cached``) or by behaviour weight and recency (``finetune``)."""
        ex = self.examples(batch, cfg, meta, "score")
        if ex is None:
            return S.TAG_SCORES.empty_table()
        tags: L.TagSpace = meta.extra["tags"]
        logits, att = self.forward(model, ex, cfg, meta, device)
        probs = torch.sigmoid(logits / temperature).cpu().numpy()
        k = min(top_k, tags.n_tags)
        top = np.argsort(-probs, 1, kind="stable")[:, :k]  # (B, k)
        B, T = ex.items.shape
        # carries[b, t, j]: the item at position t of user b carries the user's j-th tag.
        r, c = np.nonzero(ex.items)
        per_event = tags.matrix(r * T + c, ex.items[r, c] - 1, np.ones(len(r), np.float32), B * T, reduce="max")
        carries = np.take_along_axis(per_event.reshape(B, T, -1), top[:, None, :], 2) > 0  # (B, T, k)
        if att is not None:
            weight = np.take_along_axis(att.cpu().numpy(), top[:, :, None], 1).transpose(0, 2, 1)  # (B, T, k)
        else:
            w = np.asarray(cfg.behavior_weights, np.float32)[np.maximum(ex.behaviors - 1, 0)]
            weight = np.broadcast_to((w * (np.arange(T) + 1) / T)[:, :, None], (B, T, k))
        # A tag none of the user's items carries (predicted from where interests go next)
        # is explained by the events weighed most for it, whichever their tags.
        carries |= ~carries.any(1, keepdims=True) & (ex.items > 0)[:, :, None]
        # Enough positions to find `evidence` distinct items where one was taken many times.
        order = np.argsort(-np.where(carries, weight, -np.inf), 1, kind="stable")[:, :4 * evidence]  # (B, 4e, k)
        item_ids = meta.extra["item_ids"]
        user_ids = batch[S.USER_ID][ex.rows]
        out = {S.USER_ID: [], S.TAG: [], "rank": [], "probability": [], "evidence": []}
        for b in range(B):
            for j in range(k):
                found = dict.fromkeys(item_ids[ex.items[b, t] - 1] for t in order[b, :, j] if carries[b, t, j])
                out[S.USER_ID].append(user_ids[b])
                out[S.TAG].append(tags.tags[top[b, j]])
                out["rank"].append(j + 1)
                out["probability"].append(float(probs[b, top[b, j]]))
                out["evidence"].append(list(found)[:evidence])
        return pa.table(out, schema=S.TAG_SCORES)
