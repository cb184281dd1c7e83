"""The new tags to score: a CSV or Parquet file of ``tag``, ``description`` and,
optionally, ``example_item_ids`` and ``example_user_ids`` (lists, or ids separated by
``;`` or ``,`` in a CSV). Read and checked before any work starts: a problem names its
row (the header is row 1, as a spreadsheet shows it)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv

from interest import io
from interest import schemas as S

EXAMPLE_COLUMNS = ("example_item_ids", "example_user_ids")


@dataclass
class NewTag:
    tag: str
    description: str = ""
    example_item_ids: list[str] = field(default_factory=list)
    example_user_ids: list[str] = field(default_factory=list)


def _ids(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in re.split(r"[;,]", value) if v.strip()]
    return [str(v) for v in value if v is not None and str(v).strip()]


def read_new_tags(path: str, item_ids: set[str] | None = None, user_ids: set[str] | None = None) -> list[NewTag]:
    """The tags of ``path``; example ids must be among ``item_ids`` / ``user_ids`` (the
    prepared dataset's) when given. Raises :class:`interest.schemas.SchemaError`."""
    if not io.exists(path):
        raise io.InputError(f"tags file {path} not found")
    if str(path).endswith(".csv"):
        fs, inner = io.filesystem(path)
        with fs.open_input_stream(inner) as f:
            table = pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in (S.TAG, S.DESCRIPTION, *EXAMPLE_COLUMNS)}))
    else:
        table = io.read_parquet(path)
    missing = [c for c in (S.TAG, S.DESCRIPTION) if c not in table.column_names]
    if missing:
        raise S.SchemaError(f"tags file {path}: missing column(s) {', '.join(missing)} (needs tag, description; "
                            f"optionally {', '.join(EXAMPLE_COLUMNS)})")
    rows = table.to_pylist()
    if not rows:
        raise S.SchemaError(f"tags file {path} has no rows")
    out, seen = [], {}
    for n, row in enumerate(rows, start=2):
        tag = (row[S.TAG] or "").strip()
        where = f"tags file {path} row {n}"
        if not tag:
            raise S.SchemaError(f"{where}: the tag is empty")
        if tag in seen:
            raise S.SchemaError(f"{where}: tag {tag!r} repeats row {seen[tag]}")
        seen[tag] = n
        new = NewTag(tag, (row[S.DESCRIPTION] or "").strip(), _ids(row.get("example_item_ids")),
                     _ids(row.get("example_user_ids")))
        for what, ids, known in (("item", new.example_item_ids, item_ids), ("user", new.example_user_ids, user_ids)):
            unknown = [x for x in ids if known is not None and x not in known]
            if unknown:
                raise S.SchemaError(f"{where} ({tag!r}): unknown example {what} id(s) {', '.join(unknown[:5])}")
        out.append(new)
    return out


def read_for(path: str, prepared: str) -> list[NewTag]:
    """:func:`read_new_tags` checked against a prepared dataset's item and user ids."""
    vocab = io.join(prepared, "vocab")
    items = set(io.read_parquet(io.join(vocab, "items.parquet"), columns=[S.ITEM_ID]).column(S.ITEM_ID).to_pylist())
    users = set(io.read_parquet(io.join(vocab, "users"), columns=[S.USER_ID]).column(S.USER_ID).to_pylist())
    return read_new_tags(path, items, users)
