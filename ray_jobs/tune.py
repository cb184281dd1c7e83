"""``interest tune``: search a task's hyperparameters with Ray Tune. Each trial trains
as ``interest train`` does (the shared loop, DDP workers), reports its validation metric
every epoch, and ASHA stops weak trials early. Writes OUT/trials.parquet, OUT/best.yaml
(``interest train --config best.yaml`` trains it) and OUT/search.png; rerun the same
command to resume an interrupted search."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from interest.tasks import TASKS
from ray_jobs._common import add_ray_args, init_ray, logs_to_file, run_job


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest tune", description=__doc__)
    parser.add_argument("--task", required=True, choices=list(TASKS), help="which task to tune")
    parser.add_argument("--data", required=True, help="prepared dataset (from `interest prepare`)")
    parser.add_argument("--out", required=True, help="the search's folder (local or s3://); an existing one resumes")
    parser.add_argument("--config", default=None, help="YAML of the task's config the trials start from")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of that config, e.g. --set train.epochs=10")
    parser.add_argument("--space", default=None,
                        help="YAML narrowing or replacing the task's default search space (see README)")
    parser.add_argument("--num-samples", type=int, default=8, help="trials")
    parser.add_argument("--max-concurrent-trials", type=int, default=None,
                        help="trials at once (default: as many as the cluster's CPUs hold)")
    parser.add_argument("--time-budget-s", type=float, default=None, help="stop the search after this long")
    parser.add_argument("--num-workers", type=int, default=1, help="Ray Train workers of each trial")
    parser.add_argument("--cpus-per-trial", type=int, default=1, help="CPUs of each trial's training workers")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs of each trial's training workers")
    parser.add_argument("--grace-period", type=int, default=1, help="epochs before ASHA may stop a trial")
    parser.add_argument("--seed", type=int, default=0, help="of the configurations drawn")
    parser.add_argument("--no-default-trial", action="store_true",
                        help="draw every trial; by default the first trains the config's own values")
    parser.add_argument("--verbose", action="store_true",
                        help="show the library's and Ray's logs on the console (default: in OUT/logs/)")
    add_ray_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from interest import config as C
    from interest.common.space import from_yaml
    from interest.tasks import get_task
    from interest.tune.search import SearchConfig, prepare_search, search

    task = get_task(args.task)
    cfg = C.load(task.config_cls, args.config, args.set)
    space, fixed = (None, {}) if args.space is None else from_yaml(args.space, task.space(cfg))
    sc = SearchConfig(num_samples=args.num_samples, max_concurrent_trials=args.max_concurrent_trials,
                      time_budget_s=args.time_budget_s, num_workers=args.num_workers,
                      cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                      grace_period=args.grace_period, seed=args.seed, start_from_defaults=not args.no_default_trial)
    base, space = prepare_search(args.task, args.data, C.to_dict(cfg), space, fixed)  # before Ray starts
    # Tune's TensorBoard writer logs each metric name it renames (valid/ndcg@10).
    logging.getLogger("tensorboardX").setLevel(logging.WARNING)
    console = sys.stdout  # taken before logs_to_file points sys.stdout at the log
    with logs_to_file(args.out, f"tune-{args.task}", args.verbose) as log_file:
        print(f"interest tune {args.task}: {sc.num_samples} trials over {', '.join(space)} -> {args.out}"
              + ("" if args.verbose else f"\n  logs: {log_file}"), file=console, flush=True)
        init_ray(args, quiet=not args.verbose)
        summary = search(args.task, args.data, args.out, base, space, sc,
                         say=lambda line: print(line, file=console, flush=True), log_file=log_file)
    print(f"{summary['trials']} trials ({summary['stopped_early']} stopped early, {summary['errors']} failed, "
          f"{summary['concurrent']} at once) in {summary['search_s']:.0f} s; best {summary['metric']} "
          f"{summary['best'][summary['metric']]:.4f} with {summary['best']['params']}")
    print(f"trials: {summary['out']}/trials.parquet; best config: {summary['out']}/best.yaml; "
          f"plot: {summary['out']}/search.png")
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
