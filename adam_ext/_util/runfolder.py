"""A run folder's safety rules, shared by every command that writes one (``adam pretrain``, ``adam finetune``).

- **One writer.** :func:`lock` takes an advisory lock (``fcntl.flock`` on ``.lock``) held for the
  whole run: a second process in the same folder is refused with the holder's pid and command. The
  kernel drops the lock with its process, so a killed run never leaves a stale lock.
- **Nothing outside the folder.** Writes never follow a symbolic link: :func:`refuse_symlinks`
  refuses a folder holding one, and :func:`append_line` opens with ``O_NOFOLLOW``.
- **No torn or duplicated history.** :func:`read_jsonl` drops a torn last line (a full disk or a
  kill mid-write) with a warning and names the file and line of any other malformed line.
- **No litter.** :func:`remove_stale_temps` deletes the temporary files that a killed atomic
  write (:mod:`adam_ext.checkpoints.atomic`) leaves behind, once the lock proves no one else is writing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

__all__ = ["RunFolderError", "WriteError", "write_errors", "append_line",
           "lock", "read_jsonl", "refuse_symlinks", "remove_stale_temps"]

LOCK_FILE = ".lock"


class WriteError(OSError):
    """A file could not be written (read-only folder, full disk...); the message names it and why.
    Atomic writes leave nothing partial: the destination keeps its previous content."""

    def __str__(self) -> str:  # the message alone, not "[Errno 28] message"
        return self.strerror or super().__str__()


class RunFolderError(OSError):
    """A run folder that cannot be written safely: held by another process, or holding a symlink."""


@contextmanager
def lock(folder):
    """Holds an exclusive advisory lock on ``folder`` (created when missing) until the block ends.

    Raises:
        RunFolderError: another live process holds the folder; the message names it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no advisory locks, run unguarded
        yield
        return
    path = folder / LOCK_FILE
    if path.is_symlink():
        raise RunFolderError(f"run folder {str(folder)!r} holds a symbolic link {LOCK_FILE!r}; "
                             f"adam_ext never writes through links, remove it")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise RunFolderError(f"run folder {str(folder)!r} is in use by {holder}; wait for it to finish "
                                 f"or stop it, or choose another folder") from None
        os.ftruncate(fd, 0)
        command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} ({command})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def refuse_symlinks(folder) -> None:
    """Raises :class:`RunFolderError` naming the first symbolic link inside ``folder`` (any depth).

    The folder itself may be a link (``runs -> /scratch/runs`` is common); what it holds may not,
    since a run overwrites its files and a link would redirect that write outside the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(folder):  # os.walk does not descend into linked folders
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                raise RunFolderError(f"run folder {str(folder)!r} holds a symbolic link {str(path)!r} -> "
                                     f"{os.readlink(path)!r}; adam_ext never writes through links: remove it "
                                     f"or choose another folder")


def remove_stale_temps(folder) -> list[Path]:
    """Deletes the temporary files of interrupted atomic writes (``.NAME.XXXX.tmp``) in ``folder``
    and its stage folders; returns what it removed. Call it only while holding :func:`lock`."""
    folder = Path(folder)
    removed = []
    for path in list(folder.glob(".*.tmp")) + list(folder.glob("*/.*.tmp")):
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path)
    return removed


@contextmanager
def write_errors(out):
    """Turns an OSError, or torch.save's RuntimeError, inside the block into a :class:`WriteError`
    naming the file and the reason (``out``: the path, or a callable giving it when the error
    comes); :class:`WriteError` and :class:`RunFolderError` pass through. Every writer uses it."""
    try:
        yield
    except (WriteError, RunFolderError):
        raise
    except OSError as exc:
        name = out() if callable(out) else os.fspath(out)
        raise WriteError(exc.errno, f"cannot write {name}: {exc.strerror or exc}") from exc
    except RuntimeError as exc:  # torch.save reports a short write as "enforce fail at inline_container.cc"
        name = out() if callable(out) else os.fspath(out)
        try:
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(name))).free
        except OSError:
            free = None
        reason = f"the disk may be full ({free / 2**20:.0f} MiB free)" if free is not None else "a failed write"
        raise WriteError(errno.ENOSPC if free is not None and free < 2**26 else errno.EIO,
                         f"cannot write {name}: {reason}; torch.save said: {str(exc).splitlines()[0][:200]}") \
            from exc


def append_line(path, text: str) -> None:
    """Appends ``text`` and a newline to ``path`` in one ``write``, never through a symbolic link.

    Raises:
        RunFolderError: ``path`` is a symbolic link.
    """
    data = (text + "\n").encode("utf-8")
    with write_errors(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as exc:
            if os.path.islink(path):
                raise RunFolderError(f"{os.fspath(path)!r} is a symbolic link; adam_ext never writes through "
                                     f"links") from exc
            raise
        try:
            written = os.write(fd, data)
            if written != len(data):  # a full disk: the line is torn; readers drop a torn last line
                raise WriteError(errno.ENOSPC, f"cannot write {os.fspath(path)}: wrote {written} of {len(data)} "
                                               f"bytes of a line (disk full?)")
        finally:
            os.close(fd)


def read_jsonl(path) -> list[dict]:
    """The rows of a JSON-lines file. A torn last line (no newline at its end and not valid JSON,
    what a kill or a full disk leaves) is dropped with a warning; any other malformed line is an
    error.

    Raises:
        ValueError: a malformed line other than a torn last one, naming the file and line.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # the last line has no newline: torn by an interrupted write
                warnings.warn(f"{path}:{number}: dropping a torn last line ({len(line)} characters: {line[:40]!r}); "
                              f"the run was interrupted while writing it", stacklevel=2)
                break
            raise ValueError(f"{path}:{number}: malformed line ({exc.msg} at column {exc.colno}): {line[:80]!r}") \
                from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    return rows
