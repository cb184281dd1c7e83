"""What every job entrypoint shares: Ray start-up, logging, and error reporting.

Only entrypoints start Ray; library code runs on whatever cluster it is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from interest import io
from interest.config import ConfigError
from interest.io import InputError, StorageError
from interest.schemas import SchemaError

USER_ERRORS = (ConfigError, InputError, SchemaError)

# Set in a local Ray's environment before it starts (its processes inherit it). A Ray
# Train worker's report waits in a one-slot queue until the controller polls, every 2 s
# by default, so an epoch shorter than that (small data, the demo, the tests) took 2 s.
# A missed poll is not a failure (a worker is declared hung only after 10 min of them),
# so polling more often costs a few RPCs and nothing else. Clusters keep Ray's default:
# their epochs run for minutes.
# Ray Data's V2 Parquet reader starts a pool of up to 32 footer-reading actors (each a
# new Python process) for every read: about 2 s per read on 2 cores, against 0.2 s for
# the V1 reader, and the nightly job reads Parquet dozens of times (each training, each
# evaluation, the scoring pass). Clusters keep V2: its actors read S3 footers in parallel.
LOCAL_RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_DATA_USE_DATASOURCE_V2": "0"}


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
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    # Ray Data read the environment when it was imported (above): the driver's reads too.
    ray.data.DataContext.get_current().use_datasource_v2 = os.environ["RAY_DATA_USE_DATASOURCE_V2"] != "0"
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=not quiet,
             logging_level=logging.WARNING)


def scoring_task(run: str, data: str, tags: str | None):
    """The task of ``run`` (a trained run to score ``data`` with), checked before Ray
    starts: task zeroshot needs a new tags file and other tasks refuse one; a malformed
    file fails here, naming its row."""
    from interest.tasks import get_task
    from interest.tasks.zeroshot.newtags import read_for
    from interest.train.checkpoint import latest_checkpoint, load_state

    task = get_task(load_state(latest_checkpoint(run))["task"])
    if task.scores_new_tags and not tags:
        raise ConfigError(f"{run} is a {task.name} run: give --tags FILE of the new tags to score")
    if tags:
        read_for(tags, data)
    return task


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # The S3 client's "Found credentials in environment variables" on every command.
    for name in ("aiobotocore", "botocore", "s3fs"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
    except StorageError as exc:  # not the user's doing, but as plain: the store and what failed
        print(f"error: {exc}", file=sys.stderr)
        return 1


@contextmanager
def logs_to_file(root: str, stem: str, verbose: bool) -> Iterator[str]:
    """Send the library's and Ray's log records to ``ROOT/logs/<stem>-<time>.log`` (and
    on to the console too when ``verbose``) while a job runs; yields the file. Unless
    ``verbose``, ``sys.stdout`` is that file meanwhile (Ray prints its warnings there):
    the job writes its own lines to the ``sys.stdout`` it took before. With
    ``root`` on S3 the file is written in the local temporary folder and copied to
    ``ROOT/logs/`` at the end (an S3 object cannot be appended to)."""
    file_name = f"{stem}-{time.strftime('%H%M%S')}.log"
    folder = os.path.join(tempfile.gettempdir(), "interest-logs") if io.is_s3(root) else os.path.join(root, "logs")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, file_name)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    import ray.data  # noqa: F401  (it configures its loggers on import: before they are redirected)

    saved = []
    for name in ("interest", "ray", "ray.data", "ray.train", "ray.tune", "py.warnings"):
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate, logger.level))
        if not verbose:  # Ray gives its loggers console handlers of their own; its file handlers stay
            for h in list(logger.handlers):
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                    logger.removeHandler(h)
            logger.propagate = False
        logger.addHandler(handler)
        logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    restore_output = _ray_output_to(path) if not verbose else None
    if not verbose:
        logging.captureWarnings(True)  # library warnings into the file, not between the step lines
        # Set before Ray starts, so its workers inherit them: no model-loading progress bars.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        yield path
    finally:
        if restore_output:
            restore_output()
        logging.captureWarnings(False)
        for logger, handlers, propagate, level in saved:
            logger.handlers[:] = handlers
            logger.propagate, logger.level = propagate, level
        handler.close()
        if io.is_s3(root):
            with open(path, "rb") as f:
                io.write_bytes(f.read(), io.join(root, "logs", file_name))


def _ray_output_to(path: str) -> Callable[[], None]:
    """Send what Ray prints on the driver by itself to ``path``: its C++ core's log lines
    (written to file descriptor 2) and the raylet's warnings (printed to ``sys.stdout``).
    The job's own lines keep the console: the caller's console stream is the original
    ``sys.stdout`` object, taken before this. Returns the function that undoes it."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_stdout, saved_fd = sys.stdout, os.dup(2)
    log = open(path, "a", buffering=1)
    os.dup2(log.fileno(), 2)
    sys.stdout = log

    def restore() -> None:
        sys.stdout = saved_stdout
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        log.close()

    return restore
