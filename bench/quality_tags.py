"""Interest-tag quality: both modes of the tags task against tag popularity and the
user's own most frequent tags so far, on the same users, in one run.

    python bench/quality_tags.py --dataset synthetic
    python bench/quality_tags.py --dataset movielens_100k --modes cached

Prepares the dataset (cached under --work), embeds the item texts once (the store is
reused), trains each mode with `interest train --task tags`, evaluates it with
`interest evaluate` (future-window P@5, R@5 and mAP over every tag) and prints one
table with users scored per second. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_dataset_args, add_task_args, embed_items, emit_json, last_json, precision,  # noqa: E402
                     prepared_dataset, print_table, run_measured, work_folder, worker_peak_mb)

# How each dataset's item categories become tags (the choices).
TAGS = {
    "synthetic": ["tag_source=levels", "separator=."],  # electronics, electronics.phones
    "rees46_2019oct_head": ["tag_source=levels", "separator=."],  # category_code levels
    "amazon_scientific_unisrec": ["tag_source=whole"],  # the path's separators are lost in this file
    "movielens_100k": ["tag_source=tokens", "separator=|"],  # genres
    "taobao_userbehavior_excerpt": ["tag_source=whole"],  # category ids
    "amazon_beauty_s3rec": ["tag_source=whole"],
}


def ground_truth_ranking(prepared: Path, raw: Path) -> dict:
    """Synthetic only: P@5, R@5 and mAP of ranking each test user's tags by the generator's
    planted (late) interests, each interest's tags first, the rest by popularity, on the
    users and windows the evaluation uses: about the most any model can reach here."""
    import numpy as np
    import pyarrow.parquet as pq

    from interest.evaluate.metrics import multilabel_sums
    from interest.common import tags as L

    space = L.build(pq.read_table(prepared / "items"), source="levels", separator=".")
    index = {t: i for i, t in enumerate(space.tags)}
    interests = dict(zip(*pq.read_table(raw / "ground_truth.parquet", columns=["user_id", "interests_late"])
                         .to_pydict().values()))
    seqs = pq.read_table(prepared / "sequences", columns=["user_id", "items", "n_train", "n_valid", "n_test"])
    scores, relevant, popularity = [], [], np.zeros(space.n_tags)
    for r in seqs.to_pylist():
        end, n = r["n_train"] + r["n_valid"], r["n_test"]
        popularity += space.matrix(np.zeros(end, np.int64), r["items"][:end], np.ones(end), 1)[0]
        if not n or not end:
            continue
        relevant.append(space.matrix(np.zeros(n, np.int64), r["items"][end:end + n], np.ones(n), 1)[0] > 0)
        x = np.zeros(space.n_tags)
        for category in interests[r["user_id"]]:
            x[[index[t] for t in L.derive_tags(category, "levels", ".")]] += 1.0
        scores.append(x)
    sums = multilabel_sums(np.array(scores) + 1e-3 * popularity / popularity.max(), np.array(relevant), 5)
    return {k: v / sums["users"] for k, v in sums.items() if k != "users"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(parser)
    add_task_args(parser, "tags", "train.epochs=10 (every mode)")
    parser.add_argument("--modes", default="cached,finetune")
    parser.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config of the finetune mode (it is ~100x slower per user on CPU)")
    args = parser.parse_args(argv)
    work = work_folder(args, "quality_tags")
    name = work.name
    py = sys.executable
    prepared, raw = prepared_dataset(args, work, synthetic_split="time")
    store, embed = embed_items(prepared, work, args.encoder)
    figures: dict = {"dataset": name, "embed": embed}
    rows = []
    results = {}
    for mode in [m for m in args.modes.split(",") if m]:
        run = work / f"run_{mode}"
        shutil.rmtree(run, ignore_errors=True)
        sets = [f"mode={mode}", f"embeddings={store}", *TAGS.get(name, []), precision(args), *args.set,
                *(args.finetune_set if mode == "finetune" else [])]
        if args.encoder:
            sets.append(f"encoder={args.encoder}")
        train_s, train_mb = run_measured(
            [py, "-m", "interest.cli", "train", "--task", "tags", "--data", str(prepared), "--out", str(run),
             "--num-workers", str(args.num_workers), *[x for o in sets for x in ("--set", o)]],
            env={"PYTHONUNBUFFERED": "1"}, log=work / f"train_{mode}.log")
        final = last_json(work / f"train_{mode}.log")
        run_measured([py, "-m", "interest.cli", "evaluate", "--task", "tags", "--run", str(run), "--data",
                      str(prepared)], log=work / f"evaluate_{mode}.log")
        r = json.loads((run / "metrics_test.json").read_text())
        results[mode] = r
        m = r["model"]
        workers = worker_peak_mb(run)
        rows.append([mode, f"{m['p@5']:.4f}", f"{m['r@5']:.4f}", f"{m['map']:.4f}", f"{m['users_per_s']:,.0f}",
                     f"{train_s:.0f}", int(final["epoch"]) + 1, " / ".join(f"{x:,}" for x in workers)])
        figures[mode] = {"p@5": m["p@5"], "r@5": m["r@5"], "map": m["map"], "users_per_s": m["users_per_s"],
                         "train_s": round(train_s, 1), "epochs": int(final["epoch"]) + 1, "peak_mb": round(train_mb),
                         "worker_peak_mb": workers}
    first = next(iter(results.values()))
    for baseline in ("popularity", "history"):
        b = first[baseline]
        rows.append([baseline, f"{b['p@5']:.4f}", f"{b['r@5']:.4f}", f"{b['map']:.4f}", "", "", "", ""])
        figures[baseline] = {"p@5": b["p@5"], "r@5": b["r@5"], "map": b["map"]}
    if raw is not None:  # the generator's truth: what the target above the history baseline can be measured against
        g = figures["ground_truth"] = ground_truth_ranking(prepared, raw)
        rows.append(["planted interests (truth)", f"{g['p@5']:.4f}", f"{g['r@5']:.4f}", f"{g['map']:.4f}", "", "", "",
                     ""])
    u = first["users"]
    print(f"\n{name}: tags of each user's test window, every tag ranked; {first['tags']['tags']} tags, "
          f"{u['with_labels']:,} users with labels ({u['without_labels']:,} without)")
    print_table(["method", "P@5", "R@5", "mAP", "users/s", "train s", "epochs", "peak MB per worker"], rows)
    history = first["history"]["map"]
    for mode in results:
        gain = results[mode]["model"]["map"] / history - 1 if history else float("nan")
        figures[mode]["map_vs_history"] = round(gain, 4)
        print(f"{mode}: mAP {gain:+.1%} relative to the history baseline (target +5%)")
    if "ground_truth" in figures:
        print(f"planted interests: mAP {figures['ground_truth']['map'] / history - 1:+.1%} relative to the history "
              "baseline: about the most a model can gain on this data")
    if {"cached", "finetune"} <= results.keys():
        c, f = results["cached"]["model"], results["finetune"]["model"]
        figures["cached_vs_finetune"] = {"map_ratio": round(c["map"] / f["map"], 4),
                                         "speed_ratio": round(c["users_per_s"] / f["users_per_s"], 1)}
        print(f"cached / finetune: mAP x{c['map'] / f['map']:.3f}, users/s x{c['users_per_s'] / f['users_per_s']:.1f}"
              " (targets: mAP within 2%, >= 10x users/s)")
    print(f"item embedding: {embed['embedded']:,} embedded, {embed['already_embedded']:,} unchanged, "
          f"{embed['wall_s']:.0f} s")
    figures["tags"] = first["tags"]["tags"]
    emit_json(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
