"""Every adapter on the real public files in ../shared/data, with exact counts.

Skipped when ../shared/data is absent (a fresh clone does not have it).
"""

import pyarrow.parquet as pq
import pytest

from interest.data.prepare import PrepareConfig, SplitConfig, prepare
from interest.evaluate import published

pytestmark = [pytest.mark.ray, pytest.mark.shared]

# folder, path inside it, format, split, (input rows, kept, quarantined, duplicates, users, items)
CASES = [
    ("taobao_userbehavior_excerpt", "", "taobao", "time", (14_321, 14_321, 0, 0, 157, 10_744)),
    # The head file ends in a line cut mid-way: one malformed row, quarantined; its user
    # (the README's 4,505th) has no other event. Six exact duplicates are removed.
    ("rees46_2019oct_head", "2019-Oct_head.csv", "rees46", "time", (17_435, 17_428, 1, 6, 4_504, 6_493)),
    ("amazon_beauty_s3rec", "Beauty.txt", "s3rec", "leave_last", (198_502, 198_502, 0, 0, 22_363, 12_101)),
    ("amazon_beauty_bert4rec", "beauty.txt", "sasrec", "leave_last", (353_962, 353_962, 0, 0, 40_226, 54_542)),
    ("amazon_scientific_unisrec", "", "unisrec", "given", (59_427, 59_427, 0, 0, 8_442, 4_385)),
    ("movielens_100k", "ml-100k.inter", "recbole", "time", (100_000, 100_000, 0, 0, 943, 1_682)),
]


@pytest.mark.parametrize("folder, name, fmt, split, expected", CASES, ids=[c[0] for c in CASES])
def test_real_dataset_counts(shared_data, ray_start_4_cpus, tmp_path, folder, name, fmt, split, expected):
    path = shared_data / folder / name if name else shared_data / folder
    report = prepare(PrepareConfig(input=str(path), format=fmt, out=str(tmp_path / "p"),
                                   split=SplitConfig(method=split)))
    t = report["total"]
    assert (t["input"], t["kept"], t["quarantined"], t["duplicates_removed"], report["users"],
            report["items"]["with_events"]) == expected
    # the files with published results are recognised by their report, and only those
    assert getattr(published.source_of(report), "dataset", None) == (folder if published.for_dataset(folder) else None)
    seqs = pq.read_table(tmp_path / "p" / "sequences")
    assert seqs.num_rows == report["users"]
    if split == "given":  # UniSRec: leave-one-out given by the files, one valid and one test item per user
        assert report["split"]["events"] == {"train": 42_543, "valid": 8_442, "test": 8_442}
    if split == "leave_last":
        assert report["split"]["events"]["test"] == report["users"]


def test_catalogue_text_is_attached(shared_data, ray_start_4_cpus, tmp_path):
    prepare(PrepareConfig(input=str(shared_data / "amazon_scientific_unisrec"), format="unisrec",
                          out=str(tmp_path / "p"), split=SplitConfig(method="given")))
    items = pq.read_table(tmp_path / "p" / "items")
    assert items.num_rows == 4_385
    assert items.column("title").null_count == 0
    cats = items.column("category").to_pylist()
    assert sum(c is not None and c.startswith("Industrial & Scientific") for c in cats) / len(cats) > 0.95
