"""Hyperparameter search with Ray Tune, on the shared training loop.

Each trial is a Tune function that builds and fits the task's ``TorchTrainer`` (Ray
2.60's Train V2 pattern: a trainer is not a Tune trainable), with the same distributed
training as ``interest train``. Ray Train's ``TuneReportCallback`` hands every epoch's
validation figures to Tune, and ASHA stops the weak trials at its rungs (a closed-form
model, EASE or ItemKNN, is a single-step trial). Trials train without the refit epoch:
the search compares validation figures, which the refit would train on; the winner is
refit when it is trained for real (``interest train --config best.yaml``).

Everything lives under ``OUT`` (local or ``s3://``): Tune's own state (``OUT/search``,
from which an interrupted search resumes), each trial's training run
(``OUT/trials/<trial>``), the trials table, ``best.yaml`` and a plot of the search.

Library code: the caller has started Ray.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa
import ray
import yaml
from ray import PlacementGroupID
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.util.placement_group import PlacementGroup, remove_placement_group

from interest import config as C
from interest import io
from interest.common.space import Choice, Int, Param, Space, check, merge
from interest.config import ConfigError
from interest.report.plots import curves_chart
from interest.tasks import get_task
from interest.train.checkpoint import latest_checkpoint, load_state
from interest.train.loop import check as check_training
from interest.train.loop import PLACEMENT_GROUP, trainer

log = logging.getLogger(__name__)

SEARCH = "search"  # Tune's state under OUT
TRIALS = "trials.parquet"
BEST = "best.yaml"
PLOT = "search.png"


@dataclass
class SearchConfig:
    """``interest tune``'s settings.

    Args:
        num_samples: trials (configurations drawn from the space).
        max_concurrent_trials: trials at once; None: as many as the cluster's CPUs hold
            (:func:`concurrency`).
        time_budget_s: stop starting and running trials after this long; None: no limit.
        num_workers: Ray Train workers of each trial.
        cpus_per_trial: CPUs of each trial's training workers, split between them.
        gpus_per_trial: GPUs of each trial's workers, split between them (0: CPU).
        grace_period: epochs every trial trains before ASHA may stop it.
        reduction_factor: ASHA keeps about 1 in this many trials at each rung.
        seed: of the configurations drawn.
        start_from_defaults: the first trial trains the base config's own values of the
            space's keys (where each lies in its range), so the search's best is never
            worse on validation than what the user had. Without it, a search of 48
            trials on MovieLens 100K (sequence) returned a config 0.020 NDCG@10 worse on
            the test users than the defaults (bench/tune.py).
    """

    num_samples: int = 8
    max_concurrent_trials: int | None = None
    time_budget_s: float | None = None
    num_workers: int = 1
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    grace_period: int = 1
    reduction_factor: int = 2
    seed: int = 0
    start_from_defaults: bool = True

    def __post_init__(self):
        if self.num_samples < 1 or self.num_workers < 1 or self.grace_period < 1:
            raise ConfigError("num_samples, num_workers and grace_period must be >= 1")
        if self.cpus_per_trial < self.num_workers:
            raise ConfigError(f"cpus_per_trial ({self.cpus_per_trial}) must give each of the {self.num_workers} "
                              "worker(s) at least one CPU")
        if self.reduction_factor < 2 or self.gpus_per_trial < 0:
            raise ConfigError("reduction_factor must be >= 2 and gpus_per_trial >= 0")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ConfigError("max_concurrent_trials must be >= 1")


# The Tune function of a trial holds this much CPU beside its training workers: it only
# waits on the trainer, but counting it keeps Ray from starting more trials than fit.
FUNCTION_CPUS = 0.5


def concurrency(sc: SearchConfig, cluster_cpus: float) -> int:
    """Trials that run at once by default: every trial's workers and Tune function fit
    in the cluster's CPUs with one CPU left for Ray Data's reading tasks, which the
    trials' training waits on (held by trials, it would wait forever)."""
    per_trial = sc.cpus_per_trial + FUNCTION_CPUS
    return max(1, int((cluster_cpus - 1) // per_trial))


def default_point(base: dict[str, Any], space: Space) -> dict[str, Any] | None:
    """The base config's values of the space's keys, or None where one lies outside its
    range (a space narrowed away from the defaults is searched as given)."""
    point = {}
    for key, param in space.items():
        value = base
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        inside = (value in param.values if isinstance(param, Choice)
                  else isinstance(value, (int, float)) and param.low <= value <= param.high)
        if not inside:
            return None
        point[key] = value
    return point


def to_tune(param: Param):
    if isinstance(param, Choice):
        return tune.choice(list(param.values))
    if isinstance(param, Int):
        return tune.lograndint(param.low, param.high + 1) if param.log else tune.randint(param.low, param.high + 1)
    return tune.loguniform(param.low, param.high) if param.log else tune.uniform(param.low, param.high)


def prepare_search(task_name: str, prepared: str, base: dict[str, Any], space: Space | None,
                   fixed: dict[str, Any] | None = None) -> tuple[dict[str, Any], Space]:
    """(the base config, the space) after every check that needs no Ray: the space's
    keys, types and ranges against the task's config, and the base config's training
    (``interest train``'s checks)."""
    task = get_task(task_name)
    base = merge(base, fixed or {})
    cfg = C.from_dict(task.config_cls, base)
    space = task.space(cfg) if space is None else space
    check(space, task.config_cls, base)
    check_training(task_name, prepared, C.to_dict(cfg), 1)
    return base, space


def _trial(params: dict[str, Any], *, task_name: str, prepared: str, base: dict[str, Any], out: str,
           sc: SearchConfig, log_file: str | None) -> None:
    """One trial: the task's training with ``params`` set, its epochs reported to Tune."""
    cfg = merge(base, {**params, "train.refit": 0})
    name = tune.get_context().get_trial_name()
    gpus = sc.gpus_per_trial / sc.num_workers
    run = io.join(out, "trials", name)
    # A search restored after a crash starts its unfinished trials' records afresh (their
    # result files are rewritten), though their training resumes from its checkpoint, or,
    # finished, reports nothing more. So what the training reported before goes to Tune
    # again first: the trials table and ASHA's rungs see every epoch.
    for report in _reported(run):
        tune.report(report)
    # max_failures=0: when a stopped trial's workers lose their placement group
    # (Progress removes it), a retry would start a new group, which the trial's dying
    # controller then leaves behind, holding CPUs that every later trial waits on for
    # ever (seen: three such groups hung a search). A trial is a sample; Tune decides
    # what a failed one means.
    result = trainer(task_name, prepared, run, cfg, num_workers=sc.num_workers,
                     cpus_per_worker=max(1, sc.cpus_per_trial // sc.num_workers), use_gpu=gpus > 0,
                     gpus_per_worker=gpus, max_failures=0, log_file=log_file, callbacks=(TuneReportCallback(),),
                     report_placement_group=True).fit()
    if result.error:
        raise result.error


def search(task_name: str, prepared: str, out: str, base: dict[str, Any], space: Space, sc: SearchConfig, *,
           say: Callable[[str], None] = log.info, log_file: str | None = None) -> dict[str, Any]:
    """Run (or resume) the search; writes the trials table, ``best.yaml`` and the plot
    under ``out`` and returns the summary (best config and metric, trials, stopped
    early, seconds). ``say`` hears a line as each trial ends; the trials' training
    workers append their progress to ``log_file``."""
    task = get_task(task_name)
    cfg = C.from_dict(task.config_cls, base)
    metric = f"valid/{cfg.train.metric}"
    epochs = 1 if task.closed_form(cfg) else cfg.train.epochs
    out = out.rstrip("/") if io.is_s3(out) else os.path.abspath(out)
    prepared = prepared if io.is_s3(prepared) else os.path.abspath(prepared)
    storage_fs, parent = io.filesystem(out) if io.is_s3(out) else (None, out)
    concurrent = sc.max_concurrent_trials or concurrency(sc, ray.cluster_resources().get("CPU", 1))
    function = tune.with_resources(
        tune.with_parameters(_trial, task_name=task_name, prepared=prepared, base=base, out=out, sc=sc,
                             log_file=log_file),
        {"CPU": FUNCTION_CPUS})
    path = io.join(parent, SEARCH)  # within storage_fs on S3, as Tune takes it
    start = time.perf_counter()
    # A trial that had finished its training when the search was killed, but not yet been
    # recorded as done, is run again on resume: Ray Train finds the run finished and
    # reports nothing, and Tune's final result of it has no metric. Its earlier epochs'
    # figures are in Tune's records; ASHA skips a result without the metric.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    Progress.say = staticmethod(say)
    progress = Progress(sc.num_samples, metric, epochs, cfg.train.patience)
    defaults = default_point(C.to_dict(cfg), space) if sc.start_from_defaults else None
    if sc.start_from_defaults and defaults is None:
        log.info("the defaults lie outside the space: no trial starts from them")
    if tune.Tuner.can_restore(path, storage_filesystem=storage_fs):
        log.info("resuming the search in %s", io.join(out, SEARCH))
        tuner = tune.Tuner.restore(path, trainable=function, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=storage_fs)
    else:
        tuner = tune.Tuner(
            function,
            param_space={key: to_tune(p) for key, p in space.items()},
            tune_config=tune.TuneConfig(
                num_samples=sc.num_samples, time_budget_s=sc.time_budget_s,
                # Draws repeat with the seed. The concurrency goes to the generator itself:
                # Tune ignores max_concurrent_trials beside a search_alg instance.
                search_alg=BasicVariantGenerator(random_state=sc.seed, max_concurrent=concurrent,
                                                 points_to_evaluate=[defaults] if defaults else None),
                # stop_last_trials=False: a trial that reaches max_t ends by itself, and shuts
                # its training down cleanly, instead of being stopped at its last report.
                scheduler=ASHAScheduler(metric=metric, mode="max", time_attr="training_iteration", max_t=epochs,
                                        stop_last_trials=False,
                                        grace_period=min(sc.grace_period, epochs),
                                        reduction_factor=sc.reduction_factor)),
            run_config=tune.RunConfig(name=SEARCH, storage_path=parent, storage_filesystem=storage_fs,
                                      verbose=0, callbacks=[progress]))
    grid = tuner.fit()
    seconds = time.perf_counter() - start
    trials = trials_table(grid, metric, epochs, cfg.train.patience, space)
    io.write_parquet(trials, io.join(out, TRIALS))
    finished = trials.filter(pa.compute.is_valid(trials["best"])).sort_by([("best", "descending")])
    if finished.num_rows == 0:
        errors = [str(r.error)[:300] for r in grid if r.error]
        raise RuntimeError(f"no trial of the search measured {metric} (a NaN says the validation split holds "
                           f"nothing it can measure)" + (f"; first error: {errors[0]}" if errors else ""))
    winner = json.loads(finished["params"][0].as_py())
    best_cfg = C.to_dict(C.from_dict(task.config_cls, merge(base, winner)))
    write_best(io.join(out, BEST), task_name, prepared, best_cfg, finished["best"][0].as_py(), metric)
    plot(trials, metric, io.join(out, PLOT))
    rows = trials.to_pylist()
    return {"task": task_name, "metric": metric, "best": {"params": winner, metric: finished["best"][0].as_py()},
            "trials": len(rows), "stopped_early": sum(r["status"] == "stopped_early" for r in rows),
            "errors": sum(r["status"] == "error" for r in rows), "search_s": round(seconds, 1),
            "concurrent": concurrent, "out": out}


def _reported(run: str) -> list[dict[str, Any]]:
    """Every report of the training run ``run`` so far: none before its first checkpoint."""
    try:
        return load_state(latest_checkpoint(run)).get("history", [])
    except io.InputError:  # no checkpoint yet
        return []


def status(last: dict[str, Any], epochs: int, patience: int) -> str:
    """How a trial that reported ``last`` ended: ``finished`` (its epochs done, or the
    task's own early stopping: ``patience`` epochs without a better one) or
    ``stopped_early`` (by ASHA)."""
    epoch, best_epoch = last.get("epoch", epochs - 1), last.get("best_epoch", -1)
    return "finished" if epoch + 1 >= epochs or epoch - best_epoch >= patience else "stopped_early"


class Progress(tune.Callback):
    """A line to ``say`` as each trial ends, and the removal of its training workers'
    placement group. Ray Train 2.60 leaves that group behind when Tune stops a trial
    (ASHA, or the budget): the trial's controller dies with it, and the cleaner that
    should notice asks the state API, which a Ray without its dashboard lacks, so the
    CPUs stay reserved and the next trials wait for them for ever (seen here: three
    stopped trials held three of four CPUs)."""

    # Where the lines go, for this process. Not an attribute of the callback: Tune pickles
    # its run config, callbacks included, and a restored search unpickles the callback of
    # the first run, whose console (or a test's captured stream) is not this one.
    say: Callable[[str], None] = staticmethod(log.info)

    def __init__(self, total: int, metric: str, epochs: int, patience: int):
        self.total, self.metric, self.epochs, self.patience = total, metric, epochs, patience
        self.ended = 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended += 1
        last = trial.last_result or {}
        _remove_placement_group(last)
        self.say(f"trial {self.ended}/{self.total} {trial.trial_id}: "
                 f"{status(last, self.epochs, self.patience).replace('_', ' ')} after "
                 f"{last.get('training_iteration', 0)} report(s), best {self.metric} {last.get('best', math.nan):.4f}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended += 1
        _remove_placement_group(trial.last_result or {})
        self.say(f"trial {self.ended}/{self.total} {trial.trial_id}: failed (its error is in the log)")


def _remove_placement_group(last: dict[str, Any]) -> None:
    if not last.get(PLACEMENT_GROUP):
        return
    group = PlacementGroup(PlacementGroupID(bytes.fromhex(last[PLACEMENT_GROUP])))
    if ray.util.placement_group_table(group).get("state") not in (None, "REMOVED"):
        remove_placement_group(group)


def trials_table(grid, metric: str, epochs: int, patience: int, space: Space) -> pa.Table:
    """One row per trial: its parameters (a column each, and as JSON), the metric after
    every epoch, epochs trained, best metric, when it started, seconds, and :func:`status`
    (or ``error``)."""
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        curve = [float(v) for v in frame[metric].dropna()] if frame is not None and metric in frame else []
        started = None
        if frame is not None and len(frame) and "timestamp" in frame:  # the first report, less its epoch
            first = frame.iloc[0]
            started = dt.datetime.fromtimestamp(float(first["timestamp"]) - float(first.get("time_total_s", 0)),
                                                dt.timezone.utc)
        last = result.metrics or {}
        params = {k: v for k, v in (result.config or {}).items() if k in space}
        rows.append({"trial": last.get("trial_id") or os.path.basename(result.path.rstrip("/")),
                     "status": "error" if result.error is not None else status(last, epochs, patience),
                     "params": json.dumps(params, sort_keys=True), **{f"param.{k}": params.get(k) for k in space},
                     "metric": curve, "epochs": len(curve), "best": max(curve) if curve else None,
                     "started": started, "seconds": float(last.get("time_total_s", math.nan))})
    return pa.Table.from_pylist(rows)


def write_best(path: str, task_name: str, prepared: str, cfg: dict[str, Any], value: float, metric: str) -> None:
    header = (f"# The best config of `interest tune --task {task_name}` on {prepared}: {metric} {value:.4f}.\n"
              f"# Train it (with its refit) by: interest train --task {task_name} --data {prepared} "
              f"--out RUN --config best.yaml\n")
    io.write_bytes((header + yaml.safe_dump(cfg, sort_keys=False)).encode(), path)


def plot(trials: pa.Table, metric: str, path: str) -> None:
    """The metric of each trial against search time (each epoch at the trial's elapsed
    seconds, spread evenly), early-stopped trials marked."""
    curves = {}
    for row in trials.to_pylist():
        if not row["metric"]:
            continue
        n, seconds = len(row["metric"]), row["seconds"] if row["seconds"] == row["seconds"] else len(row["metric"])
        curves[row["trial"]] = ([seconds * (i + 1) / n for i in range(n)], row["metric"],
                                row["status"] == "stopped_early")
    title = f"search: {metric} per trial"
    if not io.is_s3(path):
        curves_chart(path, curves, title=title, xlabel="trial time (s)", ylabel=metric)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = curves_chart(os.path.join(tmp, PLOT), curves, title=title, xlabel="trial time (s)", ylabel=metric)
        with open(local, "rb") as f:
            io.write_bytes(f.read(), path)
