"""``interest prepare``: validate, deduplicate, index and split event logs on Ray Data."""

from __future__ import annotations

import argparse
import sys

from interest import config
from interest.data import adapters
from interest.data.prepare import PrepareConfig, plan, prepare
from ray_jobs._common import add_ray_args, init_ray, run_job

FORMATS_HELP = "\n".join(f"  {a.name:8s} {a.help}" for a in adapters.ADAPTERS.values())


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest prepare", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "formats:\n" + FORMATS_HELP + (
        "\n\nsettings (--set): split.method=leave_last|time|given, split.k=1, split.test_start=ISO, "
        "split.valid_start=ISO,\n  split.test_frac=0.1, split.valid_frac=0.1, max_len=200, buckets=0 (auto), "
        "ts_unit=s|ms|us, min_ts=1990-01-01, max_ts=ISO")
    parser.add_argument("input", help="events: a file, folder, glob or s3:// path")
    parser.add_argument("--format", default="events", choices=list(adapters.ADAPTERS), help="input format")
    parser.add_argument("--items", default=None, help="items catalogue (Parquet/CSV/JSONL), for --format events")
    parser.add_argument("--out", required=True, help="prepared dataset folder (local or s3://)")
    parser.add_argument("--config", default=None, help="YAML file of PrepareConfig values")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set split.method=time")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_ray_args(parser)
    return parser


def print_report(report: dict, out: str) -> None:
    rows = [(f, c) for f, c in report["files"].items()]
    width = min(70, max([len(f) for f, _ in rows] + [5]))
    print(f"\n{'file':<{width}} {'input':>11} {'kept':>11} {'quarantined':>11} {'duplicates':>11} {'forgotten':>11}")
    for f, c in rows + [("total", report["total"])]:
        name = f if len(f) <= width else "..." + f[-width + 3:]
        print(f"{name:<{width}} {c['input']:>11,} {c['kept']:>11,} {c['quarantined']:>11,} "
              f"{c['duplicates_removed']:>11,} {c['forgotten']:>11,}")
    for reason, n in sorted(report["quarantine_reasons"].items(), key=lambda kv: -kv[1]):
        print(f"  quarantined for {reason}: {n:,}")
    s = report["split"]
    print(f"\nusers {report['users']:,}  items {report['items']['total']:,} "
          f"({report['items']['catalogue_only']:,} from the catalogue only)")
    print(f"split {s['method']}: " + ", ".join(f"{k} {v:,}" for k, v in s["events"].items())
          + f"; {s['users_with_test']:,} users with test events")
    print(f"prepared dataset: {out}  ({report['seconds']:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    cfg = config.load(PrepareConfig, args.config, args.set, base=dict(
        input=args.input, format=args.format, items=args.items, out=args.out, overwrite=args.overwrite))
    checked = plan(cfg)  # input errors surface before Ray starts
    init_ray(args)
    report = prepare(cfg, checked)
    print_report(report, cfg.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
