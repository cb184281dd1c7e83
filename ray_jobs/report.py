"""``interest report``: draw the report of a day's published warehouse run as one
self-contained HTML page, ``OUT/_reports/dt=D/report.html`` (images embedded, no network
needed to open it), with its PNGs beside it: the data, each task's quality and training
curves, the outputs, and the drift against the previous day. The pipeline draws it at
the end of every run; this redraws it. Reads files only; no Ray."""

from __future__ import annotations

import argparse
import sys

from ray_jobs._common import run_job


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest report", description=__doc__)
    parser.add_argument("out", help="the warehouse folder of `interest pipeline` (its `out`), local or s3://")
    parser.add_argument("--dt", required=True, help="the partition date, YYYY-MM-DD")
    parser.add_argument("--drift-threshold", type=float, default=0.1,
                        help="relative change against the previous day past which a figure is flagged (0.1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from interest.report.build import build

    print(build(args.out, args.dt, threshold=args.drift_threshold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
