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
