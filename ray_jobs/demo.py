"""``make demo``: the pipeline on built-in synthetic data and a local Ray.

Generates a synthetic log with planted interests, prepares it, and prints where
everything is. Later stages (training the four tasks, scoring) join here as they land.
"""

from __future__ import annotations

import argparse
import os
import sys

from interest import io
from interest.data.prepare import PrepareConfig, prepare
from interest.data.synthetic import SyntheticConfig, generate
from ray_jobs._common import add_ray_args, init_ray, run, setup_logging
from ray_jobs.prepare import print_report


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest demo", description=__doc__)
    parser.add_argument("--out", default="demo_out", help="demo folder (default demo_out)")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--events", type=int, default=100_000)
    add_ray_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()

    def body() -> int:
        data = io.join(args.out, "synthetic")
        prepared = io.join(args.out, "prepared")
        print(f"[1/2] generating {args.events:,} synthetic events of {args.users:,} users -> {data}")
        generate(SyntheticConfig(users=args.users, items=args.items, events=args.events), data)
        init_ray(args)
        print(f"[2/2] preparing on Ray Data -> {prepared}")
        report = prepare(PrepareConfig(input=io.join(data, "events"), items=io.join(data, "items.parquet"),
                                       out=prepared, overwrite=True))
        print_report(report, prepared)
        print(f"\ndemo outputs in {os.path.abspath(args.out)}:")
        print(f"  synthetic log and ground truth  {data}")
        print(f"  prepared dataset                {prepared}  (see prepare_report.json)")
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
