"""``interest explain``: one user's outputs of a trained run, each row with the user's own
events behind it (titles, behaviour and when), as text a person reads."""

from __future__ import annotations

import argparse
import sys

from ray_jobs._common import add_ray_args, init_ray, run_job, scoring_task


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest explain", description=__doc__)
    parser.add_argument("--run", required=True, help="run folder written by `interest train` (or the pipeline)")
    parser.add_argument("--data", required=True, help="the prepared dataset the user is in")
    parser.add_argument("--user", required=True, help="the user's id, as in the input logs")
    parser.add_argument("--top-k", type=int, default=10, help="rows (task zeroshot: one per new tag)")
    parser.add_argument("--tags", default=None, help="task zeroshot: the new tags file, as for `interest score`")
    parser.add_argument("--events", type=int, default=10, help="the user's latest events to list")
    add_ray_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from interest.config import ConfigError
    from interest.score.explain import explain, render

    scoring_task(args.run, args.data, args.tags)
    if args.top_k < 1 or args.events < 0:
        raise ConfigError("--top-k must be >= 1 and --events >= 0")
    init_ray(args, quiet=True)  # fitting the scoring parameters the first time reads the validation users
    print(render(explain(args.run, args.data, args.user, top_k=args.top_k, tags=args.tags), args.events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
