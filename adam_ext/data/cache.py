"""Decoded-image cache: every image of a data set decoded and resized once, in one uint8 file.

PNG inflate caps any pipeline that reads PNGs at about 80–90 1024-px images per second per core.
The cache stores the decoded images, resized so that the longer side is at most ``size``, one after
another in a single raw ``uint8`` file, with a JSON index. Readers open it with ``np.memmap``
(read-only), so every DataLoader worker shares the same page-cache pages and a lookup is a slice.

Layout of a cache folder::

    images.u8    the images, C×h×w uint8 each, back to back
    index.json   {"format": "adam-image-cache", "version": 2, "size": 512, "nbytes": ...,
                  "build": a random id of this build, "meta": {...},
                  "source": {"dataset": reader class, "root": resolved root, "split": ..., "n_images": N},
                  "entries": {key: [offset, C, h, w, H, W, file size, file mtime_ns], ...}}
    .adam_run.json  the folder's marker: kind "cache", the adam_ext version and command that made
                 it, the build id (:mod:`adam_ext._util.runfolder`)

``source`` and the file sizes and times record what the cache was built from (None where the
data set has no ``root``): a reader refuses a cache of another data set or root, or one whose
files changed since (:meth:`ImageCache.check_dataset`, :meth:`ImageCache.check_files`).

A cache knows when it changed under a reader: the index and the data file are read from one
folder (one directory handle, so a rebuild renamed in between cannot pair an old index with new
images), the data file's identity (device, inode, size, mtime) is kept, and every process that maps
the images (DataLoader workers too) checks it first: a cache rebuilt since the reader opened it is
a :class:`CacheChangedError` in one line, never wrong images.

``--overwrite`` (``overwrite=True``) replaces only a cache: a folder marked as one (or an index of
this format, made before markers) holding nothing else, and never the data set's root or a folder
that contains it (``adam cache synthetic D D --overwrite`` deletes nothing).

Build it with ``adam cache DATASET ROOT OUT --size 512`` or :meth:`ImageCache.build`; hand the
folder to a reader as ``open_dataset(name, root, cache=OUT)``; check it against its files with
``adam cache --verify OUT``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import secrets
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np

from .._util import runfolder

DATA_FILE = "images.u8"
INDEX_FILE = "index.json"
FORMAT = "adam-image-cache"
VERSION = 2  # 2: source and per-file size and mtime recorded
REBUILD = "rebuild it with `adam cache DATASET ROOT OUT --overwrite`"
#: What a cache folder holds: --overwrite deletes a folder holding anything else.
OWN_FILES = (DATA_FILE, INDEX_FILE, runfolder.MARKER, runfolder.LOCK_FILE)


class CacheChangedError(OSError):
    """The cache was rebuilt (its images file replaced) after this reader opened it: its index no
    longer describes the images. One line; ``adam`` exits with 1. Restart the command."""


def resize_longer_side(image: np.ndarray, size: int) -> np.ndarray:
    """Shrinks ``image`` (np.uint8 [C, H, W]) so its longer side is ``size`` pixels (never enlarges).

    Aspect ratio kept (each side rounded, at least 1 px); OpenCV's INTER_AREA, the filter that
    averages source pixels and so does not alias when shrinking.

    Returns:
        np.uint8 [C, h, w], C-contiguous.
    """
    import cv2

    channels, height, width = image.shape
    scale = size / max(height, width)
    if scale >= 1:
        return np.ascontiguousarray(image)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    if channels == 1:
        return cv2.resize(image[0], (w, h), interpolation=cv2.INTER_AREA)[None]
    resized = cv2.resize(np.ascontiguousarray(image.transpose(1, 2, 0)), (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(resized.reshape(h, w, channels).transpose(2, 0, 1))


# Per-worker state of ImageCache.build (set by the pool initializer; with fork nothing is pickled).
_worker_dataset = None
_worker_size = 0


def _init_worker(dataset, size: int) -> None:
    import cv2

    global _worker_dataset, _worker_size
    # One core per worker: the pool provides the parallelism. 0 (run sequentially), not 1: with
    # opencv 5.0.0, setNumThreads(1) in a forked child hangs once the parent has used cv2's pool.
    cv2.setNumThreads(0)
    _worker_dataset, _worker_size = dataset, size


def _decode_in_worker(key: str):
    return _decode(_worker_dataset, key, _worker_size)


def _decode(dataset, key: str, size: int):
    """(key, resized C×h×w uint8 array, (H, W), [file size, mtime_ns]) for one image of ``dataset``.

    The file is stat-ed before it is read, so a change during the build shows as stale later.
    """
    stamp = [None, None]  # a data set without files under a root: nothing to check later
    root = getattr(dataset, "root", None)
    if root is not None and os.path.isfile(path := os.path.join(root, key)):
        st = os.stat(path)
        stamp = [st.st_size, st.st_mtime_ns]
    image = dataset.load_image(key)
    expected = f"load_image({key!r}) must return a np.uint8 array (C, H, W) with C = 1 or 3"
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{expected}, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"{expected}, got {image.dtype} array of shape {image.shape}")
    return key, resize_longer_side(image, size), image.shape[1:], stamp


class ImageCache:
    """Read-only view of a cache folder (see the module docstring).

    Args:
        path: the cache folder (holding ``images.u8`` and ``index.json``).

    The data file is memory-mapped lazily in each process, and pickling carries only the path, so
    a reader holding the cache can be sent to DataLoader workers cheaply; under fork they share
    the parent's page-cache pages either way.
    """

    def __init__(self, path):
        self.path = Path(path)
        index_path = self.path / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(
                f"cache path must be a folder made by `adam cache` holding {INDEX_FILE}, got {self.path}"
            )
        index, identity = _read_folder(self.path)
        if index.get("format") != FORMAT:
            got = index.get("format")
            raise ValueError(f"cache index {index_path} must have format {FORMAT!r}, got {got!r}")
        if index.get("version") != VERSION:
            raise ValueError(
                f"cache index {index_path} has version {index.get('version')}, this adam_ext reads version "
                f"{VERSION} (which records the files it was built from): {REBUILD}"
            )
        self.size: int = index["size"]
        self.meta: dict = index.get("meta", {})
        self.source: dict = index["source"]
        self.nbytes: int = index["nbytes"]
        self.build: str | None = index.get("build")  # None: built before build ids
        self._entries: dict[str, list[int]] = index["entries"]
        self._identity = identity  # (device, inode, size, mtime_ns) of the images file read with the index
        self._data: np.ndarray | None = None

    def _array(self) -> np.ndarray:
        """The images, mapped in this process on first use, after checking that the file is the one
        the index was read with.

        Raises:
            CacheChangedError: the cache was rebuilt since it was opened.
        """
        if self._data is None:
            if self.nbytes == 0:
                self._data = np.zeros(0, dtype=np.uint8)
                return self._data
            try:
                with open(self.path / DATA_FILE, "rb") as f:
                    if _identity(os.fstat(f.fileno())) != self._identity:
                        raise self._changed("has been replaced")
                    self._data = np.memmap(f, dtype=np.uint8, mode="r", shape=(self.nbytes,))
            except FileNotFoundError:
                raise self._changed("is gone") from None
        return self._data

    def _changed(self, what: str) -> CacheChangedError:
        try:
            now = (runfolder.read_marker(self.path) or {}).get("build")
        except OSError:
            now = None
        builds = f"build {self.build or 'unknown'} when opened, {now or 'another'} now"
        return CacheChangedError(
            f"cache {self.path} was rebuilt while this reader used it ({builds}; its "
            f"{DATA_FILE} {what}): its images no longer match the index read then; "
            f"start the command again to read the new cache"
        )

    def get(self, key: str, copy: bool = False):
        """The cached image of ``key`` and the size of the original.

        Args:
            key: the image's key (its path relative to the data set's root, as the reader's
                ``image_keys()`` gives it).
            copy: return a writable copy instead of a read-only view of the memory map.

        Returns:
            ``(image, (H, W))``: image np.uint8 [C, h, w] (longer side at most ``self.size``),
            (H, W) the original size in pixels; or None when ``key`` is not cached.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        offset, channels, h, w, height, width = entry[:6]
        image = self._array()[offset : offset + channels * h * w].reshape(channels, h, w)
        return (np.array(image) if copy else image), (height, width)

    def keys(self) -> list[str]:
        """All cached keys, in the order they were stored."""
        return list(self._entries)

    def check_dataset(self, dataset) -> None:
        """Raises ValueError unless the cache was built from ``dataset``'s data set and root.

        Args:
            dataset: a reader (``root``, ``split``); compared are its class name and resolved root.
                The split may differ: keys are paths under the root, and their files are checked
                by :meth:`check_files`.
        """
        name, root = type(dataset).__name__, str(Path(dataset.root).resolve())
        built = self.source
        differs = [f"data set {built['dataset']}, not {name}"] if built["dataset"] != name else []
        if built["root"] != root:
            differs.append(f"root {built['root']}, not {root}")
        if differs:
            raise ValueError(
                f"cache {self.path} was built from {built['dataset']} under {built['root']} (split "
                f"{built['split']!r}); it differs in {' and in '.join(differs)}: it would serve another data "
                f"set's images. Pass the cache of this data set, or {REBUILD}"
            )

    def stale(self, keys=None) -> list[tuple[str, str]]:
        """The cached files that changed since the build: one ``os.stat`` per key.

        Args:
            keys: the keys to check (those not cached are ignored); None: every cached key.

        Returns:
            ``[(key, why), ...]``: why is "missing" or "changed (size A -> B, mtime_ns C -> D)".
            Empty also when the cache recorded no files (built from a data set without ``root``).
        """
        root = self.source.get("root")
        if root is None:
            return []
        found = []
        for key in self._entries if keys is None else keys:
            entry = self._entries.get(key)
            if entry is None or entry[6] is None:
                continue
            try:
                st = os.stat(os.path.join(root, key))
            except FileNotFoundError:
                found.append((key, "missing"))
                continue
            if [st.st_size, st.st_mtime_ns] != entry[6:8]:
                sizes, times = f"{entry[6]} -> {st.st_size}", f"{entry[7]} -> {st.st_mtime_ns}"
                found.append((key, f"changed (size {sizes}, mtime_ns {times})"))
        return found

    def check_files(self, keys) -> None:
        """Raises ValueError naming the first file of ``keys`` that changed since the build.

        Args:
            keys: a reader's image keys (those not cached are ignored).
        """
        stale = self.stale(keys)
        if stale:
            key, why = stale[0]
            raise ValueError(
                f"{Path(self.source['root']) / key}: {why} since cache {self.path} was built, so the "
                f"cache is stale ({len(stale)} of the {len(keys)} files of this data set differ); {REBUILD}, "
                f"or list the differences with `adam cache --verify {self.path}`"
            )

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_data"] = None  # re-mapped in the receiving process, never pickled
        return state

    def __repr__(self) -> str:
        return f"ImageCache({str(self.path)!r}, {len(self)} images, size={self.size})"

    @classmethod
    def build(
        cls,
        dataset,
        out_dir,
        size: int = 512,
        workers: int | None = None,
        *,
        overwrite: bool = False,
        meta: dict | None = None,
        progress: bool = True,
    ) -> ImageCache:
        """Decodes every image of ``dataset`` once, resizes it and stores it in a new cache folder.

        The folder is written under a temporary name next to ``out_dir`` and renamed into place
        only when complete: a failure (an image that does not decode, say) leaves nothing behind.

        Args:
            dataset: any object with ``image_keys() -> list[str]`` and
                ``load_image(key) -> np.uint8 [C, H, W]`` (every reader of adam_ext.data). Its class
                name, ``root`` and ``split`` (where it has them) and the size and modification
                time of each file ``root/key`` are recorded (see the module docstring).
            out_dir: the cache folder to create.
            size: longer side of the stored images in pixels (smaller images are kept as they are).
            workers: decoding processes (None: one per CPU; 0 or 1: in this process).
            overwrite: replace an existing ``out_dir`` (otherwise it is an error), if it is a cache
                and holds nothing else (see the module docstring).
            meta: JSON-serialisable provenance stored in the index (e.g. data set name and root).
            progress: show a tqdm progress bar.

        Returns:
            The new cache, opened.

        Raises:
            ValueError: a bad argument, or an existing ``out_dir`` without ``overwrite``.
            adam_ext._util.runfolder.FolderKindError (a ValueError too): ``out_dir`` is, or contains,
                the data set's root, or is not a cache ``--overwrite`` may delete; nothing is changed.
            adam_ext._util.runfolder.RunFolderError: another build holds ``out_dir``.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1 (pixels of the longer side), got {size!r}")
        if workers is not None and (not isinstance(workers, int) or workers < 0):
            raise ValueError(f"workers must be None or an int >= 0, got {workers!r}")
        out_dir = Path(out_dir)
        root = getattr(dataset, "root", None)
        root = None if root is None else str(Path(root).resolve())
        runfolder.refuse_inputs(out_dir, [root])  # never the data set, nor a folder holding it
        existed = os.path.lexists(out_dir)
        if existed and not overwrite:
            raise ValueError(f"out_dir must not exist (or pass overwrite=True), got existing {out_dir}")
        if existed:
            _check_replaceable(out_dir)  # before anything is written: a refused folder is left as it was
        keys = list(dataset.image_keys())
        if not all(isinstance(key, str) for key in keys):
            raise ValueError("dataset.image_keys() must return str keys (paths relative to the root)")
        if len(set(keys)) != len(keys):
            duplicates = len(keys) - len(set(keys))
            raise ValueError(f"dataset.image_keys() must be unique, got {duplicates} duplicates")
        if workers is None:
            workers = os.cpu_count() or 1
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if not existed:  # made now and locked, so that a second build into it is refused
            try:
                out_dir.mkdir()
            except FileExistsError:
                raise ValueError(
                    f"out_dir must not exist (or pass overwrite=True), got existing {out_dir}"
                ) from None
        source = {
            "dataset": type(dataset).__name__,
            "root": root,
            "split": getattr(dataset, "split", None),
            "n_images": len(keys),
        }
        try:
            with runfolder.lock(out_dir):
                if existed:
                    _check_replaceable(out_dir)  # again, now that no other build can change it
                _build_into(dataset, keys, out_dir, size, workers, progress, meta, source)
        except BaseException:
            if not existed:
                _remove_if_empty(out_dir)
            raise
        return cls(out_dir)


def _build_into(dataset, keys, out_dir: Path, size: int, workers: int, progress: bool, meta, source) -> None:
    """Writes the cache into a temporary folder beside ``out_dir`` (its marker first, then the images
    and the index) and renames it over ``out_dir`` once complete; a failure leaves nothing."""
    for dead in remove_killed_builds(out_dir):
        print(f"adam cache: removed {dead}, left by a killed build into {out_dir}", flush=True)
    # mkdir, not tempfile.mkdtemp (mode 0700): the folder gets the mode of any new folder
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    build = secrets.token_hex(8)
    try:
        runfolder.claim(tmp, "cache", build=build)
        entries, nbytes = _write_images(dataset, keys, tmp / DATA_FILE, size, workers, progress)
        index = {
            "format": FORMAT,
            "version": VERSION,
            "size": size,
            "nbytes": nbytes,
            "build": build,
            "meta": meta or {},
            "source": source,
            "entries": entries,
        }
        with open(tmp / INDEX_FILE, "w") as f:
            json.dump(index, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_replaceable(folder: Path) -> None:
    """Raises FolderKindError unless ``folder`` is a cache that ``--overwrite`` may delete: a real
    folder (not a link), marked as a cache (or, made before markers, holding an index of this
    format), and holding nothing but a cache's own files (:data:`OWN_FILES`)."""
    if folder.is_symlink() or not folder.is_dir():
        what = "symbolic link" if folder.is_symlink() else "file"
        raise runfolder.FolderKindError(
            f"out_dir {str(folder)!r} is a {what}, not a cache folder; adam "
            f"cache --overwrite replaces only a cache it made"
        )
    marker = runfolder.read_marker(folder)
    if marker is None:  # made before markers: its index must say it is a cache
        try:
            with open(folder / INDEX_FILE) as f:
                legacy = json.load(f).get("format") == FORMAT
        except (OSError, ValueError, AttributeError, RecursionError):
            legacy = False
        kind = "cache" if legacy else runfolder.detect_kind(folder)
    else:
        kind = marker["kind"]
    if kind != "cache":
        what = (
            f"is {runfolder.KINDS[kind][0]} (made by `{runfolder.KINDS[kind][1]}`)"
            if kind
            else (
                f"is not a cache (no {runfolder.MARKER} marker of one, no {INDEX_FILE} of format {FORMAT!r})"
            )
        )
        raise runfolder.FolderKindError(
            f"out_dir {str(folder)!r} {what}; adam cache --overwrite deletes "
            f"only a cache it made: choose another OUT"
        )
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in OWN_FILES)
    if foreign:
        named = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise runfolder.FolderKindError(
            f"cache {str(folder)!r} also holds {named}, which adam cache did not "
            f"write; --overwrite would delete them: move them away or choose "
            f"another OUT"
        )


def remove_killed_builds(out_dir) -> list[Path]:
    """Deletes the temporary folders that killed builds into ``out_dir`` left beside it (each can hold
    gigabytes): ``.NAME.tmp-PID-XXXXXXXX`` with a cache marker written on this host by a process that no
    longer runs. Call it while holding ``out_dir``'s lock; returns what it removed. A folder made on
    another host (a shared file system), by a live process, or without a marker is left alone."""
    out_dir = Path(out_dir)
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.tmp-(\d+)-[0-9a-f]{{8}}")
    removed = []
    for tmp in out_dir.parent.iterdir() if out_dir.parent.is_dir() else ():
        found = pattern.fullmatch(tmp.name)
        if not found or tmp.is_symlink() or not tmp.is_dir() or _running(int(found.group(1))):
            continue
        try:
            marker = runfolder.read_marker(tmp)
        except runfolder.FolderKindError:
            continue
        if marker and marker["kind"] == "cache" and marker.get("host") == socket.gethostname():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (another user's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        pass
    return True


def _remove_if_empty(folder: Path) -> None:
    """Removes a folder a failed build made, if it holds nothing but its lock file."""
    try:
        if {p.name for p in folder.iterdir()} <= {runfolder.LOCK_FILE}:
            shutil.rmtree(folder)
    except OSError:
        pass


def _identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _read_folder(path: Path) -> tuple[dict, tuple | None]:
    """The index of the cache folder ``path`` and the identity of its images file, both read through
    one handle of the folder: a rebuild renamed over ``path`` meanwhile cannot mix the two."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    if os.open not in os.supports_dir_fd:  # no openat: read by path
        with open(path / INDEX_FILE) as f:
            index = json.load(f)
        data = path / DATA_FILE
        return index, _identity(os.stat(data)) if data.exists() else None
    folder = os.open(path, flags)
    try:
        with open(os.open(INDEX_FILE, os.O_RDONLY, dir_fd=folder)) as f:
            index = json.load(f)
        try:
            identity = _identity(os.stat(DATA_FILE, dir_fd=folder))
        except FileNotFoundError:
            identity = None
    finally:
        os.close(folder)
    return index, identity


def _write_images(dataset, keys, data_path: Path, size: int, workers: int, progress: bool):
    """Decodes ``keys`` (in a pool when workers > 1) and appends them to ``data_path``, in order."""
    from tqdm import tqdm

    entries: dict[str, list[int]] = {}
    offset = 0
    pool = None
    if workers > 1 and len(keys) > 1:
        # fork: the workers inherit the data set instead of unpickling it (readers may hold handles)
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        pool = context.Pool(min(workers, len(keys)), initializer=_init_worker, initargs=(dataset, size))
        results = pool.imap(_decode_in_worker, keys, chunksize=4)
    else:
        results = (_decode(dataset, key, size) for key in keys)
    try:
        bar = tqdm(total=len(keys), desc="cache", unit="img", disable=not progress)
        with open(data_path, "wb") as f, bar:
            for key, image, (height, width), stamp in results:
                f.write(image.data)
                channels, h, w = image.shape
                entries[key] = [offset, channels, h, w, int(height), int(width), *stamp]
                offset += image.nbytes
                bar.update()
            f.flush()
            os.fsync(f.fileno())
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return entries, offset


def _replace_dir(new: Path, target: Path) -> None:
    """Renames folder ``new`` to ``target``, replacing an existing ``target`` (moved aside first)."""
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, old / "cache")
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)
