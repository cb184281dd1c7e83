"""One training loop for every task, on Ray Train (DDP: gloo on CPU, NCCL on GPU).

The driver checks the configuration and the prepared dataset, then hands a plain-dict
config to :func:`train_loop_per_worker`, which runs on every worker. Each worker
streams its own shard of the prepared sequences through Ray Data; nothing is
materialised on the driver. Every epoch ends with validation (summed over workers),
early stopping on ``train.metric``, and a checkpoint (:mod:`interest.train.checkpoint`).
Re-running with the same ``--out`` resumes from the latest checkpoint. A closed-form
model (a task's ``closed_form(cfg)``, e.g. EASE) is fitted in one solve on one worker
and checkpointed the same way.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import tempfile
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from interest import config as C
from interest import io
from interest import schemas as S
from interest.tasks import get_task
from interest.tasks.base import uniform_hash, unwrap
from interest.train import checkpoint as ckpt
from interest.train import frozen
from interest.train import memory

# A training worker's memory beside its model, optimiser and activations: torch, Ray's
# worker, the data blocks it iterates. Measured: 0.7-0.8 GB for a tags worker in cached
# mode on REES46 (small model and activations); a finetune worker there peaked at 3.1 GB
# where the estimate with this figure is 3.9 GB.
WORKER_BASE_MB = 1500

log = logging.getLogger(__name__)


class _SkipStep(Exception):
    """Raised as the model is called in a training step that another worker skips."""


def _allreduce_(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the workers, in place (unchanged on one worker; on GPU workers
    ``t`` must be on the GPU: NCCL reduces GPU tensors only)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _allreduce(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    """``sums`` added up over the workers."""
    keys = sorted(sums)
    t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
    return dict(zip(keys, _allreduce_(t).tolist()))


def autocast(device: torch.device, cfg: Any):
    """The training forward pass's precision (``train.precision``)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")


def _per_worker(value: float, rank: int, device: torch.device) -> list[float]:
    """Every worker's ``value``, in rank order."""
    import torch.distributed as dist

    size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    t = torch.zeros(size, dtype=torch.float64, device=device)
    t[rank] = value
    return _allreduce_(t).tolist()


def micro_batch(task, cfg: Any, meta) -> int:
    """Users per forward and backward pass: the training batch, or as many users as fit
    ``train.memory_mb`` by the task's estimate."""
    row_mb, _ = task.step_mb(cfg, meta)
    if row_mb <= 0:
        return cfg.train.batch_size
    return max(1, min(cfg.train.batch_size, int(cfg.train.memory_mb // row_mb)))


def worker_mb(task, cfg: Any, meta, model: torch.nn.Module) -> float:
    """What one training worker needs, in MB: weights, gradients and AdamW's two moments
    (16 bytes a trained parameter, 4 a frozen one), a step's activations, and the process."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad) + sum(
        b.numel() for b in model.buffers())
    row_mb, _ = task.step_mb(cfg, meta)
    return (16 * trained + 4 * frozen) / 2 ** 20 + micro_batch(task, cfg, meta) * row_mb + WORKER_BASE_MB


def summed_gradients(task, model: torch.nn.Module, batch: dict[str, np.ndarray], cfg: Any, meta, device: torch.device,
                     micro: int, params: list[torch.nn.Parameter]) -> tuple[torch.Tensor, float, float]:
    """(the gradients of the loss summed over the batch's examples, flattened over
    ``params``; the examples; their summed loss), from micro-batches of ``micro`` users:
    each backward adds loss x examples of its own, and no worker synchronises (DDP's
    ``no_sync``), so memory holds one micro-batch's activations at a time."""
    rows = len(batch[S.USER_IDX])
    total, count = 0.0, 0.0
    with getattr(model, "no_sync", contextlib.nullcontext)():
        for lo in range(0, rows, micro):
            sub = {k: v[lo:lo + micro] for k, v in batch.items()}
            with autocast(device, cfg):
                loss, figures = task.loss(model, sub, cfg, meta, device)
            if loss is None:
                continue
            n = float(figures.get("examples", 1))
            (loss * n).backward()
            total, count = total + loss.item() * n, count + n
    flat = torch.cat([torch.zeros(p.numel(), device=device) if p.grad is None else p.grad.reshape(-1).float()
                      for p in params])
    return flat, count, total


PLACEMENT_GROUP = "placement_group"  # the report's key of the workers' placement group (hex id)


def _valid(metrics: dict[str, float]) -> dict[str, float]:
    """Validation figures as reported (and kept in the JSON state): ``valid/`` names, floats."""
    return {f"valid/{k}": float(v) for k, v in metrics.items()}


def _ddp_kwargs() -> dict[str, bool]:
    """No model keeps running statistics in its buffers; they hold constants (frozen item
    text vectors), which DDP would otherwise re-broadcast from rank 0 before every step.
    torch 2.13 renamed the switch; the old name still works there, with a warning."""
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    # A worker is a fresh process: give it the driver's log level, so progress is seen.
    package_log = logging.getLogger("interest")
    package_log.setLevel(config.get("log_level", logging.INFO))
    if not package_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        package_log.addHandler(handler)
        package_log.propagate = False  # Ray gives workers a root handler too: each line would print twice
        if config.get("log_file"):  # the job's own log (`interest pipeline`), where a person looks first
            try:
                to_file = logging.FileHandler(config["log_file"])
            except OSError:  # on another node of a cluster, without the driver's filesystem
                pass
            else:
                to_file.setFormatter(handler.formatter)
                package_log.addHandler(to_file)
    torch.set_num_threads(config.get("threads", 1))  # the CPUs Ray reserved for this worker
    # A search's trials name their workers' placement group, so the search can remove it
    # when it stops a trial (see interest.tune.search.Progress).
    group = ray.util.get_current_placement_group() if config.get("report_placement_group") else None
    placement = {PLACEMENT_GROUP: group.id.hex()} if group else {}
    task = get_task(config["task"])
    cfg = C.from_dict(task.config_cls, config["cfg"])
    tc = cfg.train
    meta = task.load_meta(cfg, config["prepared"])
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(tc.seed)  # identical initial weights on every worker
    model = task.build_model(cfg, meta)
    # best_valid: the best epoch's validation figures, reported again after the refit.
    # history: every report of the run, so a search restarted after a crash can give Tune
    # back the figures it lost (interest.tune.search._trial).
    state = {"epoch": 0, "best": -math.inf, "best_epoch": -1, "bad_epochs": 0, "refit": 0, "best_valid": {},
             "history": [], "task": config["task"], "config": config["cfg"], "prepared": config["prepared"]}
    device = ray.train.torch.get_device()
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    vocab = io.join(config["prepared"], "vocab", "items.parquet")

    share = tc.valid_users / meta.n_users if tc.valid_users else 1.0

    def valid_batches():
        for batch in valid_shard.iter_batches(batch_size=tc.eval_batch_size, batch_format="numpy"):
            if share < 1.0:
                keep = uniform_hash(batch[S.USER_IDX]) < share
                if not keep.any():
                    continue
                batch = {k: v[keep] for k, v in batch.items()}
            yield batch

    def validate(model, under=None) -> tuple[dict[str, float], float]:
        """(metrics, the early-stopping metric) on the validation users, under config
        ``under`` (default the one early stopping sees)."""
        model.eval()
        sums = task.validate(model, valid_batches(), under or task.early_stopping_config(cfg), meta, device, "valid")
        metrics = task.metrics_from_sums(_allreduce(sums, device))
        return metrics, metrics.get(tc.metric, -math.inf)

    if task.closed_form(cfg):
        # One solve instead of epochs (EASE, ItemKNN, popularity): fit, validate, and
        # checkpoint like an epoch, so evaluation and scoring read it as any other run.
        start = time.perf_counter()
        fitted = task.fit_closed_form(model, cfg, meta, config["prepared"], lambda m: validate(m)[1])
        metrics, value = validate(model)
        state.update(epoch=1, best=value, best_epoch=0, fitted=fitted)
        log.info("fitted %s %s: valid %s %.4f in %.1f s", config["task"], fitted or "", tc.metric, value,
                 time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as folder:
            ckpt.save(folder, model, ckpt.weights(model), None, state, vocab)
            ray.train.report({**_valid(metrics), **placement, "epoch": 0, "best": value,
                              "best_epoch": 0, "train_s": time.perf_counter() - start},
                             checkpoint=ray.train.Checkpoint.from_directory(folder))
        return

    # Fused: one pass over all parameters. The default per-tensor loop took 11 of the 80 ms
    # of a recommend step over a 54k-item table on one core (2 ms fused).
    optimizer = torch.optim.AdamW(task.param_groups(model, cfg), lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
    best = ckpt.weights(model)
    prerefit = None  # the best weights from before the refit, once it has begun
    restored = ray.train.get_checkpoint()
    if config.get("init_from") and not restored:
        # A refit (train.events=all) starts from another run's chosen weights.
        model.load_state_dict(ckpt.read_weights(config["init_from"], ckpt.BEST))
        best = ckpt.weights(model)
    if restored:
        with restored.as_directory() as folder:
            state.update({k: v for k, v in ckpt.load_state(folder).items() if k in ("epoch", "best", "best_epoch",
                                                                                 "bad_epochs", "refit", "best_valid",
                                                                                 "chosen", "peak_mb", "history")})
            model.load_state_dict(ckpt.read_weights(folder))
            best = ckpt.read_weights(folder, ckpt.BEST)
            if ckpt.has_weights(folder, ckpt.PREREFIT):
                prerefit = ckpt.read_weights(folder, ckpt.PREREFIT)
            ckpt.load_optimizer(folder, optimizer)
        state["resumed_from"] = state["epoch"]
        log.info("resuming %s at epoch %d (best %s %.4f)", config["task"], state["epoch"], tc.metric, state["best"])
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=_ddp_kwargs())

    # train.events=all: the validation and test events are training data, so nothing is
    # left to validate on: every epoch's weights are the result (a refit of a known length).
    every_event = tc.events == "all"
    if task.validate_initial and not restored and not every_event:
        # The task's untrained model is a meaningful answer (tags start as "the user's own
        # tags"): it is the best to beat, and stays the result if no epoch beats it.
        metrics, state["best"] = validate(model)
        state["best_valid"] = _valid(metrics)
        if rank == 0:
            log.info("before training: valid %s %.4f", tc.metric, state["best"])

    # A task's loss returns None, without running the model, when its batch holds nothing
    # to learn. Under DDP that worker would then miss the collectives of the others'
    # forward and backward passes, and they would wait for it for ever. So every training
    # step starts with one small all-reduce, "is any worker empty?": a worker with
    # examples makes it as its model is called (this hook), an empty one after its loss
    # returned, and if any is empty they all skip the step before DDP's own collectives.
    step = {"pending": False}

    def agree_to_step(*_):
        if step["pending"]:
            step["pending"] = False
            if _allreduce({"empty": 0.0}, device)["empty"]:
                raise _SkipStep

    model.register_forward_pre_hook(agree_to_step)

    # Micro-batches: decided from the config, so every worker takes the same path.
    micro = micro_batch(task, cfg, meta)
    accumulate = micro < tc.batch_size
    if accumulate and rank == 0:
        row_mb, _ = task.step_mb(cfg, meta)
        log.info("steps of %d users run in micro-batches of %d (about %.0f MB of activations each, "
                 "train.memory_mb=%d)", tc.batch_size, micro, micro * row_mb, tc.memory_mb)
    trained = [p for p in model.parameters() if p.requires_grad]

    def accumulated_step(batch: dict[str, np.ndarray]) -> float | None:
        """One update from ``batch`` in micro-batches (:func:`summed_gradients`), then
        one all-reduce of the gradient sums and example counts, and the update with the
        mean over every worker's examples. The mean loss, or None when no worker had an
        example (all skip the update together)."""
        optimizer.zero_grad(set_to_none=True)
        flat, count, total = summed_gradients(task, model, batch, cfg, meta, device, micro, trained)
        sums = _allreduce_(torch.tensor([count, total], dtype=torch.float64, device=device))
        if sums[0] == 0:
            return None
        _allreduce_(flat).div_(float(sums[0]))
        at = 0
        for p in trained:
            p.grad = flat[at:at + p.numel()].view_as(p).to(p.dtype)
            at += p.numel()
        optimizer.step()
        return float(sums[1] / sums[0])

    def train_epoch(epoch: int, with_valid: bool = False) -> tuple[float, int, float, float]:
        """One pass over this worker's shard -> (mean loss, steps, train s, of it waiting for
        data s); ``with_valid``: the validation events count as training events (refit)."""
        torch.manual_seed(tc.seed * 1000 + epoch * 10 + rank)  # dropout and sampling: repeatable
        np.random.seed(tc.seed * 1000 + epoch * 10 + rank)
        model.train()
        start, losses, data_s, skipped = time.perf_counter(), [], 0.0, 0
        batches = iter(train_shard.iter_batches(batch_size=tc.batch_size, batch_format="numpy",
                                                local_shuffle_buffer_size=tc.batch_size * 16,
                                                local_shuffle_seed=tc.seed + epoch))
        while True:
            waited = time.perf_counter()
            batch = next(batches, None)
            data_s += time.perf_counter() - waited  # reported: slow input shows up here, not in compute
            if batch is None:
                break
            if with_valid or every_event:  # every task reads its training events as the first n_train
                batch = {**batch, "n_train": batch["n_train"] + batch["n_valid"] + (batch["n_test"] if every_event
                                                                                     else 0),
                         "n_valid": np.zeros_like(batch["n_valid"])}
                if every_event:
                    batch["n_test"] = np.zeros_like(batch["n_test"])
            if accumulate:
                loss = accumulated_step(batch)
                if loss is None:
                    skipped += 1
                else:
                    losses.append(loss)
                continue
            step["pending"] = True
            try:
                with autocast(device, cfg):
                    loss, _ = task.loss(model, batch, cfg, meta, device)
            except _SkipStep:
                loss = None
            if step["pending"]:  # nothing to learn here: the model never ran; say so (see agree_to_step)
                step["pending"] = False
                _allreduce({"empty": 1.0}, device)
            if loss is None:
                skipped += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if skipped and rank == 0:
            log.info("%d steps skipped: a worker's batch held nothing to learn", skipped)
        return float(np.mean(losses)) if losses else float("nan"), len(losses), time.perf_counter() - start, data_s

    def save_and_report(report: dict[str, Any]) -> None:
        state["history"].append(report)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                ckpt.save(folder, model, best, optimizer, state, vocab, prerefit)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({**report, **placement}, checkpoint=checkpoint)

    def peaks() -> list[float]:
        """Every worker's peak memory (MB) since the last :func:`memory.reset_peak`."""
        return [round(x) for x in _per_worker(memory.peak_mb(), rank, device)]

    def memory_line(peak: list[float]) -> str:
        gpu = memory.gpu_peak_mb()
        return ("peak memory per worker " + ", ".join(f"{x:,.0f}" for x in peak) + " MB"
                + (f" (GPU {gpu:,.0f} MB on worker 0)" if gpu is not None else ""))

    state.setdefault("peak_mb", [])
    while state["epoch"] < tc.epochs and state["bad_epochs"] < tc.patience:
        epoch = state["epoch"]
        memory.reset_peak()
        loss, steps, train_s, data_s = train_epoch(epoch)
        valid_start = time.perf_counter()
        metrics, value = ({}, math.nan) if every_event else validate(model)
        if every_event or math.isnan(value):
            # NaN: the validation split holds nothing the metric can measure (zeroshot's
            # AUC with no validation user who has both outcomes of a tag). It stays so,
            # since the labels do not depend on the weights: as with no validation at
            # all, each epoch's weights are the result and patience does not apply.
            if rank == 0 and not every_event and epoch == 0:
                log.warning("validation measured no %s (nothing in the validation split to measure): "
                            "no early stopping, the last epoch's weights are kept", tc.metric)
            state.update(best_epoch=epoch, best=value)
            best = ckpt.weights(model)
        elif value > state["best"]:
            state.update(best=value, best_epoch=epoch, bad_epochs=0, best_valid=_valid(metrics))
            best = ckpt.weights(model)
        else:
            state["bad_epochs"] += 1
            for group in optimizer.param_groups:  # restored with the optimizer on resume
                group["lr"] *= tc.plateau_decay
        state["epoch"] = epoch + 1
        peak = peaks()  # training and validation: the epoch's peak on each worker
        state["peak_mb"].append(peak)
        report = {**_valid(metrics), "epoch": epoch, "train_s": train_s,
                  "data_s": data_s, "valid_s": time.perf_counter() - valid_start, "loss": loss, "steps": steps,
                  "best": state["best"], "best_epoch": state["best_epoch"], "peak_mb": max(peak)}
        if rank == 0 and every_event:
            log.info("epoch %d/%d on every event (no validation): loss %.4f; train %.1f s; %s", epoch + 1,
                     tc.epochs, loss, train_s, memory_line(peak))
        elif rank == 0:  # one progress line per epoch; worker logs reach the driver's console
            log.info("epoch %d/%d: loss %.4f, valid %s %.4f (best %.4f %s); train %.1f s (waiting for "
                     "data %.1f s), validation %.1f s; %s", epoch + 1, tc.epochs, loss, tc.metric, value,
                     state["best"], f"at epoch {state['best_epoch'] + 1}" if state["best_epoch"] >= 0 else
                     "before training", train_s, data_s, report["valid_s"], memory_line(peak))
        save_and_report(report)

    if state["refit"] == 0:  # not resumed half-way through the refit: the best weights, to choose settings and refit
        unwrap(model).load_state_dict(best)
    chosen_now = "chosen" not in state
    if every_event:  # the settings came with the config, chosen by the run this one refits
        state["chosen"], chosen_now = {}, False
    if chosen_now:
        chosen, value = task.choose_settings(cfg, meta, lambda candidate: validate(model, candidate)[1])
        state["chosen"] = chosen
        if chosen and rank == 0:
            log.info("chosen on validation: %s (valid %s %.4f; %.4f before)",
                     ", ".join(f"{k}={v}" for k, v in chosen.items()), tc.metric, value, state["best"])
    cfg = replace(cfg, **state["chosen"])
    state["config"] = {**state["config"], **state["chosen"]}  # what evaluation and scoring read
    if chosen_now and state["chosen"] and not tc.refit:  # else the refit's checkpoints carry it
        save_and_report({**state["best_valid"], "epoch": state["epoch"] - 1, "best": state["best"],
                         "best_epoch": state["best_epoch"], "chosen_valid": value})
    if tc.refit and prerefit is None:
        # Kept beside the refit weights: evaluation makes its choices on the validation
        # events (blend weights) with these, since the refit trains on those events.
        prerefit = best
    while state["refit"] < tc.refit:
        done = state["refit"]
        memory.reset_peak()
        loss, steps, train_s, data_s = train_epoch(state["epoch"] + done, with_valid=True)
        best = ckpt.weights(model)  # what evaluation and scoring load from now on
        state["refit"] = done + 1
        peak = peaks()
        state["peak_mb"].append(peak)
        if rank == 0:
            log.info("refit %d/%d on training + validation events: loss %.4f; train %.1f s; %s", done + 1,
                     tc.refit, loss, train_s, memory_line(peak))
        # The best epoch's validation figures stand: the validation events are training data now.
        save_and_report({**state["best_valid"], "epoch": state["epoch"] - 1, "refit": done + 1, "train_s": train_s,
                         "data_s": data_s, "loss": loss, "steps": steps, "best": state["best"],
                         "best_epoch": state["best_epoch"]})


def check(task_name: str, prepared: str, cfg_dict: dict[str, Any], num_workers: int, cpus_per_worker: int = 1):
    """Everything that can be wrong with a training request, checked on the driver;
    returns the task, its config and the dataset's meta."""
    task = get_task(task_name)
    cfg = C.from_dict(task.config_cls, cfg_dict)  # unknown keys and bad types
    meta = task.load_meta(cfg, prepared)  # not a prepared dataset; the task's own inputs
    if meta.n_items < 2:
        raise C.ConfigError(f"{prepared} has {meta.n_items} items; nothing to rank")
    if num_workers < 1 or cpus_per_worker < 1:
        raise C.ConfigError("--num-workers and --cpus-per-worker must be >= 1")
    row_mb, what = task.step_mb(cfg, meta)
    if row_mb > cfg.train.memory_mb:
        raise C.ConfigError(f"one user's training activations need about {row_mb:,.0f} MB ({what}), more than "
                            f"train.memory_mb={cfg.train.memory_mb}: raise train.memory_mb or lower what sets it")
    return task, cfg, meta


def absolute_paths(cfg: Any) -> None:
    """Make the config's local paths (the keys its class lists in ``PATHS``: embeddings,
    taxonomy, an encoder folder but not a hub name) absolute, in place: workers do not
    share the driver's working directory, and the run keeps the config for later jobs.
    Only listed keys: a value like ``separator="."`` names a folder too."""
    for key in getattr(cfg, "PATHS", ()):
        value = getattr(cfg, key)
        if value and not io.is_s3(value) and os.path.exists(value):
            setattr(cfg, key, os.path.abspath(value))


def fit(task_name: str, prepared: str, out: str, cfg_dict: dict[str, Any], **kwargs):
    """Train ``task_name`` on the connected Ray cluster; returns Ray Train's ``Result``.
    Arguments as :func:`trainer`'s. A run that finished keeps what its scoring reads
    besides the weights, as of this training (:mod:`interest.train.frozen`)."""
    result = trainer(task_name, prepared, out, cfg_dict, **kwargs).fit()
    if result.error is None:  # under its config with the settings chosen after training
        _, state, task, cfg = ckpt.latest(out)
        frozen.freeze(task, cfg, state["prepared"], out)
    return result


def trainer(task_name: str, prepared: str, out: str, cfg_dict: dict[str, Any], *, num_workers: int = 2,
            use_gpu: bool = False, cpus_per_worker: int = 1, gpus_per_worker: float = 1.0, max_failures: int = 1,
            init_from: str | None = None, log_file: str | None = None, callbacks: tuple = (),
            report_placement_group: bool = False):
    """The ``TorchTrainer`` of ``task_name`` writing its run to ``out`` (an existing run
    resumes from its latest checkpoint). ``gpus_per_worker``: with ``use_gpu``, a
    fraction shares a GPU between workers (a search's trials). ``init_from``: a
    checkpoint folder whose best weights the model starts from (a refit). ``log_file``:
    the workers' progress lines go there too (appended). ``callbacks``: Ray Train's (a
    Tune search reports each epoch through one). ``report_placement_group``: every
    report names the workers' placement group (``PLACEMENT_GROUP``).

    Every check that can fail on the user's input runs here, before any worker starts.
    """
    import ray
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    task, cfg, meta = check(task_name, prepared, cfg_dict, num_workers, cpus_per_worker)
    if task.closed_form(cfg) and num_workers > 1:
        log.info("%s fits in closed form on one worker (asked for %d)", task_name, num_workers)
        num_workers = 1
    need_mb = worker_mb(task, cfg, meta, task.build_model(cfg, meta))
    have_mb = ray.cluster_resources().get("memory", math.inf) / 2 ** 20
    if need_mb * num_workers > have_mb:
        raise C.ConfigError(
            f"{num_workers} training worker(s) need about {need_mb * num_workers:,.0f} MB ({need_mb:,.0f} each: model, "
            f"optimiser, train.memory_mb={cfg.train.memory_mb} of activations and the process), and the Ray cluster "
            f"has {have_mb:,.0f} MB: lower train.memory_mb or --num-workers, or use a larger cluster")
    # Workers do not share the driver's working directory; on a multi-node cluster the
    # prepared dataset must be on shared storage (s3://, NFS) anyway.
    prepared = prepared if io.is_s3(prepared) else os.path.abspath(prepared)
    absolute_paths(cfg)
    sequences = ray.data.read_parquet(io.join(prepared, "sequences")).select_columns(task.train_columns())
    # Blocks in file order, not in the order the read tasks happen to finish: Ray Train's
    # split deals them to the workers in that order, so a run repeats with its seed (two
    # bert4rec runs of the same settings trained on different shards and tested 6% apart).
    sequences.context.execution_options.preserve_order = True
    if cfg.train.cache:
        sequences = sequences.materialize()  # blocks stay in the object store, not on the driver
    out = str(out).rstrip("/")
    run_dir = out if io.is_s3(out) else os.path.abspath(out)
    parent, name = run_dir.rsplit("/", 1)
    # On S3, Ray Train writes through the same filesystem as the rest of the library
    # (s3fs, honouring AWS_ENDPOINT_URL for any S3-compatible store).
    storage_fs, parent = io.filesystem(parent) if io.is_s3(parent) else (None, parent)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"task": task_name, "cfg": C.to_dict(cfg), "prepared": prepared,
                           "log_level": logging.getLogger("interest").getEffectiveLevel(),
                           "threads": cpus_per_worker, "init_from": init_from,
                           "log_file": log_file, "report_placement_group": report_placement_group},
        # Each worker holds the memory it needs, so Ray places no more workers on a node
        # than fit there, instead of its memory monitor killing them mid-run.
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker, "memory": need_mb * 2 ** 20,
                                                           **({"GPU": gpus_per_worker} if use_gpu else {})}),
        datasets={"train": sequences, "valid": sequences},
        run_config=RunConfig(name=name, storage_path=parent, storage_filesystem=storage_fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=max_failures), callbacks=list(callbacks)),
    )
