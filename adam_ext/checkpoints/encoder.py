"""Encoder initialisations of downstream models: ``random``, ``imagenet:PATH`` or ``PATH``.

Every file goes through :func:`~adam_ext.checkpoints.layouts.load_pretrained`, so the accepted layouts are
its: an ``adam_ext`` pretraining checkpoint, an official Adam-v1 / MoCo checkpoint
(``module.encoder_q.*``) and a plain torchvision ResNet state dict. The query encoder's trunk is
loaded into the downstream model's encoder (the classifier's ``encoder`` or the U-Net's
``encoder``, both with torchvision key names), strictly: every encoder tensor must be in the
file with the same shape, and the architecture must match. Nothing is ever downloaded.

A file that loads nothing (no recognisable keys, another architecture, another model) is an
error naming ``--init``, never a silent random start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .card import card_line
from .layouts import load_pretrained

__all__ = ["InitReport", "init_label", "load_encoder", "parse_init"]

_IMAGENET = "imagenet:"


def parse_init(spec: str) -> tuple[str, str | None]:
    """Splits an initialisation spec.

    Args:
        spec: ``"random"``, ``"imagenet:PATH"`` (a local torchvision ImageNet state dict) or a
            checkpoint ``PATH`` (adam_ext, official Adam-v1 or torchvision layout).

    Returns:
        ``(kind, path)``: ``("random", None)``, ``("imagenet", PATH)`` or ``("checkpoint", PATH)``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"init must be 'random', 'imagenet:PATH' or a checkpoint PATH, got {spec!r}")
    spec = spec.strip()
    if spec == "random":
        return "random", None
    if spec.startswith(_IMAGENET):
        path = spec[len(_IMAGENET) :]
        if not path:
            raise ValueError(f"init 'imagenet:PATH' needs a file path after 'imagenet:', got {spec!r}")
        return "imagenet", path
    return "checkpoint", spec


def init_label(spec: str) -> str:
    """A short name for an initialisation in tables and folders: ``random``, ``imagenet-<file stem>``,
    or the checkpoint's file stem (its run folder's name for ``best.pt`` / ``last.pt``)."""
    kind, path = parse_init(spec)
    if kind == "random":
        return "random"
    stem = Path(path).name.split(".")[0] or "checkpoint"
    if stem in ("best", "last") and Path(path).parent.name:  # runs/cxr/best.pt -> "cxr"
        stem = Path(path).parent.name
    return f"imagenet-{stem}" if kind == "imagenet" else stem


@dataclass
class InitReport:
    """What an initialisation loaded into an encoder.

    Attributes:
        spec: the ``--init`` value.
        kind: ``random``, ``imagenet`` or ``checkpoint``.
        source: layout of the file (``adam_ext``, ``official``, ``torchvision``) or None.
        arch: the file's architecture (None for random).
        loaded: encoder keys whose values came from the file.
        missing: encoder keys left at their random initialisation.
        unused: keys of the file not loaded (projection head, key encoder, queue, ``fc.*``).
        meta: the checkpoint's epoch / step / stage where present.
        card: one line naming the file's model card and what it says (an ``adam export`` file
            whose card matches it), else None.
    """

    spec: str
    kind: str
    source: str | None = None
    arch: str | None = None
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    card: str | None = None

    def summary(self) -> str:
        """A few human-readable lines (what the CLI prints)."""
        if self.kind == "random":
            return "init random: encoder randomly initialised (torchvision's default init)"
        total = len(self.loaded) + len(self.missing)
        extra = "".join(f", {k} {v}" for k, v in self.meta.items() if isinstance(v, (int, float, str)))
        lines = [
            f"init {self.spec}: {self.source} layout, {self.arch}{extra}",
            f"  loaded {len(self.loaded)}/{total} encoder tensors ({_preview(self.loaded)})",
            f"  missing (random): {_preview(self.missing) if self.missing else 'none'}",
            f"  not used from the file: {len(self.unused)} tensors ({_groups(self.unused)})",
        ]
        if self.card is not None:
            lines.append(f"  {self.card}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "source": self.source,
            "arch": self.arch,
            "n_loaded": len(self.loaded),
            "missing": self.missing,
            "n_unused": len(self.unused),
            "meta": {k: v for k, v in self.meta.items() if isinstance(v, (int, float, str))},
            "card": self.card,
        }


def _preview(keys, n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown}, ..." if len(keys) > n else shown


def _groups(keys) -> str:
    """``encoder_k.* (122), queue (1)``: keys grouped by their first component."""
    counts: dict[str, int] = {}
    for key in keys:
        head = key.split(".")[0]
        counts[head] = counts.get(head, 0) + 1
    return ", ".join(f"{k}{'.*' if n > 1 or '.' in k else ''} ({n})" for k, n in counts.items()) or "none"


def load_encoder(
    encoder: nn.Module, spec: str, arch: str, *, strict: bool = True, pretrained=None
) -> InitReport:
    """Initialises ``encoder`` (torchvision ResNet key names, no ``fc``) from ``spec``.

    Args:
        encoder: the downstream model's encoder: :func:`adam_ext.models.build_backbone`'s trunk or
            ``segmentation_models_pytorch.Unet(arch).encoder``.
        spec: ``random``, ``imagenet:PATH`` or a checkpoint ``PATH`` (see :func:`parse_init`).
        arch: the encoder's ResNet name; the file's must be the same.
        strict: every encoder tensor must come from the file (the default). False loads what
            matches and reports the rest as missing; a file that matches nothing is still an error.
        pretrained: ``spec``'s file as :func:`~adam_ext.checkpoints.layouts.load_pretrained` already returned it
            (it is then not read again); None reads it.

    Returns:
        InitReport: which keys loaded, which stayed random, which the file had in excess.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable or unrecognised file, architecture mismatch, an ``imagenet:`` file
            that is not a torchvision state dict, missing keys (strict) or nothing loaded.
    """
    kind, path = parse_init(spec)
    if kind == "random":
        return InitReport(spec=spec, kind=kind)
    try:
        pre = load_pretrained(path) if pretrained is None else pretrained
    except ValueError as err:
        raise ValueError(f"init {spec!r} cannot be loaded: {err}") from err
    if kind == "imagenet" and pre.source != "torchvision":
        raise ValueError(
            f"init {spec!r} must be a torchvision ImageNet state dict, got a {pre.source} checkpoint; "
            f"use init={path} for pretraining checkpoints"
        )
    if pre.arch != arch:
        raise ValueError(f"init {spec!r} holds a {pre.arch} encoder, but arch is {arch}; use arch={pre.arch}")
    own = encoder.state_dict()
    loadable = {k: v for k, v in pre.encoder_q.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    missing = sorted(set(own) - set(loadable))
    if not loadable:
        raise ValueError(
            f"init {spec!r} loads nothing into the {arch} encoder (no key with a matching name and shape)"
        )
    if strict and missing:
        raise ValueError(
            f"init {spec!r} must provide every {arch} encoder tensor, got {len(missing)} missing "
            f"(e.g. {', '.join(missing[:3])})"
        )
    encoder.load_state_dict(loadable, strict=False)
    if pre.state is not None:
        unused = [
            k for k in pre.state if not (k.startswith("encoder_q.") and k[len("encoder_q.") :] in loadable)
        ]
    else:  # a torchvision file: its fc.* (the ImageNet classifier) is dropped by load_pretrained
        unused = [k for k in pre.encoder_q if k not in loadable]
    return InitReport(
        spec=spec,
        kind=kind,
        source=pre.source,
        arch=pre.arch,
        loaded=sorted(loadable),
        missing=missing,
        unused=unused,
        meta=dict(pre.meta),
        card=card_line(pre.card, pre.path) if pre.card is not None else None,
    )
