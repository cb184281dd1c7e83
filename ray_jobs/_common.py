"""What every job entrypoint shares: Ray start-up, logging, and error reporting.

Only entrypoints start Ray; library code runs on whatever cluster it is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from interest.config import ConfigError
from interest.io import InputError
from interest.schemas import SchemaError

USER_ERRORS = (ConfigError, InputError, SchemaError)


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Ray")
    group.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                       help="Ray cluster to join ('auto' inside `ray job submit`); default: start a local one")
    group.add_argument("--num-cpus", type=int, default=None,
                       help="logical CPUs of a local Ray (default: cores + 2, so Ray Data tasks are not "
                            "starved by long-running workers)")


def init_ray(args: argparse.Namespace, quiet: bool = False) -> None:
    """Join ``args.address`` or start a local Ray. ``quiet``: workers' output and Ray
    Data's progress bars stay out of the console (they are in Ray's session logs)."""
    import ray
    import ray.data

    if quiet:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    if ray.is_initialized():
        return
    if args.address:
        ray.init(address=args.address, log_to_driver=not quiet)
        return
    num_cpus = args.num_cpus or (os.cpu_count() or 1) + 2
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=not quiet,
             logging_level=logging.WARNING)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_job(build_parser: Callable[[], argparse.ArgumentParser], body: Callable[[argparse.Namespace], int],
            argv: list[str] | None) -> int:
    """Parse ``argv``, set up logging and run ``body(args)``; user errors print one
    clear line and exit 2, not a traceback."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        return body(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
