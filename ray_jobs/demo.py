"""``make demo``: the nightly pipeline (``configs/demo.yaml``) on built-in synthetic data
and a local Ray, then each model's evaluation beside its baselines and a few DuckDB
queries on the warehouse tables it published: rows per table, one user's
recommendations, tags and next actions with item titles, and the top users of a new tag
with the items behind their scores."""

from __future__ import annotations

import argparse
import sys

from ray_jobs import pipeline
from ray_jobs._common import add_ray_args, run_job


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="interest demo", description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml", help="pipeline config (default configs/demo.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--verbose", action="store_true", help="show the library's and Ray's logs")
    add_ray_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from interest import io
    from interest.pipeline.config import load
    from interest.report.build import report_folder

    argv = ["--config", args.config, *(f"--set={s}" for s in args.set)]
    argv += ["--verbose"] * args.verbose + (["--address", args.address] if args.address else [])
    argv += ["--num-cpus", str(args.num_cpus)] if args.num_cpus else []
    rc = pipeline.main(argv)
    if rc:
        return rc
    cfg = load(args.config, args.set)
    from interest.pipeline.warehouse import latest_published
    from ray_jobs.evaluate import print_table

    manifest = latest_published(cfg.out, cfg.dt)
    for name, evaluation in manifest["evaluation"].items():
        if "file" in evaluation:
            print(f"\n== {name}: test metrics beside the baselines ==", end="")
            print_table(io.read_json(evaluation["file"]))
    queries(cfg.out, cfg.dt, io.join(cfg.prepared, "items"), [t for t in manifest["tables"]])
    print(f"\nwarehouse: {cfg.out} (one folder per table, dt={cfg.dt}); run manifest: "
          f"{cfg.out}/_runs/{manifest['run_id']}.json; check it with "
          f"`interest verify-output {cfg.out} --dt {cfg.dt}`")
    report = io.join(report_folder(cfg.out, cfg.dt), "report.html")
    if io.exists(report):
        print(f"report: {report} (open it in a browser)")
    else:
        print(f"report: not written; draw it with `interest report {cfg.out} --dt {cfg.dt}`")
    return 0


def queries(out: str, day: str, items: str, tables: list[str]) -> None:
    """The queries a warehouse user would run, printed with their SQL."""
    try:
        import duckdb
    except ImportError:
        print("\n(DuckDB is not installed: `pip install duckdb` to run the demo's queries)")
        return
    con = duckdb.connect()
    for table in tables:
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{out}/{table}/*/*.parquet', "
                    "hive_partitioning = true)")
    con.execute(f"CREATE VIEW items AS SELECT * FROM read_parquet('{items}/*.parquet')")

    def show(title: str, sql: str, params: list) -> None:
        print(f"\n-- {title}\n{sql.strip()}")
        for row in con.execute(sql, params).fetchall():
            print("   " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))

    union = "\nUNION ALL ".join(f"SELECT '{t}' AS tbl, count(*) AS n_rows, count(DISTINCT user_id) AS users "
                               f"FROM {t} WHERE dt = $1" for t in tables)
    show("rows and users per table", union, [day])
    user = con.execute(f"SELECT min(user_id) FROM {tables[0]} WHERE dt = $1", [day]).fetchone()[0]
    if "user_recommendations" in tables:
        show(f"user {user}'s top 10 recommendations with titles, and the items of theirs behind each", """
SELECT r.rank, r.item_id, i.title, round(r.score, 3) AS score, r.source,
       (SELECT string_agg(h.title, '; ') FROM unnest(r.evidence) AS e(item_id) JOIN items h USING (item_id))
         AS because_of
FROM user_recommendations r JOIN items i USING (item_id)
WHERE r.dt = $1 AND r.user_id = $2 ORDER BY r.rank LIMIT 10""", [day, user])
    if "user_tags" in tables:
        show(f"user {user}'s interest tags", """
SELECT t.rank, t.tag, round(t.probability, 2) AS p,
       coalesce((SELECT string_agg(i.title, '; ') FROM unnest(t.evidence) AS e(item_id) JOIN items i USING (item_id)),
                '(the fallback: no history the model knows)') AS because_of
FROM user_tags t WHERE t.dt = $1 AND t.user_id = $2 ORDER BY t.rank""", [day, user])
    if "user_next_actions" in tables:
        show(f"user {user}'s next actions", """
SELECT n.rank, i.title, round(n.probability, 3) AS p, n.next_behavior, round(n.behavior_probability, 2) AS p_behavior
FROM user_next_actions n JOIN items i USING (item_id)
WHERE n.dt = $1 AND n.user_id = $2 ORDER BY n.rank LIMIT 5""", [day, user])
    if "tag_audiences" in tables:
        show("each new tag's top 3 users, the items behind their scores and the tag's words in them", """
SELECT a.tag, a.rank, a.user_id, round(a.score, 2) AS score,
       (SELECT string_agg(i.title, '; ') FROM unnest(a.evidence) AS e(item_id) JOIN items i USING (item_id))
         AS because_of, array_to_string(a.matched_words, ', ') AS words
FROM tag_audiences a WHERE a.dt = $1 AND a.rank <= 3 ORDER BY a.tag, a.rank""", [day])


if __name__ == "__main__":
    sys.exit(main())
