"""The GPU check (run by bench/gpu_check.sh): the tasks' own models and losses for a few
bf16 training steps each, and top-N scoring of 1M users, on one GPU, beside the GPU's
bf16 matrix-multiply peak measured here.

It runs without Ray, which the GPU machine lacks: it reads a prepared synthetic dataset
(made beforehand with Ray by ``--make-data``, into the git-ignored bench/gpu_data/) with
pyarrow, and drives each task as the training loop does: ``task.load_meta``,
``task.build_model``, ``task.loss`` under ``train.precision=bf16``'s autocast, backward,
AdamW step. What it does not drive is Ray itself: DDP, Ray Data and the actors are
measured elsewhere (bench/score.py, the quality benches).

Each row: the step, its batch, the model's parameters, milliseconds a step, examples a
second, and the floating-point rate of a step (counted by torch's FlopCounterMode:
forward and backward matmuls, not the optimizer) as TFLOPS and as a share of the
measured peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interest import config as C  # noqa: E402
from interest.common.space import merge  # noqa: E402
from interest.common.topn import top_n  # noqa: E402
from interest.tasks import get_task  # noqa: E402
from interest.text.encoder import item_texts, random_bert  # noqa: E402
from interest.train.loop import autocast  # noqa: E402

DATA = ROOT / "bench" / "gpu_data" / "prepared"
# The synthetic dataset --make-data writes: big enough for full batches and a catalogue
# that makes the item softmax real work, small enough to carry (43.6 MiB prepared; the device tool carries 64 MiB).
DATASET = dict(users=40_000, items=50_000, events=1_500_000)
# Each task at the size it would train at on a GPU (batch = users a step).
TASKS = {
    "sequence": {"preset": "base", "train": {"batch_size": 512}},
    "recommend": {"model": {"dim": 128, "layers": 2}, "train": {"batch_size": 1024}},
    # The BERT path: all-MiniLM-L6-v2's shape (6 layers, 384 wide), random weights.
    "tags": {"mode": "finetune", "train": {"batch_size": 128}, "text_max_length": 128,
             "activation_checkpointing": False},
}
MINILM = dict(hidden=384, layers=6, heads=12, intermediate=1536, max_positions=512)


def make_data(out: Path) -> None:
    """Generate and prepare the synthetic dataset into ``out`` (needs Ray: run it where Ray is)."""
    import shutil

    import ray

    from interest.data.prepare import PrepareConfig, prepare
    from interest.data.synthetic import SyntheticConfig, generate

    ray.init(num_cpus=4, include_dashboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        generate(SyntheticConfig(**DATASET), tmp)
        if out.exists():
            shutil.rmtree(out)
        prepare(PrepareConfig(input=f"{tmp}/events", items=f"{tmp}/items.parquet", out=str(out)))
    ray.shutdown()
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeat: int) -> float:
    """Seconds per call of ``fn`` after one warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeat


def matmul_peak(device: torch.device, n: int, repeat: int) -> float:
    """Measured bf16 matrix-multiply rate (TFLOPS) of an n x n x n product."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    seconds = timed(lambda: a @ b, device, repeat)
    return 2 * n ** 3 / seconds / 1e12


def batches(prepared: str, columns: list[str], size: int):
    """Batches of the prepared sequences as the training loop gets them from Ray Data:
    a dict of numpy arrays (list columns as arrays of arrays), ``size`` users each."""
    table = pq.read_table(f"{prepared}/sequences", columns=columns)
    if table.num_rows < size:
        sys.exit(f"{prepared} has {table.num_rows} users, fewer than a batch of {size}")
    while True:
        for lo in range(0, table.num_rows - size + 1, size):
            part = table.slice(lo, size)
            yield {c: part.column(c).to_numpy(zero_copy_only=False) for c in columns}


def train_steps(name: str, overrides: dict, prepared: str, device: torch.device, steps: int,
                workdir: str, batch_size: int | None = None) -> dict:
    task = get_task(name)
    if batch_size:
        overrides = merge(overrides, {"train.batch_size": batch_size})
    if name == "tags":
        items = pq.read_table(f"{prepared}/items")
        overrides = {**overrides, "encoder": random_bert(f"{workdir}/minilm-shaped", item_texts(items), **MINILM)}
    cfg = C.from_dict(task.config_cls, merge(overrides, {"train.precision": "bf16"}))
    meta = task.load_meta(cfg, prepared)
    model = task.build_model(cfg, meta).to(device)
    model.train()
    optimizer = torch.optim.AdamW(task.param_groups(model, cfg), lr=cfg.train.lr)
    # Batches made beforehand: in training, Ray Data prepares them while the GPU works.
    data = batches(prepared, task.train_columns(), cfg.train.batch_size)
    pool = [next(data) for _ in range(8)]
    examples = []

    def step():
        batch = pool[len(examples) % len(pool)]
        with autocast(device, cfg):
            loss, figures = task.loss(model, batch, cfg, meta, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        examples.append(figures.get("examples", cfg.train.batch_size))

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    examples.clear()
    seconds = timed(step, device, steps)
    return {"step": f"train {name}", "batch": f"{cfg.train.batch_size} users",
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "ms": seconds * 1e3,
            "per_s": float(np.mean(examples[1:])) / seconds, "unit": "examples",  # the task's: events, users
            "tflops": flops / seconds / 1e12}


def score_top_n(device: torch.device, users: int, items: int, dim: int, batch: int, dtype: torch.dtype) -> dict:
    """Top-10 of ``users`` random user vectors over ``items`` item vectors, ``batch``
    users a call, as the scoring pass's actors call it."""
    g = torch.Generator(device=device).manual_seed(0)
    table = torch.randn(items, dim, device=device, generator=g).to(dtype)
    chunk = torch.randn(batch, dim, device=device, generator=g).to(dtype)
    calls = users // batch

    def run():
        top_n(chunk, table, 10)

    seconds = timed(run, device, 3) * calls
    return {"step": f"top-10 of {users:,} users ({str(dtype).split('.')[-1]})",
            "batch": f"{batch:,} users x {items:,} items x {dim}", "params_m": 0.0, "ms": seconds * 1e3,
            "per_s": calls * batch / seconds, "unit": "users", "tflops": 2 * calls * batch * items * dim / seconds / 1e12}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make-data", action="store_true", help=f"write the dataset to {DATA} (needs Ray)")
    parser.add_argument("--data", default=str(DATA), help="the prepared dataset --make-data wrote")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run of the script")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per task")
    parser.add_argument("--users", type=int, default=1_000_000, help="users of the top-N scoring")
    parser.add_argument("--items", type=int, default=1_000_000, help="catalogue of the top-N scoring")
    parser.add_argument("--score-batch", type=int, default=16_384, help="users a top-N call")
    parser.add_argument("--peak-n", type=int, default=8192, help="size of the peak's square matmul")
    parser.add_argument("--tasks", default=",".join(TASKS), help="tasks to train")
    parser.add_argument("--batch-size", type=int, default=None, help="users a training step (default each task's)")
    args = parser.parse_args(argv)
    if args.make_data:
        make_data(Path(args.data))
        return 0
    prepared = args.data
    if not Path(prepared, "sequences").exists():
        sys.exit(f"{prepared} not found: run `bench/gpu_check.sh --make-data` where Ray is installed")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here (use --device cpu for a smoke run)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    transformers.logging.disable_progress_bar()
    peak = matmul_peak(device, args.peak_n, 10)
    print(f"{name}: bf16 matmul peak {peak:.1f} TFLOPS ({args.peak_n}^3), torch {torch.__version__}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for task in args.tasks.split(","):
            rows.append(train_steps(task, TASKS[task], prepared, device, args.steps, workdir, args.batch_size))
            print(f"  {rows[-1]['step']}: {rows[-1]['ms']:.1f} ms/step", flush=True)
    for dtype in (torch.float32, torch.bfloat16):
        rows.append(score_top_n(device, args.users, args.items, 64, args.score_batch, dtype))
    for row in rows:
        row["of_peak"] = row["tflops"] / peak
    print("\n| step | batch | params (M) | ms | rate | TFLOPS | of bf16 peak |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['batch']} | {r['params_m']:.1f} | {r['ms']:,.1f} | "
              f"{r['per_s']:,.0f} {r['unit']}/s | {r['tflops']:.2f} | {r['of_peak']:.1%} |")
    print(json.dumps({"bench": "gpu_check", "device": name, "torch": torch.__version__, "peak_tflops": float(f"{peak:.4g}"),
                      "rows": [{k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
