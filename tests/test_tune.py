"""``interest tune``: search spaces checked before any trial, a 3-trial search of each
task on tiny synthetic data with ASHA stopping trials, best.yaml trained, a killed
search resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from interest import cli, io
from interest import config as C
from interest.common.space import Choice, Float, Int, check, from_yaml, merge
from interest.config import ConfigError
from interest.tasks import get_task
from interest.tasks.sequence.task import SequenceConfig
from interest.tune.search import BEST, PLOT, TRIALS, SearchConfig, concurrency, prepare_search, search, status


# --- spaces, before Ray -----------------------------------------------------------------

@pytest.mark.parametrize("space, message", [
    ({"model.dims": Int(16, 64)}, "search space key 'model.dims': SequenceConfig has no 'model.dims'"),
    ({"train.lr.x": Float(0.1, 0.2)}, "has no 'train.lr.x'"),
    ({"model.dim": Float(16.0, 64.0)}, "'model.dim': the config's model.dim is an integer"),
    ({"train.lr": Float(0.01, 0.001)}, "'train.lr': empty range [0.01, 0.001]"),
    ({"train.lr": Float(0.0, 0.1, log=True)}, "'train.lr': a log range needs low > 0"),
    ({"model.max_len": Choice(())}, "'model.max_len': no values to choose from"),
    ({"transitions": Choice((0.1, 1.5))}, "'transitions': value 1.5: transitions must be in [0, 1)"),
    ({"loss": Choice(("full", "softmaxx"))}, "'loss': value 'softmaxx': loss must be one of"),
    ({}, "the search space is empty"),
])
def test_a_bad_space_is_refused_naming_the_key(space, message):
    with pytest.raises(ConfigError) as info:
        check(space, SequenceConfig, {"preset": "small"})
    assert message in str(info.value)


def test_the_default_spaces_check_and_a_yaml_file_narrows_or_replaces_them(tmp_path):
    for name, base in (("sequence", {}), ("recommend", {}), ("tags", {"embeddings": "store"}),
                       ("zeroshot", {"embeddings": "store"})):
        task = get_task(name)
        check(task.space(C.from_dict(task.config_cls, base)), task.config_cls, base)
    assert set(get_task("recommend").space(C.from_dict(get_task("recommend").config_cls,
                                                       {"model": {"kind": "ease"}}))) == {"model.lam"}
    default = get_task("sequence").search_space
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text("train.lr: {low: 0.001, high: 0.01, log: true}\nmodel.dim: {values: [32]}\n"
                      "transitions: null\nmodel.layers: 1\n")
    space, fixed = from_yaml(str(narrow), default)
    assert space["train.lr"] == Float(0.001, 0.01, True) and space["model.dim"] == Choice((32,))
    assert "transitions" not in space and "model.dropout" in space and fixed == {"model.layers": 1}
    replace = tmp_path / "replace.yaml"
    replace.write_text("replace: true\nmodel.max_len: {low: 10, high: 40}\n")
    assert from_yaml(str(replace), default) == ({"model.max_len": Int(10, 40)}, {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train.lr: {min: 0.1, max: 0.2}\n")
    with pytest.raises(ConfigError, match="'train.lr': unknown field"):
        from_yaml(str(bad), default)
    assert merge({"train": {"epochs": 3}}, {"train.lr": 0.1, "model.dim": 32}) == {
        "train": {"epochs": 3, "lr": 0.1}, "model": {"dim": 32}}


def test_the_first_trial_is_the_defaults_when_they_lie_in_the_space():
    from interest.tune.search import default_point

    base = {"train": {"lr": 1e-3, "batch_size": 64}, "model": {"dim": 64}}
    space = {"train.lr": Float(1e-4, 1e-2, log=True), "train.batch_size": Choice((32, 64)), "model.dim": Int(32, 128)}
    assert default_point(base, space) == {"train.lr": 1e-3, "train.batch_size": 64, "model.dim": 64}
    assert default_point(base, {**space, "train.batch_size": Choice((128, 256))}) is None  # narrowed away
    assert default_point(base, {**space, "model.dim": Int(8, 32)}) is None


def test_trials_fit_the_cpus_and_end_with_a_status():
    assert concurrency(SearchConfig(cpus_per_trial=1), 4) == 2  # (4 - 1 for Ray Data) / 1.5
    assert concurrency(SearchConfig(num_workers=2, cpus_per_trial=2), 4) == 1
    assert concurrency(SearchConfig(cpus_per_trial=4), 2) == 1  # never 0: one trial waits for no one
    with pytest.raises(ConfigError, match="at least one CPU"):
        SearchConfig(num_workers=2, cpus_per_trial=1)
    assert status({"epoch": 4, "best_epoch": 4}, 5, 3) == "finished"
    assert status({"epoch": 3, "best_epoch": 0}, 10, 3) == "finished"  # the task's own patience
    assert status({"epoch": 1, "best_epoch": 1}, 10, 3) == "stopped_early"


def test_a_bad_space_fails_before_ray_starts(tmp_path, prepared_small, monkeypatch, capsys):
    import ray_jobs.tune

    monkeypatch.setattr(ray_jobs.tune, "init_ray", lambda *a, **k: pytest.fail("Ray started"))
    space = tmp_path / "space.yaml"
    space.write_text("model.hidden: {low: 16, high: 64}\n")
    rc = cli.main(["tune", "--task", "sequence", "--data", str(prepared_small), "--out", str(tmp_path / "t"),
                   "--set", "preset=small", "--space", str(space)])
    err = capsys.readouterr().err
    assert rc == 2 and "search space key 'model.hidden'" in err and "Traceback" not in err


# --- searches on Ray --------------------------------------------------------------------

def _base(name: str, bow_store) -> dict:
    encoder, store = bow_store
    text = {"embeddings": str(store), "encoder": str(encoder)}
    return {"sequence": {"preset": "small"}, "tags": {"mode": "cached", **text},
            "recommend": text, "zeroshot": text}[name]


# A learning rate from useless to useful, so that ASHA has weak trials to stop. The first
# trial trains the config's own lr; with seed 10 the other two draw 6e-3 and 1.1e-6.
LR = {"train.lr": Float(1e-7, 1e-2, log=True)}
SEED = 10


def _asha(trials: list[dict], epochs: int, grace: int = 1, rf: int = 2) -> dict:
    """What ASHA must have decided for trials run one at a time, replayed from their curves.

    At each rung (grace, grace*rf, ... below max_t) a trial stops when its figure falls
    below the (1 - 1/rf) quantile of the figures that earlier trials recorded there. Tune
    need not start trials in the order of their ids, so "earlier" is by start time.
    """
    rungs = {}
    milestone = grace
    while milestone < epochs:
        rungs[milestone] = []
        milestone *= rf
    decided = {}
    for t in sorted(trials, key=lambda t: t["started"]):
        decided[t["trial"]] = "finished"
        for milestone, recorded in sorted(rungs.items()):
            if len(t["metric"]) < milestone:
                break
            value = t["metric"][milestone - 1]
            below = len(recorded) > 0 and value < np.nanpercentile(recorded, (1 - 1 / rf) * 100)
            recorded.append(value)
            if below:
                decided[t["trial"]] = "stopped_early"
                break
    return decided


@pytest.mark.ray
@pytest.mark.parametrize("name", ["sequence"] + [pytest.param(name, marks=pytest.mark.nightly)  # long: `make test-nightly`
                                  for name in ("tags", "recommend", "zeroshot")])
def test_a_three_trial_search_finishes_and_asha_stops_weak_trials(name, prepared_small, bow_store, tmp_path,
                                                             ray_start_4_cpus):
    base = merge(_base(name, bow_store), {"train.epochs": 3, "train.patience": 3})
    base, space = prepare_search(name, str(prepared_small), base, LR)
    said = []
    summary = search(name, str(prepared_small), str(tmp_path / "tune"), base, space,
                     SearchConfig(num_samples=3, max_concurrent_trials=1, seed=SEED), say=said.append)
    trials = pq.read_table(tmp_path / "tune" / TRIALS).to_pylist()
    assert summary["trials"] == len(trials) == 3 and len(said) == 3 and summary["errors"] == 0
    for t in trials:
        assert t["status"] in ("finished", "stopped_early") and len(t["metric"]) == t["epochs"] >= 1
        assert t["best"] == max(t["metric"]) and t["seconds"] > 0 and t["started"] is not None
    # One trial at a time (max_concurrent_trials=1): each starts after the one before ended.
    ordered = sorted(trials, key=lambda t: t["started"])
    for before, after in zip(ordered, ordered[1:]):
        assert after["started"].timestamp() >= before["started"].timestamp() + before["seconds"] - 2, trials
    # Every trial's fate is the one ASHA's rule gives for the curves the table recorded.
    assert {t["trial"]: t["status"] for t in trials} == _asha(trials, epochs=3), trials
    # The first trial trained the defaults, so the best is never worse than them on validation.
    assert ordered[0]["param.train.lr"] == C.from_dict(get_task(name).config_cls, base).train.lr
    if name == "sequence":  # an untrained SASRec ranks at random: lr 1.1e-6 trails lr 6e-3 at once
        weak, strong = (f(trials, key=lambda t: t["param.train.lr"]) for f in (min, max))
        if weak["started"] > strong["started"]:
            assert weak["status"] == "stopped_early" and weak["epochs"] == 1, trials
    best = max(trials, key=lambda t: t["best"])
    assert summary["best"][summary["metric"]] == best["best"]
    cfg = C.load(get_task(name).config_cls, str(tmp_path / "tune" / BEST))
    # The trials trained without the refit; the best config keeps it, for its real training.
    assert cfg.train.lr == pytest.approx(best["param.train.lr"])
    assert cfg.train.refit == C.from_dict(get_task(name).config_cls, base).train.refit
    assert (tmp_path / "tune" / PLOT).stat().st_size > 10_000


@pytest.mark.ray
@pytest.mark.nightly  # long: `make test-nightly` (README, Development)
def test_a_closed_form_model_is_searched_in_single_step_trials(prepared_small, tmp_path, ray_start_4_cpus):
    base, space = prepare_search("recommend", str(prepared_small), {"model": {"kind": "ease"}}, None)
    summary = search("recommend", str(prepared_small), str(tmp_path / "tune"), base, space,
                     SearchConfig(num_samples=3, seed=0))
    trials = pq.read_table(tmp_path / "tune" / TRIALS).to_pylist()
    assert summary["trials"] == 3 and all(t["epochs"] == 1 and t["status"] == "finished" for t in trials)
    assert len({t["param.model.lam"] for t in trials}) == 3
    assert C.load(get_task("recommend").config_cls, str(tmp_path / "tune" / BEST)).model.lam == \
        pytest.approx(max(trials, key=lambda t: t["best"])["param.model.lam"])


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent), RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.ray
@pytest.mark.nightly  # long (1.7 to 2.2 min in CI): `make test-nightly` (README, Development)
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_killed_search_resumes_and_its_best_yaml_trains(where, prepared_small, tmp_path, ray_start_4_cpus, capsys,
                                                          request):
    """Killed after its first trial ended, the search resumes from the state under
    ``--out``: a local folder, or S3 (moto's server), as Tune's storage."""
    if where == "s3":
        request.getfixturevalue("s3_server")
    out = str(tmp_path / "tune") if where == "local" else "s3://test/tune"
    args = ["tune", "--task", "sequence", "--data", str(prepared_small), "--out", out, "--set", "preset=small",
            "--set", "train.epochs=3", "--num-samples", "3", "--max-concurrent-trials", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "interest.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=_env(), start_new_session=True)
    try:
        deadline = time.time() + 300
        line = ""
        while not line.startswith("trial 1/3") and time.time() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the search ended before a trial did"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    first = line.split()[2].rstrip(":")

    def checkpoints(run: str) -> list[str]:
        return sorted(c for c in io.children(run, folders=True) if c.startswith("checkpoint_"))

    trial_runs = io.join(out, "trials")
    runs = {name: checkpoints(io.join(trial_runs, name)) for name in io.children(trial_runs, folders=True)}
    assert not io.exists(io.join(out, TRIALS))
    assert cli.main(args) == 0
    said = capsys.readouterr().out
    trials = io.read_parquet(io.join(out, TRIALS)).to_pylist()
    assert len(trials) == 3 and first in {t["trial"] for t in trials} and "3 trials" in said
    assert next(t for t in trials if t["trial"] == first)["epochs"] >= 1
    (done,) = [name for name in runs if first in name]
    # The ended trial is not trained again from scratch: its run is as it was, or, if Tune
    # had not yet recorded its end when the search was killed, its training resumed after
    # the epochs it had reported.
    reported = int(line.split(" after ")[1].split()[0])
    now = checkpoints(io.join(trial_runs, done))
    if now != runs[done]:
        state = json.loads(io.read_bytes(io.join(trial_runs, done, now[-1], "state.json")))
        assert state["resumed_from"] >= min(reported, 3)  # 3 epochs (a report may follow the last)
    best = yaml.safe_load(io.read_bytes(io.join(out, BEST)))
    assert best["preset"] == "small" and best["train"]["epochs"] == 3
    assert cli.main(["train", "--task", "sequence", "--data", str(prepared_small), "--out", str(tmp_path / "run"),
                     "--num-workers", "1", "--config", io.join(out, BEST)]) == 0
    assert "run " in capsys.readouterr().out
