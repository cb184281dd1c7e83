"""Shared by the bench scripts: dataset arguments, process-tree memory, tables, the JSON line."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# Adapter and preparation settings for each dataset folder of ../shared/data.
SHARED_DATASETS = {
    "taobao_userbehavior_excerpt": ("taobao", ["split.method=time"]),
    "rees46_2019oct_head": ("rees46", ["split.method=time"]),
    "amazon_beauty_s3rec": ("s3rec", ["split.method=leave_last"]),
    "amazon_beauty_bert4rec": ("sasrec", ["split.method=leave_last"]),
    "amazon_scientific_unisrec": ("unisrec", ["split.method=given"]),
    "movielens_100k": ("recbole", ["split.method=time"]),
}


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="synthetic",
                        help=f"'synthetic' or a folder of {SHARED}: {', '.join(SHARED_DATASETS)}")
    parser.add_argument("--data", default=None, help="any input path instead of --dataset")
    parser.add_argument("--format", default="events", help="adapter of --data (see `interest prepare --help`)")
    parser.add_argument("--work", default=str(ROOT / "bench_out"), help="scratch folder")


def add_task_args(parser: argparse.ArgumentParser, task: str, example: str) -> None:
    """The options every quality bench shares: workers, encoder, task config overrides."""
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--encoder", default=None, help="encoder folder (default: the packaged MiniLM)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="train.precision; auto: bf16 where this CPU multiplies bfloat16 natively")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"{task} task config, e.g. --set {example}")


def precision(args) -> str:
    """``train.precision=...`` for ``--precision`` (put before ``--set``, which may override it)."""
    value = args.precision
    if value == "auto":
        import torch

        value = "bf16" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "fp32"
    return f"train.precision={value}"


def work_folder(args, bench: str) -> Path:
    """``--work/BENCH/DATASET``, created."""
    work = Path(args.work) / bench / (Path(args.data).name if args.data else args.dataset)
    work.mkdir(parents=True, exist_ok=True)
    return work


def dataset_input(args) -> tuple[str, str, list[str]]:
    """(path, format, prepare overrides) for the chosen dataset."""
    if args.data:
        return args.data, args.format, []
    if args.dataset not in SHARED_DATASETS:
        sys.exit(f"unknown dataset {args.dataset!r}; choose synthetic or one of {', '.join(SHARED_DATASETS)}")
    path = SHARED / args.dataset
    if not path.exists():
        sys.exit(f"{path} not found: the shared datasets live in ../shared/data beside the checkout")
    if args.dataset == "amazon_beauty_s3rec":
        path = path / "Beauty.txt"
    if args.dataset == "amazon_beauty_bert4rec":
        path = path / "beauty.txt"
    if args.dataset == "movielens_100k":
        path = path / "ml-100k.inter"
    fmt, overrides = SHARED_DATASETS[args.dataset]
    return str(path), fmt, overrides


def prepare_source(args, folder: Path, users: int, items: int, events: int) -> list[str]:
    """`interest prepare`'s input arguments: ``users`` synthetic users' ``events`` over
    ``items`` items, generated once into ``folder/raw``, or the chosen dataset."""
    if args.dataset != "synthetic" or args.data:
        path, fmt, overrides = dataset_input(args)
        return [path, "--format", fmt, *[x for o in overrides for x in ("--set", o)]]
    raw = folder / "raw"
    if not (raw / "items.parquet").exists():
        print(f"generating {events:,} events of {users:,} users over {items:,} items ...", flush=True)
        run_measured([sys.executable, "-m", "interest.cli", "generate", "--users", str(users), "--items", str(items),
                      "--events", str(events), "--out", str(raw)], log=folder / "generate.log")
    return [str(raw / "events"), "--items", str(raw / "items.parquet")]


def prepared_dataset(args, work: Path, synthetic_split: str = "leave_last", *, split: list[str] | None = None,
                     generate: list[str] | None = None) -> tuple[Path, Path | None]:
    """Prepare the chosen dataset once under ``work`` (reused by later runs); returns the
    prepared folder and, for ``synthetic``, the generated raw folder. ``split``: prepare
    overrides that replace the dataset's usual split; ``generate``: extra generator
    settings of ``synthetic`` (``personas=0.8``)."""
    py = sys.executable
    prepared, raw = work / "prepared", None
    if args.dataset == "synthetic" and not args.data:
        raw = work / "raw"
        if not (raw / "items.parquet").exists():
            run_measured([py, "-m", "interest.cli", "generate", "--users", "5000", "--items", "3000", "--events",
                          "200000", "--out", str(raw), *[x for o in generate or [] for x in ("--set", o)]],
                         log=work / "generate.log")
        path, fmt, overrides, extra = str(raw / "events"), "events", [f"split.method={synthetic_split}"], [
            "--items", str(raw / "items.parquet")]
    else:
        (path, fmt, overrides), extra = dataset_input(args), []
    if split is not None:
        overrides = [o for o in overrides if not o.startswith("split.")] + split
    if not (prepared / "_SUCCESS").exists():
        sets = [x for o in overrides for x in ("--set", o)]
        run_measured([py, "-m", "interest.cli", "prepare", path, "--format", fmt, "--out", str(prepared),
                      "--overwrite", *sets, *extra], log=work / "prepare.log")
    return prepared, raw


def embed_items(prepared: Path, work: Path, encoder: str | None = None) -> tuple[Path, dict]:
    """Embed the prepared items' text into ``work/embeddings`` (reruns embed only new or
    changed items); returns the store and the job's report with its wall seconds."""
    store = work / "embeddings"
    cmd = [sys.executable, "-m", "interest.cli", "embed-items", "--data", str(prepared), "--out", str(store)]
    wall_s, _ = run_measured(cmd + (["--encoder", encoder] if encoder else []), log=work / "embed.log")
    return store, {**last_json(work / "embed.log"), "wall_s": round(wall_s, 1)}


def epoch_train_seconds(log: Path) -> list[float]:
    """Training seconds of each epoch (validation excluded), from a train log's progress lines."""
    found = {}
    for m in re.finditer(r"epoch (\d+)/\d+: .*?; train ([\d.]+) s", log.read_text()):
        found[int(m.group(1))] = float(m.group(2))
    return [found[k] for k in sorted(found)]


def worker_peak_mb(run: Path) -> list[int]:
    """Each training worker's peak memory over the run's epochs, in MB, as the workers
    measured it (their resident sets; the training loop logs it with every epoch)."""
    from interest.train import checkpoint as ckpt

    peaks = ckpt.load_state(ckpt.latest_checkpoint(str(run))).get("peak_mb") or []
    return [round(max(worker)) for worker in zip(*peaks)]


def last_json(log: Path) -> dict:
    """The last JSON line a job printed (Ray's own processes may log after it)."""
    return json.loads(next(line for line in reversed(log.read_text().splitlines()) if line.startswith("{")))


def _tree_pss(proc: psutil.Process) -> int:
    """Proportional set size of a process and all its descendants, in bytes.

    PSS, not RSS: Ray's processes share the object store's pages, and summing RSS
    would count those pages once per process.
    """
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            pass
    return total


def run_measured(cmd: list[str], env: dict | None = None, log: Path | None = None) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak memory of its process tree in MB)."""
    start = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            swept = time.perf_counter()
            try:
                peak = max(peak, _tree_pss(ps))
            except psutil.NoSuchProcess:
                return
            # Reading PSS walks every mapping of every process (0.15 s for a Ray training
            # tree here): sampling every 0.25 s took 80% of a core from the run it measured.
            stop.wait(max(1.0, 20 * (time.perf_counter() - swept)))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    rc = proc.wait()
    stop.set()
    t.join()
    wall = time.perf_counter() - start
    if rc != 0:
        tail = Path(log).read_text()[-3000:] if log else ""
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}\n{tail}")
    return wall, peak / 2**20


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def emit_json(figures: dict) -> None:
    print(json.dumps(figures))
