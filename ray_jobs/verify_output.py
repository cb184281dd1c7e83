"""``interest verify-output``: check a day's published warehouse partitions against their
run manifest: every prepared user in every per-user table, no repeated (user, rank),
the declared schemas, and the row counts the manifest recorded. Exits 1 saying what is
wrong. Reads Parquet directly; no Ray."""

from __future__ import annotations

import argparse
import sys

from ray_jobs._common import run_job


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest verify-output", description=__doc__)
    parser.add_argument("out", help="the warehouse folder of `interest pipeline` (its `out`)")
    parser.add_argument("--dt", required=True, help="the partition date, YYYY-MM-DD")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from interest.pipeline.warehouse import latest_published, verify

    problems = verify(args.out, args.dt)
    if problems:
        print(f"{args.out} dt={args.dt}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    manifest = latest_published(args.out, args.dt)
    tables = ", ".join(f"{t} {i['rows']:,}" for t, i in manifest["tables"].items())
    print(f"{args.out} dt={args.dt}: run {manifest['run_id']} complete: {manifest['users']:,} users in every "
          f"per-user table, keys unique, schemas and row counts as the manifest says ({tables})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
