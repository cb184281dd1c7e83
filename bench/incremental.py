"""Benchmark an incremental night's scoring step against a full one.

A base day, then a day with new events for ``--changed`` (5%) of the users: each of
those users' latest ``--new-events`` events are held out of the base day and arrive on
day 2. With ``--dataset synthetic`` the base day is generated (``--users`` users,
``--events`` events over ``--items`` items); with a shared dataset or ``--data PATH
--format FMT`` it is that file's events, prepared once. Then:

1. the base day is prepared (``incremental: true``, as the pipeline does) and a recommend
   run (two-tower, dim 64) and a sequence run (SASRec ``small``, dim 64, no transitions)
   are written as checkpoints of untrained weights, with their frozen state
   (:mod:`interest.train.frozen`), as bench/score.py does: the cost of scoring does not
   depend on the weights' values;
2. every user of the base day is scored (the partition the next night carries from);
3. day 2's file is added and prepared incrementally (only the new file is read);
4. ``full``: every user scored again, as a night that retrained would;
5. ``incremental``: the rows of the users without new events carried over from step 2,
   and only the changed users scored, as a night that reuses its models does
   (interest.score.batch.carry, score_users on ``changed/``).

Steps 4 and 5 each run in their own process after Ray has started; each is timed from
the first read to the last file written, model loading and actor start-up included.

    python bench/incremental.py                                  # 10M events, 200k users
    python bench/incremental.py --users 20000 --events 1000000   # a quick run

Target (issue 25): the incremental scoring step at most 20% of the full one's wall time.
Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_dataset_args, dataset_input, emit_json, print_table, run_measured,  # noqa: E402
                     work_folder)
from score import CONFIGS, make_run  # noqa: E402

HEADERS = ["step", "users scored", "users carried", "rows", "seconds", "MB"]
TOP_K = 10


def base_events(args, work: Path):
    """The whole source as one events table (user_id, item_id, behavior, ts)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from interest import schemas as S

    py = sys.executable
    if args.dataset == "synthetic" and not args.data:
        raw = work / "raw"
        if not (raw / "items.parquet").exists():
            print(f"generating {args.events:,} events of {args.users:,} users over {args.items:,} items ...",
                  flush=True)
            run_measured([py, "-m", "interest.cli", "generate", "--users", str(args.users), "--items",
                          str(args.items), "--events", str(args.events), "--out", str(raw)], log=work / "generate.log")
        return pads.dataset(raw / "events").to_table(columns=[S.USER_ID, S.ITEM_ID, S.BEHAVIOR, S.TS])
    source = work / "source"
    if not (source / "_SUCCESS").exists():
        path, fmt, overrides = dataset_input(args)
        print(f"preparing {path} once for its events ...", flush=True)
        run_measured([py, "-m", "interest.cli", "prepare", path, "--format", fmt, "--out", str(source),
                      "--overwrite", *[x for o in overrides for x in ("--set", o)]], log=work / "source.log")
    events = pads.dataset(source / "events").to_table(columns=[S.USER_ID, S.ITEM_ID, S.BEHAVIOR, S.TS])
    behavior = pc.take(pa.array(S.BEHAVIORS), events.column(S.BEHAVIOR))
    return events.set_column(2, S.BEHAVIOR, behavior)


def split_days(events, share: float, new_events: int, out: Path) -> None:
    """``base.parquet`` without, and ``day2.parquet`` with, the latest ``new_events``
    events of a ``share`` of the users (each kept at least one base event)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from interest import schemas as S

    events = events.sort_by([(S.USER_ID, "ascending"), (S.TS, "ascending")])
    user = events.column(S.USER_ID).combine_chunks()
    n = events.num_rows
    start = np.flatnonzero(np.r_[True, ~np.asarray(pc.equal(user.slice(1), user.slice(0, n - 1)))])
    length = np.diff(np.r_[start, n])
    rng = np.random.default_rng(0)
    movers = np.flatnonzero((rng.random(len(start)) < share) & (length > 1))
    late = np.zeros(n, bool)
    for u in movers:  # the last events of each moving user
        take = min(new_events, length[u] - 1)
        late[start[u] + length[u] - take: start[u] + length[u]] = True
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(events.filter(pa.array(~late)), out / "base.parquet")
    pq.write_table(events.filter(pa.array(late)), out / "day2.parquet")


def child(args) -> dict:
    """Score in this process (steps 2, 4 and 5)."""
    from interest import io
    from interest import schemas as S
    from interest.score.batch import plan, score_users
    from interest.score.carry import carry
    from ray_jobs._common import init_ray

    init_ray(argparse.Namespace(address=None, num_cpus=4), quiet=True)  # as `interest pipeline` starts one
    runs = args.runs.split(",")
    start = time.perf_counter()
    outputs = [plan(run, args.prepared, f"{args.out}/{Path(run).name}", top_k=TOP_K, batch_size=args.batch_size)
               for run in runs]
    carried = {}
    if args.carry_from:
        changed = io.read_parquet(io.join(args.prepared, "changed"), columns=[S.USER_ID]).column(S.USER_ID)
        for o, run in zip(outputs, runs):
            carried[o.table] = carry(io.expand(f"{args.carry_from}/{Path(run).name}"), o.folder,
                                     changed.combine_chunks(), args.prepared)
    done = score_users(outputs, args.prepared, batch_size=args.batch_size, concurrency=args.concurrency,
                       users="changed" if args.carry_from else "sequences", carried=carried)
    seconds = time.perf_counter() - start
    return {"scored": done["users"], "carried": done["carried_users"], "rows": done["rows"], "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(parser)
    parser.add_argument("--users", type=int, default=200_000, help="synthetic users")
    parser.add_argument("--items", type=int, default=50_000, help="synthetic catalogue size")
    parser.add_argument("--events", type=int, default=10_000_000, help="synthetic events of the base day")
    parser.add_argument("--changed", type=float, default=0.05, help="share of users with new events on day 2")
    parser.add_argument("--new-events", type=int, default=3, help="new events of each of those users")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=2, help="scoring actors (one per core here)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    parser.add_argument("--runs", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--carry-from", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return 0

    py = sys.executable
    work = work_folder(args, "incremental")
    days = work / "days"
    if not (days / "day2.parquet").exists():
        events = base_events(args, work)
        print(f"splitting {events.num_rows:,} events: day 2 has the latest {args.new_events} of "
              f"{args.changed:.0%} of the users ...", flush=True)
        split_days(events, args.changed, args.new_events, days)
        del events
    catalogue = work / "raw" / "items.parquet"  # synthetic; a shared file's events carry what it has
    inputs, prepared = work / "input", work / "prepared"
    shutil.rmtree(inputs, ignore_errors=True)
    shutil.rmtree(prepared, ignore_errors=True)
    inputs.mkdir()
    shutil.copy(days / "base.parquet", inputs / "base.parquet")
    rows, figures = [], {"dataset": args.data or args.dataset}

    def prepare(step: str) -> dict:
        log = work / f"prepare-{step}.log"
        items = ["--items", str(catalogue)] if catalogue.exists() else []
        seconds, mb = run_measured([py, "-m", "interest.cli", "prepare", str(inputs), "--out", str(prepared),
                                    *items, "--set", "incremental=true"], log=log)
        report = json.loads((prepared / "prepare_report.json").read_text())
        rows.append([f"prepare: {step}", "", "", f"{report['total']['kept']:,} events", f"{seconds:.1f}",
                     f"{mb:,.0f}"])
        print_table(HEADERS, rows[-1:])
        return report

    def score(step: str, out: Path, carry_from: Path | None = None) -> dict:
        log = work / f"score-{step}.log"
        cmd = [py, __file__, "--child", "--prepared", str(prepared), "--runs", ",".join(runs), "--out", str(out),
               "--batch-size", str(args.batch_size), "--concurrency", str(args.concurrency), "--work", args.work]
        seconds, mb = run_measured(cmd + (["--carry-from", str(carry_from)] if carry_from else []),
                                   env={"PYTHONUNBUFFERED": "1"}, log=log)
        line = next(x for x in log.read_text().splitlines() if x.startswith("RESULT "))
        result = {**json.loads(line[len("RESULT "):]), "rss_mb": mb}
        rows.append([f"score: {step}", f"{result['scored']:,}", f"{result['carried']:,}",
                     f"{sum(result['rows'].values()):,}", f"{result['seconds']:.1f}", f"{mb:,.0f}"])
        print_table(HEADERS, rows[-1:])
        return result

    base = prepare("base day")
    runs = []
    for task_name in ("recommend", "sequence"):
        run = work / f"run-{task_name}"
        shutil.rmtree(run, ignore_errors=True)
        make_run(task_name, str(prepared), run)
        freeze(task_name, str(prepared), run)
        runs.append(str(run))
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        night1 = Path(tmp) / "night1"
        score("base day, every user", night1)
        shutil.copy(days / "day2.parquet", inputs / "day2.parquet")
        update = prepare("day 2, incremental")["update"]
        assert update["mode"] == "incremental" and update["files_read"] == 1, update
        full = score("day 2, full", Path(tmp) / "full")
        incremental = score("day 2, incremental", Path(tmp) / "incremental", carry_from=night1)
    if full["rows"] != incremental["rows"] or full["scored"] != incremental["scored"] + incremental["carried"]:
        sys.exit(f"the incremental night wrote other rows than the full one: {incremental} against {full}")
    ratio = incremental["seconds"] / full["seconds"]
    print(f"\n{base['users']:,} users, {base['total']['kept']:,} base events; day 2: {update['changed_users']:,} "
          f"users with new events; recommend (two-tower, dim 64) and sequence (SASRec small, dim 64, no transitions),"
          f" top {TOP_K}, batches of {args.batch_size}, {args.concurrency} actors; memory: PSS of the process tree")
    print_table(HEADERS, rows)
    print(f"\nincremental scoring: {incremental['seconds']:.1f} s against {full['seconds']:.1f} s for every user: "
          f"{ratio:.1%} of the full step (target <= 20%)")
    figures.update(users=full["scored"], base_events=base["total"]["kept"], changed_users=update["changed_users"],
                   full_s=round(full["seconds"], 1), incremental_s=round(incremental["seconds"], 1),
                   ratio=round(ratio, 3), carried_users=incremental["carried"])
    emit_json(figures)
    return 0


def freeze(task_name: str, prepared: str, run: Path) -> None:
    """The run's frozen state, as :func:`interest.train.loop.fit` writes it after training."""
    from interest import config as C
    from interest.tasks import get_task
    from interest.train import frozen

    task = get_task(task_name)
    frozen.freeze(task, C.from_dict(task.config_cls, CONFIGS[task_name]), prepared, str(run))


if __name__ == "__main__":
    sys.exit(main())
