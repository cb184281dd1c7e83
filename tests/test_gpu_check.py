"""bench/gpu_check.sh's script runs where Ray is not installed (the GPU machine), and
measures every step it reports: a smoke run on CPU at tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Ray's modules made unimportable, then the script run as __main__.
WITHOUT_RAY = ("import runpy, sys; sys.modules.update(dict.fromkeys(['ray', 'ray.data', 'ray.train', 'ray.tune'])); "
               "sys.argv = ['gpu_check.py'] + sys.argv[1:]; runpy.run_path('bench/gpu_check.py', run_name='__main__')")


def test_the_gpu_check_runs_the_tasks_and_top_n_without_ray(prepared_small):
    args = ["--data", str(prepared_small), "--device", "cpu", "--steps", "1", "--batch-size", "16",
            "--users", "1024", "--items", "2000", "--score-batch", "256", "--peak-n", "256"]
    done = subprocess.run([sys.executable, "-c", WITHOUT_RAY, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    steps = [r["step"] for r in figures["rows"]]
    assert steps == ["train sequence", "train recommend", "train tags",
                     "top-10 of 1,024 users (float32)", "top-10 of 1,024 users (bfloat16)"]
    assert figures["device"] == "cpu" and figures["peak_tflops"] > 0
    for row in figures["rows"]:
        assert row["ms"] > 0 and row["per_s"] > 0 and row["tflops"] > 0 and row["of_peak"] > 0, row
    tags = figures["rows"][2]
    assert tags["params_m"] > 10  # the BERT path at all-MiniLM-L6-v2's shape, not a toy encoder
    assert "| train tags | 16 users |" in done.stdout
