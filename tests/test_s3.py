"""Prepare from s3:// to s3:// against a real S3 API (moto's server), through s3fs."""

import json

import pyarrow.parquet as pq
import pytest

from interest import io
from interest.data.prepare import PrepareConfig, prepare
from interest.data.prepared import load_report

pytestmark = pytest.mark.ray


def test_prepare_reads_and_writes_s3(s3_server, synthetic_small, ray_start_4_cpus):
    fs = s3_server
    fs.put(str(synthetic_small / "events"), "test/raw/events", recursive=True)
    fs.put(str(synthetic_small / "items.parquet"), "test/raw/items.parquet")
    report = prepare(PrepareConfig(input="s3://test/raw/events", items="s3://test/raw/items.parquet",
                                   out="s3://test/prepared"))
    assert report["total"]["input"] == 6000 == report["total"]["kept"]
    assert io.is_complete("s3://test/prepared")
    assert load_report("s3://test/prepared")["users"] == report["users"]
    assert not fs.exists("test/prepared/_staging")
    with fs.open("test/prepared/sequences/part-00000.parquet", "rb") as f:
        assert pq.read_table(f).num_rows > 0
    files = list(json.loads(fs.cat("test/prepared/prepare_report.json"))["files"])
    assert all(f.startswith("test/raw/events/") for f in files)


def test_missing_s3_input_is_named(s3_server, ray_start_4_cpus):
    with pytest.raises(io.InputError, match="input not found: s3://test/nothing"):
        prepare(PrepareConfig(input="s3://test/nothing", out="s3://test/o"))


def test_an_incremental_preparation_on_s3_reads_only_the_new_file(s3_server, synthetic_small, ray_start_4_cpus):
    """S3 has no rename, so the earlier preparation is read from a copy (``.previous``),
    deleted once the update is published."""
    fs = s3_server
    events = pq.read_table(synthetic_small / "events")
    for name, part in (("a", events.slice(0, 4000)), ("b", events.slice(4000))):
        with fs.open(f"test/inc/raw/{name}.parquet", "wb") as f:
            pq.write_table(part, f)
    with fs.open("test/inc/raw/b.parquet", "rb") as f:
        later = f.read()
    fs.rm("test/inc/raw/b.parquet")
    cfg = PrepareConfig(input="s3://test/inc/raw", out="s3://test/inc/prepared", incremental=True)
    first = prepare(cfg)
    with fs.open("test/inc/raw/b.parquet", "wb") as f:
        f.write(later)
    second = prepare(cfg)
    assert first["update"]["mode"] == "full" and second["update"]["mode"] == "incremental"
    assert second["update"]["files_read"] == 1 and second["update"]["new_files"] == ["test/inc/raw/b.parquet"]
    assert second["total"]["input"] == 6000 and second["files"]["test/inc/raw/a.parquet"] == \
        first["files"]["test/inc/raw/a.parquet"]
    assert second["users"] == load_report("s3://test/inc/prepared")["users"]
    assert not fs.exists("test/inc/prepared.previous")
