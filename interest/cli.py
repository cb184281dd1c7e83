"""The ``interest`` command: one subcommand per job in ``ray_jobs``."""

from __future__ import annotations

import argparse
import sys

from ray_jobs import (demo, discover, embed_items, evaluate, explain, generate, pipeline, prepare, report, score,
                      train, tune, verify_output)

# name -> (module with build_parser/main, one-line help)
COMMANDS = {
    "pipeline": (pipeline, "the nightly job: prepare, embed, train, evaluate, refit, score and publish every table"),
    "verify-output": (verify_output, "check a day's warehouse partitions against their run manifest"),
    "report": (report, "draw a day's report: data, quality, outputs and drift, as one HTML page"),
    "generate": (generate, "write a synthetic e-commerce log with planted interests"),
    "prepare": (prepare, "validate, deduplicate, index and split event logs on Ray Data"),
    "embed-items": (embed_items, "embed every item's text once with a transformers encoder"),
    "discover": (discover, "cluster item text vectors into candidate interest groups to name"),
    "train": (train, "train a task (sequence, tags, recommend, zeroshot) with Ray Train"),
    "tune": (tune, "search a task's hyperparameters with Ray Tune (ASHA); writes best.yaml"),
    "evaluate": (evaluate, "test metrics of a trained run beside baselines"),
    "score": (score, "score every user with a trained run, as Parquet"),
    "explain": (explain, "one user's outputs of a run, each row with the user's events behind it"),
    "demo": (demo, "run the pipeline on built-in synthetic data and a local Ray"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interest",
        description="Model e-commerce users' interests offline, at scale, on Ray.",
        epilog="Run `interest COMMAND --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        module.build_parser(sub.add_parser(name, help=help_, description=module.__doc__))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    module, _ = COMMANDS[args.command]
    # Each job parses its own arguments, so `python -m ray_jobs.X` and `interest X` agree.
    return module.main(argv[argv.index(args.command) + 1:])


if __name__ == "__main__":
    sys.exit(main())
