"""How the pipeline's steps grow with the data: wall time and peak memory, and a fit.

For each size of synthetic events (users = events / --events-per-user, over a fixed
--items catalogue; generated once and cached under --work), each step runs as its own
process while the memory of its whole process tree is sampled (PSS: Ray's shared object
store counts once), as bench/prepare.py and bench/score.py measure:

- ``prepare``: `interest prepare` of the raw events (validation, deduplication, indexing,
  split, per-user sequences);
- ``train <task>``: `interest train` for --epochs epochs and no refit, 2 DDP workers, on
  the --train-events sizes only (the recommend two-tower and SASRec ``small``, both at
  dimension 64, as bench/score.py scores them), with the sampled softmax (1,024 shared
  negatives a step) that large catalogues train with: the full softmax over 50k items
  took 293 s an epoch of 1M events (the two-tower at 128 users a step; its default of 8
  is chosen for quality on small catalogues). The epochs' training seconds come from the
  run's log, so Ray Train's start-up and validation are not in the slope;
- ``score``: the pipeline's one scoring pass of both models over every user, from the
  first Parquet read to the last file written (bench/score.py's ``pipeline`` side).

Then, per step, a least-squares line ``seconds = fixed + slope x events`` and the growth
exponent ``k`` of ``seconds ~ events^k`` (1: linear), and the same for memory, which a
streaming step keeps flat (k near 0).

    python bench/scale.py                                  # 1M, 5M, 20M events; training on 1M, 5M
    python bench/scale.py --events 200000,1000000 --train-events 200000
    python bench/scale.py --dataset rees46_2019oct_head    # one size: the whole file

Ends with one JSON line of the figures. The README's projection for a cluster uses its
slopes (section "Run on a cluster", "How long 2B events take").
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_dataset_args, emit_json, epoch_train_seconds, prepare_source, print_table,  # noqa: E402
                     run_measured, work_folder)
from score import CONFIGS, make_run  # noqa: E402

HEADERS = ["step", "events", "users", "wall s", "step s", "peak MB"]
TRAIN = {"recommend": {"loss": "sampled", "train": {"batch_size": 128}}, "sequence": {"loss": "sampled"}}


def fit(points: list[tuple[float, float]]) -> dict:
    """``y = fixed + slope * x`` by least squares, and ``k`` of ``y ~ x^k`` over the
    first and last points; None where fewer than two sizes were measured."""
    if len(points) < 2:
        return {"fixed": None, "slope": None, "k": None}
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    (x0, y0), (x1, y1) = points[0], points[-1]
    return {"fixed": my - slope * mx, "slope": slope, "k": math.log(y1 / y0) / math.log(x1 / x0)}


def sets(config: dict, prefix: str = "") -> list[str]:
    """``--set key=value`` arguments for a nested config dict."""
    out = []
    for key, value in config.items():
        if isinstance(value, dict):
            out += sets(value, f"{prefix}{key}.")
        else:
            out += ["--set", f"{prefix}{key}={value}"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(parser)
    parser.add_argument("--events", default="1000000,5000000,20000000", help="synthetic sizes, comma-separated")
    parser.add_argument("--train-events", default="1000000,5000000", help="the sizes that are also trained")
    parser.add_argument("--items", type=int, default=50_000, help="synthetic catalogue size")
    parser.add_argument("--events-per-user", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1, help="training epochs at every size")
    parser.add_argument("--num-workers", type=int, default=2, help="DDP workers per training")
    parser.add_argument("--batch-size", type=int, default=1024, help="users per scoring batch")
    parser.add_argument("--concurrency", type=int, default=2, help="scoring actors")
    args = parser.parse_args(argv)

    py = sys.executable
    work = work_folder(args, "scale")
    synthetic = args.dataset == "synthetic" and not args.data
    sizes = [int(x) for x in args.events.split(",")] if synthetic else [None]
    trained = {int(x) for x in args.train_events.split(",") if x} if synthetic else {None}
    rows, steps = [], {}  # steps: name -> [(events, users, step seconds, wall seconds, MB)]

    def record(step: str, events: int, users: int, wall: float, seconds: float, mb: float) -> None:
        steps.setdefault(step, []).append((events, users, seconds, wall, mb))
        rows.append([step, f"{events:,}", f"{users:,}", f"{wall:.1f}", f"{seconds:.1f}", f"{mb:,.0f}"])
        print_table(HEADERS, rows[-1:])

    for size in sizes:
        folder = work / (f"events-{size}" if synthetic else "data")
        folder.mkdir(parents=True, exist_ok=True)
        source = prepare_source(args, folder, (size or 0) // args.events_per_user, args.items, size or 0)
        prepared = folder / "prepared"
        print(f"{size or 'dataset'}: prepare ...", flush=True)
        wall, mb = run_measured([py, "-m", "interest.cli", "prepare", *source, "--out", str(prepared), "--overwrite"],
                                log=folder / "prepare.log")
        report = json.loads((prepared / "prepare_report.json").read_text())
        events, users = report["total"]["kept"], report["users"]
        record("prepare", events, users, wall, wall, mb)

        if size in trained:
            for task_name, config in CONFIGS.items():
                run = folder / f"train-{task_name}"
                shutil.rmtree(run, ignore_errors=True)  # else `interest train` resumes it
                print(f"{events:,} events: train {task_name} ...", flush=True)
                log = folder / f"train-{task_name}.log"
                wall, mb = run_measured(
                    [py, "-m", "interest.cli", "train", "--task", task_name, "--data", str(prepared), "--out",
                     str(run), "--num-workers", str(args.num_workers), *sets(config), *sets(TRAIN.get(task_name, {})),
                     *sets({"train": {"epochs": args.epochs, "patience": args.epochs, "refit": 0}})], log=log)
                record(f"train {task_name}", events, users, wall, sum(epoch_train_seconds(log)), mb)

        runs = []
        for task_name in CONFIGS:  # untrained weights: scoring costs the same whatever their values
            run = folder / f"score-{task_name}"
            make_run(task_name, str(prepared), run)
            runs.append(str(run))
        print(f"{events:,} events: score ...", flush=True)
        log = folder / "score.log"
        wall, mb = run_measured([py, str(Path(__file__).with_name("score.py")), "--child", "pipeline", "--prepared",
                                 str(prepared), "--runs", ",".join(runs), "--work", str(folder), "--batch-size",
                                 str(args.batch_size), "--concurrency", str(args.concurrency)],
                                env={"PYTHONUNBUFFERED": "1"}, log=log)
        done = json.loads(next(x for x in log.read_text().splitlines() if x.startswith("RESULT "))[len("RESULT "):])
        record("score", events, users, wall, done["seconds"], mb)

    print(f"\nsteps on this machine ({args.num_workers} training workers, {args.concurrency} scoring actors, "
          f"{args.items:,} items; step s: prepare's wall time, the epochs' training time, the scoring pass; "
          "memory: PSS of the process tree)")
    print_table(HEADERS, rows)
    figures = {"dataset": args.data or args.dataset, "items": args.items if synthetic else None, "steps": {}}
    fit_rows = []
    for step, points in steps.items():
        time_fit = fit([(e / 1e6, s) for e, _, s, _, _ in points])
        mem_fit = fit([(e / 1e6, mb) for e, _, _, _, mb in points])
        figures["steps"][step] = {
            "events": [p[0] for p in points], "users": [p[1] for p in points],
            "step_s": [round(p[2], 1) for p in points], "wall_s": [round(p[3], 1) for p in points],
            "peak_mb": [round(p[4]) for p in points],
            "s_per_m_events": time_fit["slope"] and round(time_fit["slope"], 2),
            "fixed_s": time_fit["fixed"] and round(time_fit["fixed"], 1),
            "time_k": time_fit["k"] and round(time_fit["k"], 2),
            "mb_per_m_events": mem_fit["slope"] and round(mem_fit["slope"], 1),
            "memory_k": mem_fit["k"] and round(mem_fit["k"], 2)}
        f = figures["steps"][step]
        if f["time_k"] is not None:
            fit_rows.append([step, f"{f['s_per_m_events']:.2f}", f"{f['fixed_s']:.1f}", f"{f['time_k']:.2f}",
                             f"{f['mb_per_m_events']:.1f}", f"{f['memory_k']:.2f}"])
    if fit_rows:
        print("\ngrowth: seconds = fixed + slope x M events; k: the exponent of seconds ~ events^k from the "
              "smallest to the largest size (1: linear); memory likewise (0: flat)")
        print_table(["step", "s per M events", "fixed s", "time k", "MB per M events", "memory k"], fit_rows)
    emit_json(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
