"""``interest score``: score every user with a trained run (Ray Data batch inference) and
publish the rows as Parquet that DuckDB, Trino, Spark or Hive read directly."""

from __future__ import annotations

import argparse
import json
import sys

from ray_jobs._common import add_ray_args, init_ray, run_job, scoring_task


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest score", description=__doc__)
    parser.add_argument("--run", required=True, help="run folder written by `interest train`")
    parser.add_argument("--data", required=True, help="the prepared dataset whose users are scored")
    parser.add_argument("--out", required=True, help="output folder (local or s3://), published atomically")
    parser.add_argument("--top-k", type=int, default=10, help="rows per user (task zeroshot: one per new tag)")
    parser.add_argument("--concurrency", type=int, default=1, help="scoring actors")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--tags", default=None,
                        help="task zeroshot: CSV or Parquet of new tags (tag, description, optionally "
                             "example_item_ids, example_user_ids); writes user_zeroshot/ and tag_audiences/")
    parser.add_argument("--audience", type=int, default=1000, help="task zeroshot: users per tag in tag_audiences")
    add_ray_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from interest.config import ConfigError
    from interest.io import check_writable
    from interest.score.batch import score

    scoring_task(args.run, args.data, args.tags)
    if args.audience < 1:
        raise ConfigError(f"--audience must be >= 1 user per tag, got {args.audience}")
    check_writable(args.out, overwrite=args.overwrite)
    init_ray(args)
    report = score(args.run, args.data, args.out, top_k=args.top_k, concurrency=args.concurrency,
                   overwrite=args.overwrite, tags=args.tags, audience=args.audience)
    print(f"{report['rows']:,} rows -> {args.out}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
