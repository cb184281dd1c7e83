#!/usr/bin/env bash
# The GPU check, for a machine with one NVIDIA GPU and no Ray (bench/gpu_check.py says
# what it measures). Finishes within 8 minutes on a current data-centre GPU.
#
#   bench/gpu_check.sh --make-data   # first, where Ray is (here): bench/gpu_data/, git-ignored, 44 MiB
#   bench/gpu_check.sh               # on the GPU machine (the device tool carries bench/gpu_data)
#   bench/gpu_check.sh --device cpu --steps 2 --batch-size 64 --users 8192 --items 20000 --score-batch 4096 --peak-n 1024
#                                    # a smoke run of the script itself, anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
# This checkout's environment where there is one, else the machine's Python (the GPU
# machine's has torch, transformers and pyarrow).
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
case " $* " in
  *" --make-data "*) exec "$PYTHON" bench/gpu_check.py "$@" ;;  # Ray's preparation: no time limit
  *) exec timeout 480 "$PYTHON" bench/gpu_check.py "$@" ;;
esac
