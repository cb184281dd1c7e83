"""``interest train``: train a task with Ray Train (DDP on CPU or GPU workers)."""

from __future__ import annotations

import argparse
import json
import sys

from interest import config
from interest.tasks import TASKS, get_task
from ray_jobs._common import add_ray_args, init_ray, run_job


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest train", description=__doc__)
    parser.add_argument("--task", required=True, choices=list(TASKS), help="which task to train")
    parser.add_argument("--data", required=True, help="prepared dataset (from `interest prepare`)")
    parser.add_argument("--out", required=True,
                        help="run folder (local or s3://); an existing run resumes from its latest checkpoint")
    parser.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (DDP processes)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL)")
    parser.add_argument("--cpus-per-worker", type=int, default=1,
                        help="CPUs (and torch threads) per worker; on one machine, workers x this <= cores")
    parser.add_argument("--config", default=None, help="YAML file of the task's config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set preset=small --set train.epochs=20")
    add_ray_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from interest.train.loop import check, fit

    task = get_task(args.task)
    cfg = config.load(task.config_cls, args.config, args.set)
    check(args.task, args.data, config.to_dict(cfg), args.num_workers)  # before any worker starts
    init_ray(args)
    result = fit(args.task, args.data, args.out, config.to_dict(cfg), num_workers=args.num_workers,
                 use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker)
    if result.error:
        raise result.error
    metrics = result.metrics or {}
    best_epoch = metrics.get("best_epoch", -1)
    where = f"at epoch {best_epoch + 1}" if best_epoch >= 0 else "before training (no epoch beat the initial model)"
    print(f"run {args.out}: best {cfg.train.metric} {metrics.get('best', float('nan')):.4f} {where}, "
          f"{metrics.get('epoch', -1) + 1} epochs"
          + (f", then {metrics['refit']} on training + validation events" if metrics.get("refit") else ""))
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
