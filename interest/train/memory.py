"""A training process's memory: its peak since a reset.

The peak is the kernel's high-water mark of the process's resident set (``VmHWM``),
which ``/proc/self/clear_refs`` resets: each epoch reports its own peak, so growth from
epoch to epoch shows (a running maximum would hide it). On a GPU, torch's peak of
allocated memory is reported beside it.
"""

from __future__ import annotations

import resource

import torch


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set (Linux 4.0+)
    except OSError:
        pass  # not Linux: peak_mb() then reports the process's peak since it started
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_mb() -> float:
    """Peak resident memory of this process since :func:`reset_peak`, in MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def gpu_peak_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None
