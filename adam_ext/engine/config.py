"""The configuration machinery every job shares: nested dataclasses from YAML files and ``key=value``
overrides, validation helpers that name the field, and comparisons of saved configurations.

A job's configuration is a tree of typed dataclasses (the single home of its defaults; e.g.
:class:`adam_ext.pretrain.config.PretrainConfig`). :func:`layered_values` merges defaults, a preset,
a YAML file and overrides into one nested dict, and :func:`build_dataclass` turns it into the tree,
reading each field's annotation to find its sections.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from typing import Any

import numpy as np
import yaml

__all__ = [
    "MAX_SIDE",
    "ConfigLoader",
    "build_dataclass",
    "check_field",
    "check_memory",
    "check_side",
    "config_differences",
    "is_int",
    "is_num",
    "layered_values",
    "load_yaml",
    "max_side",
    "parse_override",
    "physical_memory",
]


def check_field(ok: bool, name: str, expected: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


# ---------------------------------------------------------------------------------------------- size limits
#
# Sizes have limits, refused as usage errors naming the field before anything is allocated (issue 24):
# an image side is capped by the largest image the readers decode (max_side), and a size whose
# allocation can be estimated is refused when a *lower bound* of it exceeds this machine's physical
# memory (physical_memory). A lower bound never refuses a configuration that could run; it refuses
# data.view_size=20000 or model.dim=1e8 at once instead of after minutes of swapping.


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (``sysconf``), or None where it cannot be read. The
    total, not what is free now, so that whether a configuration is valid does not depend on the
    moment."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


#: The largest image side in pixels (a view, an encoder input, a generated film): the side of the
#: largest image the readers decode (their MAX_IMAGE_PIXELS, 64 Mi pixels = 8192²). A view or an
#: encoder input larger than every image only upsamples.
MAX_SIDE = 8192


def max_side() -> int:
    """:data:`MAX_SIDE` (a function, so that a program may raise the module's constant)."""
    return MAX_SIDE


def check_side(name: str, value) -> None:
    """Raises ValueError naming ``name`` unless ``value`` is an int in [1, :func:`max_side`]."""
    limit = max_side()
    if not is_int(value) or not 1 <= value <= limit:
        raise ValueError(
            f"{name} must be an int in [1, {limit}] pixels (the side of the largest image the "
            f"readers decode, 64 Mi pixels), got {value!r}"
        )


def check_memory(name: str, value, need: float, what: str) -> None:
    """Raises ValueError naming ``name`` when ``need`` bytes, a lower bound of what ``value`` makes
    the command allocate (``what`` says which allocation), exceed this machine's memory."""
    total = physical_memory()
    if total is not None and need > total:
        raise ValueError(
            f"{name} = {value} needs at least {need / 2**30:,.1f} GiB for {what}, more than "
            f"this machine's {total / 2**30:.1f} GiB of memory; lower {name}"
        )


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3``, ``5E4``, ``2.5e-4`` as floats (YAML 1.2's rule).

    YAML 1.1, which PyYAML follows, wants a dot and a signed exponent (``1.0e-3``) and reads
    ``1e-3`` as a string. Only plain (unquoted) scalars are affected: ``"1e-3"`` stays a string.
    """


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text_or_file, where: str):
    """The YAML rule of every configuration (files and ``key=value`` overrides, pretraining and
    fine-tuning): a safe load with :class:`ConfigLoader`'s numbers.

    Raises:
        ValueError: naming ``where``, for malformed YAML or a tag such as ``!!python``.
    """
    try:
        return yaml.load(text_or_file, Loader=ConfigLoader)  # a SafeLoader: no tags run code
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(
            f"{where} is not valid YAML for a configuration{at}: {problem}; only plain values, "
            f"lists and mappings are read (tags such as !!python are refused)"
        ) from None


def build_dataclass(cls, values: dict, prefix: str = ""):
    """An instance of the dataclass ``cls`` from a nested dict: a field whose annotation is itself a
    dataclass is built from its mapping the same way, so a config tree needs no table of its sections.

    Raises:
        ValueError: a key that is no field (named with its dotted path, and the fields expected), or
            a section that is not a mapping.
    """
    if not isinstance(values, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"unknown config key '{prefix}{key}'; expected one of {sorted(fields)}")
        sub = hints.get(key)
        kwargs[key] = (
            build_dataclass(sub, value, f"{prefix}{key}.") if dataclasses.is_dataclass(sub) else value
        )
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    """``update`` merged into ``base`` key by key; an empty mapping in ``update`` replaces (clears)."""
    out = dict(base)
    for key, value in update.items():
        merge = isinstance(value, dict) and value and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if merge else value
    return out


def parse_override(text: str) -> dict:
    """``"optim.lr=0.1"`` -> ``{"optim": {"lr": 0.1}}`` (the value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override must look like key=value (e.g. optim.lr=0.06), got {text!r}")
    value = load_yaml(raw, f"override {text!r}") if raw.strip() else None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def config_differences(saved: dict, now: dict, ignored=()) -> dict[str, tuple]:
    """``{dotted key: (saved value, now value)}`` where two configuration dicts differ, by key.

    Nested sections are compared key by key (``optim.lr``; a reader's ``options`` mapping as one
    value); keys in ``ignored`` are left out. Empty when they agree.
    """

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in d.items():
            if isinstance(value, dict) and key != "options":
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = flat(saved), flat(now)
    return {
        k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in ignored
    }


def layered_values(base: dict | None, path, overrides) -> dict:
    """``base``, then the mapping of the YAML file ``path`` (if any), then ``key=value`` overrides,
    merged key by key into one nested dict (what every configuration of the package is built from)."""
    values: dict = dict(base or {})
    if path is not None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path!r} does not exist")
        with open(path) as f:
            loaded = load_yaml(f, f"config file {path!r}") or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path!r} must hold a mapping, got {type(loaded).__name__}")
        values = _merge(values, loaded)
    for text in overrides:
        values = _merge(values, parse_override(text))
    return values
