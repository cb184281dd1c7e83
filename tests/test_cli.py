"""The command line: help for every command, clear errors, and generate + prepare end to end."""

import argparse
import json

import pytest

from interest import cli, io
from ray_jobs._common import run_job


def test_help_for_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_prepare_help_lists_formats(capsys):
    with pytest.raises(SystemExit):
        cli.main(["prepare", "--help"])
    out = capsys.readouterr().out
    for fmt in ("taobao", "rees46", "sasrec", "s3rec", "recbole", "unisrec"):
        assert fmt in out


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: input not found") and "Traceback" not in err
    assert cli.main(["prepare", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "split.methd=time"]) == 2
    assert "unknown config key 'split.methd'" in capsys.readouterr().err
    assert cli.main(["generate", "--out", str(tmp_path / "g"), "--items", "3"]) == 2


@pytest.mark.ray
def test_generate_then_prepare(tmp_path, capsys, ray_start_4_cpus):
    assert cli.main(["generate", "--users", "50", "--items", "60", "--events", "900", "--out",
                     str(tmp_path / "g")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["events"] == 900
    assert cli.main(["prepare", str(tmp_path / "g" / "events"), "--items", str(tmp_path / "g" / "items.parquet"),
                     "--out", str(tmp_path / "p"), "--set", "split.method=time"]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "900" in out and "split time" in out


def test_a_store_that_fails_is_one_line_naming_it_and_status_1(capsys):
    message = "publishing 2026-12-01: S3 bucket 'b' (http://127.0.0.1:9) failed after 10 s of retries: refused"

    def body(args):
        raise io.StorageError(message)

    assert run_job(argparse.ArgumentParser, body, []) == 1
    assert capsys.readouterr().err == f"error: {message}\n"
