"""``make demo``: the pipeline on built-in synthetic data and a local Ray.

Generates a synthetic log with planted interests, prepares it, trains the next-action
model briefly with Ray Train and evaluates it beside the baselines, then prints where
everything is. The other tasks and batch scoring join here as they land.
"""

from __future__ import annotations

import argparse
import os
import sys

from interest import io
from interest.data.prepare import PrepareConfig, prepare
from interest.data.synthetic import SyntheticConfig, generate
from interest.evaluate.harness import evaluate
from interest.evaluate.metrics import Protocol
from interest.train.loop import fit
from ray_jobs._common import add_ray_args, init_ray, run_job
from ray_jobs.evaluate import print_table
from ray_jobs.prepare import print_report


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest demo", description=__doc__)
    parser.add_argument("--out", default="demo_out", help="demo folder (default demo_out)")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of the demo model")
    add_ray_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    data = io.join(args.out, "synthetic")
    prepared = io.join(args.out, "prepared")
    run_dir = io.join(args.out, "runs", "sequence")
    print(f"[1/4] generating {args.events:,} synthetic events of {args.users:,} users -> {data}")
    generate(SyntheticConfig(users=args.users, items=args.items, events=args.events), data)
    init_ray(args)
    print(f"[2/4] preparing on Ray Data -> {prepared}")
    report = prepare(PrepareConfig(input=io.join(data, "events"), items=io.join(data, "items.parquet"),
                                   out=prepared, overwrite=True))
    print_report(report, prepared)
    print(f"\n[3/4] training the next-action model (SASRec, {args.epochs} epochs, 2 DDP workers) -> {run_dir}")
    if io.exists(run_dir):
        io.remove(run_dir)  # a fresh run, not a resumed one
    result = fit("sequence", prepared, run_dir,
                 {"preset": "small", "train": {"epochs": args.epochs, "batch_size": 64, "lr": 0.005}}, num_workers=2)
    if result.error:
        raise result.error
    print("[4/4] evaluating on the held-out last event of every user")
    results = evaluate(run_dir, prepared, protocol=Protocol(mask_seen=True))
    io.write_json(results, io.join(run_dir, "metrics_test.json"))
    print_table(results)
    print(f"\ndemo outputs in {os.path.abspath(args.out)}:")
    print(f"  synthetic log and ground truth  {data}")
    print(f"  prepared dataset                {prepared}  (see prepare_report.json)")
    print(f"  next-action run                 {run_dir}  (checkpoints, metrics_test.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
