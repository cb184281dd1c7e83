"""Are the evidence columns faithful? A deletion test, per task, in one run.

    python bench/explanations.py --dataset synthetic
    python bench/explanations.py --dataset amazon_scientific_unisrec

Prepares the dataset (cached under --work), trains each task with `interest train` (its
defaults, ids only), then for a sample of users with a history of at least --min-items
distinct items scores them in process as the pipeline does (the task's `score`, with its
evidence) and, for each of their top --rows rows:

- removes every event of the row's evidence items from the user's history and scores
  the user again: the row's item's new rank, and its score (recommend) or probability
  (sequence);
- removes as many events again, drawn at random from the whole history (seeded), and
  scores again.

Ranks are counted among the items the original row competed with (the original
exclusions hold: items the removal unmasks do not count), so the two removals are judged
alike. A faithful explanation moves its row more than random events do: the target is a
mean rank drop at least twice the random one. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_dataset_args, emit_json, prepared_dataset, print_table, run_measured, work_folder  # noqa: E402

TASKS = ("recommend", "sequence")
VALUE = {"recommend": "score", "sequence": "probability"}


def sample(prepared: Path, columns: list[str], users: int, min_items: int, seed: int) -> dict[str, np.ndarray]:
    """``users`` prepared users with at least ``min_items`` distinct items, drawn at random."""
    table = pq.read_table(prepared / "sequences", columns=columns)
    distinct = np.array([len(set(x)) for x in table.column("items").to_pylist()])
    eligible = np.flatnonzero(distinct >= min_items)
    chosen = np.sort(np.random.default_rng(seed).choice(eligible, min(users, len(eligible)), replace=False))
    table = table.take(chosen)
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}


def ranking(task, model, batch, cfg, meta, n_items: int) -> dict[str, dict[str, tuple[int, float]]]:
    """Every user's full ranking: user -> item -> (0-based position, value)."""
    import torch

    rows = task.score(model, batch, cfg, meta, torch.device("cpu"), top_k=n_items, evidence=0)
    out: dict[str, dict[str, tuple[int, float]]] = {}
    users, items, values = (rows.column(c).to_pylist() for c in ("user_id", "item_id", VALUE[task.name]))
    for u, i, v in zip(users, items, values):
        ranked = out.setdefault(u, {})
        ranked[i] = (len(ranked), v)
    return out


def rank_of(ranked: dict[str, tuple[int, float]], item: str, masked: set[str]) -> tuple[int, float]:
    """(1-based rank of ``item`` among the items not in ``masked``, its value)."""
    position, value = ranked[item]
    return 1 + position - sum(1 for m in masked if m in ranked and ranked[m][0] < position), value


def deletion_test(task_name: str, run: Path, prepared: Path, users: int, rows: int, min_items: int,
                  seed: int) -> dict:
    import torch

    from interest.common.events import drop_events
    from interest.train.checkpoint import load_frozen

    torch.set_num_threads(2)
    task, cfg, model, meta, _ = load_frozen(str(run), str(prepared))
    batch = sample(prepared, task.train_columns(), users, min_items, seed)
    ids = meta.extra["item_ids"]
    ids = ids.to_pylist() if hasattr(ids, "to_pylist") else list(ids)
    index = {x: i for i, x in enumerate(ids)}
    start = time.time()
    base_rows = task.score(model, batch, cfg, meta, torch.device("cpu"), top_k=rows).to_pylist()
    scored_s = time.time() - start
    base = ranking(task, model, batch, cfg, meta, meta.n_items)
    at = {u: n for n, u in enumerate(batch["user_id"])}
    rng = np.random.default_rng(seed)
    lengths = np.array([len(x) for x in batch["items"]])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.concatenate(list(batch["items"]))
    # One removal per row: (user row, the row's item, flags of the events removed).
    removals = {"evidence": [], "random": []}
    empty = 0
    for r in base_rows:
        n = at[r["user_id"]]
        events = flat[offsets[n]:offsets[n + 1]]
        evidence = {index[x] for x in r["evidence"]}
        if not evidence:
            empty += 1
            continue
        gone = np.isin(events, list(evidence))
        chance = np.zeros(len(events), bool)
        chance[rng.choice(len(events), int(gone.sum()), replace=False)] = True
        removals["evidence"].append((n, r["item_id"], gone))
        removals["random"].append((n, r["item_id"], chance))
    masked = {u: set() for u in batch["user_id"]}
    for u, ranked in base.items():  # what the original rows could not be: excluded items
        masked[u] = {i for i in ids if i not in ranked}
    figures = {}
    for how, todo in removals.items():
        drops, value_drops = [], []
        for lo in range(0, len(todo), 256):
            part = todo[lo:lo + 256]
            sub = {c: v[[n for n, _, _ in part]] for c, v in batch.items()}
            sub["user_id"] = np.array([f"{k}" for k in range(len(part))], object)
            changed = drop_events(sub, np.concatenate([g for _, _, g in part]))
            after = ranking(task, model, changed, cfg, meta, meta.n_items)
            for k, (n, item, _) in enumerate(part):
                user = batch["user_id"][n]
                before_rank, before_value = rank_of(base[user], item, masked[user])
                new_rank, new_value = rank_of(after[str(k)], item, masked[user]) if item in after.get(str(k), {}) \
                    else (meta.n_items, 0.0)
                drops.append(new_rank - before_rank)
                value_drops.append(before_value - new_value)
        figures[how] = {"rank_drop": float(np.mean(drops)), "median_rank_drop": float(np.median(drops)),
                        "value_drop": float(np.mean(value_drops)), "rows": len(drops)}
    ev, rnd = figures["evidence"], figures["random"]
    return {"evidence_rank_drop": round(ev["rank_drop"], 2), "random_rank_drop": round(rnd["rank_drop"], 2),
            "ratio": round(ev["rank_drop"] / max(rnd["rank_drop"], 1e-9), 2),
            "evidence_median_rank_drop": ev["median_rank_drop"], "random_median_rank_drop": rnd["median_rank_drop"],
            "evidence_value_drop": round(ev["value_drop"], 4), "random_value_drop": round(rnd["value_drop"], 4),
            "rows": ev["rows"], "users": len(batch["user_id"]), "rows_without_evidence": empty,
            "events_removed_per_row": round(float(np.mean([g.sum() for _, _, g in removals["evidence"]])), 2),
            "scoring_s_per_1k_users": round(1000 * scored_s / len(batch["user_id"]), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(parser)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: recommend, sequence")
    parser.add_argument("--users", type=int, default=500, help="users sampled")
    parser.add_argument("--rows", type=int, default=3, help="top rows of each user tested")
    parser.add_argument("--min-items", type=int, default=5, help="distinct items a sampled user has at least")
    parser.add_argument("--seed", type=int, default=0, help="the users sampled and the random removals")
    parser.add_argument("--reuse", action="store_true", help="test the runs an earlier call trained, if any")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="TASK:KEY=VALUE",
                        help="a task's config, e.g. --set sequence:model.kind=gru")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = set(tasks) - set(TASKS)
    if unknown:
        sys.exit(f"unknown task(s) {', '.join(sorted(unknown))}; choose from {', '.join(TASKS)}")
    work = work_folder(args, "explanations")
    prepared, _ = prepared_dataset(args, work)
    figures: dict = {"dataset": work.name, "users": args.users, "rows_per_user": args.rows,
                     "min_items": args.min_items, "settings": args.set}
    table = []
    for name in tasks:
        sets = [s.split(":", 1)[1] for s in args.set if s.startswith(f"{name}:")]
        run = work / "_".join(["run", name, *(re.sub(r"[^\w.=-]", "", o) for o in sets)])
        train_s = None
        if not (args.reuse and (run / "frozen").exists()):
            shutil.rmtree(run, ignore_errors=True)
            train_s, _ = run_measured([sys.executable, "-m", "interest.cli", "train", "--task", name, "--data",
                                       str(prepared), "--out", str(run), "--num-workers", str(args.num_workers),
                                       *[x for o in sets for x in ("--set", o)]], log=work / f"{run.name}.log")
        result = deletion_test(name, run, prepared, args.users, args.rows, args.min_items, args.seed)
        result["train_s"] = round(train_s, 1) if train_s is not None else "reused"
        figures[name] = result
        table.append([name, result["rows"], result["events_removed_per_row"], result["evidence_rank_drop"],
                      result["random_rank_drop"], result["ratio"], result["evidence_value_drop"],
                      result["random_value_drop"], "yes" if result["ratio"] >= 2 else "no"])
    print(f"\n{work.name}: deletion test, {args.users} users with >= {args.min_items} distinct items, "
          f"top {args.rows} rows each; mean rank drop of the row's item")
    print_table(["task", "rows", "events removed", "evidence rank drop", "random rank drop", "ratio",
                 "evidence value drop", "random value drop", "ratio >= 2"], table)
    emit_json(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
