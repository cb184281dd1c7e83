"""Benchmark ``interest prepare`` against the same transformation in single-process DuckDB.

For each size, synthetic events are generated once (cached under --work), then both
implementations run as separate processes while the memory of their whole process
tree is sampled (PSS, so Ray's shared object store is not counted once per process).

    python bench/prepare.py --events 1000000,10000000
    python bench/prepare.py --dataset rees46_2019oct_head

Targets (issue 2): at 10M events interest within 2x DuckDB's wall time, and its peak
memory at 10M no more than 1.5x that at 1M. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_dataset_args, dataset_input, emit_json, print_table, run_measured  # noqa: E402

# The same transformation as `interest prepare` on the events contract: validate,
# quarantine, deduplicate, index items by popularity and users by id, leave-last-one
# split, sequences capped at MAX_LEN most recent events.
DUCKDB_SQL = """
SET threads = {threads};
SET preserve_insertion_order = false;
CREATE VIEW raw AS SELECT * FROM read_parquet('{input}/*.parquet', union_by_name = true);
CREATE VIEW checked AS SELECT *,
  CASE WHEN user_id IS NULL OR trim(user_id) = '' THEN 'empty user_id'
       WHEN item_id IS NULL OR trim(item_id) = '' THEN 'empty item_id'
       WHEN lower(behavior) NOT IN ('view','click','fav','cart','buy') THEN 'unknown behavior'
       WHEN ts IS NULL THEN 'missing timestamp'
       WHEN ts < TIMESTAMPTZ '1990-01-01' OR ts > now() + INTERVAL 1 DAY THEN 'timestamp out of range'
       WHEN price < 0 THEN 'negative price' END AS reason
  FROM raw;
COPY (SELECT reason, to_json(struct_pack(user_id, item_id, behavior, ts, session_id, price)) AS record
      FROM checked WHERE reason IS NOT NULL) TO '{out}/quarantine.parquet';
CREATE TABLE clean AS SELECT DISTINCT ON (user_id, item_id, behavior, ts)
  user_id, item_id, lower(behavior) AS behavior, ts, session_id, price,
  list_position(['view','click','fav','cart','buy'], lower(behavior)) - 1 AS b
  FROM checked WHERE reason IS NULL;
CREATE TABLE items AS SELECT item_id, (row_number() OVER (ORDER BY count(*) DESC, item_id) - 1)::INT AS item_idx,
  count(*) AS count FROM clean GROUP BY item_id;
CREATE TABLE users AS SELECT user_id, row_number() OVER (ORDER BY user_id) - 1 AS user_idx
  FROM (SELECT DISTINCT user_id FROM clean);
CREATE TABLE ev AS SELECT u.user_idx, i.item_idx, c.b::TINYINT AS behavior, c.ts, c.user_id, c.item_id,
  c.session_id, c.price,
  row_number() OVER (PARTITION BY c.user_id ORDER BY c.ts DESC, c.b DESC, c.item_id DESC) AS from_end,
  count(*) OVER (PARTITION BY c.user_id) AS n
  FROM clean c JOIN users u USING (user_id) JOIN items i USING (item_id);
COPY (SELECT user_idx, item_idx, behavior, ts,
        (CASE WHEN n > 1 AND from_end = 1 THEN 2 WHEN n > 2 AND from_end = 2 THEN 1 ELSE 0 END)::TINYINT AS split,
        user_id, item_id, session_id, price FROM ev) TO '{out}/events.parquet';
COPY (SELECT user_idx, list(item_idx ORDER BY from_end DESC) AS items,
        list(behavior ORDER BY from_end DESC) AS behaviors, list(ts ORDER BY from_end DESC) AS ts
      FROM ev WHERE from_end <= {max_len} GROUP BY user_idx) TO '{out}/sequences.parquet';
COPY items TO '{out}/items.parquet';
COPY users TO '{out}/users.parquet';
"""


def run_duckdb(input_dir: str, out: Path, threads: int, max_len: int) -> None:
    import duckdb

    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(DUCKDB_SQL.format(input=input_dir, out=out, threads=threads, max_len=max_len))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(parser)
    parser.add_argument("--events", default="1000000,10000000", help="synthetic sizes, comma-separated")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads (the machine's cores)")
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--duckdb-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duckdb_only:  # child process: DuckDB measured on its own
        run_duckdb(args.data, Path(args.work), args.threads, args.max_len)
        return 0

    work = Path(args.work) / "prepare"
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    rows, figures = [], {"events": [], "interest_s": {}, "duckdb_s": {}, "ratio": {}, "rss_mb": {},
                         "duckdb_rss_mb": {}}
    if args.dataset == "synthetic" and not args.data:
        cases = []
        for n in [int(x) for x in args.events.split(",")]:
            data = work / f"synthetic-{n}"
            if not (data / "items.parquet").exists():
                users, items = max(100, n // 50), max(100, n // 200)
                print(f"generating {n:,} synthetic events ...", flush=True)
                run_measured([py, "-m", "interest.cli", "generate", "--events", str(n), "--users", str(users),
                              "--items", str(items), "--out", str(data)], log=work / f"generate-{n}.log")
            cases.append((str(n), str(data / "events"), "events", ["--items", str(data / "items.parquet")], True))
    else:
        path, fmt, overrides = dataset_input(args)
        sets = [x for o in overrides for x in ("--set", o)]
        cases = [(args.data or args.dataset, path, fmt, sets, fmt == "events")]

    for name, path, fmt, extra, duck in cases:
        out = work / f"out-{Path(name).name}"
        wall, mem = run_measured([py, "-m", "interest.cli", "prepare", path, "--format", fmt, "--out", str(out),
                                  "--overwrite", "--set", f"max_len={args.max_len}", *extra],
                                 env={"PYTHONUNBUFFERED": "1"}, log=work / f"interest-{Path(name).name}.log")
        d_wall = d_mem = None
        if duck:
            d_out = work / f"duckdb-{Path(name).name}"
            shutil.rmtree(d_out, ignore_errors=True)
            d_wall, d_mem = run_measured([py, __file__, "--duckdb-only", "--data", path, "--work", str(d_out),
                                          "--threads", str(args.threads), "--max-len", str(args.max_len)])
        ratio = wall / d_wall if d_wall else None
        rows.append([name, f"{wall:.1f}", f"{mem:.0f}", f"{d_wall:.1f}" if d_wall else "-",
                     f"{d_mem:.0f}" if d_mem else "-", f"{ratio:.2f}" if ratio else "-"])
        figures["events"].append(name)
        figures["interest_s"][name] = round(wall, 2)
        figures["rss_mb"][name] = round(mem)
        if d_wall:
            figures["duckdb_s"][name] = round(d_wall, 2)
            figures["duckdb_rss_mb"][name] = round(d_mem)
            figures["ratio"][name] = round(ratio, 3)
    print()
    print_table(["events", "interest s", "interest MB", "duckdb s", "duckdb MB", "ratio"], rows)
    sizes = figures["events"]
    if len(sizes) >= 2 and args.dataset == "synthetic":
        growth = figures["rss_mb"][sizes[-1]] / figures["rss_mb"][sizes[0]]
        figures["rss_growth"] = round(growth, 3)
        print(f"\nmemory growth {sizes[0]} -> {sizes[-1]}: {growth:.2f}x (target <= 1.5x); "
              f"wall ratio at {sizes[-1]}: {figures['ratio'][sizes[-1]]:.2f}x DuckDB (target <= 2x)")
    emit_json(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
