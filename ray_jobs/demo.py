"""``make demo``: the pipeline on built-in synthetic data and a local Ray.

Generates a synthetic log with planted interests, prepares it, trains the next-action
model briefly with Ray Train and evaluates it beside the baselines; embeds every item's
text with the packaged encoder, trains the interest-tag model on those vectors, scores
every user's tags to Parquet and prints a few users' tags with the titles behind them.
"""

from __future__ import annotations

import argparse
import os
import sys

from interest import io
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
    model_id, _ = resolve(args.encoder)  # fails now, not after training, when no encoder is installed
    print(f"[1/7] generating {args.events:,} synthetic events of {args.users:,} users -> {data}")
    generate(SyntheticConfig(users=args.users, items=args.items, events=args.events), data)
    init_ray(args)
    print(f"[2/7] preparing on Ray Data -> {prepared}")
    report = prepare(PrepareConfig(input=io.join(data, "events"), items=io.join(data, "items.parquet"),
                                   out=prepared, overwrite=True))
    print_report(report, prepared)
    print(f"\n[3/7] training the next-action model (SASRec, {args.epochs} epochs, 2 DDP workers) -> {run_dir}")
    for old in (run_dir, tags_run):
        if io.exists(old):
            io.remove(old)  # fresh runs, not resumed ones
    result = fit("sequence", prepared, run_dir,
                 {"preset": "small", "train": {"epochs": args.epochs, "batch_size": 64, "lr": 0.005}}, num_workers=2)
    if result.error:
        raise result.error
    print("[4/7] evaluating on the held-out last event of every user")
    results = evaluate(run_dir, prepared, protocol=Protocol(mask_seen=True))
    io.write_json(results, io.join(run_dir, "metrics_test.json"))
    print_table(results)
    print(f"\n[5/7] embedding every item's text with {model_id} (Ray Data actor) -> {store}")
    embedded = embed_items(prepared, store, EmbedConfig(encoder=args.encoder))
    print(f"{embedded['embedded']:,} items embedded, {embedded['already_embedded']:,} unchanged, "
          f"in {embedded['seconds']} s")
    print(f"[6/7] training the interest-tag model on the item vectors ({args.epochs} epochs) -> {tags_run}")
    result = fit("tags", prepared, tags_run, {"mode": "cached", "embeddings": store, "encoder": args.encoder,
                                              "train": {"epochs": args.epochs}}, num_workers=2)
    if result.error:
        raise result.error
    results = evaluate(tags_run, prepared)
    io.write_json(results, io.join(tags_run, "metrics_test.json"))
    print_table(results)
    print(f"\n[7/7] scoring every user's top tags -> {tags_out}")
    scored = score(tags_run, prepared, tags_out, top_k=5, overwrite=True)
    print(f"{scored['rows']:,} rows (calibration temperature {scored['temperature']:.2f})")
    show_tags(tags_out, prepared)
    print(f"\ndemo outputs in {os.path.abspath(args.out)}:")
    print(f"  synthetic log and ground truth  {data}")
    print(f"  prepared dataset                {prepared}  (see prepare_report.json)")
    print(f"  next-action run                 {run_dir}  (checkpoints, metrics_test.json)")
    print(f"  item text vectors               {store}")
    print(f"  interest-tag run and scores     {tags_run}, {tags_out}")
    return 0


def show_tags(scores: str, prepared: str, users: int = 3) -> None:
    """A few users' tags, each with its probability and the titles of its evidence items."""
    import pyarrow.compute as pc

    from interest import schemas as S

    table = io.read_parquet(scores)
    titles = dict(zip(*io.read_parquet(io.join(prepared, "items"), columns=[S.ITEM_ID, S.TITLE]).to_pydict().values()))
    for user in sorted(set(table.column(S.USER_ID).to_pylist()))[:users]:
        rows = sorted(table.filter(pc.equal(table[S.USER_ID], user)).to_pylist(), key=lambda r: r["rank"])
        print(f"user {user}:")
        for r in rows[:3]:
            evidence = "; ".join(titles.get(e) or e for e in r["evidence"]) or "(no item of this tag yet)"
            print(f"  {r[S.TAG]:<22} p={r['probability']:.2f}  because of: {evidence}")


if __name__ == "__main__":
    sys.exit(main())
