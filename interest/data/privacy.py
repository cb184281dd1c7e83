"""Privacy controls: pseudonymised user ids and forget requests.

**Pseudonyms.** With ``privacy.pseudonymize``, every output table carries
``HMAC-SHA256(key, user_id)`` (hex) in its ``user_id`` column instead of the id. The
key comes from the environment variable the config names; it is read on the driver,
handed to the scoring actors in memory, and never written to a file, a manifest or a
log. This is pseudonymisation, not anonymisation: whoever holds the key can link a
pseudonym to its user. The job writes that link, (user id, pseudonym) per user, to a
location of its own (``privacy.mapping``), for access control to restrict, since SQL
engines have no HMAC function to recompute it.

**Sensitive interests** (``privacy.exclude_tags``): tags the tasks never learn nor
predict (:func:`interest.common.tags.build`), new tags never scored, and, with
``exclude_items``, the items under them never recommended nor predicted
(:func:`interest.score.batch.withhold`).

**Forget requests.** ``privacy.forget`` names a table (Parquet, CSV or JSON lines) with
a ``user_id`` column. Preparation drops those users' events before anything is staged,
so they reach no prepared table and no quarantine record; the accounting counts them,
per input file, as ``forgotten``. The pipeline retrains every model whose training data
held a forgotten user, and removes them from the days it published before
(:mod:`interest.pipeline.run`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from interest import io
from interest import schemas as S
from interest.config import ConfigError
from interest.data import adapters


@dataclass
class PrivacyConfig:
    """The pipeline's ``privacy:`` block.

    Args:
        pseudonymize: write ``HMAC-SHA256(key, user_id)`` instead of the user id in every
            output table.
        key_env: the environment variable holding the HMAC key (never written or logged).
        mapping: where the (user_id, pseudonym) table goes, ``MAPPING/dt=D/``: a location
            apart from the warehouse, local or ``s3://``; required with ``pseudonymize``.
        forget: a table of user ids to forget (Parquet, CSV or JSON lines with a
            ``user_id`` column).
        exclude_tags: tags, or tag-path prefixes (``health`` excludes ``health.vitamins``),
            never published in ``user_tags``, ``user_zeroshot`` or ``tag_audiences``, and
            never used as training labels.
        exclude_items: also withhold the items under an excluded tag from
            ``user_recommendations`` and ``user_next_actions`` (a recommendation of one
            reveals the interest too); default: whenever ``exclude_tags`` is set.
    """

    pseudonymize: bool = False
    key_env: str = "INTEREST_PSEUDONYM_KEY"
    mapping: str | None = None
    forget: str | None = None
    exclude_tags: list[str] = field(default_factory=list)
    exclude_items: bool | None = None

    def __post_init__(self):
        if self.pseudonymize and not self.mapping:
            raise ConfigError("privacy.mapping: pseudonymize needs a location for the (user_id, pseudonym) table")
        if any(not isinstance(t, str) or not t.strip() for t in self.exclude_tags):
            raise ConfigError(f"privacy.exclude_tags: tags must be non-empty strings, got {self.exclude_tags!r}")

    @property
    def withholds_items(self) -> bool:
        """Whether items under an excluded tag are withheld (``exclude_items``, by default
        whenever tags are excluded)."""
        return bool(self.exclude_tags) if self.exclude_items is None else self.exclude_items

    def key(self) -> bytes | None:
        """The HMAC key (None without ``pseudonymize``); a clear error when it is unset."""
        if not self.pseudonymize:
            return None
        value = os.environ.get(self.key_env, "")
        if not value:
            raise ConfigError(f"privacy.pseudonymize: the environment variable {self.key_env} (privacy.key_env) "
                              f"holds no key; set it to a secret of at least 16 characters")
        if len(value) < 16:
            raise ConfigError(f"privacy.pseudonymize: the key in {self.key_env} is shorter than 16 characters")
        return value.encode()


def pseudonyms(user_ids: pa.Array | pa.ChunkedArray | list[str], key: bytes) -> pa.Array:
    """``HMAC-SHA256(key, user_id)`` of each id, as 64 hex characters."""
    values = user_ids.to_pylist() if isinstance(user_ids, (pa.Array, pa.ChunkedArray)) else user_ids
    return pa.array([hmac.new(key, u.encode(), hashlib.sha256).hexdigest() for u in values], pa.string())


def pseudonymize(table: pa.Table, key: bytes) -> pa.Table:
    """``table`` with its ``user_id`` column replaced by the ids' pseudonyms."""
    i = table.schema.get_field_index(S.USER_ID)
    return table.set_column(i, table.schema.field(i), pseudonyms(table.column(i), key))


MAPPING = pa.schema([pa.field(S.USER_ID, pa.string(), nullable=False),
                     pa.field("pseudonym", pa.string(), nullable=False)])


def mapping_table(user_ids: pa.Array, key: bytes) -> pa.Table:
    return pa.table({S.USER_ID: user_ids, "pseudonym": pseudonyms(user_ids, key)}, schema=MAPPING)


def write_mapping(prepared: str, folder: str, key: bytes) -> int:
    """The (user_id, pseudonym) table of every prepared user into ``folder``, replaced
    whole (:class:`interest.io.Publication`); returns its rows. Ray Data, a batch of
    users at a time, so memory does not grow with the users."""
    import ray.data

    publication = io.Publication(folder, overwrite=True)
    try:
        fs, inner = io.filesystem(publication.path)
        users = ray.data.read_parquet(io.join(prepared, "vocab", "users"), columns=[S.USER_ID])
        users.map_batches(lambda b: mapping_table(b.column(S.USER_ID), key), batch_format="pyarrow").write_parquet(
            inner, filesystem=fs)
        rows = io.count_rows(publication.path)
        publication.commit()
    except BaseException:
        publication.abort()
        raise
    return rows


def read_forget(path: str) -> pa.Array:
    """The distinct user ids of a forget list; an error naming the file when it has no
    ``user_id`` column."""
    fs, _ = io.filesystem(path)
    files = io.expand(path)
    tables = [adapters.read_table_file(f, fs) for f in files]
    for f, t in zip(files, tables):
        if S.USER_ID not in t.column_names:
            raise ConfigError(f"privacy.forget: {f} has no {S.USER_ID!r} column (found {', '.join(t.column_names)})")
    ids = pa.chunked_array([t.column(S.USER_ID).cast(pa.string()) for t in tables], pa.string())
    return pc.unique(pc.drop_null(ids.combine_chunks()))


def forget_fingerprint(path: str | None) -> str | None:
    """A digest of the forget list's ids (order and duplicates aside), or None without
    one: what a model's run records, so that a changed list is noticed."""
    if not path:
        return None
    ids = sorted(read_forget(path).to_pylist())
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
