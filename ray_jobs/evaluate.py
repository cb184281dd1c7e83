"""``interest evaluate``: full-ranking test metrics of a run beside baselines, as JSON and a table."""

from __future__ import annotations

import argparse
import json
import sys

from interest import io
from interest.evaluate.metrics import Protocol
from ray_jobs._common import add_ray_args, init_ray, run_job


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest evaluate", description=__doc__)
    parser.add_argument("--task", default="sequence", help="task of the run (checked against the run)")
    parser.add_argument("--run", required=True, help="run folder written by `interest train`")
    parser.add_argument("--data", required=True, help="the prepared dataset the run was trained on")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--no-mask-seen", action="store_true", help="let items of the history be recommended")
    parser.add_argument("--baselines", default="popularity", help="comma-separated: popularity,ease")
    parser.add_argument("--out", default=None, help="metrics JSON (default RUN/metrics_SPLIT.json)")
    add_ray_args(parser)
    return parser


def print_table(results: dict) -> None:
    p = results["protocol"]
    print(f"\n{p['split']} metrics, {p['ranking']} ranking over every item, seen items "
          f"{'masked' if p['mask_seen'] else 'not masked'}, target = {p['target']} held-out event")
    print(f"{'method':<12} {'users':>7} {'HR@10':>7} {'NDCG@10':>8} {'HR@20':>7} {'NDCG@20':>8} {'MRR':>7}")
    for name in ("model", "popularity", "ease"):
        m = results.get(name)
        if not m:
            continue
        if "skipped" in m:
            print(f"{name:<12} skipped: {m['skipped']}")
            continue
        print(f"{name:<12} {m['users']:>7} {m['hr@10']:>7.4f} {m['ndcg@10']:>8.4f} {m['hr@20']:>7.4f} "
              f"{m['ndcg@20']:>8.4f} {m['mrr']:>7.4f}")
    if results.get("behavior"):
        print(f"\nnext behaviour type   {'accuracy':>8} {'macro AUC':>9}")
        for name, m in results["behavior"].items():
            auc = "-" if m["macro_auc"] is None else f"{m['macro_auc']:.4f}"
            print(f"{name:<20} {m['accuracy']:>9.4f} {auc:>9}")


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from interest.evaluate.harness import evaluate, latest_checkpoint

    latest_checkpoint(args.run)  # fail before Ray starts
    init_ray(args)
    results = evaluate(args.run, args.data, protocol=Protocol(split=args.split, mask_seen=not args.no_mask_seen),
                       baselines=tuple(b for b in args.baselines.split(",") if b))
    out = args.out or io.join(args.run, f"metrics_{args.split}.json")
    io.write_json(results, out)
    print_table(results)
    print(f"\nmetrics written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
