"""The nightly job, step by step: prepare, embed items, train, evaluate and gate, refit,
score every user for every output in one pass, publish.

Each step is resumable. A step's inputs (files, configs, the runs it reads) make its
fingerprint; a step that finished with the same fingerprint is skipped on a rerun, so a
rerun after a crash starts where the crash was, and a rerun of an unchanged night does
nothing. A training interrupted half-way resumes from its latest checkpoint (Ray
Train). Records live in ``WORK/_steps/``; the warehouse holds only published tables
and the run manifests (:mod:`interest.pipeline.warehouse`).

Library code: the caller (``ray_jobs/pipeline.py``) has started Ray.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import sys
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from interest import config as C
from interest import io
from interest import schemas as S
from interest.common import tags as L
from interest.config import ConfigError
from interest.data import privacy
from interest.data.prepare import CHANGED, event_summary, prepare
from interest.data.prepared import load_report
from interest.data.synthetic import generate
from interest.evaluate.baselines import GRIDS
from interest.evaluate import published
from interest.evaluate.harness import evaluate
from interest.pipeline import warehouse as W
from interest.common.space import check as check_space
from interest.common.space import from_yaml
from interest.pipeline.config import (TAG_TASKS, PipelineConfig, TaskStep, TuneStep, absolute, gate_of, retrain_days,
                                      task_config)
from interest.report.build import REPORTS
from interest.report.build import build as build_report
from interest.score.batch import plan, score_users, write_audiences
from interest.score.carry import carry
from interest.tasks import get_task
from interest.tasks.zeroshot.newtags import read_for, read_new_tags
from interest.text.embed import embed_items
from interest.text.encoder import resolve
from interest.train.checkpoint import latest_checkpoint, load_state
from interest.train.loop import fit
from interest.tune.search import BEST, SearchConfig, prepare_search, search

log = logging.getLogger(__name__)

STEPS = ("prepare", "embed", "train", "evaluate", "refit", "score", "publish")
MARKER = "_pipeline.json"  # in a run folder: the training finished, with what
SCORED = "_scored.json"  # in a scoring attempt's folder: every file of the pass is written
# A node lost in the middle of the scoring pass fails whichever Ray operation had work
# there; Ray retries tasks and restarts actors, but not every operation (Ray Data's
# Parquet footer readers, for one). The pass then runs again, as a new attempt, up to
# this many times in all.
SCORE_TRIES = 3
# What a failure caused by the cluster (not by the job) says. Told by its text: that is
# all that survives when Ray Data re-raises a remote error it cannot deserialize.
LOST_TO_THE_CLUSTER = ("ActorDiedError", "NodeDiedError", "WorkerCrashedError", "ObjectLostError",
                       "OwnerDiedError", "ActorUnavailableError", "node has died", "terminated unexpectedly")


def lost_to_the_cluster(exc: BaseException) -> bool:
    """Whether ``exc`` came from a node, worker or object the cluster lost."""
    text = "".join(traceback.format_exception(exc))
    return any(sign in text for sign in LOST_TO_THE_CLUSTER)


class GateFailed(RuntimeError):
    """A model did not clear its evaluation's floor; nothing was published."""


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def files_fingerprint(path: str | None) -> list[tuple[str, int, int]]:
    """(file, size, modification time) of every file ``path`` names: inputs that changed
    change it."""
    if not path:
        return []
    fs, _ = io.filesystem(path)
    out = []
    for f in io.expand(path):
        info = fs.get_file_info(f)
        out.append((f, info.size, int(info.mtime.timestamp()) if info.mtime else 0))
    return out


class Console:
    """What a person watching the job sees: a line per step with its duration, a
    progress bar on long steps, a summary at the end. Details go to the log file."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._shown = -1.0

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    @contextmanager
    def step(self, number: int, name: str, what: str) -> Iterator[dict[str, str]]:
        """``[n/7] name: what ... done in S s (note)``; the body may set ``note``."""
        head = f"[{number}/{len(STEPS)}] {name:<8} {what}"
        self.line(head + " ...")
        start, out = time.perf_counter(), {"note": ""}
        yield out
        note = f" ({out['note']})" if out["note"] else ""
        self.line(f"{' ' * (len(str(number)) * 2 + 3)} {time.perf_counter() - start:6.1f} s{note}")

    def progress(self, done: int, total: int, rows: int) -> None:
        """A bar of users scored / total and rows written: redrawn on a terminal, a line
        per tenth otherwise (logs stay readable)."""
        share = done / max(total, 1)
        if not self.tty and share < 1 and share - self._shown < 0.1:
            return
        self._shown = share
        bar = "#" * int(share * 30)
        text = f"           [{bar:<30}] {done:,}/{total:,} users, {rows:,} rows"
        if self.tty:
            print("\r" + text, end="" if share < 1 else "\n", file=self.stream, flush=True)
        else:
            self.line(text)


@dataclass
class Pipeline:
    """One night's run of ``cfg``; :meth:`run` returns the manifest it published."""

    cfg: PipelineConfig
    raw_config: dict[str, Any]
    console: Console = field(default_factory=Console)
    force: bool = False
    log_file: str | None = None  # where training workers write their progress lines too

    def __post_init__(self):
        self.day = self.cfg.dt
        self.prepared = absolute(self.cfg.prepared)
        self.steps_dir = io.join(self.cfg.work, "_steps")
        self.tuned: dict[str, dict[str, Any]] = {}  # task -> the best config of its search
        # The forget list's digest: each model's marker records the list it was trained
        # under, and a run trained under another list may hold a forgotten user.
        self.forget_fp = privacy.forget_fingerprint(absolute(self.cfg.privacy.forget))
        self.key = self.cfg.privacy.key()  # in memory only: never in a manifest or a log
        self.reused: set[str] = set()  # tasks whose model was trained before tonight
        self.manifest: dict[str, Any] = {"dt": self.day, "status": "running", "started": _now(),
                                         "config": self.raw_config, "steps": [], "models": {}, "evaluation": {}}

    # --- step records ---------------------------------------------------------------

    def _record_path(self, name: str) -> str:
        return io.join(self.steps_dir, f"{name}.json")

    def done(self, name: str, fp: str) -> dict[str, Any] | None:
        """The result of step ``name`` if it finished with fingerprint ``fp``."""
        path = self._record_path(name)
        if self.force or not io.exists(path):
            return None
        record = io.read_json(path)
        return record["result"] if record.get("fingerprint") == fp else None

    def record(self, name: str, fp: str, result: dict[str, Any]) -> dict[str, Any]:
        io.write_json({"fingerprint": fp, "finished": _now(), "result": result}, self._record_path(name))
        return result

    @contextmanager
    def step(self, number: int, name: str, what: str) -> Iterator[dict[str, str]]:
        start = time.perf_counter()
        with self.console.step(number, name, what) as out:
            yield out
        self.manifest["steps"].append({"step": name, "what": what, "seconds": round(time.perf_counter() - start, 1),
                                       "note": out["note"]})

    # --- the job ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        with self.step(1, "prepare", f"{cfg.input.get('input')} -> {cfg.prepared}") as out:
            data = self.prepare()
            out["note"] = data.pop("note")
        self.manifest["input"] = data
        if any(name in ("tags", "recommend", "zeroshot") for name in cfg.tasks):
            with self.step(2, "embed", f"item texts -> {cfg.item_vectors}") as out:
                out["note"] = self.embed()
        runs = {}
        for name, step in cfg.tasks.items():
            if step.tune is not None:
                with self.step(3, "tune", name) as out:
                    out["note"] = self.tune(name, step.tune)
            with self.step(3, "train", name) as out:
                runs[name], out["note"] = self.train(name, step)
        for name, step in cfg.tasks.items():
            with self.step(4, "evaluate", name) as out:
                out["note"] = self.evaluate(name, step, runs[name])
        failed = [f"{name}: {e['gate']['why']}" for name, e in self.manifest["evaluation"].items()
                  if not e["gate"]["passed"]]
        if failed:
            self.finish("stopped by the gate: " + "; ".join(failed))
            raise GateFailed("nothing published; " + "; ".join(failed))
        scored = {}
        for name, step in cfg.tasks.items():
            with self.step(5, "refit", name) as out:
                scored[name], out["note"] = self.refit(name, step, runs[name])
        run_id = f"{self.day}-{fingerprint(self.day, data['fingerprint'], self._versions(scored), self.score_settings())[:8]}"
        self.manifest["run_id"] = run_id
        if not self.force and io.exists(W.manifest_path(cfg.out, run_id)):
            before = io.read_json(W.manifest_path(cfg.out, run_id))
            if before["status"] == "published" and all((W.current(cfg.out, t, self.day) or {}).get("run_id") == run_id
                                                        for t in before["tables"]):
                self.console.line(f"[6/7] score, [7/7] publish: run {run_id} (same models, data and settings) is "
                                  f"already published; nothing to do (--force scores again)")
                return {**before, "already_published": True}
        with self.step(6, "score", f"every user, {len(scored)} task(s) in one pass") as out:
            for tries in range(1, SCORE_TRIES + 1):
                try:
                    scores, out["note"] = self.score(run_id, scored)
                    break
                except Exception as exc:
                    if tries == SCORE_TRIES or not lost_to_the_cluster(exc):
                        raise
                    log.warning("scoring pass %d of %d failed: the cluster lost a node or worker", tries,
                                SCORE_TRIES, exc_info=True)
                    self.console.line(f"           the cluster lost a node or worker mid-pass ({type(exc).__name__}); "
                                      f"scoring again as a new attempt ({tries + 1}/{SCORE_TRIES})")
        with self.step(7, "publish", f"{len(scores['tables'])} table(s) -> {cfg.out} dt={self.day}") as out:
            out["note"] = self.publish(run_id, scores)
        self.report()
        return self.manifest

    def report(self) -> None:
        """Draw the day's report. After the publish, so a report that fails leaves the
        tables published: the console says so and why, and `interest report` redraws it."""
        start = time.perf_counter()
        try:
            path = build_report(self.cfg.out, self.day, threshold=self.cfg.report.drift_threshold)
        except Exception as exc:  # noqa: BLE001  (the tables are out; the report is the readers' view of them)
            log.warning("the report of dt=%s failed", self.day, exc_info=True)
            self.console.line(f"report: not written ({type(exc).__name__}: {exc}); the tables are published. "
                              f"Retry: interest report {self.cfg.out} --dt {self.day}")
            return
        self.console.line(f"report: {path} ({time.perf_counter() - start:.1f} s)")

    def prepare(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.generate is not None and not io.exists(cfg.input["input"]):
            generate(cfg.generate, os.path.dirname(cfg.input["input"].rstrip("/")))
        prepare_cfg = cfg.prepare_config()
        fp = fingerprint(C.to_dict(prepare_cfg), files_fingerprint(prepare_cfg.input),
                         files_fingerprint(prepare_cfg.items), self.forget_fp)
        result = self.done("prepare", fp) if io.exists(self.prepared) and io.is_complete(self.prepared) else None
        note = "unchanged input: kept"
        if result is None:
            prepare(prepare_cfg)
            report = load_report(self.prepared)
            result = self.record("prepare", fp, {
                "fingerprint": fp, "prepared": self.prepared, "files": len(report["files"]),
                "events": report["total"]["kept"], "quarantined": report["total"]["quarantined"],
                "users": report["users"], "items": report["items"]["total"],
                "duplicates_removed": report["total"]["duplicates_removed"],
                "forgotten": report["total"]["forgotten"],
                "quarantine_reasons": report["quarantine_reasons"], "days": report["days"],
                "public_dataset": getattr(published.source_of(report), "dataset", None),
                "update": {k: v for k, v in report["update"].items() if k not in ("file_info", "new_files")},
                **event_summary(self.prepared)})
            note = f"{result['events']:,} events of {result['users']:,} users"
            if result["update"]["mode"] == "incremental":
                note += (f"; {result['update']['files_read']} new file(s), {result['update']['changed_users']:,} "
                         f"users with new events ({result['update']['new_users']:,} new)")
            elif cfg.incremental:
                note += f"; every file read: {result['update']['why']}"
        return {**result, "note": note}

    def embed(self) -> str:
        fp = fingerprint(self.manifest["input"]["fingerprint"], C.to_dict(self.cfg.embed))
        if self.done("embed", fp) is not None and io.exists(self.cfg.item_vectors):
            return "items unchanged: kept"
        report = self.record("embed", fp, embed_items(self.prepared, absolute(self.cfg.item_vectors), self.cfg.embed))
        return f"{report['embedded']:,} new or changed items embedded, {report['already_embedded']:,} kept"

    # --- tune, train, evaluate, refit ---------------------------------------------------

    def task_cfg(self, name: str) -> Any:
        """Task ``name``'s config as it trains: its search's best when it has one."""
        task = get_task(name)
        if name in self.tuned:
            return C.from_dict(task.config_cls, self.tuned[name], where=f"the best config of tasks.{name}: ")
        return task_config(self.cfg, name)

    def tune(self, name: str, t: TuneStep) -> str:
        """Search the task's hyperparameters when due (:class:`TuneStep`), and take the
        best config found."""
        if t.best:
            self.tuned[name] = yaml.safe_load(io.read_bytes(absolute(t.best)))
            self.manifest["models"][name] = {"tuned": {"best": t.best}}
            return f"best config {t.best}"
        base = C.to_dict(task_config(self.cfg, name))
        fp = fingerprint(base, files_fingerprint(t.space), t.num_samples)
        root = io.join(self.cfg.work, "tune", name)
        searches = [(f, io.read_json(io.join(f, MARKER))) for f in (io.join(root, d) for d in io.children(root))
                    if io.exists(io.join(f, MARKER))]
        same = [(f, m) for f, m in searches if m["fingerprint"] == fp]
        days = retrain_days(t.search)
        if t.search == "never":
            found, note = (searches[-1][0] if searches else None), "search: never"
        elif t.search == "if_missing":
            found, note = (same[-1][0] if same else None), "no search of this config"
        else:
            recent = [f for f, m in same if dt.date.fromisoformat(m["dt"]) >
                      dt.date.fromisoformat(self.day) - dt.timedelta(days)]
            found, note = (recent[-1] if recent else None), f"search: every {days} days"
        if found is None and t.search != "never":
            found = io.join(root, self.day)
            space, fixed = (None, {}) if not t.space else from_yaml(absolute(t.space), get_task(name).space(
                task_config(self.cfg, name)))
            base, space = prepare_search(name, self.prepared, base, space, fixed)
            summary = search(name, self.prepared, found, base, space,
                             SearchConfig(num_samples=t.num_samples, time_budget_s=t.time_budget_s,
                                          max_concurrent_trials=t.max_concurrent_trials,
                                          cpus_per_trial=t.cpus_per_trial),
                             say=lambda line: self.console.line(f"           {line}"), log_file=self.log_file)
            io.write_json({"dt": self.day, "fingerprint": fp, "finished": _now(),
                           "best": summary["best"], "trials": summary["trials"],
                           "stopped_early": summary["stopped_early"], "forget": self.forget_fp},
                          io.join(found, MARKER))
            note = f"{note}: {summary['trials']} trials ({summary['stopped_early']} stopped early), best " \
                   f"{summary['metric']} {summary['best'][summary['metric']]:.4f}"
        elif found is None:
            return "search: never, and no search has run: the task's own config"
        else:
            note = f"kept the search in {found}"
        self.tuned[name] = yaml.safe_load(io.read_bytes(io.join(found, BEST)))
        self.manifest["models"][name] = {"tuned": {"search": found, **io.read_json(io.join(found, MARKER))}}
        return note

    def choose_run(self, name: str, step: TaskStep) -> tuple[str, str | None]:
        """(run folder, why it must be trained; None: reuse it as it is)."""
        cfg_fp = fingerprint(C.to_dict(self.task_cfg(name)))
        if step.run:
            self._refuse_stale(name, absolute(step.run), _marker(absolute(step.run)))
            return absolute(step.run), None
        finished = finished_runs(runs_dir(self.cfg, name))
        if step.retrain == "never":
            if not finished:
                raise ConfigError(f"tasks.{name}.retrain is never, and no run of {name} exists in "
                                  f"{runs_dir(self.cfg, name)}; give tasks.{name}.run")
            self._refuse_stale(name, *finished[-1])
            return finished[-1][0], None
        # a run trained under another forget list may have learned from a forgotten user
        same = [(f, m) for f, m in finished if m["config"] == cfg_fp and m.get("forget") == self.forget_fp]
        tonight = io.join(runs_dir(self.cfg, name), self.day)
        if not same and any(m["config"] == cfg_fp for _, m in finished):
            return tonight, "the forget list changed since its training"
        if step.retrain == "always":
            return (tonight, None) if any(f == tonight for f, _ in same) else (tonight, "retrain: always")
        if step.retrain == "if_missing":
            return (same[-1][0], None) if same else (tonight, "no finished run of this config")
        days = retrain_days(step.retrain)
        if same and dt.date.fromisoformat(same[-1][1]["dt"]) > dt.date.fromisoformat(self.day) - dt.timedelta(days):
            return same[-1][0], None
        return tonight, f"retrain: every {days} days"

    def _refuse_stale(self, name: str, run: str, marker: dict[str, Any]) -> None:
        """Stop before anything is published when a run that must be reused was trained
        under another forget list than tonight's."""
        if self.forget_fp and marker.get("forget") != self.forget_fp:
            raise ConfigError(f"tasks.{name}: the run {run} was trained before the current forget list "
                              f"(privacy.forget), so it may have learned from users who asked to be forgotten; "
                              f"nothing is published. Retrain it: retrain: if_missing (or always), and no run:")

    def train(self, name: str, step: TaskStep) -> tuple[str, str]:
        run, why = self.choose_run(name, step)
        model = self.manifest["models"].setdefault(name, {})
        if why is None:
            model.update(run=run, trained=_marker(run))
            self.reused.add(name)
            return run, f"reused {run}"
        if io.exists(io.join(run, MARKER)):  # an older training of another config under tonight's name
            io.remove(run)
        task_cfg = self.task_cfg(name)
        t = self.cfg.train
        result = fit(name, self.prepared, run, C.to_dict(task_cfg), num_workers=t.num_workers, use_gpu=t.use_gpu,
                     cpus_per_worker=t.cpus_per_worker, log_file=self.log_file)
        if result.error:
            raise result.error
        metrics = result.metrics or {}
        io.write_json({"task": name, "dt": self.day, "config": fingerprint(C.to_dict(task_cfg)),
                       "prepared": self.manifest["input"]["fingerprint"], "finished": _now(),
                       "epochs": metrics.get("epoch", -1) + 1, "best_epoch": metrics.get("best_epoch"),
                       "forget": self.forget_fp, "newest": self.manifest["input"]["newest"]}, io.join(run, MARKER))
        model.update(run=run, trained=_marker(run))
        removed = self.remove_stale_runs(name)
        if removed:
            model["removed_under_forget_list"] = removed
        return run, f"{why}: trained {metrics.get('epoch', -1) + 1} epochs -> {run}"

    def remove_stale_runs(self, name: str) -> int:
        """Delete the task's runs (and their refits) and its searches' trial checkpoints
        that were trained under another forget list: their weights may hold what a
        forgotten user did. A search keeps its best config and marker, which hold none.
        Returns how many folders went."""
        if not self.forget_fp:
            return 0
        removed = 0
        root = runs_dir(self.cfg, name)
        for folder, marker in finished_runs(root):
            if marker.get("forget") != self.forget_fp:
                for d in io.children(root, folders=True):
                    if d == os.path.basename(folder) or d.startswith(os.path.basename(folder) + "+refit"):
                        io.remove(io.join(root, d))
                        removed += 1
        tune_root = io.join(self.cfg.work, "tune", name)
        for day in io.children(tune_root, folders=True):
            search_dir = io.join(tune_root, day)
            if io.exists(io.join(search_dir, MARKER)) and io.read_json(io.join(search_dir, MARKER)).get(
                    "forget") != self.forget_fp:
                for d in io.children(search_dir, folders=True):
                    io.remove(io.join(search_dir, d))
                    removed += 1
        return removed

    def evaluate(self, name: str, step: TaskStep, run: str) -> str:
        metric, beat, margin = gate_of(name, step)
        task_cfg = self.task_cfg(name)
        if name == "zeroshot" and not (getattr(task_cfg, "holdout", None) or getattr(task_cfg, "judge", None)):
            self.manifest["evaluation"][name] = {"gate": {"passed": True, "why": "not evaluated: no held-out tags "
                                                          "(tasks.zeroshot.config.holdout) to judge new tags on"}}
            return "not evaluated: no held-out tags configured"
        baselines = tuple(dict.fromkeys(["popularity", *(b for b in beat if b in GRIDS)]))
        fp = fingerprint(_marker(run), self.manifest["input"]["fingerprint"], baselines)
        path = io.join(run, "metrics_test.json")
        results = io.read_json(path) if io.exists(path) and not self.force else None
        note = "unchanged: kept"
        if results is not None and self.cfg.incremental and name in self.reused:
            # The model scores as it did when trained (its frozen state), so its evaluation then stands.
            note = "a reused model: its evaluation when trained"
        elif results is None or results.get("pipeline_fingerprint") != fp:
            results = {**evaluate(run, self.prepared, baselines=baselines), "pipeline_fingerprint": fp}
            io.write_json(results, path)
            note = f"{results['seconds']} s"
        gate = check_gate(results, metric, beat, margin)
        self.manifest["evaluation"][name] = {"metrics": _headline(results), "protocol": results.get("protocol"),
                                             "gate": gate, "file": path,
                                             "ece": {k: v["ece"] for k, v in results.get("calibration", {}).items()}}
        return f"{note}; gate {'passed' if gate['passed'] else 'FAILED'}: {gate['why']}"

    def refit(self, name: str, step: TaskStep, run: str) -> tuple[str, str]:
        """(the run to score with, what happened): the evaluated run fitted once more on
        every event, the test period included, from its chosen weights."""
        task = get_task(name)
        state = load_state(latest_checkpoint(run))
        cfg = C.from_dict(task.config_cls, state["config"])
        newest = self.manifest["input"]["newest"]
        if self.cfg.incremental and name in self.reused:
            # Its training's data, not tonight's: a reused model is not fitted again.
            newest = (_marker(run) or {}).get("newest") or newest
            earlier = latest_refit(run) if step.refit and not task.closed_form(cfg) else None
            if earlier is not None:
                self._age(name, io.read_json(io.join(earlier, MARKER)).get("newest") or max(newest.values()),
                          refit=True, run=earlier)
                return earlier, f"a reused model: its refit {earlier}"
        if not step.refit or task.closed_form(cfg):
            why = "off in the config" if not step.refit else "a closed-form model is not refit"
            trained_to = max(newest[s] for s in ("train", "valid") if s in newest) if cfg.train.refit else newest["train"]
            self._age(name, trained_to, refit=False)
            return run, f"{why}; newest training event {trained_to}"
        target = f"{run}+refit-{self.day}"
        fp = fingerprint(_marker(run), self.manifest["input"]["fingerprint"], self.cfg.refit_epochs)
        marker = io.join(target, MARKER)
        if io.exists(marker) and io.read_json(marker).get("fingerprint") == fp and not self.force:
            self._age(name, max(newest.values()), refit=True, run=target)
            return target, f"unchanged: kept {target}"
        if io.exists(marker):  # a refit of other weights or data; a half-done one resumes
            io.remove(target)
        refit_cfg = C.to_dict(cfg)
        refit_cfg["train"] = {**refit_cfg["train"], "events": "all", "epochs": self.cfg.refit_epochs, "refit": 0}
        t = self.cfg.train
        result = fit(name, self.prepared, target, refit_cfg, num_workers=t.num_workers, use_gpu=t.use_gpu,
                     cpus_per_worker=t.cpus_per_worker, init_from=latest_checkpoint(run),
                     log_file=self.log_file)
        if result.error:
            raise result.error
        io.write_json({"task": name, "dt": self.day, "fingerprint": fp, "from": run, "finished": _now(),
                       "epochs": self.cfg.refit_epochs, "newest": max(newest.values())}, marker)
        self._age(name, max(newest.values()), refit=True, run=target)
        return target, f"{self.cfg.refit_epochs} epoch(s) on every event -> {target}"

    def _age(self, name: str, newest: str, *, refit: bool, run: str | None = None) -> None:
        """The manifest's note of how recent the scoring model's training events are."""
        days = (dt.date.fromisoformat(self.day) - dt.datetime.fromisoformat(newest).date()).days
        self.manifest["models"][name].update(refit=refit, scored_with=run or self.manifest["models"][name]["run"],
                                             newest_training_event=newest, newest_training_event_age_days=days)

    # --- score and publish --------------------------------------------------------------

    def score_settings(self) -> dict[str, Any]:
        return {"score": C.to_dict(self.cfg.score),
                "tasks": {n: {"top_k": s.top_k, "audience": s.audience,  # the tags file by its contents
                              "new_tags": hashlib.sha256(io.read_bytes(absolute(s.new_tags))).hexdigest()
                              if s.new_tags else None}
                          for n, s in self.cfg.tasks.items()}}

    @staticmethod
    def _versions(scored: dict[str, str]) -> dict[str, Any]:
        return {name: [run, _marker(run)] for name, run in scored.items()}

    def score(self, run_id: str, scored: dict[str, str]) -> tuple[dict[str, Any], str]:
        cfg, day = self.cfg, self.day
        for attempt in W.attempts(cfg.out, run_id):
            marker = io.join(W.attempts_root(cfg.out), attempt, SCORED)
            if io.exists(marker) and not self.force:
                return io.read_json(marker), "scored before this rerun: kept"
        # A pass that crashed half-way: its files are not trusted, and its actors may still
        # be writing (a killed driver's Ray workers finish their queued batches), so this
        # attempt writes to a folder of its own. One that readers are pointed at (S3, a
        # rerun with --force) stays until another replaces it.
        W.discard_attempts(cfg.out, run_id + ".", keep=W.live_attempts(cfg.out, day))
        attempt = f"{run_id}.{uuid.uuid4().hex[:8]}"
        behaviors = self.manifest["input"]["behaviors"]
        withheld = self.withheld_items() if cfg.privacy.withholds_items else None
        outputs = []
        for name, run in scored.items():
            step = cfg.tasks[name]
            table = get_task(name).output
            outputs.append(plan(run, self.prepared, W.staged(cfg.out, attempt, table, day), top_k=step.top_k,
                                tags=absolute(step.new_tags), behavior_counts=behaviors, withheld=withheld))
        total = self.manifest["input"]["users"]
        start = time.perf_counter()
        before, why = self.carry_from(scored)
        carried = {}
        if before is not None:  # the users without new events keep last night's rows
            changed = io.read_parquet(io.join(self.prepared, CHANGED), columns=[S.USER_ID]).column(S.USER_ID)
            drop = privacy.pseudonyms(changed, self.key) if self.key is not None else changed.combine_chunks()
            for o in outputs:
                carried[o.table] = carry(W.current(cfg.out, o.table, before["dt"])["files"], o.folder, drop,
                                         self.prepared)
            total = self.manifest["input"]["update"]["changed_users"]
        done = score_users(outputs, self.prepared, batch_size=cfg.score.batch_size,
                           concurrency=cfg.score.concurrency, num_gpus=cfg.score.num_gpus,
                           progress=lambda users, rows: self.console.progress(users, total, rows), key=self.key,
                           users=CHANGED if before is not None else "sequences", carried=carried)
        seconds = time.perf_counter() - start
        kept = done["carried_users"]
        if done["users"] + kept != self.manifest["input"]["users"]:
            raise RuntimeError(f"{done['users']:,} users scored and {kept:,} carried over, of "
                               f"{self.manifest['input']['users']:,} prepared users")
        tables = {o.table: {"rows": done["rows"][o.table], "task": o.task, "params": o.scalars} for o in outputs}
        for table, n in done["withheld"].items():  # rows the model ranked that name a sensitive item
            tables[table]["withheld"] = n
        zeroshot = [o for o in outputs if o.table == "user_zeroshot"]
        if zeroshot:
            n = cfg.tasks[zeroshot[0].task].audience
            rows = write_audiences(zeroshot[0].folder, W.staged(cfg.out, attempt, "tag_audiences", day), n,
                                   len(zeroshot[0].params["tag_names"]))
            tables["tag_audiences"] = {"rows": rows, "task": zeroshot[0].task, "params": {"audience": n}}
            done["summary"]["tag_audiences"] = {"sources": {"model": rows}}
        result = {"users": done["users"] + kept, "tables": tables, "summary": done["summary"], "attempt": attempt,
                  "users_per_s": round(done["users"] / max(seconds, 1e-9), 1), "scoring": self.scoring(scored),
                  "incremental": {"scored_users": done["users"], "carried_users": kept,
                                  "carried_from": before["run_id"] if before else None, "why": why}}
        if self.key is not None:  # the link from pseudonym to user, kept apart from the warehouse
            folder = W.mapping_partition(absolute(cfg.privacy.mapping), day)
            result["mapping"] = {"path": folder, "rows": privacy.write_mapping(self.prepared, folder, self.key)}
        io.write_json(result, io.join(W.attempts_root(cfg.out), attempt, SCORED))
        note = f"{done['users']:,} users, {sum(t['rows'] for t in tables.values()):,} rows, " \
               f"{result['users_per_s']:,.0f} users/s"
        return result, note + (f"; {kept:,} users' rows carried over from {before['run_id']}" if before else "")

    def scoring(self, scored: dict[str, str]) -> str:
        """What makes a user's rows what they are, besides the user's events: the models,
        the scoring settings, the privacy settings (the key by a check value of it, never
        the key) and the tables' schemas (rows of an older release are not carried into a
        table with more columns). Two nights with the same score a user alike."""
        p = self.cfg.privacy
        check = privacy.pseudonyms(pa.array(["interest key check"]), self.key)[0].as_py() if self.key else None
        schemas = {t: schema.to_string(show_schema_metadata=False) for t, schema in S.OUTPUTS.items()}
        return fingerprint(self._versions(scored), self.score_settings(), check, p.exclude_tags, p.withholds_items,
                           self.forget_fp, schemas)

    def carry_from(self, scored: dict[str, str]) -> tuple[dict[str, Any] | None, str]:
        """(the published run whose rows tonight's unchanged users keep, why) or (None,
        why every user is scored): incremental, the prepared data updated from the one that
        run scored, and every user scored as that run did."""
        if not self.cfg.incremental:
            return None, "incremental: false"
        update = self.manifest["input"].get("update") or {"mode": "full", "why": "prepared before incremental runs"}
        if update["mode"] != "incremental":
            return None, f"the preparation read every file ({update['why']})"
        before = W.latest_published(self.cfg.out)
        if before is None or before["dt"] >= self.day:
            return None, "no earlier day published"
        if before.get("input", {}).get("update", {}).get("id") != update["previous"]:
            return None, f"dt={before['dt']} scored another version of the prepared data than this one updates"
        if before.get("scoring") != self.scoring(scored):
            return None, f"a model or a setting changed since dt={before['dt']}"
        if any((W.current(self.cfg.out, t, before["dt"]) or {}).get("run_id") != before["run_id"]
               for t in before["tables"]):
            return None, f"dt={before['dt']}'s partitions are no longer run {before['run_id']}'s"
        return before, f"{update['changed_users']:,} users with new events"

    def withheld_items(self) -> pa.Array | None:
        """The item ids under an excluded tag (``privacy.exclude_tags``), by the tags of the
        tags task's config (or zeroshot's, or the defaults): never recommended nor
        predicted, since that would reveal the interest."""
        exclude = self.cfg.privacy.exclude_tags
        if not exclude:
            return None
        named = next((n for n in TAG_TASKS if n in self.cfg.tasks), None)
        tags_cfg = task_config(self.cfg, named) if named else None  # None: the tag defaults
        items = io.read_parquet(io.join(self.prepared, "items"),
                                columns=[S.ITEM_IDX, S.ITEM_ID, S.CATEGORY]).sort_by(S.ITEM_IDX)
        space = L.build(items, taxonomy=getattr(tags_cfg, "taxonomy", None),
                        source=getattr(tags_cfg, "tag_source", "levels"),
                        separator=getattr(tags_cfg, "separator", "."), exclude=exclude)
        at = pc.index_in(pa.array(space.withheld_items).cast(pa.int32()), value_set=items.column(S.ITEM_IDX))
        return pc.take(items.column(S.ITEM_ID), at).combine_chunks()

    def publish(self, run_id: str, scores: dict[str, Any]) -> str:
        cfg, day = self.cfg, self.day
        published, replaced = W.publish_attempt(cfg.out, scores["attempt"], list(scores["tables"]), day, run_id)
        for table, (location, files) in published.items():
            scores["tables"][table].update(path=location, files=[f.rsplit("/", 1)[-1] for f in files])
        self.manifest["attempt"] = scores["attempt"]
        self.manifest["scoring"] = scores["scoring"]
        self.manifest["incremental"] = scores["incremental"]
        self.manifest["tables"] = scores["tables"]
        self.manifest["users"] = scores["users"]
        self.manifest["summary"] = summary_with_shares(scores["summary"], scores["users"],
                                                       self.manifest["input"]["items"])
        previous = W.latest_published(cfg.out, other_than=run_id)
        self.manifest["drift"] = drift(self.manifest["summary"], previous["summary"]) if previous else {}
        self.manifest["drift_against"] = previous["run_id"] if previous else None
        self.manifest["privacy"] = {"pseudonymized": self.key is not None, "mapping": scores.get("mapping"),
                                    "forget_list": self.forget_fp,
                                    "forgotten_events": self.manifest["input"].get("forgotten", 0),
                                    "excluded_tags": cfg.privacy.exclude_tags,
                                    "withheld_rows": {t: info.get("withheld", 0) for t, info in scores["tables"].items()}}
        if self.forget_fp and (previous or {}).get("privacy", {}).get("forget_list") != self.forget_fp:
            self.forget_earlier_days()
        self.finish("published")
        # What no reader is pointed at: this day's other attempts, and on S3 the files of
        # the run before the one just replaced (the replaced run's stay for queries
        # already running).
        W.discard_attempts(cfg.out, f"{day}-", keep=W.live_attempts(cfg.out, day) | replaced)
        return f"run {run_id}; manifest {W.manifest_path(cfg.out, run_id)}"

    def forget_earlier_days(self) -> None:
        """The forget list changed: remove its users from the days published before
        (tables, manifests, pseudonym mappings), and redraw the earlier reports that
        name one of them (their quarantine examples)."""
        cfg = self.cfg
        forget = privacy.read_forget(absolute(cfg.privacy.forget))
        rewritten = W.forget_earlier_days(cfg.out, self.day, forget, self.key, mapping=absolute(cfg.privacy.mapping))
        ids = forget.to_pylist()
        redrawn = []
        root = io.join(cfg.out, REPORTS)
        for name in io.children(root, folders=True):
            page = io.join(root, name, "report.html")
            day = name.removeprefix("dt=")
            if day != self.day and io.exists(page) and any(i in io.read_bytes(page).decode() for i in ids):
                build_report(cfg.out, day, threshold=cfg.report.drift_threshold)
                redrawn.append(day)
        self.manifest["privacy"].update(earlier_days_rewritten=rewritten, reports_redrawn=redrawn)
        self.console.line(f"           forget list changed: {len(rewritten)} earlier day(s) rewritten without its "
                          f"users, {len(redrawn)} report(s) redrawn")

    def finish(self, status: str) -> None:
        self.manifest.update(status=status, finished=_now())
        run_id = self.manifest.setdefault("run_id", f"{self.day}-stopped-{_now().replace(':', '')}")
        io.write_json(self.manifest, W.manifest_path(self.cfg.out, run_id))


def runs_dir(cfg: PipelineConfig, name: str) -> str:
    return absolute(io.join(cfg.work, "runs", name))


def latest_refit(run: str) -> str | None:
    """The newest finished refit of ``run`` (``RUN+refit-DAY``), or None."""
    parent, name = run.rstrip("/").rsplit("/", 1)
    found = [io.join(parent, d) for d in io.children(parent, folders=True) if d.startswith(name + "+refit-")]
    found = [f for f in found if io.exists(io.join(f, MARKER))]
    return found[-1] if found else None


def finished_runs(root: str) -> list[tuple[str, dict[str, Any]]]:
    """(folder, marker) of the finished trainings under ``root``, oldest first (refits excluded)."""
    found = [io.join(root, d) for d in io.children(root, folders=True) if "+refit" not in d]
    return [(f, io.read_json(io.join(f, MARKER))) for f in found if io.exists(io.join(f, MARKER))]


def check(cfg: PipelineConfig) -> None:
    """Everything that can be wrong with a pipeline request, on the driver before Ray
    starts: storage, inputs, runs that must exist, new-tags files, the encoder."""
    cfg.privacy.key()  # a missing or short key, before anything runs
    if cfg.privacy.forget:
        privacy.read_forget(absolute(cfg.privacy.forget))  # readable, with a user_id column
    for key, path in (("out", cfg.out), ("work", cfg.work)):
        probe = io.join(path, f".probe-{os.getpid()}")
        try:
            io.write_json({}, probe)
            io.remove(probe)
        except OSError as exc:  # no folder, no bucket, no permission, no credentials
            raise ConfigError(f"{key}: cannot write to {path}: {exc.strerror or exc}") from None
    if cfg.generate is None:
        io.expand(cfg.input.get("input", ""))  # InputError naming a missing input
    prepared_ready = io.exists(cfg.prepared) and io.is_complete(cfg.prepared)
    for name, step in cfg.tasks.items():
        if step.run:
            latest_checkpoint(absolute(step.run))
        elif step.retrain == "never" and not finished_runs(runs_dir(cfg, name)):
            raise ConfigError(f"tasks.{name}.retrain is never, and no finished run of {name} is in "
                              f"{runs_dir(cfg, name)}: give tasks.{name}.run or let it train")
        if step.new_tags:
            (read_for(step.new_tags, cfg.prepared) if prepared_ready else read_new_tags(step.new_tags))
        if step.tune and step.tune.best and not io.exists(absolute(step.tune.best)):
            raise ConfigError(f"tasks.{name}.tune.best: {step.tune.best} does not exist")
        if step.tune and step.tune.space:
            task, base = get_task(name), task_config(cfg, name)
            check_space(from_yaml(absolute(step.tune.space), task.space(base))[0], task.config_cls, C.to_dict(base))
    if any(name in ("tags", "recommend", "zeroshot") for name in cfg.tasks):
        resolve(cfg.embed.encoder)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _marker(run: str) -> dict[str, Any] | None:
    path = io.join(run, MARKER)
    if io.exists(path):
        return io.read_json(path)
    return {"given": run, "checkpoint": latest_checkpoint(run).rsplit("/", 1)[-1]}


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    """The methods' figures of an evaluation (the numbers, not the protocol's prose)."""
    return {k: {m: v for m, v in r.items() if isinstance(v, (int, float))}
            for k, r in results.items() if isinstance(r, dict) and any(isinstance(v, float) for v in r.values())}


def check_gate(results: dict[str, Any], metric: str, beat: list[str], margin: float) -> dict[str, Any]:
    """Whether the model's test ``metric`` beats every baseline of ``beat`` by ``margin``."""
    if not metric:
        return {"passed": True, "why": "gate off"}
    model = (results.get("model") or {}).get(metric)
    if model is None:
        raise ConfigError(f"gate metric {metric!r} is not among the {results.get('task')} evaluation's "
                          f"({', '.join(k for k, v in results['model'].items() if isinstance(v, float))})")
    lost = []
    for name in beat:
        other = (results.get(name) or {}).get(metric)
        if other is None:
            raise ConfigError(f"gate baseline {name!r} is not in the {results.get('task')} evaluation")
        if not model > other + margin:
            lost.append(f"{name} {other:.4f}")
    if lost:
        return {"passed": False, "why": f"model {metric} {model:.4f} does not beat {', '.join(lost)}"
                                         + (f" by {margin}" if margin else "")}
    return {"passed": True, "why": f"model {metric} {model:.4f} > " + ", ".join(
        f"{n} {results[n][metric]:.4f}" for n in beat) + (f" + {margin}" if margin else "")}


def summary_with_shares(summary: dict[str, Any], users: int, n_items: int) -> dict[str, Any]:
    """Each table's summary with shares: catalogue coverage, the rank-1 values' shares
    (tag shares, behaviour mix), the rows each source wrote."""
    out = {}
    for table, s in summary.items():
        t = dict(s)
        if "distinct_items" in s:
            t["catalogue_coverage"] = round(s["distinct_items"] / max(n_items, 1), 4)
        if "top1" in s:
            total = sum(s["top1"].values()) or 1
            t["top1_shares"] = {k: round(v / total, 4) for k, v in s["top1"].items()}
        out[table] = t
    return out


def drift(now: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """How this run's outputs moved from the previous published run's: the change in
    catalogue coverage and the total variation distance of the rank-1 shares (0: the
    same mix, 1: nothing in common)."""
    out = {}
    for table, s in now.items():
        b = before.get(table)
        if not b:
            continue
        d = {}
        if "catalogue_coverage" in s and "catalogue_coverage" in b:
            d["catalogue_coverage_change"] = round(s["catalogue_coverage"] - b["catalogue_coverage"], 4)
        if "top1_shares" in s and "top1_shares" in b:
            keys = set(s["top1_shares"]) | set(b["top1_shares"])
            d["top1_total_variation"] = round(0.5 * sum(abs(s["top1_shares"].get(k, 0) - b["top1_shares"].get(k, 0))
                                                         for k in keys), 4)
        out[table] = d
    return out
