"""Model cards: what an exported encoder is and how it was made, written beside its weights.

``adam export`` writes ``OUT`` and, beside it, ``OUT.card.json`` (the source) and ``OUT.card.md``
(rendered from the JSON, :func:`~adam_ext.checkpoints.card_markdown.render_card`). The card files are
named after the whole file name of the weights, so that exports into one folder never share (or
overwrite) a card: ``enc.pt`` and ``enc.pth`` get ``enc.pt.card.json`` and ``enc.pth.card.json``.

A card (``kind`` :data:`CARD_KIND`, ``version`` :data:`CARD_VERSION`) holds:

* ``weights``: file name, SHA-256 and size, export format, which encoder (query or key), the
  architecture, every key with its shape and a per-layer count of tensors and parameters;
* ``input``: channels, the pretraining view size and the normalisation (mean / std of the
  [0, 1] intensities) the views used;
* ``load``: Python snippets that load the file in torchvision, segmentation-models-pytorch and timm;
* ``training``: the method, the decomposer's n and the pruner's γ of each stage trained, epochs
  and steps, the data set and its image counts, where in the run the weights were saved, and the
  resolved configuration;
* ``monitors``: the representation monitors (RankMe, collapse std, alignment, uniformity, landmark
  k-NN...) measured on these weights, read from the run folder's ``metrics.jsonl``;
* ``provenance``: adam_ext, torch and Python versions and the git commit of the pretraining code.

What the checkpoint does not record (an official Adam/MoCo file, a plain torchvision state dict, a
checkpoint written before adam_ext recorded it) is the string :data:`UNKNOWN`.

:func:`read_card` is how loading finds a card: :func:`~adam_ext.checkpoints.load_pretrained` puts
it in :attr:`Pretrained.card` when its SHA-256 is the file's, and warns (:class:`ModelCardWarning`,
naming both files) when the card is stale or malformed, never trusting it silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings

__all__ = ["CARD_KIND", "CARD_VERSION", "UNKNOWN", "ModelCardWarning", "card_line", "card_paths", "file_sha256",
           "read_card"]

CARD_KIND = "adam_ext.model_card"
CARD_VERSION = 1
#: The value of every card field the checkpoint does not record.
UNKNOWN = "unknown"
_SECTIONS = ("weights", "input", "load", "source", "training", "monitors", "provenance")


class ModelCardWarning(UserWarning):
    """A model card that cannot be trusted: stale (its SHA-256 is not the weights') or malformed."""


def card_paths(weights) -> tuple[str, str]:
    """``(OUT.card.json, OUT.card.md)``: the card files of the weights file ``weights``."""
    weights = os.fspath(weights)
    return weights + ".card.json", weights + ".card.md"


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes as 64 hex digits, read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _problem(card) -> str | None:
    """What makes ``card`` unusable, or None."""
    if not isinstance(card, dict):
        return f"expected a JSON object, got {type(card).__name__}"
    if card.get("kind") != CARD_KIND:
        return f"expected kind {CARD_KIND!r}, got {card.get('kind')!r}"
    version = card.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= CARD_VERSION:
        return f"expected version 1..{CARD_VERSION} (this adam_ext's), got {version!r}"
    missing = [name for name in _SECTIONS if not isinstance(card.get(name), dict)]
    if missing:
        return f"expected the sections {', '.join(_SECTIONS)}, got no {', '.join(missing)}"
    sha = card["weights"].get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        return f"expected weights.sha256 to be 64 lowercase hex digits, got {sha!r}"
    return None


def read_card(weights, sha256: str | None = None) -> dict | None:
    """The card of the weights file ``weights`` (``weights.card.json``), checked against the file.

    Args:
        weights (str | PathLike): the weights file.
        sha256 (str | None): the file's SHA-256 when already known (else it is computed, only
            when a card exists: 0.15 s for resnet50's 90 MiB on one core of a Xeon).

    Returns:
        dict | None: the parsed card; None when there is none, or when it is stale or malformed
        (then a :class:`ModelCardWarning` names the card and the weights and says why).
    """
    weights = os.fspath(weights)
    path = card_paths(weights)[0]
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            card = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        _warn(f"model card {path!r} of {weights!r} cannot be read as JSON ({err}); it is ignored")
        return None
    problem = _problem(card)
    if problem is not None:
        _warn(f"model card {path!r} of {weights!r} is malformed: {problem}; it is ignored")
        return None
    actual = sha256 or file_sha256(weights)
    expected = card["weights"]["sha256"]
    if actual != expected:
        _warn(f"model card {path!r} is stale: it describes weights with SHA-256 {expected[:16]}..., but "
              f"{weights!r} has {actual[:16]}... (the file was replaced after the card was written); the card "
              f"is ignored: export again to write a card for these weights")
        return None
    return card


def _warn(message: str) -> None:
    warnings.warn(message, ModelCardWarning, stacklevel=3)


def card_line(card: dict, weights) -> str:
    """One line naming the card of ``weights`` and what it says (what ``adam export`` and
    ``adam finetune --init`` print)."""
    w, t = card["weights"], card["training"]
    stages = t.get("stages")
    if isinstance(stages, list) and stages:
        made = (f"{t.get('method', UNKNOWN)}, stages n={','.join(str(s.get('n')) for s in stages)}, "
                f"data {t.get('data', {}).get('dataset', UNKNOWN)}")
    else:
        made = f"training {UNKNOWN}"
    return (f"model card {card_paths(weights)[0]} (+ .md): {w.get('arch')} {w.get('encoder')} encoder, {made}, "
            f"sha256 {w['sha256'][:12]} matches")
