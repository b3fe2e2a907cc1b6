"""Where a measurement or a checkpoint was made: the processor or GPU and the git commit of this checkout.

Shared by the benchmark scripts, which print both at the top of every results file, and by
pretraining, whose checkpoints record the commit (``versions["git_commit"]``, shown by model cards).
"""

from __future__ import annotations

import os
import platform
import subprocess

import torch

__all__ = ["cpu_model", "git_commit", "machine"]


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device) -> str:
    """The GPU's name for a CUDA device; else the CPU model, its logical cores and torch's threads."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_model()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"


def _git(*args: str) -> subprocess.CompletedProcess:
    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=here, check=False)


def git_commit() -> str:
    """Short hash of the checkout this package runs from, with " (with uncommitted changes)" when tracked
    files differ; ``unknown`` outside a git checkout.

    The package's own files must be tracked by that checkout: a copy installed by ``pip install .``
    into a virtual environment that happens to sit inside some repository reports ``unknown``, not
    that repository's commit.
    """
    try:
        tracked = _git("ls-files", "--error-unmatch", os.path.basename(__file__))
        if tracked.returncode != 0:
            return "unknown"
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except OSError:  # no git on this machine
        return "unknown"
    suffix = " (with uncommitted changes)" if dirty.stdout.strip() else ""
    return (head.stdout.strip() or "unknown") + suffix
