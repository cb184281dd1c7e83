"""Zero-shot interests: scores for categories the model never saw, beside baselines and
a ceiling, in one run.

    python bench/quality_zeroshot.py --dataset synthetic
    python bench/quality_zeroshot.py --dataset amazon_scientific_unisrec
    python bench/quality_zeroshot.py --dataset movielens_100k

Protocol: the categories that can be judged (at least --min-positives users take them up
in the test window without having touched them before, and covering at most
--max-item-share of the items) are shuffled into --folds folds of --holdout of them each.
For each fold a `zeroshot` model is trained with those categories held out of everything
it sees (their tags, and every event on their items, in training and in histories at
scoring), then `interest evaluate` ranks, for each held-out category, the users with
events before and in the test window who never touched it before: per-category AUC and
Recall@100, macro-averaged over categories and folds with the standard error, for the
model from the category's text, with 1, 5 and 20 example items or users, and for the
baselines (random, activity, text match, parent share). The ceiling: one model trained
with every category (a supervised model), judged on the same categories. Draws the
few-shot curve as a PNG beside the table; ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_dataset_args, add_task_args, embed_items, emit_json, precision,  # noqa: E402
                     prepared_dataset, print_table, run_measured, work_folder)

from interest.common import tags as L  # noqa: E402
from interest.evaluate.harness import summarize_zeroshot  # noqa: E402
from interest.report.plots import line_chart  # noqa: E402

# Per dataset: tags (as task `tags` derives them), split, synthetic generator settings.
DATASETS = {
    # Personas make interests correlated (issue 21): without them nothing transfers. A
    # longer test window (20%) and more exploring sessions give new categories to take up.
    "synthetic": {"tags": ["tag_source=levels", "separator=."], "split": ["split.method=time", "split.test_frac=0.2"],
                  "generate": ["personas=0.8", "noise=0.3"]},
    # Whole category paths; their levels are the shorter paths (the parent baseline finds them).
    "amazon_scientific_unisrec": {"tags": ["tag_source=whole"]},
    # Genres; the last five ratings of each user are the test window (a time split leaves
    # 86 users with a history and a test window, too few to judge a genre).
    "movielens_100k": {"tags": ["tag_source=tokens", "separator=|"],
                       "split": ["split.method=leave_last", "split.k=5"]},
    "rees46_2019oct_head": {"tags": ["tag_source=levels", "separator=."]},
    "taobao_userbehavior_excerpt": {"tags": ["tag_source=whole"]},
}
METHODS = ("model", "text_match", "parent_share", "activity", "random")
BASELINES = ("text_match", "parent_share", "activity", "random")


def judgeable(prepared: Path, tag_sets: list[str], min_positives: int, max_share: float) -> tuple[list[str], dict]:
    """Categories that can be held out and judged, and every category's figures (positive
    users, share of items): leaves only where tags are path levels, since holding a
    parent out would hold its children out with it."""
    sets = dict(s.split("=", 1) for s in tag_sets)
    space = L.build(pq.read_table(prepared / "items"), source=sets.get("tag_source", "levels"),
                    separator=sets.get("separator", "."))
    seqs = pq.read_table(prepared / "sequences", columns=["items", "n_train", "n_valid", "n_test"]).to_pydict()
    positives = np.zeros(space.n_tags)
    for items, a, b, c in zip(seqs["items"], seqs["n_train"], seqs["n_valid"], seqs["n_test"]):
        end = a + b
        if not c or not end:
            continue
        before = space.matrix(np.zeros(end, np.int64), np.asarray(items[:end]), np.ones(end), 1, reduce="max")[0]
        after = space.matrix(np.zeros(c, np.int64), np.asarray(items[end:end + c]), np.ones(c), 1, reduce="max")[0]
        positives += (after > 0) & (before == 0)
    share = np.bincount(space.indices, minlength=space.n_tags) / max(space.report["items"], 1)
    sep = sets.get("separator", ".")
    parents = {t for t in space.tags for u in space.tags if u != t and u.startswith(t + sep)} \
        if sets.get("tag_source", "levels") == "levels" else set()
    ok = [t for j, t in enumerate(space.tags) if positives[j] >= min_positives and share[j] <= max_share
          and t not in parents]
    return ok, {t: {"positives": int(positives[j]), "item_share": round(float(share[j]), 4)}
                for j, t in enumerate(space.tags)}


def stats_users(prepared: Path) -> dict[str, int]:
    """Users, and those with events both before and in the test window (the ones judged)."""
    seqs = pq.read_table(prepared / "sequences", columns=["n_train", "n_valid", "n_test"]).to_pydict()
    both = sum(1 for a, b, c in zip(seqs["n_train"], seqs["n_valid"], seqs["n_test"]) if a + b and c)
    return {"users": len(seqs["n_test"]), "with_both": both}


def train_and_evaluate(py: str, prepared: Path, run: Path, work: Path, cfg: dict, args) -> dict:
    """Train `zeroshot` with ``cfg`` (a YAML file: tag names may hold commas) and evaluate it."""
    shutil.rmtree(run, ignore_errors=True)
    config = work / f"{run.name}.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    sets = [x for o in [precision(args), *args.set] for x in ("--set", o)]
    train_s, _ = run_measured([py, "-m", "interest.cli", "train", "--task", "zeroshot", "--data", str(prepared),
                               "--out", str(run), "--num-workers", str(args.num_workers), "--config", str(config),
                               *sets], env={"PYTHONUNBUFFERED": "1"}, log=work / f"train_{run.name}.log")
    run_measured([py, "-m", "interest.cli", "evaluate", "--task", "zeroshot", "--run", str(run), "--data",
                  str(prepared)], log=work / f"evaluate_{run.name}.log")
    return {**json.loads((run / "metrics_test.json").read_text()), "train_s": round(train_s, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(parser)
    add_task_args(parser, "zeroshot", "train.epochs=10")
    parser.add_argument("--folds", type=int, default=3, help="folds of held-out categories (at least 3)")
    parser.add_argument("--holdout", type=float, default=0.2, help="share of the judgeable categories per fold")
    parser.add_argument("--min-positives", type=int, default=10)
    parser.add_argument("--max-item-share", type=float, default=0.25,
                        help="categories covering more of the items are not held out (they would empty histories)")
    parser.add_argument("--seed", type=int, default=0, help="which categories fall in which fold")
    parser.add_argument("--tag-set", action="append", default=None, metavar="KEY=VALUE",
                        help="how categories become tags (default: the dataset's, e.g. tag_source=whole)")
    args = parser.parse_args(argv)
    if args.folds < 3 or not 0 < args.holdout * args.folds <= 1:
        sys.exit("--folds must be >= 3, and --folds x --holdout at most 1 (folds are disjoint)")
    work = work_folder(args, "quality_zeroshot")
    name = work.name
    setting = DATASETS.get(name, {"tags": ["tag_source=whole"]})
    tag_sets = args.tag_set or setting["tags"]
    py = sys.executable
    prepared, _ = prepared_dataset(args, work, split=setting.get("split"), generate=setting.get("generate"))
    store, embed = embed_items(prepared, work, args.encoder)
    ok, stats = judgeable(prepared, tag_sets, args.min_positives, args.max_item_share)
    order = np.random.default_rng(args.seed).permutation(len(ok))
    size = max(1, round(args.holdout * len(ok)))
    folds = [[ok[i] for i in order[f * size:(f + 1) * size]] for f in range(args.folds)]
    folds = [f for f in folds if f]
    if len(folds) < 3:
        top = sorted(stats.items(), key=lambda kv: -kv[1]["positives"])[:10]
        users = stats_users(prepared)
        print(f"{name}: {len(ok)} judgeable categories (>= {args.min_positives} users taking one up in the test "
              f"window without touching it before, <= {args.max_item_share:.0%} of items) of {len(stats)}: too few "
              f"for 3 folds. {users['with_both']:,} of {users['users']:,} users have events both before and in the "
              "test window. Categories with the most such users:")
        print_table(["category", "positive users", "share of items"],
                    [[c, v["positives"], f"{v['item_share']:.3f}"] for c, v in top])
        emit_json({"dataset": name, "judgeable": len(ok), "categories": len(stats), **users,
                   "top_positives": {c: v["positives"] for c, v in top}})
        return 1
    base = {"embeddings": str(store), **dict(s.split("=", 1) for s in tag_sets)}
    if args.encoder:
        base["encoder"] = args.encoder
    results = [train_and_evaluate(py, prepared, work / f"fold{f}", work, {**base, "holdout": fold}, args)
               for f, fold in enumerate(folds)]
    judged = [t for fold in folds for t in fold]
    oracle = train_and_evaluate(py, prepared, work / "oracle", work, {**base, "judge": judged}, args)
    rows = [row for r in results for row in r["tags"].values()]
    summary = summarize_zeroshot(rows)
    ceiling = summarize_zeroshot(list(oracle["tags"].values()))["model"]

    table, figures = [], {"dataset": name, "folds": len(folds), "categories_judged": len(rows),
                          "held_out": folds, "skipped": {t: why for r in results for t, why in r["skipped"].items()}}
    for m in METHODS:
        s = summary.get(m)
        if not s or s["auc"] is None:
            continue
        table.append([m, f"{s['auc']:.4f} ± {s['auc_se']:.4f}", f"{s['recall@100']:.4f} ± {s['recall@100_se']:.4f}",
                      s["tags"]])
        figures[m] = {k: round(v, 4) for k, v in s.items() if v is not None and k != "tags"}
    table.append(["ceiling (trained on every category)", f"{ceiling['auc']:.4f} ± {ceiling['auc_se']:.4f}",
                  f"{ceiling['recall@100']:.4f} ± {ceiling['recall@100_se']:.4f}", ceiling["tags"]])
    figures["oracle"] = {k: round(v, 4) for k, v in ceiling.items() if v is not None and k != "tags"}
    few = summary["few_shot"]
    figures["few_shot"] = {n: round(v, 4) for n, v in few["items"].items() if v is not None}
    figures["few_shot_users"] = {n: round(v, 4) for n, v in few["users"].items() if v is not None}
    for kind in ("items", "users"):
        for n, v in few[kind].items():
            if v is not None:
                judged_n = sum(n in r["few_shot"][kind] for r in rows)
                table.append([f"model, text + {n} example {kind}", f"{v:.4f}", "", judged_n])
    users = int(np.mean([r["users"] for r in rows])) if rows else 0
    print(f"\n{name}: {len(rows)} held-out categories judged over {len(folds)} folds (about {users:,} users "
          f"ranked per category; {len(figures['skipped'])} skipped with < {args.min_positives} positives); "
          "macro mean ± standard error over categories")
    print_table(["method", "AUC", "Recall@100", "categories"], table)

    best = max(BASELINES, key=lambda b: (summary.get(b) or {}).get("auc") or 0.0)
    b_auc, m = summary[best]["auc"], summary["model"]
    figures["best_baseline"] = best
    print(f"\nbest baseline: {best} ({b_auc:.4f}); model - best baseline: {m['auc'] - b_auc:+.4f} AUC "
          f"(standard errors {m['auc_se']:.4f}, {summary[best]['auc_se']:.4f})")
    # The same categories are ranked by every method: the per-category difference has
    # a smaller spread than either method's figures, which mostly say how hard a category is.
    figures["model_minus"] = {}
    for b in BASELINES:
        d = np.array([r["model"]["auc"] - r[b]["auc"] for r in rows if b in r and r[b]["auc"] is not None])
        if len(d) > 1:
            se = d.std(ddof=1) / np.sqrt(len(d))
            figures["model_minus"][b] = {"auc": round(float(d.mean()), 4), "se": round(float(se), 4),
                                         "categories_won": int((d > 0).sum()), "categories": len(d)}
            print(f"model - {b}, paired over categories: {d.mean():+.4f} ± {se:.4f} AUC, model ahead on "
                  f"{(d > 0).sum()} of {len(d)}")
    for label, value in (("text alone", m["auc"]), ("text + 20 example items", few["items"].get("20"))):
        if value is not None and ceiling["auc"] > b_auc:
            closed = (value - b_auc) / (ceiling["auc"] - b_auc)
            figures.setdefault("gap_closed", {})[label] = round(closed, 3)
            print(f"{label}: closes {closed:.0%} of the gap between the best baseline and the ceiling")
    shots = [0] + [int(n) for n in few["items"]]
    png = line_chart(str(work / "few_shot.png"), {
        "text + example items": (shots, [m["auc"]] + [few["items"][str(n)] for n in shots[1:]]),
        "text + example users": ([0] + [int(n) for n in few["users"]],
                                 [m["auc"]] + list(few["users"].values()))},
        title=f"{name}: zero- and few-shot AUC on held-out categories", xlabel="examples given",
        ylabel="mean AUC", levels={f"best baseline ({best})": b_auc, "ceiling (trained on them)": ceiling["auc"]},
        xticks=shots)
    print(f"few-shot curve: {png} (example users: drawn from a category's positives, left out of its ranking, "
          f"and only where {args.min_positives} positives remain: fewer categories as the examples grow)")
    figures.update(embed_s=embed["wall_s"], train_s=[r["train_s"] for r in results] + [oracle["train_s"]])
    emit_json(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
