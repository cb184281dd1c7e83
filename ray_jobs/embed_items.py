"""``interest embed-items``: embed every item's text once (title, category, brand) with a
transformers encoder, on a Ray Data actor pool; reruns embed only new or changed items."""

from __future__ import annotations

import argparse
import json
import sys

from ray_jobs._common import add_ray_args, init_ray, run_job


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest embed-items", description=__doc__)
    parser.add_argument("--data", required=True,
                        help="a prepared dataset (its items/) or a Parquet items table (item_id, title, ...)")
    parser.add_argument("--out", required=True, help="the vector store folder (local or s3://), shared by runs")
    parser.add_argument("--encoder", default=None,
                        help="Hugging Face model folder or hub name (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=64, help="tokens per item text")
    parser.add_argument("--concurrency", type=int, default=1, help="encoder actors")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per encoder actor")
    add_ray_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from interest.text.embed import EmbedConfig, embed_items, items_source
    from interest.text.encoder import resolve

    cfg = EmbedConfig(encoder=args.encoder, batch_size=args.batch_size, max_length=args.max_length,
                      concurrency=args.concurrency, use_gpu=args.use_gpu)
    items_source(args.data), resolve(cfg.encoder)  # a missing input or model fails before Ray starts
    init_ray(args)
    report = embed_items(args.data, args.out, cfg)
    print(f"{report['embedded']:,} of {report['items']:,} items embedded with {report['model']} "
          f"({report['already_embedded']:,} unchanged) in {report['seconds']} s -> {args.out}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
