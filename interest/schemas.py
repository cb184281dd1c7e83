"""Arrow schemas and column names of every table interest reads or writes.

This module is the data contract. Readers, adapters, the preparation job, the
synthetic generator and the tests all name columns through these constants, and
every table is checked against its schema (:func:`conform`) before it is written.
"""

from __future__ import annotations

import pyarrow as pa

# --- column names -----------------------------------------------------------------
USER_ID = "user_id"
ITEM_ID = "item_id"
BEHAVIOR = "behavior"
TS = "ts"
SESSION_ID = "session_id"
PRICE = "price"
TITLE = "title"
CATEGORY = "category"
BRAND = "brand"
DESCRIPTION = "description"
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
SPLIT = "split"
COUNT = "count"
SOURCE_FILE = "source_file"
REASON = "reason"
RECORD = "record"

# --- vocabularies -------------------------------------------------------------------
# Behaviour types in funnel order; the position is the integer code stored in
# prepared sequences, so never reorder (append only).
BEHAVIORS: tuple[str, ...] = ("view", "click", "fav", "cart", "buy")
BEHAVIOR_CODE: dict[str, int] = {b: i for i, b in enumerate(BEHAVIORS)}
N_BEHAVIORS = len(BEHAVIORS)

# Source vocabularies mapped onto ours (Taobao `pv`, REES46 `purchase`, ...).
BEHAVIOR_ALIASES: dict[str, str] = {
    "pv": "view",
    "page_view": "view",
    "impression": "view",
    "favorite": "fav",
    "favourite": "fav",
    "like": "fav",
    "wishlist": "fav",
    "add_to_cart": "cart",
    "addtocart": "cart",
    "purchase": "buy",
    "order": "buy",
    "transaction": "buy",
}

SPLITS: tuple[str, ...] = ("train", "valid", "test")
SPLIT_CODE: dict[str, int] = {s: i for i, s in enumerate(SPLITS)}

TS_TYPE = pa.timestamp("us", tz="UTC")

# --- input contract -------------------------------------------------------------------
EVENTS = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(BEHAVIOR, pa.string(), nullable=False),
        pa.field(TS, TS_TYPE, nullable=False),
        pa.field(SESSION_ID, pa.string()),
        pa.field(PRICE, pa.float64()),
    ]
)
EVENTS_REQUIRED = (USER_ID, ITEM_ID, BEHAVIOR, TS)

ITEMS = pa.schema(
    [
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(TITLE, pa.string()),
        pa.field(CATEGORY, pa.string()),
        pa.field(BRAND, pa.string()),
        pa.field(PRICE, pa.float64()),
        pa.field(DESCRIPTION, pa.string()),
    ]
)
ITEMS_REQUIRED = (ITEM_ID,)

# --- internal: events after validation, before deduplication ---------------------------
# `split` is set only by adapters whose source fixes the split (UniSRec files).
STAGED_EVENTS = pa.schema(
    list(EVENTS) + [pa.field(SPLIT, pa.string()), pa.field(SOURCE_FILE, pa.string())]
)

# --- prepared dataset -------------------------------------------------------------------
PREPARED_EVENTS = pa.schema(
    [
        pa.field(USER_IDX, pa.int64(), nullable=False),
        pa.field(ITEM_IDX, pa.int32(), nullable=False),
        pa.field(BEHAVIOR, pa.int8(), nullable=False),
        pa.field(TS, TS_TYPE, nullable=False),
        pa.field(SPLIT, pa.int8(), nullable=False),
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(SESSION_ID, pa.string()),
        pa.field(PRICE, pa.float64()),
    ]
)

# One row per user: the time-ordered history, capped at `max_len` most recent events.
# The first `n_train` positions are training events, the next `n_valid` validation
# events, the rest test events (the split is a suffix structure for both protocols).
SEQUENCES = pa.schema(
    [
        pa.field(USER_IDX, pa.int64(), nullable=False),
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field("items", pa.list_(pa.int32()), nullable=False),
        pa.field("behaviors", pa.list_(pa.int8()), nullable=False),
        pa.field("ts", pa.list_(TS_TYPE), nullable=False),
        pa.field("n_train", pa.int32(), nullable=False),
        pa.field("n_valid", pa.int32(), nullable=False),
        pa.field("n_test", pa.int32(), nullable=False),
        pa.field("n_events", pa.int32(), nullable=False),  # before the length cap
    ]
)

USER_VOCAB = pa.schema(
    [pa.field(USER_IDX, pa.int64(), nullable=False), pa.field(USER_ID, pa.string(), nullable=False)]
)
# Items are indexed in the order of their ids, or after an earlier dataset's items
# (prepare's ``extends``): an index never encodes popularity or the split.
ITEM_VOCAB = pa.schema(
    [
        pa.field(ITEM_IDX, pa.int32(), nullable=False),
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(COUNT, pa.int64(), nullable=False),
    ]
)
PREPARED_ITEMS = pa.schema([pa.field(ITEM_IDX, pa.int32(), nullable=False)] + list(ITEMS))

# Rows that failed a check, with the original values (JSON, every value as text,
# undecodable bytes escaped) and why.
QUARANTINE = pa.schema(
    [
        pa.field(SOURCE_FILE, pa.string(), nullable=False),
        pa.field(REASON, pa.string(), nullable=False),
        pa.field(RECORD, pa.string(), nullable=False),
    ]
)

# --- synthetic ground truth -------------------------------------------------------------
GROUND_TRUTH = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field("interests_early", pa.list_(pa.string()), nullable=False),
        pa.field("interests_late", pa.list_(pa.string()), nullable=False),
        pa.field("drift_at", TS_TYPE, nullable=False),
        pa.field("persona", pa.string()),  # with SyntheticConfig.personas
    ]
)
TAXONOMY = pa.schema(
    [
        pa.field(CATEGORY, pa.string(), nullable=False),
        pa.field("name_en", pa.string(), nullable=False),
        pa.field("name_zh", pa.string(), nullable=False),
        pa.field("parent", pa.string()),
    ]
)


# Item text vectors (`interest embed-items`): one row per item, encoder and text version.
ITEM_EMBEDDINGS = pa.schema(
    [
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("text_hash", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32()), nullable=False),
    ]
)

# A tag vocabulary (task `tags`): each tag, what it means, and the item categories it covers.
TAG = "tag"
TAGS = pa.schema(
    [
        pa.field(TAG, pa.string(), nullable=False),
        pa.field(DESCRIPTION, pa.string()),
        pa.field("categories", pa.list_(pa.string()), nullable=False),
    ]
)

# User-supplied labels (task `tags`, instead of labels from the later window).
USER_TAGS = pa.schema([pa.field(USER_ID, pa.string(), nullable=False), pa.field(TAG, pa.string(), nullable=False)])

# Scored tags per user: top-k with calibrated probabilities and the items behind each.
TAG_SCORES = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field(TAG, pa.string(), nullable=False),
        pa.field("rank", pa.int16(), nullable=False),
        pa.field("probability", pa.float32(), nullable=False),
        pa.field("evidence", pa.list_(pa.string()), nullable=False),
    ]
)

# Evidence of a row: up to three of the user's own items whose events contribute most to
# the row's score, strongest first (interest.common.evidence says how each model finds them).
EVIDENCE = "evidence"

# Next actions per user (task `sequence`): the top-k next items with their probability
# under the model's softmax over the catalogue, and on every row the most likely next
# behaviour type with its probability.
NEXT_ACTIONS = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field("rank", pa.int16(), nullable=False),
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field("probability", pa.float32(), nullable=False),
        pa.field("next_behavior", pa.string(), nullable=False),
        pa.field("behavior_probability", pa.float32(), nullable=False),
        pa.field(EVIDENCE, pa.list_(pa.string()), nullable=False),
    ]
)

# Top-N recommendations per user (task `recommend`): the model's score, comparable within
# one run only (an inner product, or an item-item model's sum).
RECOMMENDATIONS = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field("rank", pa.int16(), nullable=False),
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field(EVIDENCE, pa.list_(pa.string()), nullable=False),
    ]
)

# Zero-shot interests (task `zeroshot`): every user's score for every new tag, ranked
# within the user, with the history items closest to the tag, and what of the tag's
# definition the user's history matched: its example items the user has, and the words of
# its name and description found in the evidence items' titles and categories. Scores
# compare users (a scaled cosine plus the user's bias), not probabilities.
MATCHED_ITEMS, MATCHED_WORDS = "matched_items", "matched_words"
USER_ZEROSHOT = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field(TAG, pa.string(), nullable=False),
        pa.field("rank", pa.int16(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field(EVIDENCE, pa.list_(pa.string()), nullable=False),
        pa.field(MATCHED_ITEMS, pa.list_(pa.string()), nullable=False),
        pa.field(MATCHED_WORDS, pa.list_(pa.string()), nullable=False),
    ]
)

# Each new tag's audience: its top users ranked across every user (a campaign's target
# list), with each user's evidence and matches from ``user_zeroshot``.
TAG_AUDIENCES = pa.schema(
    [
        pa.field(TAG, pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field(EVIDENCE, pa.list_(pa.string()), nullable=False),
        pa.field(MATCHED_ITEMS, pa.list_(pa.string()), nullable=False),
        pa.field(MATCHED_WORDS, pa.list_(pa.string()), nullable=False),
    ]
)

# Candidate interest groups (`interest discover`): the share of each group's items its best tag
# carries, least covered first, and the items nearest its centroid, for a person to name.
DISCOVERED_GROUPS = pa.schema(
    [
        pa.field("group", pa.int32(), nullable=False),
        pa.field("items", pa.int32(), nullable=False),
        pa.field("best_tag", pa.string()),
        pa.field("coverage", pa.float32(), nullable=False),
        pa.field("covered", pa.bool_(), nullable=False),
        pa.field("typical_item_ids", pa.list_(pa.string()), nullable=False),
        pa.field("typical_titles", pa.list_(pa.string()), nullable=False),
    ]
)


# The warehouse tables of `interest score` and `interest pipeline`: each task's rows plus a
# `source` column saying what produced a row: "model", or the fallback a user the model
# cannot score gets (interest.score.fallback), so every user has rows in every table.
SOURCE = "source"


def _with_source(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(SOURCE, pa.string(), nullable=False))


OUTPUTS: dict[str, pa.Schema] = {
    "user_tags": _with_source(TAG_SCORES),
    "user_recommendations": _with_source(RECOMMENDATIONS),
    "user_next_actions": _with_source(NEXT_ACTIONS),
    "user_zeroshot": _with_source(USER_ZEROSHOT),
    "tag_audiences": _with_source(TAG_AUDIENCES),
}
# What makes a row unique within a table's partition (checked by `interest verify-output`).
OUTPUT_KEYS: dict[str, tuple[str, ...]] = {
    "user_tags": (USER_ID, "rank"),
    "user_recommendations": (USER_ID, "rank"),
    "user_next_actions": (USER_ID, "rank"),
    "user_zeroshot": (USER_ID, "rank"),
    "tag_audiences": (TAG, "rank"),
}


class SchemaError(ValueError):
    """A table does not match the schema it is declared to have."""


def conform(table: pa.Table, schema: pa.Schema, *, what: str = "table") -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, in order and cast to its types.

    Optional (nullable) columns that are absent are filled with nulls; a missing
    required column, a null in a required column or a failed cast raise
    :class:`SchemaError` naming ``what`` and the column.
    """
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise SchemaError(f"{what}: required column {field.name!r} is missing")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    f"{what}: column {field.name!r} has type {col.type}, expected {field.type}: {exc}"
                ) from None
        if not field.nullable and col.null_count:
            raise SchemaError(f"{what}: required column {field.name!r} has {col.null_count} nulls")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)
