"""``interest generate``: write a synthetic e-commerce log with planted interests."""

from __future__ import annotations

import argparse
import json
import sys

from interest import config
from interest.data.synthetic import SyntheticConfig, generate
from ray_jobs._common import run_job


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest generate", description=__doc__)
    parser.add_argument("--users", type=int, default=1000, help="number of users (default 1000)")
    parser.add_argument("--items", type=int, default=2000, help="number of items (default 2000)")
    parser.add_argument("--events", type=int, default=50_000, help="exact number of events (default 50000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; output is a function of it")
    parser.add_argument("--format", choices=["parquet", "csv"], default="parquet", help="events file format")
    parser.add_argument("--out", required=True, help="output folder (local or s3://)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other SyntheticConfig field, e.g. --set drift=0.5")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    cfg = config.load(SyntheticConfig, overrides=args.set, base=dict(
        users=args.users, items=args.items, events=args.events, seed=args.seed, format=args.format))
    summary = generate(cfg, args.out)
    print(f"wrote {summary['events']:,} events of {summary['users']:,} users and {summary['items']:,} items "
          f"to {args.out} (events/, items.parquet, ground_truth.parquet, taxonomy.parquet)")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
