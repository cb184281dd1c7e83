"""Published results on exactly the public files of ``../shared/data``, to print and
draw beside ours.

A published number compares with ours only on the same file under the same protocol. So
each result names its file by what a prepare report records of it (the adapter, the
file's name, its row count) and the split it was measured on, and :func:`for_prepared`
returns a prepared dataset's results only where all of them match. Every result here is
leave-one-out, ranked against the full catalogue with the user's items masked: the
protocol of :func:`interest.evaluate.harness.evaluate_next_item` on a ``leave_last`` (or
the source's ``given``) split. Sampled-negative figures are left out, as never comparable
with full ranking; so is MovieLens 100K's RecBole figure, measured on a random 8:1:1
split that prepare does not make.

Sources: ../shared/data/README.md, "Published results on exactly these files".
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Source:
    """One public file (or file set) as a prepare report sees it."""

    dataset: str  # the folder of ../shared/data
    format: str  # the adapter that reads it
    file: str  # the input's base name (a glob for the file sets some adapters read)
    rows: int  # input rows, as prepare counts them
    split: str  # the split method the results were measured on


@dataclass(frozen=True)
class Result:
    model: str
    metrics: dict[str, float]  # named as our metrics are (hr@10: recall@10 of one target)
    source: str  # the paper or repository


BEAUTY_S3REC = Source("amazon_beauty_s3rec", "s3rec", "Beauty.txt", 198_502, "leave_last")
BEAUTY_BERT4REC = Source("amazon_beauty_bert4rec", "sasrec", "beauty.txt", 353_962, "leave_last")
SCIENTIFIC = Source("amazon_scientific_unisrec", "unisrec", "Scientific.*.inter", 59_427, "given")

S3REC_REPO = "S3-Rec repository (CIKM 2020)"
RESULTS: dict[Source, tuple[Result, ...]] = {
    BEAUTY_S3REC: (
        Result("PopRec", {"hr@10": 0.0152, "ndcg@10": 0.0068}, S3REC_REPO),
        Result("GRU4Rec", {"hr@10": 0.0283, "ndcg@10": 0.0137}, S3REC_REPO),
        Result("SASRec", {"hr@10": 0.0605, "ndcg@10": 0.0318}, S3REC_REPO),
        Result("BERT4Rec", {"hr@10": 0.0347, "ndcg@10": 0.0170}, S3REC_REPO),
        Result("S3-Rec", {"hr@10": 0.0647, "ndcg@10": 0.0327}, S3REC_REPO),
        Result("ICLRec", {"hr@10": 0.0744, "ndcg@10": 0.0403, "hr@20": 0.1058, "ndcg@20": 0.0483},
               "ICLRec README (WWW 2022)"),
    ),
    BEAUTY_BERT4REC: (
        Result("BERT4Rec", {"hr@10": 0.0338, "ndcg@10": 0.0187}, "Petrov & Macdonald, RecSys 2023"),
        Result("SASRec (BCE)", {"hr@10": 0.0246, "ndcg@10": 0.0126}, "Petrov & Macdonald, RecSys 2023"),
        Result("SASRec+ (full CE)", {"hr@10": 0.0533, "ndcg@10": 0.0327}, "Petrov & Macdonald, RecSys 2023"),
    ),
    SCIENTIFIC: (
        Result("VQ-Rec", {"hr@10": 0.1211, "ndcg@10": 0.0643}, "VQ-Rec README (KDD 2023)"),
    ),
}


def for_dataset(name: str) -> tuple[Result, ...]:
    """The results published on the shared dataset folder ``name`` (none if unknown)."""
    return next((r for s, r in RESULTS.items() if s.dataset == name), ())


def source_of(report: dict[str, Any]) -> Source | None:
    """The public file a prepare ``report`` read, or None: its adapter, split, file name
    and row count must all match (a filtered or edited copy has other counts)."""
    files = report.get("files") or {}
    if len(files) != 1:
        return None
    (path, counts), = files.items()
    cfg = report.get("config") or {}
    split = cfg.get("split") or {}
    for src in RESULTS:
        if (cfg.get("format") == src.format and split.get("method") == src.split and split.get("k", 1) == 1
                and counts.get("input") == src.rows and fnmatch.fnmatchcase(os.path.basename(path), src.file)):
            return src
    return None


def for_prepared(report: dict[str, Any]) -> tuple[Source | None, tuple[Result, ...]]:
    """(the public file, its published results) for a prepare report; (None, ()) when the
    data is not one of those files exactly."""
    src = source_of(report)
    return src, RESULTS[src] if src else ()
