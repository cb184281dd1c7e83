"""``interest pipeline``: the nightly job. Prepares the logs, embeds new or changed items,
trains (or reuses) every task's model, evaluates each beside its baselines and stops if
one falls below its gate, refits on every event, scores every user for every output in
one pass and publishes warehouse partitions ``OUT/<table>/dt=YYYY-MM-DD/`` with a run
manifest. A rerun skips what finished and is unchanged."""

from __future__ import annotations

import argparse
import sys
import time

from ray_jobs._common import add_ray_args, init_ray, logs_to_file, run_job


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest pipeline", description=__doc__)
    parser.add_argument("--config", required=True, help="the pipeline's YAML (see configs/demo.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set dt=2026-12-01 --set tasks.sequence.retrain=always")
    parser.add_argument("--force", action="store_true", help="run every step again, even those finished and unchanged")
    parser.add_argument("--verbose", action="store_true",
                        help="show the library's and Ray's logs on the console (default: in WORK/logs/)")
    add_ray_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from interest import config as C
    from interest.pipeline.config import load
    from interest.pipeline.run import Console, GateFailed, Pipeline, check

    cfg = load(args.config, args.set)
    check(cfg)  # everything that can be wrong with the request, before Ray starts
    console = Console()
    with logs_to_file(cfg.work, f"pipeline-{cfg.dt}", args.verbose) as log_file:
        console.line(f"interest pipeline {args.config}: dt={cfg.dt}, tasks {', '.join(cfg.tasks)} -> {cfg.out}"
                     + ("" if args.verbose else f"\n  logs: {log_file}"))
        init_ray(args, quiet=not args.verbose)
        start = time.perf_counter()
        try:
            manifest = Pipeline(cfg, C.to_dict(cfg), console, force=args.force, log_file=log_file).run()
        except GateFailed as exc:
            console.line(f"\nstopped: {exc}")
            return 3
    print_summary(manifest, time.perf_counter() - start, console)
    return 0


def print_summary(manifest: dict, seconds: float, console) -> None:
    done = "was already published" if manifest.get("already_published") else f"published in {seconds:.0f} s"
    console.line(f"\nrun {manifest['run_id']} {done}: {manifest['users']:,} users")
    console.line(f"{'table':<22} {'rows':>10}  {'sources':<34} summary")
    for table, info in manifest["tables"].items():
        s = manifest["summary"].get(table, {})
        sources = ", ".join(f"{k} {v:,}" for k, v in s.get("sources", {}).items())
        extra = []
        if "catalogue_coverage" in s:
            extra.append(f"catalogue coverage {s['catalogue_coverage']:.1%}")
        if "top1_shares" in s:
            top = list(s["top1_shares"].items())[:3]
            extra.append("rank 1: " + ", ".join(f"{k} {v:.0%}" for k, v in top))
        console.line(f"{table:<22} {info['rows']:>10,}  {sources:<34} {'; '.join(extra)}")
    for name, e in manifest["evaluation"].items():
        console.line(f"gate {name}: {e['gate']['why']}")
    for name, m in manifest["models"].items():
        console.line(f"model {name}: {m['scored_with']} (newest training event {m['newest_training_event'][:10]}, "
                     f"{m['newest_training_event_age_days']} day(s) before dt)")
    if manifest.get("drift_against"):
        console.line(f"drift against {manifest['drift_against']}: " + "; ".join(
            f"{t}: " + ", ".join(f"{k} {v:+.3f}" if 'change' in k else f"{k} {v:.3f}" for k, v in d.items())
            for t, d in manifest["drift"].items() if d))


if __name__ == "__main__":
    sys.exit(main())
