"""Next-action quality: the sequence model against popularity and EASE, in one run.

    python bench/quality_sequence.py --dataset amazon_beauty_s3rec
    python bench/quality_sequence.py --dataset rees46_2019oct_head --set mask_seen=false

Prepares the dataset (cached under --work), trains with `interest train`, evaluates
with `interest evaluate` (full ranking over every item, leave-one-out or time split as
prepared, seen items masked unless --set mask_seen=false) and prints the table beside
the published numbers for the same files. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_dataset_args, dataset_input, emit_json, print_table, run_measured  # noqa: E402

# Published full-ranking HR@10 / NDCG@10 on exactly these files (../shared/data/README.md).
PUBLISHED = {
    "amazon_beauty_s3rec": {"SASRec": (0.0605, 0.0318), "ICLRec": (0.0744, 0.0403)},
    "amazon_beauty_bert4rec": {"SASRec+ (full CE)": (0.0533, 0.0327)},
    "amazon_scientific_unisrec": {"VQ-Rec": (0.1211, 0.0643)},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(parser)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--baselines", default="popularity,ease")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="sequence task config, e.g. --set model.kind=gru (default preset=small)")
    args = parser.parse_args(argv)
    name = Path(args.data).name if args.data else args.dataset
    work = Path(args.work) / "quality_sequence" / name
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    prepared = work / "prepared"
    if args.dataset == "synthetic" and not args.data:
        raw = work / "raw"
        if not (raw / "items.parquet").exists():
            run_measured([py, "-m", "interest.cli", "generate", "--users", "5000", "--items", "3000", "--events",
                          "200000", "--out", str(raw)], log=work / "generate.log")
        path, fmt, overrides, extra = str(raw / "events"), "events", [], ["--items", str(raw / "items.parquet")]
    else:
        (path, fmt, overrides), extra = dataset_input(args), []
    if not (prepared / "_SUCCESS").exists():
        sets = [x for o in overrides for x in ("--set", o)]
        run_measured([py, "-m", "interest.cli", "prepare", path, "--format", fmt, "--out", str(prepared),
                      "--overwrite", *sets, *extra], log=work / "prepare.log")
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    sets = [x for o in ["preset=small", *args.set] for x in ("--set", o)]
    train_s, train_mb = run_measured([py, "-m", "interest.cli", "train", "--task", "sequence", "--data",
                                      str(prepared), "--out", str(run), "--num-workers", str(args.num_workers),
                                      *sets], env={"PYTHONUNBUFFERED": "1"}, log=work / "train.log")
    # The job's last JSON line (Ray's own processes may log after it).
    final = json.loads(next(line for line in reversed((work / "train.log").read_text().splitlines())
                            if line.startswith("{")))
    epochs = int(final["epoch"]) + 1
    run_measured([py, "-m", "interest.cli", "evaluate", "--run", str(run), "--data", str(prepared),
                  "--baselines", args.baselines], log=work / "evaluate.log")
    results = json.loads((run / "metrics_test.json").read_text())
    rows = []
    for method in ("model", "popularity", "ease"):
        m = results.get(method)
        if m and "hr@10" in m:
            rows.append([method, f"{m['hr@10']:.4f}", f"{m['ndcg@10']:.4f}", f"{m['hr@20']:.4f}",
                         f"{m['ndcg@20']:.4f}", m.get("lambda", "")])
        elif m:
            rows.append([method, m.get("skipped", ""), "", "", "", ""])
    for pub, (hr, ndcg) in PUBLISHED.get(name, {}).items():
        rows.append([f"{pub} (published)", f"{hr:.4f}", f"{ndcg:.4f}", "", "", ""])
    p = results["protocol"]
    print(f"\n{name}: {p['split']} split, {p['ranking']} ranking, seen items "
          f"{'masked' if p['mask_seen'] else 'not masked'}, {results['model']['users']:,} users")
    print_table(["method", "HR@10", "NDCG@10", "HR@20", "NDCG@20", "lambda"], rows)
    print(f"\ntraining: {train_s:.0f} s wall for {epochs} epochs ({train_s / epochs:.1f} s per epoch including "
          f"start-up), best epoch {final.get('best_epoch')}, peak memory {train_mb:.0f} MB")
    figures = {"dataset": name, "model": results["model"], "popularity": results["popularity"],
               "train_s": round(train_s, 1), "epochs": epochs, "s_per_epoch": round(train_s / epochs, 2),
               "protocol": p}
    if "ease" in results:
        figures["ease"] = results["ease"]
    if results.get("behavior"):
        print("\nnext behaviour type:")
        print_table(["method", "accuracy", "macro AUC"],
                    [[k, f"{v['accuracy']:.4f}", "-" if v["macro_auc"] is None else f"{v['macro_auc']:.4f}"]
                     for k, v in results["behavior"].items()])
        figures["behavior"] = results["behavior"]
    emit_json(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
