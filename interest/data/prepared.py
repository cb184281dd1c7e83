"""A prepared dataset's report and format, read without Ray: the tasks load their sizes
from it on any machine, including one that only runs their models (bench/gpu_check.sh)."""

from __future__ import annotations

from typing import Any

from interest import io
from interest.io import InputError

REPORT = "prepare_report.json"
# The prepared folder's format, recorded in the report; an older folder fails to load
# with a message instead of being read wrongly.
FORMATS = {1: "items indexed by popularity over every split",
           2: "items indexed by id, never by the data; extendable (PrepareConfig.extends)"}
FORMAT_VERSION = 2


def load_report(prepared: str) -> dict[str, Any]:
    """The report of a prepared dataset; a clear error if the folder is not one, or was
    prepared in an older format."""
    if not io.is_complete(prepared):
        raise InputError(f"{prepared} is not a prepared dataset (no {io.SUCCESS}); run `interest prepare` first")
    report = io.read_json(io.join(prepared, REPORT))
    version = report.get("format_version", 1)
    if version != FORMAT_VERSION:
        raise InputError(f"{prepared} was prepared in format {version}; this version of interest reads format "
                         f"{FORMAT_VERSION} ({FORMATS.get(FORMAT_VERSION)}). Run `interest prepare` again")
    return report
