"""Atomic file writes (checkpoints, results), shared by the trainer, ``adam export`` and the analyses."""

from __future__ import annotations

import json
import math
import os
import tempfile

import torch

from .runfolder import RunFolderError, WriteError, write_errors

__all__ = [
    "WriteError",
    "atomic_save",
    "atomic_save_figure",
    "atomic_write_files",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_with",
    "json_safe",
]


def atomic_save(obj, out) -> None:
    """``torch.save`` to a temp file in ``out``'s directory, fsync, ``os.replace``: never a partial ``out``.

    A crash at any moment leaves either the old file or the new one, never a truncated file
    (what resuming relies on). The parent folder is created when missing.
    """
    _atomic_write(out, lambda f: torch.save(obj, f))


def atomic_write_text(out, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``out`` as :func:`atomic_save` writes checkpoints."""
    _atomic_write(out, lambda f: f.write(text.encode("utf-8")))


def atomic_write_with(out, write) -> None:
    """Calls ``write(f)`` on a temp file (binary) beside ``out`` and renames it over ``out``, as
    :func:`atomic_save` writes checkpoints: never a partial ``out``, never through a link at ``out``.

    Raises:
        WriteError: ``cannot write OUT: REASON``; a link at ``out`` is a RunFolderError.
    """
    _atomic_write(out, write)


def atomic_save_figure(fig, out, **kwargs) -> None:
    """``fig.savefig`` (a matplotlib figure) to ``out`` atomically (:func:`atomic_write_with`); the
    format comes from ``out``'s suffix (``png`` when it has none); ``kwargs`` go to ``savefig``."""
    fmt = os.path.splitext(os.fspath(out))[1].lstrip(".").lower() or "png"
    _atomic_write(out, lambda f: fig.savefig(f, format=fmt, **kwargs))


def json_safe(value):
    """``value`` with NaN / inf as None (strict JSON), tuples as lists and numpy / torch scalars as
    numbers, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return json_safe(value.item())
    return value


def atomic_write_json(out, obj) -> None:
    """Writes ``json_safe(obj)`` as indented JSON, atomically (see :func:`atomic_save`)."""
    atomic_write_text(out, json.dumps(json_safe(obj), indent=2) + "\n")


def atomic_write_files(folder, writers: dict) -> None:
    """Writes ``{name: write(binary file)}`` into ``folder``, all or nothing: each to a temp file
    (fsync), and only once every one is written are they renamed over their names. A failure
    removes the temp files and leaves the previous files as they were.

    Raises:
        WriteError: ``cannot write FOLDER/NAME: REASON`` (full disk, read-only folder...).
    """
    folder = os.fspath(folder)
    staged: list[str] = []
    with write_errors(lambda: os.path.join(folder, name)):
        try:
            for name, write in writers.items():
                staged.append(_write_temp(os.path.join(folder, name), write))
            for tmp, name in zip(staged, writers):
                os.replace(tmp, os.path.join(folder, name))
        except BaseException:
            for tmp in staged:
                _unlink(tmp)
            raise
    _fsync_dir(folder)


def _atomic_write(out, write) -> None:
    out = os.fspath(out)
    with write_errors(out):
        _atomic_write_unchecked(out, write)


def _atomic_write_unchecked(out: str, write) -> None:
    tmp = _write_temp(out, write)
    try:
        os.replace(tmp, out)
    except BaseException:
        _unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(out)))


def _write_temp(out: str, write) -> str:
    """``write``s a temp file beside ``out`` (fsynced) and returns its path; removes it on failure."""
    directory = os.path.dirname(os.path.abspath(out))
    if os.path.islink(out):
        raise RunFolderError(f"{out!r} is a symbolic link; adam_ext never writes through links: remove it")
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(out)}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; give it the mode an ordinary open() would (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(directory: str) -> None:
    """Makes renames in ``directory`` durable; not every platform can open a directory."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
