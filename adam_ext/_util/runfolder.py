"""A run folder's safety rules, shared by every command that writes one (``adam pretrain``, ``adam finetune``).

- **One writer.** :func:`lock` takes an advisory lock (``fcntl.flock`` on ``.lock``) held for the
  whole run: a second process in the same folder is refused with the holder's pid and command. The
  kernel drops the lock with its process, so a killed run never leaves a stale lock.
- **Nothing outside the folder.** Writes never follow a symbolic link: :func:`refuse_symlinks`
  refuses a folder holding one, and :func:`append_line` opens with ``O_NOFOLLOW``.
- **No torn or duplicated history.** :func:`read_jsonl` drops a torn last line (a full disk or a
  kill mid-write) with a warning and names the file and line of any other malformed line.
- **No litter.** :func:`remove_stale_temps` deletes the temporary files that a killed atomic
  write (:mod:`adam_ext._util.atomic`) leaves behind, once the lock proves no one else is writing.
- **Every folder knows its kind and its owner.** A command's output folder carries a marker,
  :data:`MARKER` (``.adam_run.json``: ``kind``, ``created_by`` "adam_ext VERSION", ``created``,
  ``command``, ``host``), written atomically when the command first claims the folder
  (:func:`claim`, or :func:`run_folder` which also locks). A command refuses a folder of another
  kind, naming both; one that equals or contains one of its inputs; and an unmarked folder that
  holds a file it would write but did not (a user's ``config.yaml``...). Folders made before the
  marker existed (adam_ext 0.1.0) are recognised by their files (:func:`detect_kind`; e.g. a
  pretraining run by a ``config.yaml`` with ``stages`` or ``metrics.jsonl`` rows with ``stage``) and
  adopted: their marker says ``"adopted": true``. See docs/reliability.md.
"""

from __future__ import annotations

import datetime
import errno
import fnmatch
import json
import os
import re
import shutil
import socket
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "KINDS",
    "MARKER",
    "FolderKindError",
    "RunFolderError",
    "WriteError",
    "append_line",
    "check_folder",
    "claim",
    "detect_kind",
    "lock",
    "lock_directory",
    "read_jsonl",
    "read_marker",
    "refuse_inputs",
    "refuse_symlinks",
    "remove_stale_temps",
    "run_folder",
    "safe_name",
    "write_errors",
]

LOCK_FILE = ".lock"
MARKER = ".adam_run.json"
MARKER_FORMAT = "adam_ext.run_folder"
MARKER_VERSION = 1

#: kind -> (what it is, the command that makes it, the names it writes at its top level; ``*`` globs).
KINDS = {
    "pretrain": (
        "a pretraining run folder",
        "adam pretrain",
        (
            "config.yaml",
            "metrics.jsonl",
            "last.pt",
            "best.pt",
            "summary.json",
            "report.md",
            "loss.png",
            "pruned.png",
            "monitors.png",
            "tensorboard",
            "snapshots",
            "stage*_n*",
        ),
    ),
    "finetune": (
        "a fine-tuning folder",
        "adam finetune",
        ("config.yaml", "metrics.jsonl", "results.json", "results.md", "curves.png", "seed*"),
    ),
    "compare": ("a comparison folder", "adam compare", ("compare.json", "compare.md", "curves.png")),
    "eve": ("an Eve analysis folder", "adam eve", ()),
    "embed": ("an embeddings folder", "adam embed", ("global.npy", "dense.npy", "paths.txt", "embed.json")),
    "cache": ("an image cache", "adam cache", ("images.u8", "index.json")),
}
#: Files of an Eve analysis folder made before markers (any analysis).
_EVE_FILES = ("locality.json", "compositionality.json", "correspondence.json", "gradcam.json", "explore.html")


class WriteError(OSError):
    """A file could not be written (read-only folder, full disk...); the message names it and why.
    Atomic writes leave nothing partial: the destination keeps its previous content."""

    def __str__(self) -> str:  # the message alone, not "[Errno 28] message"
        return self.strerror or super().__str__()


class RunFolderError(OSError):
    """A run folder that cannot be written safely: held by another process, or holding a symlink."""


class FolderKindError(RunFolderError, ValueError):
    """An output folder that is not the command's to write: another command's folder, an input of the
    command, or a folder holding files the command would overwrite without having written them. A
    usage error (``adam`` exits with 2): the message names the folder, both kinds and what to do."""


@contextmanager
def lock(folder):
    """Holds an exclusive advisory lock on ``folder`` (created when missing) until the block ends.

    Raises:
        RunFolderError: another live process holds the folder; the message names it.
    """
    folder = Path(folder)
    with write_errors(folder):  # a file where a folder should be: "cannot write FOLDER: Not a directory"
        folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no advisory locks, run unguarded
        yield
        return
    path = folder / LOCK_FILE
    if path.is_symlink():
        raise RunFolderError(
            f"run folder {str(folder)!r} holds a symbolic link {LOCK_FILE!r}; "
            f"adam_ext never writes through links, remove it"
        )
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise RunFolderError(
                f"run folder {str(folder)!r} is in use by {holder}; wait for it to finish "
                f"or stop it, or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} ({_command_line()})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def lock_directory(folder):
    """Like :func:`lock`, but on the folder itself (``flock`` on the directory): nothing is added to
    it, for an output folder whose listing is the output (``adam embed``). Created when missing.

    Raises:
        RunFolderError: another live process holds the folder.
    """
    folder = Path(folder)
    with write_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: run unguarded, as lock() does
        yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(
                f"folder {str(folder)!r} is in use by another process; wait for it to "
                f"finish or choose another folder"
            ) from None
        yield
    finally:
        os.close(fd)


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
                raise RunFolderError(
                    f"run folder {str(folder)!r} holds a symbolic link {str(path)!r} -> "
                    f"{os.readlink(path)!r}; adam_ext never writes through links: remove it "
                    f"or choose another folder"
                )


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
        reason = (
            f"the disk may be full ({free / 2**20:.0f} MiB free)" if free is not None else "a failed write"
        )
        raise WriteError(
            errno.ENOSPC if free is not None and free < 2**26 else errno.EIO,
            f"cannot write {name}: {reason}; torch.save said: {str(exc).splitlines()[0][:200]}",
        ) from exc


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
                raise RunFolderError(
                    f"{os.fspath(path)!r} is a symbolic link; adam_ext never writes through links"
                ) from exc
            raise
        try:
            written = os.write(fd, data)
            if written != len(data):  # a full disk: the line is torn; readers drop a torn last line
                raise WriteError(
                    errno.ENOSPC,
                    f"cannot write {os.fspath(path)}: wrote {written} of {len(data)} "
                    f"bytes of a line (disk full?)",
                )
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
                warnings.warn(
                    f"{path}:{number}: dropping a torn last line ({len(line)} characters: {line[:40]!r}); "
                    f"the run was interrupted while writing it",
                    stacklevel=2,
                )
                break
            raise ValueError(
                f"{path}:{number}: malformed line ({exc.msg} at column {exc.colno}): {line[:80]!r}"
            ) from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Every folder knows its kind and its owner


def _command_line() -> str:
    return " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]


def _described(kind: str) -> str:
    what, command, _ = KINDS[kind]
    return f"{what} (made by `{command}`)"


def read_marker(folder) -> dict | None:
    """The marker of ``folder`` (:data:`MARKER`), or None when it has none.

    Raises:
        FolderKindError: the marker is a symbolic link, or not a marker adam_ext wrote.
    """
    path = Path(folder) / MARKER
    if path.is_symlink():
        raise FolderKindError(
            f"{str(path)!r} is a symbolic link; adam_ext never reads or writes its markers "
            f"through links: remove it or choose another folder"
        )
    if not path.exists():
        return None
    try:
        if path.stat().st_size > 2**16:
            raise ValueError("it is larger than 64 KiB")
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        value = exc
    ours = isinstance(value, dict) and value.get("format") == MARKER_FORMAT and value.get("kind") in KINDS
    if not ours:
        why = f": {value}" if isinstance(value, BaseException) else ""
        kinds = ", ".join(KINDS)
        raise FolderKindError(
            f"{str(path)!r} is not a marker adam_ext wrote{why} (expected JSON with "
            f"format {MARKER_FORMAT!r} and a kind among {kinds}); choose another folder"
        )
    return value


def _json_file(path: Path, limit: int = 2**26):
    """The JSON value of a regular file of at most ``limit`` bytes, or None (missing, a link, malformed)."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > limit:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _first_json_row(path: Path):
    try:
        if path.is_symlink() or not path.is_file():
            return None
        with open(path, encoding="utf-8", errors="replace") as f:
            return json.loads(f.readline(2**20) or "null")
    except (OSError, ValueError, RecursionError):
        return None


def _legacy_kind(folder: Path) -> str | None:
    """The kind of an unmarked folder made by adam_ext 0.1.0, recognised by its files; None if none fits."""
    import yaml

    try:
        if (folder / "index.json").is_file():
            with open(folder / "index.json", "rb") as f:
                if b'"adam-image-cache"' in f.read(4096):
                    return "cache"
    except OSError:
        pass
    for name, kind, mark in (
        ("compare.json", "compare", "adam_ext.finetune.compare"),
        ("results.json", "finetune", "adam_ext.finetune.results"),
    ):
        value = _json_file(folder / name)
        if isinstance(value, dict) and value.get("kind") == mark:
            return kind
    config = None
    if (folder / "config.yaml").is_file() and not (folder / "config.yaml").is_symlink():
        try:
            config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8", errors="replace"))
        except (OSError, yaml.YAMLError, RecursionError):
            config = None
    if isinstance(config, dict) and {"stages", "model", "optim"} <= set(config):
        return "pretrain"
    if isinstance(config, dict) and {"task", "init"} <= set(config):
        return "finetune"
    row = _first_json_row(folder / "metrics.jsonl")
    if isinstance(row, dict) and "stage" in row:
        return "pretrain"
    if isinstance(row, dict) and {"init", "seed"} <= set(row):
        return "finetune"
    if (folder / "last.pt").is_file():
        return "pretrain"
    if (folder / "embed.json").is_file() and (folder / "global.npy").is_file():
        return "embed"
    if any((folder / name).is_file() for name in _EVE_FILES):
        return "eve"
    return None


def detect_kind(folder) -> str | None:
    """The kind of ``folder``: its marker's, else what its files say for a folder made before
    markers (adam_ext 0.1.0), else None (a folder adam_ext did not make, or an empty one).

    Legacy rules, first match: ``index.json`` of format ``adam-image-cache`` → cache;
    ``compare.json`` of kind ``adam_ext.finetune.compare`` → compare; ``results.json`` of kind
    ``adam_ext.finetune.results`` → finetune; ``config.yaml`` with ``stages``, ``model`` and
    ``optim`` → pretrain, with ``task`` and ``init`` → finetune; a first ``metrics.jsonl`` row with
    ``stage`` → pretrain, with ``init`` and ``seed`` → finetune; ``last.pt`` → pretrain;
    ``embed.json`` and ``global.npy`` → embed; an analysis' ``.json`` or ``explore.html`` → eve.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    marker = read_marker(folder)
    return marker["kind"] if marker else _legacy_kind(folder)


def refuse_inputs(folder, inputs) -> None:
    """Raises :class:`FolderKindError` when ``folder`` is, or contains, one of ``inputs`` (paths;
    None, "" and paths that do not exist are skipped: a missing input is its reader's error). Both
    sides are resolved, so links and ``..`` do not hide it."""
    out = Path(os.path.abspath(folder)).resolve()
    for item in inputs:
        if item is None or os.fspath(item) == "" or not os.path.lexists(item):
            continue
        path = Path(os.path.abspath(item)).resolve()
        if path == out or out in path.parents:
            relation = "is" if path == out else "contains"
            raise FolderKindError(
                f"folder {str(folder)!r} {relation} the input {os.fspath(item)!r}; "
                f"adam_ext never writes into, or deletes, a folder holding its own "
                f"inputs: choose another folder"
            )


def check_folder(folder, kind: str, *, writes=(), inputs=(), part_of: str | None = None) -> str:
    """Checks that a command making folders of ``kind`` may write ``folder``; changes nothing.

    Args:
        folder: the output folder (it may not exist yet).
        kind: a key of :data:`KINDS`.
        writes: names (globs) the command writes at the folder's top level besides those of its kind.
        inputs: the command's input paths: a folder that is or contains one is refused.
        part_of: the kind of the command that makes this folder as one of its parts (``compare`` for
            its per-initialisation folders); a marked folder must say the same.

    Returns:
        ``"new"`` (missing, empty, or holding only files the command does not write), ``"own"``
        (marked with ``kind``) or ``"adopt"`` (unmarked, made by an older adam_ext of this kind).

    Raises:
        FolderKindError: another kind (naming both), an input, or an unmarked folder holding a file
            the command would overwrite.
    """
    folder = Path(folder)
    refuse_inputs(folder, inputs)
    if not os.path.lexists(folder):
        return "new"
    if not folder.is_dir():
        raise FolderKindError(f"{str(folder)!r} is a file, expected a folder")
    marker = read_marker(folder)
    found = marker["kind"] if marker else _legacy_kind(folder)
    what, command, names = KINDS[kind]
    if found is not None and found != kind:
        raise FolderKindError(
            f"folder {str(folder)!r} is {_described(found)}, not {what}: `{command}` "
            f"writes only into a new or empty folder or one of its own kind; choose "
            f"another folder"
        )
    if marker is not None:
        if part_of is not None and marker.get("part_of") != part_of:
            raise FolderKindError(
                f"folder {str(folder)!r} is {_described(kind)} of its own, not part of "
                f"this `{KINDS[part_of][1]}`; choose another folder"
            )
        return "own"
    if found == kind:
        return "adopt"
    patterns = (*names, *writes)
    clash = sorted(p.name for p in folder.iterdir() if any(fnmatch.fnmatchcase(p.name, g) for g in patterns))
    if clash:
        raise FolderKindError(
            f"folder {str(folder)!r} holds {clash[0]!r}, which `{command}` would "
            f"overwrite, and no marker ({MARKER}) says adam_ext made it: choose a new or "
            f"empty folder"
        )
    return "new"


def claim(folder, kind: str, *, writes=(), inputs=(), part_of: str | None = None, **fields) -> dict:
    """:func:`check_folder`, then creates ``folder`` and writes its marker (atomically) unless it has
    one; returns the marker. Call it while holding :func:`lock`. ``fields`` are recorded in a new
    marker (e.g. a cache's ``build``)."""
    state = check_folder(folder, kind, writes=writes, inputs=inputs, part_of=part_of)
    folder = Path(folder)
    if state == "own":
        return read_marker(folder)
    from .atomic import atomic_write_json

    # The package root is loaded before any of its modules; importing it would make this bottom floor
    # import the top (its lazy names reach ops/).
    version = getattr(sys.modules.get(__name__.split(".")[0]), "__version__", "unknown")
    marker = {
        "format": MARKER_FORMAT,
        "version": MARKER_VERSION,
        "kind": kind,
        "created_by": f"adam_ext {version}",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": _command_line(),
        "host": socket.gethostname(),
        "adopted": state == "adopt",
        "part_of": part_of,
        **fields,
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / MARKER, marker)
    return marker


@contextmanager
def run_folder(folder, kind: str, *, writes=(), inputs=(), part_of: str | None = None):
    """The safe way for a command to write ``folder``: checked (before the lock file is made, so a
    refused folder is left untouched), locked until the block ends, free of links, claimed with its
    marker, and rid of temporary files a killed writer left. Yields the folder as a Path.

    Raises:
        FolderKindError: see :func:`check_folder`.
        RunFolderError: another process holds the folder, or it holds a symbolic link.
    """
    check_folder(folder, kind, writes=writes, inputs=inputs, part_of=part_of)
    with lock(folder):
        refuse_symlinks(folder)
        claim(folder, kind, writes=writes, inputs=inputs, part_of=part_of)
        remove_stale_temps(folder)
        yield Path(folder)


def safe_name(text, reserved=(), fallback: str = "init") -> str:
    """``text`` as one safe path component: every character but letters, digits and ``. _ + -``
    becomes ``_``, leading dots, dashes and underscores go (no ``..``, no hidden file, no option,
    no name a plot legend hides), at most 100 characters; ``fallback`` when nothing is left,
    ``fallback-NAME`` for a name in ``reserved`` (compared without case)."""
    name = re.sub(r"[^\w.+-]", "_", str(text)).lstrip("._-")[:100] or fallback
    if name.lower() in {r.lower() for r in reserved}:
        name = f"{fallback}-{name}"
    return name
