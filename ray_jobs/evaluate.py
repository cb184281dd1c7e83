"""``interest evaluate``: full-ranking test metrics of a run beside baselines, as JSON and a table."""

from __future__ import annotations

import argparse
import sys

from interest import io
from interest.config import ConfigError
from interest.evaluate.metrics import Protocol
from ray_jobs._common import add_ray_args, init_ray, run_job


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest evaluate", description=__doc__)
    parser.add_argument("--task", default="sequence", help="task of the run (checked against the run)")
    parser.add_argument("--run", required=True, help="run folder written by `interest train`")
    parser.add_argument("--data", required=True, help="the prepared dataset the run was trained on")
    parser.add_argument("--no-mask-seen", action="store_true", help="let items of the history be recommended")
    parser.add_argument("--baselines", default="popularity",
                        help="comma-separated, of popularity,itemknn,ease; popularity always runs, "
                             "itemknn and ease pick their parameter on the validation targets")
    parser.add_argument("--out", default=None, help="metrics JSON (default RUN/metrics_test.json)")
    parser.add_argument("--per-user", default=None, metavar="PARQUET",
                        help="also write the model's test figure of its train.metric for each user (user_idx, "
                             "metric): two runs compare user by user (bench/tune.py's paired bootstrap)")
    add_ray_args(parser)
    return parser


METHODS = ("model", "popularity", "network", "itemknn", "ease", "model+itemknn", "model+ease")


def print_table(results: dict) -> None:
    if results.get("task") == "tags":
        return print_tags_table(results)
    if results.get("task") == "recommend":
        return print_recommend_table(results)
    if results.get("task") == "zeroshot":
        return print_zeroshot_table(results)
    p = results["protocol"]
    print(f"\n{p['split']} metrics, {p['ranking']} ranking over every item, seen items "
          f"{'masked' if p['mask_seen'] else 'not masked'}, target = {p['target']} held-out event; ties count "
          f"{p['ties']}")
    _print_rows(results, METHODS, {"hr@10": "HR@10", "ndcg@10": "NDCG@10", "hr@20": "HR@20",
                                   "ndcg@20": "NDCG@20", "mrr": "MRR"})
    if results.get("behavior"):
        print(f"\nnext behaviour type   {'accuracy':>8} {'macro AUC':>9}")
        for name, m in results["behavior"].items():
            auc = "-" if m["macro_auc"] is None else f"{m['macro_auc']:.4f}"
            print(f"{name:<20} {m['accuracy']:>9.4f} {auc:>9}")


def print_tags_table(results: dict) -> None:
    p, k = results["protocol"], results["protocol"]["k"]
    u = results["users"]
    print(f"\n{p['split']} metrics: {p['target']}, every tag ranked; {u['with_labels']:,} users with labels, "
          f"{u['without_labels']:,} without (not scored); ties count {p['ties']}")
    print(f"{'method':<12} {'P@' + str(k):>7} {'R@' + str(k):>7} {'mAP':>7}")
    for name in ("model", "popularity", "history"):
        m = results[name]
        print(f"{name:<12} {m[f'p@{k}']:>7.4f} {m[f'r@{k}']:>7.4f} {m['map']:>7.4f}")
    print(f"model scored {results['model']['users_per_s']:,.0f} users/s")
    if results["tags"]["tags_without_items"]:
        print(f"{len(results['tags']['tags_without_items'])} tags cover no item category")


def print_recommend_table(results: dict) -> None:
    print("\ntest metrics: every item ranked, seen items masked, targets = each user's new items of the "
          f"test split; ties count {results['protocol']['ties']}")
    columns = {"recall@10": "Recall@10", "ndcg@10": "NDCG@10", "recall@20": "Recall@20", "ndcg@20": "NDCG@20"}
    _print_rows(results, ("model", "popularity", "itemknn", "ease"), columns, chosen=True)
    cold = results.get("cold_start")
    if cold:
        print(f"\ncold start: {cold['items']:,} items held out of training; {cold['protocol']}")
        _print_rows(cold, ("model", "favourite_category"), columns)


def print_zeroshot_table(results: dict) -> None:
    p = results["protocol"]
    print(f"\n{len(results['tags'])} tags the model never saw, judged on the test window: {p['ranking']}; "
          f"positives: {p['target']}; macro mean ± standard error over tags")
    print(f"{'method':<24} {'AUC':>16} {'Recall@100':>18}")
    for name in ("model", "text_match", "parent_share", "activity", "random"):
        m = results.get(name)
        if m and m["auc"] is not None:
            se = [f" ± {m[k]:.4f}" if m.get(k) is not None else "" for k in ("auc_se", "recall@100_se")]
            print(f"{name:<24} {m['auc']:>7.4f}{se[0]:>9} {m['recall@100']:>9.4f}{se[1]:>9}")
    for kind, curve in results["few_shot"].items():
        if curve:
            print(f"model, text + example {kind}: " + ", ".join(f"{n}: {v:.4f}" for n, v in curve.items()))
    for tag, why in results["skipped"].items():
        print(f"skipped {tag}: {why}")


def _print_rows(results: dict, methods, columns: dict[str, str], chosen: bool = False) -> None:
    """One row per method present in ``results``: its users and ``columns`` (key -> heading),
    and with ``chosen`` the parameter it picked on the validation users."""
    print(f"{'method':<18} {'users':>7} " + " ".join(f"{h:>9}" for h in columns.values())
          + ("  chosen on valid" if chosen else ""))
    for name in methods:
        m = results.get(name)
        if not m:
            continue
        if "skipped" in m:
            print(f"{name:<18} skipped: {m['skipped']}")
            continue
        picked = next((f"  {p} {m[p]:g}" for p in ("lambda", "k") if p in m), "") if chosen else ""
        print(f"{name:<18} {m['users']:>7} " + " ".join(f"{m[k]:>9.4f}" for k in columns) + picked)


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from interest.evaluate.baselines import GRIDS
    from interest.evaluate.harness import evaluate
    from interest.train.checkpoint import latest_checkpoint

    baselines = tuple(b for b in args.baselines.split(",") if b)
    unknown = set(baselines) - {"popularity", *GRIDS}
    if unknown:
        raise ConfigError(f"unknown baseline(s) {', '.join(sorted(unknown))}; choose from popularity, "
                          f"{', '.join(GRIDS)}")
    latest_checkpoint(args.run)  # fail before Ray starts
    init_ray(args)
    results = evaluate(args.run, args.data, protocol=Protocol(mask_seen=not args.no_mask_seen), baselines=baselines,
                       per_user=bool(args.per_user))
    if args.per_user:
        io.write_parquet(results.pop("per_user"), args.per_user)
    out = args.out or io.join(args.run, "metrics_test.json")
    io.write_json(results, out)
    print_table(results)
    print(f"\nmetrics written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
