"""Top-N quality: the two-tower recommender against popularity, ItemKNN and EASE, in one run.

    python bench/quality_recommend.py --dataset movielens_100k
    python bench/quality_recommend.py --dataset amazon_scientific_unisrec --holdout-items 0.1

Prepares the dataset (cached under --work; time split where the data has timestamps,
leave-last-out where it only has order), embeds the item texts when it has any (the
item tower's text part), trains with `interest train --task recommend`, and evaluates
with `interest evaluate`: every item ranked, seen items masked, Recall@20 and NDCG@20
over each test user's new items, baselines' parameters chosen on the validation users.
With --holdout-items, that share of items is held out of training entirely and their
recall is reported against "the user's favourite category first". Ends with one JSON
line of the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_dataset_args, add_task_args, embed_items, emit_json, epoch_train_seconds,  # noqa: E402
                     last_json, precision, prepared_dataset, print_table, run_measured, work_folder,
                     worker_peak_mb)

METHODS = ("model", "popularity", "itemknn", "ease")
# Per-file settings, before --set (which overrides them). 54,542 items and 40,226 users:
# every step's full softmax spans the whole catalogue, so the default 8 users a step (2,500
# steps a worker) would make an epoch several times longer; at 32 it trains in 86 s.
DATASET_SETTINGS = {"amazon_beauty_bert4rec": ["train.batch_size=32"]}


def _has_text(prepared: Path) -> bool:
    import pyarrow.parquet as pq

    items = pq.read_table(prepared / "items")
    return any(c in items.column_names and items.column(c).null_count < len(items) for c in ("title", "category"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(parser)
    add_task_args(parser, "recommend", "model.dim=128")
    parser.add_argument("--baselines", default="popularity,itemknn,ease")
    parser.add_argument("--holdout-items", type=float, default=0.0, help="share of items held out (cold start)")
    parser.add_argument("--no-text", action="store_true", help="ids only, even where items have text")
    args = parser.parse_args(argv)
    work = work_folder(args, "quality_recommend")
    name = work.name
    py = sys.executable
    prepared, _ = prepared_dataset(args, work, synthetic_split="time")
    sets = [f"holdout_items={args.holdout_items}", precision(args), *DATASET_SETTINGS.get(name, []), *args.set]
    text = not args.no_text and _has_text(prepared)
    if text:
        store, _ = embed_items(prepared, work, args.encoder)
        sets += [f"embeddings={store}"] + ([f"encoder={args.encoder}"] if args.encoder else [])
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    train_s, train_mb = run_measured(
        [py, "-m", "interest.cli", "train", "--task", "recommend", "--data", str(prepared), "--out", str(run),
         "--num-workers", str(args.num_workers), *[x for o in sets for x in ("--set", o)]],
        env={"PYTHONUNBUFFERED": "1"}, log=work / "train.log")
    final = last_json(work / "train.log")
    eval_s, eval_mb = run_measured([py, "-m", "interest.cli", "evaluate", "--task", "recommend", "--run", str(run),
                                    "--data", str(prepared), "--baselines", args.baselines], log=work / "evaluate.log")
    results = json.loads((run / "metrics_test.json").read_text())
    rows, figures = [], {"dataset": name, "text": text, "protocol": results["protocol"], "settings": sets}
    for method in METHODS:
        m = results.get(method)
        if not m:
            continue
        if "skipped" in m:
            rows.append([method, "-", "-", "-", "-", f"skipped: {m['skipped']}"])
            figures[method] = {"skipped": m["skipped"]}
            continue
        chosen = ", ".join(f"{k} {m[k]:g}" for k in ("lambda", "k") if k in m)
        rows.append([method, f"{m['recall@10']:.4f}", f"{m['ndcg@10']:.4f}", f"{m['recall@20']:.4f}",
                     f"{m['ndcg@20']:.4f}", chosen])
        figures[method] = {k: m[k] for k in ("recall@20", "ndcg@20", "recall@10", "ndcg@10", "users")}
    print(f"\n{name}: every item ranked, seen items masked; targets = each test user's new items; "
          f"{results['model']['users']:,} users; item text {'used' if text else 'not used'}")
    print_table(["method", "Recall@10", "NDCG@10", "Recall@20", "NDCG@20", "chosen on valid"], rows)
    best = max((m for m in METHODS[1:] if m in figures and "recall@20" in figures[m]),
               key=lambda m: figures[m]["recall@20"])
    ratio = figures["model"]["recall@20"] / max(figures[best]["recall@20"], 1e-12)
    print(f"model Recall@20 / best baseline ({best}): {ratio:.3f}; settings: {' '.join(sets)}")
    figures["model_vs_best_baseline"] = {"baseline": best, "recall@20_ratio": round(ratio, 4)}
    cold = results.get("cold_start")
    if cold:
        print(f"\ncold start: {cold['items']:,} items held out of training; {cold['protocol']}")
        print_table(["method", "users", "Recall@20", "NDCG@20"],
                    [[k, cold[k]["users"], f"{cold[k]['recall@20']:.4f}", f"{cold[k]['ndcg@20']:.4f}"]
                     for k in ("model", "favourite_category")])
        figures["cold_start"] = cold
    epochs = int(final.get("epoch", 0)) + 1
    workers = worker_peak_mb(run)
    epoch_s = epoch_train_seconds(work / "train.log")
    print(f"\ntraining: {train_s:.0f} s wall, {epochs} epochs (best {final.get('best_epoch', 0) + 1}), training part "
          f"per epoch {sum(epoch_s) / max(len(epoch_s), 1):.1f} s, peak memory {train_mb:.0f} MB (process tree), "
          f"per worker {' / '.join(f'{x:,}' for x in workers)} MB; evaluation with baselines {eval_s:.0f} s, "
          f"peak memory {eval_mb:.0f} MB (process tree)")
    figures.update(train_s=round(train_s, 1), epochs=epochs, evaluate_s=round(eval_s, 1), peak_mb=round(train_mb),
                   worker_peak_mb=workers, evaluate_peak_mb=round(eval_mb))
    emit_json(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
