"""What the Eve analyses share: the ``--ckpt NAME=SPEC`` list of encoders compared side by side,
their common command-line arguments, and the writing of tables, JSON and figures under the output
folder: an analysis holds its folder (:func:`output_folder`: of kind ``eve``, locked, free of links),
writes every file atomically (:func:`save_figure` for figures), and escapes the names it did not
write (:func:`markdown_table`, :func:`plot_label`)."""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from .._util import runfolder
from .._util.atomic import atomic_save_figure
from .._util.escape import markdown_text
from ..checkpoints import atomic_write_json, atomic_write_text, parse_init

__all__ = [
    "markdown_table",
    "output_folder",
    "parse_checkpoints",
    "plot_label",
    "resolve_device",
    "save_figure",
    "spec_files",
    "write_result",
]


def parse_checkpoints(values, *, flag: str = "ckpt", name_of=None) -> list[tuple[str, str]]:
    """``["adam=runs/a/best.pt", "random"]`` → ``[("adam", "runs/a/best.pt"), ("random", "random")]``.

    Each value is ``NAME=SPEC`` or a bare ``SPEC`` (``random``, ``imagenet:PATH`` or a checkpoint
    PATH), named then by ``name_of(SPEC)`` (default: after the file, ``runs/cxr/best.pt`` →
    ``cxr``). Names must be unique.

    Args:
        values: the ``--ckpt`` (or ``--model``) strings, or ``(name, spec)`` pairs, or a {name: spec} dict.
        flag: the option's name, used in error messages.
        name_of: names a bare SPEC.

    Raises:
        ValueError: no value, an empty name or spec, or a repeated name.
    """
    from ..checkpoints import init_label

    name_of = name_of or init_label
    if isinstance(values, dict):
        values = list(values.items())
    if isinstance(values, str):
        values = [values]
    if not values:
        raise ValueError(f"{flag}: give at least one (--{flag} NAME=SPEC or SPEC)")
    out, seen = [], set()
    for value in values:
        if isinstance(value, (tuple, list)) and len(value) == 2:
            value = f"{value[0]}={value[1]}"
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{flag} must be NAME=SPEC or SPEC, got {value!r}")
        name, sep, spec = value.partition("=")
        if not sep:
            name, spec = name_of(value.strip()), value.strip()
        name, spec = name.strip(), spec.strip()
        if not name or not spec:
            raise ValueError(f"{flag} must be NAME=SPEC with both parts non-empty, got {value!r}")
        if name in seen:
            raise ValueError(f"{flag} names must be unique, {name!r} is given twice (use NAME=SPEC)")
        seen.add(name)
        out.append((name, spec))
    return out


def resolve_device(device) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda`` → a torch.device.

    Raises:
        ValueError: another value, or cuda without a GPU.
    """
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device) not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if str(device) == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is cuda but no GPU is available")
    return torch.device(device)


def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return markdown_text(value)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; floats with 3 decimals, NaN as ``n/a``; every other cell (names of encoders,
    landmarks, findings: what the analysis did not write) escaped with
    :func:`adam_ext._util.escape.markdown_text`, so a ``|`` or ``<script>`` in a name stays text."""
    lines = ["| " + " | ".join(markdown_text(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def spec_files(checkpoints) -> list:
    """The files behind ``[(name, spec)]`` encoders (None for ``random``): inputs of an analysis."""
    files = []
    for _, spec in checkpoints:
        try:
            files.append(parse_init(spec)[1])
        except ValueError:
            files.append(None)
    return files


@contextmanager
def output_folder(out, files, inputs=()):
    """An analysis' output folder while the block runs (:func:`adam_ext._util.runfolder.run_folder`):
    of kind ``eve`` (a pretraining run, a fine-tuning folder or any other command's is refused, as is
    one that is or contains one of ``inputs``; an unmarked folder holding one of ``files`` that
    adam_ext did not write too), locked against a second writer, free of links and of the temp files
    of a killed analysis. Yields ``out`` as a Path."""
    with runfolder.run_folder(out, "eve", writes=files, inputs=inputs) as folder:
        yield folder


def save_figure(fig, path, **kwargs) -> Path:
    """``fig.savefig`` to ``path`` atomically, never through a link (a planted ``tsne.png`` link is
    refused); ``kwargs`` go to ``savefig``."""
    atomic_save_figure(fig, path, **kwargs)
    return Path(path)


def plot_label(name) -> str:
    """``name`` as matplotlib shows it literally: ``$`` would start mathtext (a stray one is a parse
    error) and a leading ``_`` hides a legend entry."""
    name = str(name).replace("$", r"\$")
    return f" {name}" if name.startswith("_") else name


def write_result(out: str | os.PathLike, name: str, result: dict, markdown: str) -> None:
    """Writes an analysis' ``OUT/<name>.md`` (its table, what ``adam report`` shows) and
    ``OUT/<name>.json`` (``result``), atomically; creates ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.md", markdown)
    atomic_write_json(out / f"{name}.json", result)
