"""Streaming CSV reading that quarantines malformed lines instead of failing the file.

Arrow's CSV reader (and Ray's ``read_csv``) raises on the first line with the wrong
number of fields (a truncated last line is common in exported logs). Here such lines are captured
by Arrow's ``invalid_row_handler`` and yielded as rows of their own: every column
null and :data:`MALFORMED` holding the line's text, so validation can quarantine
them with everything else and the accounting still covers every input line.
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv

MALFORMED = "_malformed"


def read_csv_stream(f, read_options: pacsv.ReadOptions, parse_options: pacsv.ParseOptions,
                    convert_options: pacsv.ConvertOptions) -> Iterator[pa.Table]:
    bad: list[str] = []

    def on_invalid(row) -> str:
        bad.append(row.text)
        return "skip"

    parse = pacsv.ParseOptions(delimiter=parse_options.delimiter, quote_char=parse_options.quote_char,
                               double_quote=parse_options.double_quote, escape_char=parse_options.escape_char,
                               newlines_in_values=parse_options.newlines_in_values,
                               ignore_empty_lines=parse_options.ignore_empty_lines,
                               invalid_row_handler=on_invalid)
    reader = pacsv.open_csv(f, read_options=read_options, parse_options=parse, convert_options=convert_options)
    schema = reader.schema
    for batch in reader:
        table = pa.Table.from_batches([batch], schema=schema)
        yield table.append_column(MALFORMED, pa.nulls(table.num_rows, pa.string()))
        if bad:
            yield _malformed_rows(schema, bad)
            bad.clear()
    if bad:
        yield _malformed_rows(schema, bad)


def _malformed_rows(schema: pa.Schema, lines: list[str]) -> pa.Table:
    n = len(lines)
    cols = [pa.nulls(n, field.type) for field in schema]
    return pa.Table.from_arrays(cols + [pa.array(lines, pa.string())], names=schema.names + [MALFORMED])
