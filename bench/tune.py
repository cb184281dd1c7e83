"""Does `interest tune` beat the task's defaults on the test split? One run, one (task, dataset).

    python bench/tune.py --task recommend --dataset amazon_beauty_s3rec
    python bench/tune.py --task sequence --dataset movielens_100k
    python bench/tune.py --task tags --dataset rees46_2019oct_head

Prepares the dataset (cached under --work; tags also embed the items' text), then:

1. trains the task's default config with `interest train` (its refit included);
2. searches with `interest tune` for at most --budget-s seconds: the trials see only the
   validation split, and ASHA stops the weak ones;
3. trains the search's `best.yaml` with `interest train --config`, as a user would;
4. evaluates both runs on the test split with `interest evaluate --per-user`: each test
   user's figure of the task's validation metric (``train.metric``), so the two are
   compared user by user. A paired bootstrap over the test users gives the 95% interval
   of best - default; the search beats the defaults when the whole interval is above 0.

Defaults are the ones a user gets: pick (task, dataset) pairs whose defaults were not
set by hand on that file (the recommend defaults were, on MovieLens 100K and Amazon
Scientific). Ends with one JSON line: dataset, task, default, best, trials,
stopped_early, search_s and the interval.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_dataset_args, embed_items, emit_json, precision, prepared_dataset,  # noqa: E402
                     print_table, run_measured, work_folder)

SPLIT = {"sequence": "leave_last", "recommend": "time", "tags": "time"}  # of synthetic data, as the quality benches


def train(py: str, task: str, prepared: Path, run: Path, args, sets: list[str], config: Path | None = None) -> float:
    shutil.rmtree(run, ignore_errors=True)
    wall, _ = run_measured([py, "-m", "interest.cli", "train", "--task", task, "--data", str(prepared), "--out",
                            str(run), "--num-workers", str(args.num_workers),
                            *(["--config", str(config)] if config else []), *[x for o in sets for x in ("--set", o)]],
                           env={"PYTHONUNBUFFERED": "1"}, log=run.with_suffix(".log"))
    return wall


def per_user(py: str, task: str, prepared: Path, run: Path) -> tuple[dict, pa.Table]:
    """The run's test metrics and its per-user figures."""
    table = run.with_name(run.name + "-per-user.parquet")
    run_measured([py, "-m", "interest.cli", "evaluate", "--task", task, "--run", str(run), "--data", str(prepared),
                  "--per-user", str(table)], log=run.with_name(run.name + "-evaluate.log"))
    return json.loads((run / "metrics_test.json").read_text()), pq.read_table(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(parser)
    parser.add_argument("--task", choices=tuple(SPLIT), required=True,
                        help="zeroshot is judged per held-out tag, not per user: it has no paired test here")
    parser.add_argument("--budget-s", type=float, default=1800, help="the search's time budget (30 min)")
    parser.add_argument("--num-samples", type=int, default=20, help="trials at most (the budget may stop sooner)")
    parser.add_argument("--max-concurrent-trials", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=1, help="DDP workers of every training and trial")
    parser.add_argument("--seed", type=int, default=0, help="of the search's draws and the bootstrap")
    parser.add_argument("--encoder", default=None, help="encoder folder for tags (default: the packaged MiniLM)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config for the default and every trial alike (not searched)")
    parser.add_argument("--split", default=None, choices=("time", "leave_last"),
                        help="prepare with this split instead of the dataset's usual one (a time split of "
                             "MovieLens 100K leaves 166 test users; leave_last, all 943)")
    args = parser.parse_args(argv)
    work = work_folder(args, f"tune_{args.task}" + (f"_{args.split}" if args.split else ""))
    name, py, task = work.name, sys.executable, args.task
    prepared, _ = prepared_dataset(args, work, synthetic_split=args.split or SPLIT[task],
                                   split=[f"split.method={args.split}"] if args.split else None)
    sets = [precision(args)]
    if task == "tags":
        store, _ = embed_items(prepared, work, args.encoder)
        sets += [f"embeddings={store}"] + ([f"encoder={args.encoder}"] if args.encoder else [])
    sets += args.set

    print(f"{name}: training {task}'s defaults ...", flush=True)
    default_s = train(py, task, prepared, work / "default", args, sets)
    print(f"{name}: searching for {args.budget_s:.0f} s at most ...", flush=True)
    search = work / "search"
    shutil.rmtree(search, ignore_errors=True)
    start = time.perf_counter()
    run_measured([py, "-m", "interest.cli", "tune", "--task", task, "--data", str(prepared), "--out", str(search),
                  "--num-samples", str(args.num_samples), "--time-budget-s", str(args.budget_s), "--num-workers",
                  str(args.num_workers), "--seed", str(args.seed),
                  *(["--max-concurrent-trials", str(args.max_concurrent_trials)] if args.max_concurrent_trials
                    else []), *[x for o in sets for x in ("--set", o)]], log=work / "search.log")
    search_s = time.perf_counter() - start
    print(f"{name}: training the best config ...", flush=True)
    best_s = train(py, task, prepared, work / "best", args, [], config=search / "best.yaml")

    from interest.evaluate.metrics import paired_bootstrap

    (default_metrics, default_users), (best_metrics, best_users) = (per_user(py, task, prepared, work / r)
                                                                    for r in ("default", "best"))
    metric = default_users.column_names[1]
    a = dict(zip(default_users.column(0).to_pylist(), default_users.column(1).to_pylist()))
    b = dict(zip(best_users.column(0).to_pylist(), best_users.column(1).to_pylist()))
    if set(a) != set(b):
        raise SystemExit(f"the runs were tested on different users ({len(a)} and {len(b)}): not a paired test")
    users = sorted(a)
    diff, lo, hi = paired_bootstrap([a[u] for u in users], [b[u] for u in users], seed=args.seed)

    trials = pq.read_table(search / "trials.parquet").to_pylist()
    stopped = sum(t["status"] == "stopped_early" for t in trials)
    winner = max((t for t in trials if t["best"] is not None), key=lambda t: t["best"])
    chosen = json.loads(winner["params"])
    rows = [["default", f"{sum(a.values()) / len(a):.4f}", f"{default_s:.0f}", "-", "task defaults"],
            ["best", f"{sum(b.values()) / len(b):.4f}", f"{best_s:.0f}", f"{winner['best']:.4f}",
             ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(chosen.items()))]]
    print(f"\n{name}, {task}: test {metric} over {len(users):,} users; search {search_s:.0f} s, {len(trials)} trials, "
          f"{stopped} stopped early")
    print_table(["config", f"test {metric}", "train s", f"valid {metric}", "values"], rows)
    verdict = "beats" if lo > 0 else ("is worse than" if hi < 0 else "does not separate from")
    print(f"\nbest - default: {diff:+.4f}, 95% paired bootstrap interval [{lo:+.4f}, {hi:+.4f}]: the search's config "
          f"{verdict} the defaults")
    emit_json({"dataset": name, "task": task,
               "default": {metric: round(sum(a.values()) / len(a), 5), "train_s": round(default_s, 1),
                           "test": default_metrics["model"]},
               "best": {metric: round(sum(b.values()) / len(b), 5), "train_s": round(best_s, 1),
                        "test": best_metrics["model"], "params": chosen, "valid": winner["best"]},
               "trials": len(trials), "stopped_early": stopped, "search_s": round(search_s, 1),
               "difference": {"mean": round(diff, 5), "ci95": [round(lo, 5), round(hi, 5)], "users": len(users)}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
