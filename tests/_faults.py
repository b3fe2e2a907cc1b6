"""Fault injection into a run folder's two writers (tests/pretrain/test_faults.py).

Every file a pretraining run writes goes through :func:`adam_ext._util.runfolder.append_line` (metrics
rows) or :func:`adam_ext._util.atomic._atomic_write_unchecked` (checkpoints, config, summary,
report). :func:`inject` counts those writes and, at the ``at``-th, does one of:

- ``kill``: SIGKILL before the write starts;
- ``kill-torn``: SIGKILL halfway through it (half a metrics line, half a checkpoint's temp file);
- ``enospc``: the write fails halfway as on a full disk (``os.write`` raises ENOSPC, torch.save
  its RuntimeError), inside the real writer;
- ``eacces``: the write fails as in a read-only folder (opening the file raises EACCES).

Run as a script (``python _faults.py MODE AT adam-args...``) it injects into ``adam``'s main.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from unittest import mock


def inject(mode: str, at: int) -> None:
    """Makes the ``at``-th write of this process fail as ``mode`` says (see the module docstring)."""
    from adam_ext._util import atomic as checkpoint
    from adam_ext._util import runfolder

    count = [0]
    append, atomic = runfolder.append_line, checkpoint._atomic_write_unchecked

    def hit() -> bool:
        count[0] += 1
        if count[0] == at and mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        return count[0] == at

    def faulty_append(path, text):
        if hit():
            data = (text + "\n").encode()
            if mode in ("kill-torn", "enospc"):
                with open(path, "ab") as f:
                    f.write(data[: len(data) // 2])
            if mode == "kill-torn":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "enospc":  # the kernel's answer once the disk is full
                with mock.patch("os.write", side_effect=OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))):
                    return append(path, text)
            with mock.patch(
                "os.open",
                side_effect=PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path)),
            ):
                return append(path, text)
        return append(path, text)

    def faulty_atomic(out, write):
        if hit():
            if mode == "kill-torn":
                tmp = os.path.join(
                    os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}.inj3ct.tmp"
                )
                with open(tmp, "wb") as f:
                    f.write(b"\0" * 4096)
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "enospc":

                def failing(f):
                    f.write(b"\0" * 4096)
                    if str(out).endswith(".pt"):  # what torch.save raises on a short write
                        raise RuntimeError(
                            "[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 0"
                        )
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                return atomic(out, failing)
            folder = os.path.dirname(os.path.abspath(out))
            with mock.patch(
                "tempfile.mkstemp",
                side_effect=PermissionError(errno.EACCES, os.strerror(errno.EACCES), folder),
            ):
                return atomic(out, write)
        return atomic(out, write)

    runfolder.append_line = faulty_append
    checkpoint._atomic_write_unchecked = faulty_atomic


if __name__ == "__main__":
    inject(sys.argv[1], int(sys.argv[2]))
    from adam_ext.cli import main

    raise SystemExit(main(sys.argv[3:]))
