"""What the Eve analyses share: the ``--ckpt NAME=SPEC`` list of encoders compared side by side,
their common command-line arguments, and the writing of tables and JSON under the output folder."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..checkpoints import atomic_write_json, atomic_write_text

__all__ = ["markdown_table", "parse_checkpoints", "resolve_device", "write_result"]


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
    return str(value)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; floats with 3 decimals, NaN as ``n/a``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_result(out: str | os.PathLike, name: str, result: dict, markdown: str) -> None:
    """Writes an analysis' ``OUT/<name>.md`` (its table, what ``adam report`` shows) and
    ``OUT/<name>.json`` (``result``), atomically; creates ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.md", markdown)
    atomic_write_json(out / f"{name}.json", result)
