"""Atomic checkpoint writes, shared by the trainer and ``adam export``."""

from __future__ import annotations

import os
import tempfile

import torch

__all__ = ["atomic_save"]


def atomic_save(obj, out) -> None:
    """``torch.save`` to a temp file in ``out``'s directory, fsync, ``os.replace``: never a partial ``out``.

    A crash at any moment leaves either the old file or the new one, never a truncated file
    (what resuming relies on). The parent folder is created when missing.
    """
    out = os.fspath(out)
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(out)}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; give it the mode an ordinary open() would (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not every platform can open a directory
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
