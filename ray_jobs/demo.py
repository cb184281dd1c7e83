"""``make demo``: the pipeline on built-in synthetic data and a local Ray.

Generates a synthetic log with planted interests, prepares it, trains the next-action
model briefly with Ray Train, evaluates it beside the baselines and scores every user's
next actions to Parquet; embeds every item's
text with the packaged encoder, trains the interest-tag model on those vectors, scores
every user's tags to Parquet and prints a few users' tags with the titles behind them;
trains the two-tower recommender on the same vectors, evaluates it beside popularity,
ItemKNN and EASE and prints a few users' top 10 with titles; trains the zero-shot
interest model and scores two tags it never saw, given only as text, printing each tag's
top users and the items behind their scores.
"""

from __future__ import annotations

import argparse
import os
import sys

from interest import io
from interest import schemas as S
from interest.data.prepare import PrepareConfig, prepare
from interest.data.synthetic import SyntheticConfig, generate
from interest.evaluate.harness import evaluate
from interest.evaluate.metrics import Protocol
from interest.score.batch import score
from interest.text.embed import EmbedConfig, embed_items
from interest.text.encoder import resolve
from interest.train.loop import fit
from ray_jobs._common import add_ray_args, init_ray, run_job
from ray_jobs.evaluate import print_table
from ray_jobs.prepare import print_report


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest demo", description=__doc__)
    parser.add_argument("--out", default="demo_out", help="demo folder (default demo_out)")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of the demo models")
    parser.add_argument("--encoder", default=None, help="text encoder folder (default: the packaged MiniLM)")
    add_ray_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    data = io.join(args.out, "synthetic")
    prepared = io.join(args.out, "prepared")
    run_dir = io.join(args.out, "runs", "sequence")
    tags_run = io.join(args.out, "runs", "tags")
    store = io.join(args.out, "item_vectors")
    tags_out = io.join(args.out, "scores", "tags")
    next_out = io.join(args.out, "scores", "next_actions")
    rec_run = io.join(args.out, "runs", "recommend")
    rec_out = io.join(args.out, "scores", "recommendations")
    zs_run = io.join(args.out, "runs", "zeroshot")
    zs_out = io.join(args.out, "scores", "zeroshot")
    model_id, _ = resolve(args.encoder)  # fails now, not after training, when no encoder is installed
    print(f"[1/11] generating {args.events:,} synthetic events of {args.users:,} users -> {data}")
    generate(SyntheticConfig(users=args.users, items=args.items, events=args.events), data)
    init_ray(args)
    print(f"[2/11] preparing on Ray Data -> {prepared}")
    report = prepare(PrepareConfig(input=io.join(data, "events"), items=io.join(data, "items.parquet"),
                                   out=prepared, overwrite=True))
    print_report(report, prepared)
    print(f"\n[3/11] training the next-action model (SASRec, {args.epochs} epochs, 2 DDP workers) -> {run_dir}")
    for old in (run_dir, tags_run, rec_run, zs_run):
        if io.exists(old):
            io.remove(old)  # fresh runs, not resumed ones
    result = fit("sequence", prepared, run_dir,
                 {"preset": "small", "train": {"epochs": args.epochs, "batch_size": 64, "lr": 0.005}}, num_workers=2)
    if result.error:
        raise result.error
    print("[4/11] evaluating on the held-out last event of every user")
    results = evaluate(run_dir, prepared, protocol=Protocol(mask_seen=True))
    io.write_json(results, io.join(run_dir, "metrics_test.json"))
    print_table(results)
    print(f"\n[5/11] scoring every user's next actions -> {next_out}")
    scored = score(run_dir, prepared, next_out, top_k=10, overwrite=True)
    print(f"{scored['rows']:,} rows in {scored['seconds']} s")
    show_next_actions(next_out, prepared)
    print(f"\n[6/11] embedding every item's text with {model_id} (Ray Data actor) -> {store}")
    embedded = embed_items(prepared, store, EmbedConfig(encoder=args.encoder))
    print(f"{embedded['embedded']:,} items embedded, {embedded['already_embedded']:,} unchanged, "
          f"in {embedded['seconds']} s")
    print(f"[7/11] training the interest-tag model on the item vectors ({args.epochs} epochs) -> {tags_run}")
    result = fit("tags", prepared, tags_run, {"mode": "cached", "embeddings": store, "encoder": args.encoder,
                                              "train": {"epochs": args.epochs}}, num_workers=2)
    if result.error:
        raise result.error
    results = evaluate(tags_run, prepared)
    io.write_json(results, io.join(tags_run, "metrics_test.json"))
    print_table(results)
    print(f"\n[8/11] scoring every user's top tags -> {tags_out}")
    scored = score(tags_run, prepared, tags_out, top_k=5, overwrite=True)
    print(f"{scored['rows']:,} rows (calibration temperature {scored['temperature']:.2f})")
    show_tags(tags_out, prepared)
    print(f"\n[9/11] training the two-tower recommender on ids and item vectors ({args.epochs} epochs) -> {rec_run}")
    result = fit("recommend", prepared, rec_run, {"embeddings": store, "encoder": args.encoder,
                                                  "train": {"epochs": args.epochs}}, num_workers=2)
    if result.error:
        raise result.error
    results = evaluate(rec_run, prepared, baselines=("popularity", "itemknn", "ease"))
    io.write_json(results, io.join(rec_run, "metrics_test.json"))
    print_table(results)
    print(f"\n[10/11] scoring every user's top 10 (items already bought left out) -> {rec_out}")
    scored = score(rec_run, prepared, rec_out, top_k=10, overwrite=True)
    print(f"{scored['rows']:,} rows in {scored['seconds']} s")
    show_recommendations(rec_out, prepared)
    print(f"\n[11/11] training the zero-shot interest model ({args.epochs} epochs) and scoring two new tags "
          f"given only as text -> {zs_out}")
    result = fit("zeroshot", prepared, zs_run, {"embeddings": store, "encoder": args.encoder,
                                                "train": {"epochs": args.epochs}}, num_workers=2)
    if result.error:
        raise result.error
    new_tags = io.join(args.out, "new_tags.csv")
    with open(new_tags, "w", encoding="utf-8") as f:
        f.write("tag,description\n" + "\n".join(f'{t},"{d}"' for t, d in NEW_TAGS) + "\n")
    scored = score(zs_run, prepared, zs_out, overwrite=True, tags=new_tags, audience=100)
    print(f"{scored['rows']:,} user x tag rows, {scored['audience_rows']:,} audience rows in {scored['seconds']} s")
    show_audiences(zs_out, prepared)
    print(f"\ndemo outputs in {os.path.abspath(args.out)}:")
    print(f"  synthetic log and ground truth  {data}")
    print(f"  prepared dataset                {prepared}  (see prepare_report.json)")
    print(f"  next-action run and scores      {run_dir}, {next_out}")
    print(f"  item text vectors               {store}")
    print(f"  interest-tag run and scores     {tags_run}, {tags_out}")
    print(f"  recommender run and top 10      {rec_run}, {rec_out}")
    print(f"  zero-shot run, new-tag scores   {zs_run}, {zs_out} (user_zeroshot/, tag_audiences/)")
    return 0


# Tags no model was trained on, given only as text: what a merchandiser launching a
# campaign writes.
NEW_TAGS = (("camping", "tents, bicycles and outdoor gear for weekend trips"),
            ("coffee break", "coffee, tea and chocolate for a cosy afternoon"))


def show_audiences(scores: str, prepared: str, users: int = 3) -> None:
    """Each new tag's top users with the titles of the items behind their scores."""
    import pyarrow.compute as pc

    audiences = io.read_parquet(io.join(scores, "tag_audiences"))
    rows = io.read_parquet(io.join(scores, "user_zeroshot"))
    items = io.read_parquet(io.join(prepared, "items"), columns=[S.ITEM_ID, S.TITLE]).to_pydict()
    titles = dict(zip(items[S.ITEM_ID], items[S.TITLE]))
    for tag, _ in NEW_TAGS:
        print(f"tag {tag!r}: top users")
        top = audiences.filter(pc.equal(audiences[S.TAG], tag)).sort_by("rank").slice(0, users).to_pylist()
        for r in top:
            mine = rows.filter(pc.and_(pc.equal(rows[S.TAG], tag), pc.equal(rows[S.USER_ID], r[S.USER_ID])))
            evidence = "; ".join(titles.get(e) or e for e in mine.column("evidence")[0].as_py())
            print(f"  {r['rank']}. {r[S.USER_ID]} (score {r['score']:.2f}) because of: {evidence}")


def _first_users(scores: str, prepared: str, users: int):
    """(user, the user's rows by rank, item titles by id) of the first ``users`` users of a
    scores folder."""
    import pyarrow.compute as pc

    table = io.read_parquet(scores)
    items = io.read_parquet(io.join(prepared, "items"), columns=[S.ITEM_ID, S.TITLE]).to_pydict()
    titles = dict(zip(items[S.ITEM_ID], items[S.TITLE]))
    for user in sorted(set(table.column(S.USER_ID).to_pylist()))[:users]:
        yield user, sorted(table.filter(pc.equal(table[S.USER_ID], user)).to_pylist(), key=lambda r: r["rank"]), titles


def show_next_actions(scores: str, prepared: str, users: int = 2) -> None:
    """A few users' most likely next items, with titles, and their next behaviour type."""
    for user, rows, titles in _first_users(scores, prepared, users):
        print(f"user {user}: next behaviour {rows[0]['next_behavior']} (p={rows[0]['behavior_probability']:.2f})")
        for r in rows[:3]:
            print(f"  p={r['probability']:.3f}  {titles.get(r[S.ITEM_ID]) or r[S.ITEM_ID]}")


def show_recommendations(scores: str, prepared: str, users: int = 2) -> None:
    """A few users' top 10 with titles."""
    for user, rows, titles in _first_users(scores, prepared, users):
        print(f"user {user}:")
        for r in rows[:10]:
            print(f"  {r['rank']:>2}. {titles.get(r[S.ITEM_ID]) or r[S.ITEM_ID]}")


def show_tags(scores: str, prepared: str, users: int = 3) -> None:
    """A few users' tags, each with its probability and the titles of its evidence items."""
    for user, rows, titles in _first_users(scores, prepared, users):
        print(f"user {user}:")
        for r in rows[:3]:
            evidence = "; ".join(titles.get(e) or e for e in r["evidence"]) or "(no item of this tag yet)"
            print(f"  {r[S.TAG]:<22} p={r['probability']:.2f}  because of: {evidence}")


if __name__ == "__main__":
    sys.exit(main())
