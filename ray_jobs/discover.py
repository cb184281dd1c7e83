"""``interest discover``: cluster the item text vectors of ``interest embed-items`` into
candidate interest groups, each with the existing tag that covers it best and its most
typical titles, least covered first, for a person to name. Runs on the driver, no Ray."""

from __future__ import annotations

import argparse
import json
import sys

from ray_jobs._common import run_job


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest discover", description=__doc__)
    parser.add_argument("--data", required=True, help="a prepared dataset")
    parser.add_argument("--embeddings", required=True, help="the item vector store of `interest embed-items`")
    parser.add_argument("--out", required=True, help="Parquet file of the groups (local or s3://)")
    parser.add_argument("--groups", type=int, default=20, help="clusters (k)")
    parser.add_argument("--titles", type=int, default=5, help="typical titles shown per group")
    parser.add_argument("--encoder", default=None,
                        help="the encoder the vectors were made with (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--taxonomy", default=None,
                        help="Parquet of tags (tag, description, categories); default: tags from item categories")
    parser.add_argument("--tag-source", default="levels", choices=("levels", "tokens", "whole", "prefixes"),
                        help="how tags are derived from item categories without --taxonomy")
    parser.add_argument("--separator", default=".", help="separator of category paths")
    parser.add_argument("--seed", type=int, default=0, help="seeds the k-means initialisation")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from interest import io
    from interest import schemas as S
    from interest.tasks.zeroshot.discover import DiscoverConfig, discover

    cfg = DiscoverConfig(embeddings=args.embeddings, groups=args.groups, titles=args.titles, seed=args.seed,
                         taxonomy=args.taxonomy, tag_source=args.tag_source, separator=args.separator,
                         encoder=args.encoder)
    io.check_writable(args.out, overwrite=args.overwrite)
    if io.exists(args.out) and not args.overwrite:  # check_writable looks at folders; --out is one file
        raise io.InputError(f"output {args.out} already exists; pass --overwrite to replace it")
    table, report = discover(args.data, cfg)
    io.write_parquet(S.conform(table, S.DISCOVERED_GROUPS, what="discovered groups"), args.out)
    for row in table.to_pylist():
        flag = "" if row["covered"] else " [uncovered]"
        print(f"group {row['group']} ({row['items']:,} items): best tag {row['best_tag'] or '-'} "
              f"covers {row['coverage']:.0%}{flag}")
        for title in row["typical_titles"]:
            print(f"    {title}")
    print(json.dumps({**report, "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
