"""The nightly pipeline's configuration: one YAML file (``configs/demo.yaml``).

Everything is checked here, on the driver, before Ray starts: unknown keys, each
task's own config (by the task's dataclass), retrain policies, gates, new-tags files,
runs that must exist and outputs that must be writable.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from typing import Any

from interest import config as C
from interest import io
from interest.config import ConfigError
from interest.data.prepare import PrepareConfig
from interest.data.privacy import PrivacyConfig
from interest.data.synthetic import SyntheticConfig
from interest.tasks import TASKS, get_task
from interest.text.embed import EmbedConfig

# What each task's gate compares by default: its main test metric against popularity.
DEFAULT_GATES = {"sequence": "ndcg@10", "recommend": "ndcg@10", "tags": "map", "zeroshot": "auc"}
# The baseline zero-shot interests are compared with: there is no popularity of a new tag.
DEFAULT_BEAT = {"zeroshot": ["text_match"]}
# Tasks that read the item text vectors of `interest embed-items`.
TEXT_TASKS = ("tags", "recommend", "zeroshot")
# Tasks whose labels and outputs are tags (privacy.exclude_tags applies to them).
TAG_TASKS = ("tags", "zeroshot")


@dataclass
class GateConfig:
    """The floor a task's evaluation must clear before its scores are published.

    Args:
        metric: test metric compared (default the task's main one: ndcg@10, map, auc);
            "" turns the gate off.
        beat: baselines of the same evaluation the model must beat (default popularity;
            text_match for zeroshot).
        margin: by at least this much (absolute).
    """

    metric: str | None = None
    beat: list[str] | None = None
    margin: float = 0.0


@dataclass
class TuneStep:
    """A task's hyperparameter search in the pipeline: ``interest tune`` on the prepared
    data, from the task's ``config``, into ``WORK/tune/<task>/<dt>/``; the task then
    trains with the search's ``best.yaml``.

    Args:
        search: when to search: ``if_missing`` (once, and again when the task's config
            changes), ``never`` (reuse the latest search's best config; the task's own
            config while there is none), or a schedule, ``every N days``.
        best: a ``best.yaml`` to use instead of the pipeline's own searches.
        num_samples, time_budget_s, max_concurrent_trials, cpus_per_trial: as
            ``interest tune``'s options.
        space: a YAML file narrowing or replacing the task's default search space.
    """

    search: str = "if_missing"
    best: str | None = None
    num_samples: int = 8
    time_budget_s: float | None = None
    max_concurrent_trials: int | None = None
    cpus_per_trial: int = 1
    space: str | None = None

    def __post_init__(self):
        if self.search == "always" or (self.search not in ("if_missing", "never") and
                                       retrain_days(self.search, strict=False) is None):
            raise ConfigError(f"tune.search must be if_missing, never or a schedule such as 'every 7 days', "
                              f"got {self.search!r}")


@dataclass
class TaskStep:
    """One task in the pipeline.

    Args:
        retrain: ``always`` (every new ``dt``), ``if_missing`` (train when no finished run
            exists or the task's config changed), ``never`` (reuse ``run`` or the latest
            run; fail before Ray starts when there is none), or a schedule: ``every N
            days`` (``7d`` for short).
        run: a run folder to reuse instead of the pipeline's own (``retrain: never``).
        config: the task's config (as in ``interest train --config``); the pipeline fills
            ``embeddings`` and ``encoder`` from its own embed step.
        gate: the floor of the evaluation (:class:`GateConfig`).
        top_k: rows per user (zeroshot: one per new tag).
        new_tags: zeroshot: the new tags file (tag, description, optional
            example_item_ids, example_user_ids).
        audience: zeroshot: users per tag in ``tag_audiences``.
        refit: fit once more on every event after the gate passes (see
            :class:`PipelineConfig`); False keeps the evaluated weights.
        tune: search the task's hyperparameters first (:class:`TuneStep`); None: train
            ``config`` as it is.
    """

    retrain: str = "if_missing"
    run: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    gate: GateConfig = field(default_factory=GateConfig)
    top_k: int = 10
    new_tags: str | None = None
    audience: int = 1000
    refit: bool = True
    tune: TuneStep | None = None

    def __post_init__(self):
        retrain_days(self.retrain)
        if self.top_k < 1 or self.audience < 1:
            raise ConfigError("top_k and audience must be >= 1")


def retrain_days(policy: str, *, strict: bool = True) -> int | None:
    """Days between trainings of a schedule policy (``every 7 days``, ``7d``); None for
    ``always``, ``if_missing`` and ``never``, and for anything else unless ``strict``."""
    if policy in ("always", "if_missing", "never"):
        return None
    m = re.fullmatch(r"\s*(?:every\s+)?(\d+)\s*(?:d|days?)\s*", str(policy))
    if not m or int(m.group(1)) < 1:
        if not strict:
            return None
        raise ConfigError(f"retrain must be always, if_missing, never or a schedule such as 'every 7 days', "
                          f"got {policy!r}")
    return int(m.group(1))


@dataclass
class TrainResources:
    """Ray Train workers of every training in the pipeline."""

    num_workers: int = 2
    cpus_per_worker: int = 1
    use_gpu: bool = False


@dataclass
class ScoreResources:
    """The one scoring pass: users per batch, actors, GPUs per actor (fractions share one)."""

    batch_size: int = 1024
    concurrency: int = 1
    num_gpus: float = 0.0

    def __post_init__(self):
        if self.batch_size < 1 or self.concurrency < 1 or self.num_gpus < 0:
            raise ConfigError("score.batch_size and score.concurrency must be >= 1, score.num_gpus >= 0")


@dataclass
class ReportConfig:
    """The day's report (``interest report``), written after the publish.

    Args:
        drift_threshold: a relative change of a metric or output statistic against the
            previous day (for the rank-1 mix: its total variation) past which the report
            lists it at the top.
    """

    drift_threshold: float = 0.1

    def __post_init__(self):
        if not self.drift_threshold > 0:
            raise ConfigError(f"report.drift_threshold must be > 0, got {self.drift_threshold}")


@dataclass
class PipelineConfig:
    """``interest pipeline --config FILE``.

    Args:
        out: the warehouse folder, local or ``s3://``: ``OUT/<table>/dt=YYYY-MM-DD/part-*.parquet``
            (on S3 under ``OUT/_data/``, named by ``OUT/_published/<table>.json``) and the
            run manifests ``OUT/_runs/<run_id>.json``.
        work: the pipeline's own state, local or ``s3://`` (on a cluster: shared
            storage): prepared data, item vectors, model runs, step records and logs.
        dt: the partition date (default: today, UTC).
        generate: write a synthetic log to ``input.input`` first when it is absent (the demo).
        input: the prepare step's config (``out`` is ``WORK/prepared``).
        embed: the item text encoder (for tags, recommend and zeroshot).
        tasks: which tasks run, each a :class:`TaskStep`.
        train: Ray Train workers.
        refit_epochs: epochs of the refit on every event, from the evaluated weights.
        score: the scoring pass's resources.
        report: the report drawn at the end (:class:`ReportConfig`).
        privacy: pseudonymised user ids and forget requests
            (:class:`interest.data.privacy.PrivacyConfig`).
        incremental: prepare only the input files not read before (users and items keep
            their indices), and when every model is reused and scores as it did the night
            before, score only the users with new events and carry the others' rows over
            from the previous partition (README, "Incremental nights").
    """

    out: str = ""
    work: str = ""
    dt: str | None = None
    generate: SyntheticConfig | None = None
    input: dict[str, Any] = field(default_factory=dict)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    tasks: dict[str, TaskStep] = field(default_factory=dict)
    train: TrainResources = field(default_factory=TrainResources)
    refit_epochs: int = 1
    score: ScoreResources = field(default_factory=ScoreResources)
    report: ReportConfig = field(default_factory=ReportConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    incremental: bool = False

    def __post_init__(self):
        if not self.out or not self.work:
            raise ConfigError("the pipeline needs out (the warehouse folder) and work (its own state)")
        self.dt = self.dt or dt.datetime.now(dt.timezone.utc).date().isoformat()
        try:
            dt.date.fromisoformat(self.dt)
        except ValueError:
            raise ConfigError(f"dt must be a date YYYY-MM-DD, got {self.dt!r}") from None
        if self.refit_epochs < 1:
            raise ConfigError(f"refit_epochs must be >= 1, got {self.refit_epochs}")

    @property
    def prepared(self) -> str:
        return io.join(self.work, "prepared")

    @property
    def item_vectors(self) -> str:
        return io.join(self.work, "item_vectors")

    def prepare_config(self) -> PrepareConfig:
        if self.input.get("forget"):
            raise ConfigError("input.forget: in the pipeline, forget requests are privacy.forget")
        if "incremental" in self.input:
            raise ConfigError("input.incremental: in the pipeline, incremental runs are the top-level incremental")
        return C.from_dict(PrepareConfig, {**self.input, "out": self.prepared, "overwrite": True,
                                           "forget": absolute(self.privacy.forget),
                                           "incremental": self.incremental}, where="input.")


def load(path: str, overrides: list[str] | None = None) -> PipelineConfig:
    """The pipeline config of a YAML file and ``key=value`` overrides, with every task's
    own config checked by the task's dataclass."""
    cfg = C.load(PipelineConfig, path, overrides)
    if not cfg.tasks:
        raise ConfigError(f"{path}: no tasks; give tasks: with one or more of {', '.join(TASKS)}")
    for name, step in cfg.tasks.items():
        if name not in TASKS:
            raise ConfigError(f"unknown task {name!r} under tasks:; choose from {', '.join(TASKS)}")
        task = get_task(name)
        task_config(cfg, name)  # the task's own keys and values, checked by its dataclass
        if task.scores_new_tags and not step.new_tags:
            raise ConfigError(f"tasks.{name}.new_tags: task {name} scores new tags; give the tags file")
        if step.new_tags and not task.scores_new_tags:
            raise ConfigError(f"tasks.{name}.new_tags: only zeroshot scores new tags")
    return cfg


def task_config(cfg: PipelineConfig, name: str) -> Any:
    """Task ``name``'s config dataclass: its ``config`` with the pipeline's item vectors
    and encoder filled in where the task reads them and the user gave none."""
    task = get_task(name)
    data = dict(cfg.tasks[name].config)
    if name in TEXT_TASKS:
        data.setdefault("embeddings", cfg.item_vectors)
        data.setdefault("encoder", cfg.embed.encoder)
    if name in TAG_TASKS and cfg.privacy.exclude_tags:  # sensitive tags: never labels, never scores
        data["exclude_tags"] = sorted(set(data.get("exclude_tags") or []) | set(cfg.privacy.exclude_tags))
    return C.from_dict(task.config_cls, data, where=f"tasks.{name}.config.")


def gate_of(name: str, step: TaskStep) -> tuple[str, list[str], float]:
    """(metric, baselines to beat, margin) of a task's gate; metric "" when off."""
    metric = DEFAULT_GATES[name] if step.gate.metric is None else step.gate.metric
    beat = step.gate.beat if step.gate.beat is not None else DEFAULT_BEAT.get(name, ["popularity"])
    return metric, beat, step.gate.margin


def absolute(path: str | None) -> str | None:
    """A local path made absolute (Ray workers do not share the driver's directory)."""
    return path if not path or io.is_s3(path) else os.path.abspath(path)
