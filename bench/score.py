"""Benchmark the pipeline's one-pass scoring against plain torch in one process.

For each size, synthetic users over a 50k-item catalogue are generated and prepared once
(cached under --work), and a recommend run (two-tower, dim 64) and a sequence run
(SASRec ``small``, dim 64, without item transitions) are written as checkpoints of
untrained weights: the cost of scoring does not depend on the weights' values, and
training them at these sizes would take longer than the bench. Then, each in its own
process whose process tree's memory is sampled (PSS, as bench/prepare.py does):

- ``pipeline``: Ray starts (not timed); then the scoring step alone, timed from the first
  Parquet read to the last file written: both models planned and loaded, every user read
  once, streamed through ``--concurrency`` actors that each hold both models, each batch
  becoming both tables' rows, written as Parquet (interest.score.batch.score_users);
- ``torch``: the prepared sequences are read and cut into the models' input tensors
  first (not timed); then, on those tensors in memory, the same computation with no Ray,
  no Arrow and no files: user encoder forward, chunked item scores with the seen or
  bought items masked, top-k, probabilities, each row's evidence
  (interest.common.evidence). The practical limit of this machine.

    python bench/score.py                          # 50k, 100k, 200k users
    python bench/score.py --users 20000 --items 5000
    python bench/score.py --dataset movielens_100k  # a shared dataset's users instead

Target (issue 22): the pipeline at >= 0.8x the plain-torch rate at 200k users, with its
peak memory flat from 50k to 200k users. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_dataset_args, emit_json, prepare_source, print_table, run_measured,  # noqa: E402
                     work_folder)

TOP_K = 10
BUY = 4  # schemas.BEHAVIORS.index("buy")
HEADERS = ["users", "pipeline s", "users/s", "torch s", "users/s", "ratio", "pipeline MB", "torch MB"]
CONFIGS = {  # the two models at dimension 64
    "recommend": {"model": {"dim": 64}},
    "sequence": {"preset": "small", "transitions": 0.0},
}


def make_run(task_name: str, prepared: str, run: Path) -> None:
    """A run folder holding ``task_name``'s untrained model for ``prepared``."""
    from interest import config as C
    from interest import io
    from interest.tasks import get_task
    from interest.train import checkpoint as ckpt

    if (run / "checkpoint_000000" / ckpt.STATE).exists():
        return
    task = get_task(task_name)
    cfg = C.from_dict(task.config_cls, CONFIGS[task_name])
    import torch

    torch.manual_seed(0)
    model = task.build_model(cfg, task.load_meta(cfg, prepared))
    state = {"task": task_name, "config": C.to_dict(cfg), "prepared": prepared, "epoch": 0, "best_epoch": 0,
             "chosen": {}}
    ckpt.save(str(run / "checkpoint_000000"), model, ckpt.weights(model), None, state,
              io.join(prepared, "vocab", "items.parquet"))


def child_pipeline(prepared: str, runs: list[str], out: str, batch_size: int, concurrency: int) -> dict:
    from interest.score.batch import plan, score_users
    from ray_jobs._common import init_ray

    init_ray(argparse.Namespace(address=None, num_cpus=4), quiet=True)  # as `interest pipeline` starts one
    start = time.perf_counter()
    outputs = [plan(run, prepared, f"{out}/{Path(run).name}", top_k=TOP_K, batch_size=batch_size) for run in runs]
    done = score_users(outputs, prepared, batch_size=batch_size, concurrency=concurrency)
    seconds = time.perf_counter() - start
    return {"users": done["users"], "rows": done["rows"], "seconds": seconds}


def child_torch(prepared: str, runs: list[str], batch_size: int) -> dict:
    """The same scores in one process on tensors already in memory."""
    import numpy as np
    import torch

    from interest import io
    from interest.common import evidence
    from interest.common.events import windows
    from interest.common.topn import top_n
    from interest.tasks.base import unwrap
    from interest.tasks.sequence.model import gap_buckets
    from interest.train.checkpoint import load_model

    sequences = io.read_parquet(io.join(prepared, "sequences")).to_pydict()
    sequences = {k: np.asarray(v, dtype=object) for k, v in sequences.items()}
    n = len(sequences["user_idx"])
    ends = sum(np.asarray(sequences[c], np.int64) for c in ("n_train", "n_valid", "n_test"))
    timed, users = 0.0, 0
    for run in runs:
        task, cfg, model, _, meta = load_model(run, prepared)
        core = unwrap(model)
        batches = []  # the models' inputs, cut before the clock starts
        for lo in range(0, n, batch_size):
            sub = {k: v[lo:lo + batch_size] for k, v in sequences.items()}
            e = ends[lo:lo + batch_size]
            items, behaviors, gaps = windows(sub, e, min(cfg.model.max_len, int(e.max())))
            seqs = [np.asarray(s[:k], np.int64) for s, k in zip(sub["items"], e)]
            if task.name == "sequence":  # as the tasks score: seen items masked, or bought ones
                exclude = [np.unique(s) for s in seqs]
            else:
                beh = [np.asarray(b[:k], np.int64) for b, k in zip(sub["behaviors"], e)]
                exclude = [np.unique(s[b == BUY]) for s, b in zip(seqs, beh)]
            batches.append((torch.as_tensor(items, dtype=torch.long), torch.as_tensor(behaviors, dtype=torch.long),
                            torch.as_tensor(gaps, dtype=torch.long), exclude))
        start, kept = time.perf_counter(), []  # the results are kept, as the pipeline writes its
        with torch.no_grad():
            for items, behaviors, gaps, exclude in batches:
                if task.name == "sequence":
                    states = core(items, behaviors, gap_buckets(gaps))[:, -1]
                    behavior = torch.softmax(core.behavior_logits(states, behaviors[:, -1]), 1)
                    scores, top, lse = top_n(states, core.item_table()[1:], TOP_K, exclude)
                    why = evidence.pick(*core.removal_drops(items, behaviors, gap_buckets(gaps), top), len(top))
                    kept.append((top, torch.exp(scores - lse[:, None]), behavior.max(1), why))
                else:
                    states, table = core(items, behaviors)
                    scores, top, _ = top_n(states, table[1:], TOP_K, exclude, lse=False)
                    kept.append((top, scores, evidence.pick(*core.removal_drops(items, behaviors, top), len(top))))
        timed += time.perf_counter() - start
        users = n
    return {"users": users, "seconds": timed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(parser)
    parser.add_argument("--users", default="50000,100000,200000", help="synthetic sizes, comma-separated")
    parser.add_argument("--items", type=int, default=50_000, help="synthetic catalogue size")
    parser.add_argument("--events-per-user", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1024, help="users per scoring batch (both sides)")
    parser.add_argument("--concurrency", type=int, default=2, help="scoring actors (one per core here)")
    parser.add_argument("--child", choices=("pipeline", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    parser.add_argument("--runs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        runs = args.runs.split(",")
        if args.child == "pipeline":
            with tempfile.TemporaryDirectory(dir=args.work) as out:
                result = child_pipeline(args.prepared, runs, out, args.batch_size, args.concurrency)
        else:
            result = child_torch(args.prepared, runs, args.batch_size)
        print("RESULT " + json.dumps(result))
        return 0

    work = work_folder(args, "score")
    py = sys.executable
    synthetic = args.dataset == "synthetic" and not args.data
    if synthetic:
        cases = [(str(u), work / f"users-{u}") for u in (int(x) for x in args.users.split(","))]
    else:
        cases = [(args.data or args.dataset, work)]
    figures = {"users": {}, "items": args.items if synthetic else None, "batch_size": args.batch_size,
               "concurrency": args.concurrency}
    rows = []
    for name, folder in cases:
        folder.mkdir(parents=True, exist_ok=True)
        prepared = folder / "prepared"
        if not (prepared / "_SUCCESS").exists():
            users = int(name) if synthetic else 0
            source = prepare_source(args, folder, users, args.items, users * args.events_per_user)
            print("preparing ...", flush=True)
            run_measured([py, "-m", "interest.cli", "prepare", *source, "--out", str(prepared), "--overwrite"],
                         log=folder / "prepare.log")
        runs = []
        for task_name in ("recommend", "sequence"):
            run = folder / f"run-{task_name}"
            make_run(task_name, str(prepared), run)
            runs.append(str(run))
        child = [py, __file__, "--prepared", str(prepared), "--runs", ",".join(runs), "--work", str(folder),
                 "--batch-size", str(args.batch_size), "--concurrency", str(args.concurrency)]
        result = {}
        for side in ("pipeline", "torch"):
            log = folder / f"{side}.log"
            print(f"{name}: scoring with {side} ...", flush=True)
            _, mb = run_measured(child + ["--child", side], env={"PYTHONUNBUFFERED": "1"}, log=log)
            line = next(x for x in log.read_text().splitlines() if x.startswith("RESULT "))
            result[side] = {**json.loads(line[len("RESULT "):]), "rss_mb": mb}
        p, t = result["pipeline"], result["torch"]
        p_rate, t_rate = p["users"] / p["seconds"], t["users"] / t["seconds"]
        figures["users"][str(p["users"])] = {"pipeline_users_s": round(p_rate, 1), "torch_users_s": round(t_rate, 1),
                                             "ratio": round(p_rate / t_rate, 3), "rss_mb": round(p["rss_mb"]),
                                             "torch_rss_mb": round(t["rss_mb"]), "pipeline_s": round(p["seconds"], 1),
                                             "torch_s": round(t["seconds"], 1), "rows": p["rows"]}
        rows.append([f"{p['users']:,}", f"{p['seconds']:.1f}", f"{p_rate:,.0f}", f"{t['seconds']:.1f}",
                     f"{t_rate:,.0f}", f"{p_rate / t_rate:.2f}", f"{p['rss_mb']:,.0f}", f"{t['rss_mb']:,.0f}"])
        print_table(HEADERS, rows[-1:])
    print(f"\nscoring step: recommend (two-tower, dim 64) and sequence (SASRec small, dim 64, no transitions), "
          f"top {TOP_K}, batches of {args.batch_size}, {args.concurrency} actors; memory: PSS of the process tree")
    print_table(HEADERS, rows)
    sizes = list(figures["users"])
    if len(sizes) >= 2:
        first, last = figures["users"][sizes[0]], figures["users"][sizes[-1]]
        figures["rss_growth"] = round(last["rss_mb"] / first["rss_mb"], 3)
        print(f"\nat {sizes[-1]} users: {last['ratio']:.2f}x the plain-torch rate (target >= 0.8x); pipeline memory "
              f"{sizes[0]} -> {sizes[-1]} users: {figures['rss_growth']:.2f}x (target: flat)")
    emit_json(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
