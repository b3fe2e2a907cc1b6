"""Two ranks of one gloo process group on loopback, for the tests of distributed code
(test_models, test_train, test_integrations_lightly)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_ranks(argv, *, timeout: float, env: dict | None = None) -> tuple[list[int], list[str], float]:
    """Runs ``argv`` twice from the repository as ranks 0 and 1 (``RANK`` = ``LOCAL_RANK``,
    ``WORLD_SIZE=2``, ``MASTER_ADDR``/``MASTER_PORT`` on loopback, one thread each), with ``env``
    added to this process's environment.

    Returns:
        (exit codes, each rank's output (stdout and stderr together), seconds until both ended).
        A rank still running after ``timeout`` seconds raises ``subprocess.TimeoutExpired``; both
        are killed either way.
    """
    base = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        WORLD_SIZE="2",
        OMP_NUM_THREADS="1",
        **(env or {}),
    )
    procs = [
        subprocess.Popen(
            [str(a) for a in argv],
            env=dict(base, RANK=str(r), LOCAL_RANK=str(r)),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    t0 = time.time()
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [p.returncode for p in procs], outputs, time.time() - t0
