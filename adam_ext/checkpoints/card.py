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
* ``load``: Python snippets that load the file in torchvision, segmentation-models-pytorch, timm
  and MONAI;
* ``training``: the method, the decomposer's n and the pruner's γ of each stage trained, epochs
  and steps, the data set and its image counts, where in the run the weights were saved, and the
  resolved configuration;
* ``monitors``: the representation monitors (RankMe, collapse std, alignment, uniformity, landmark
  k-NN...) measured on these weights, read from the run folder's ``metrics.jsonl``;
* ``provenance``: adam_ext, torch and Python versions and the git commit of the pretraining code.

What the checkpoint does not record (an official Adam/MoCo file, a plain torchvision state dict, a
checkpoint written before adam_ext recorded it) is the string :data:`UNKNOWN`.

**A card is a claim, checked against the file** (:func:`read_card`, which
:func:`~adam_ext.checkpoints.load_pretrained` calls): it is parsed into its schema (every field of
the expected type, integers of at most 19 digits, nesting at most :data:`MAX_DEPTH` deep, the file
at most :data:`MAX_CARD_BYTES`), then what the weights themselves say is re-derived and compared:
SHA-256, bytes, file container (``safetensors`` or torch), architecture, every key and shape, the
tensor, parameter and per-layer counts, the input channels, and which encoder of the source
checkpoint the weights are (when that checkpoint is still there to read). Any disagreement, or a
card that does not parse, is a :class:`ModelCardWarning` naming the card and the reason, and the
card is ignored: it is never printed as matching and never carried on by a re-export. Reading a card
never raises. The training history (method, stages, data, monitors) cannot be re-derived from the
weights: it stays a claim of the file that wrote it, and is shown as one.

Every card-derived text printed on a terminal goes through :func:`printable` (control and format
characters escaped), and every card-derived text in ``OUT.card.md`` through the Markdown escapes of
:mod:`.card_markdown`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import reprlib
import warnings

from .._util.escape import terminal

__all__ = [
    "CARD_KIND",
    "CARD_VERSION",
    "MAX_CARD_BYTES",
    "MAX_DEPTH",
    "UNKNOWN",
    "ModelCardWarning",
    "card_line",
    "card_paths",
    "file_sha256",
    "is_safetensors",
    "layer_counts",
    "printable",
    "read_card",
]

CARD_KIND = "adam_ext.model_card"
CARD_VERSION = 1
#: The value of every card field the checkpoint does not record.
UNKNOWN = "unknown"
#: A card larger than this is not read (resnet152's, every key listed with its resolved config: ~120 KB).
MAX_CARD_BYTES = 16 * 2**20
#: Containers nested deeper than this are refused (a card written by adam export nests 6 deep; the
#: resolved configuration adds a few levels).
MAX_DEPTH = 32
#: Integers of more digits are refused (JSON allows any; a card's are counts, sizes and seeds).
_MAX_DIGITS = 19
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class ModelCardWarning(UserWarning):
    """A model card that cannot be trusted: stale (its SHA-256 is not the weights'), malformed, or
    claiming what the weights are not."""


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


def is_safetensors(path) -> bool:
    """True when the file starts as a safetensors file does: a little-endian 8-byte header length
    (below 100 MB, the format's own limit) followed by the ``{`` of its JSON header."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def printable(text) -> str:
    """``text`` as one terminal line: control characters and direction overrides escaped
    (:func:`adam_ext._util.escape.terminal`: ``\\x1b``, ``\\u202e``), and line breaks too (``\\n``),
    so that what a card or a file name holds never reaches a terminal raw nor forges a line."""
    breaks = {"\n": "\\n", "\u2028": "\\u2028", "\u2029": "\\u2029"}
    return terminal("".join(breaks.get(ch, ch) for ch in str(text)))


def layer_counts(trunk: dict) -> dict:
    """What a card's ``weights`` section says of a state dict, derived from it: tensor and parameter
    counts (BatchNorm statistics are buffers, not parameters) per top-level layer, and every key with
    its shape."""
    groups: dict[str, dict] = {}
    for key, value in trunk.items():
        group = groups.setdefault(key.split(".")[0], {"tensors": 0, "parameters": 0})
        group["tensors"] += 1
        if not key.endswith(_BUFFERS):
            group["parameters"] += value.numel()
    return {
        "tensors": len(trunk),
        "parameters": sum(g["parameters"] for g in groups.values()),
        "layers": [{"name": name, **g} for name, g in groups.items()],
        "keys": {key: list(value.shape) for key, value in trunk.items()},
    }


# --------------------------------------------------------------------------------------------
# the schema


class _Problem(Exception):
    """A card that does not fit its schema or does not match its weights; the message says where."""


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return _int(value) or (isinstance(value, float) and math.isfinite(value))


def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, bool)) or _number(value)


def _unknown(value) -> bool:
    return value == UNKNOWN


def _hex64(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _either(*tests):
    return lambda value: any(test(value) for test in tests)


def _list_of(test):
    return lambda value: isinstance(value, list) and all(test(v) for v in value)


def _map_of(test):
    return lambda value: isinstance(value, dict) and all(test(v) for v in value.values())


def _fields(spec: dict):
    """A test of a dict holding each field of ``spec`` (``"name?"``: optional) that passes its test;
    other keys are allowed (a later card of the same version may add some). Called with ``where`` (the
    field's dotted name) it raises :class:`_Problem` naming the first bad field; without, it answers
    True or False like the other tests."""

    def test(value, where=None):
        if where is None:
            try:
                return test(value, "")
            except _Problem:
                return False
        if not isinstance(value, dict):
            raise _Problem(f"{where or 'the card'} must be a JSON object, got {_kind(value)}")
        for name, check in spec.items():
            optional = name.endswith("?")
            name = name.rstrip("?")
            field = f"{where}.{name}" if where else name
            if name not in value:
                if optional:
                    continue
                raise _Problem(f"{field} is missing")
            if isinstance(check, dict):
                _fields(check)(value[name], field)
            elif not check(value[name]):
                raise _Problem(f"{field} has the wrong type or value: {_short(value[name])}")
        return True

    return test


def _kind(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlist = 2, 60, 60, 40, 3


def _short(value) -> str:
    """A short repr of a card value for a message (long strings, numbers and containers cut)."""
    return _REPR.repr(value)


_STAGE = _fields(
    {
        "index": _int,
        "n": _int,
        "gamma": _scalar,
        "epochs": _scalar,
        "steps": _scalar,
        "best_val_loss?": _scalar,
        "collapse_warning?": _scalar,
        "monitor_collapse_warning?": _scalar,
        "seconds?": _scalar,
    }
)


def _str(value) -> bool:
    return isinstance(value, str)


_ORIGIN = {"checkpoint": _str, "layout": _str, "run_folder": _str}
_SCHEMA = _fields(
    {
        "kind": lambda v: v == CARD_KIND,
        "version": lambda v: _int(v) and 1 <= v <= CARD_VERSION,
        "weights": {
            "file": _str,
            "sha256": _hex64,
            "bytes": _int,
            "format": _str,
            "encoder": lambda v: v in ("query", "key"),
            "arch": _str,
            "tensors": _int,
            "parameters": _int,
            "layers": _list_of(_fields({"name": _str, "tensors": _int, "parameters": _int})),
            "keys": _map_of(_list_of(_int)),
        },
        "input": {
            "channels": _int,
            "size": _either(_int, _unknown),
            "mean": _either(_list_of(_number), _unknown),
            "std": _either(_list_of(_number), _unknown),
        },
        "load": _map_of(_str),
        "source": {**_ORIGIN, "card?": _str, "card_encoder?": _str, "original?": _ORIGIN},
        "training": {
            "method": _str,
            "stages": _either(_unknown, _list_of(_STAGE)),
            "run_stages?": _either(_unknown, _list_of(_int)),
            "gamma": _scalar,
            "data": {"dataset": _scalar, "root?": _scalar, "train_images": _scalar, "val_images": _scalar},
            "schedule": _either(
                _unknown,
                _fields(
                    {
                        "epochs_per_stage": _scalar,
                        "batch_size": _scalar,
                        "steps_per_epoch": _scalar,
                        "total_steps": _scalar,
                    }
                ),
            ),
            "position": _map_of(_scalar),
            "seed?": _scalar,
            "config": _either(_unknown, lambda v: isinstance(v, dict)),
            "note?": _str,
        },
        "monitors": {
            "source": _scalar,
            "stage": _scalar,
            "epoch": _scalar,
            "step": _scalar,
            "of_these_weights": _scalar,
            "values": _either(_unknown, _map_of(_scalar)),
            "note?": _str,
        },
        "provenance": {
            "adam_ext": _scalar,
            "torch": _scalar,
            "python": _scalar,
            "git_commit": _scalar,
            "world_size": _scalar,
            "checkpoint_version": _scalar,
        },
        "created": {"by": _str, "adam_ext": _str, "torch": _str, "at": _str},
    }
)


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_DIGITS:
        raise _Problem(f"an integer of {len(text.lstrip('-'))} digits (at most {_MAX_DIGITS})")
    return int(text)


def _parse_constant(name: str):
    raise _Problem(f"{name} is not JSON (a card holds finite numbers)")


def _check_depth(card) -> None:
    """Refuses containers nested deeper than :data:`MAX_DEPTH` (iteratively: no recursion to exhaust)."""
    todo = [(card, 1)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise _Problem(f"containers nested more than {MAX_DEPTH} deep")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        todo.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _parse(path: str) -> dict:
    """The card file parsed into its schema; :class:`_Problem` says why not."""
    try:
        size = os.stat(path).st_size
        if size > MAX_CARD_BYTES:
            raise _Problem(f"{size} bytes (at most {MAX_CARD_BYTES})")
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CARD_BYTES + 1)
    except (OSError, UnicodeDecodeError) as err:
        raise _Problem(f"cannot be read ({err})") from None
    try:
        card = json.loads(text, parse_int=_parse_int, parse_constant=_parse_constant)
    except _Problem:
        raise
    except (ValueError, RecursionError, MemoryError) as err:  # JSONDecodeError is a ValueError
        kind = "nested too deep to parse" if isinstance(err, RecursionError) else str(err)
        raise _Problem(f"cannot be read as JSON ({kind})") from None
    _check_depth(card)
    if not isinstance(card, dict):
        raise _Problem(f"expected a JSON object, got {_kind(card)}")
    if card.get("kind") != CARD_KIND:
        raise _Problem(f"expected kind {CARD_KIND!r}, got {_short(card.get('kind'))}")
    if not (_int(card.get("version")) and 1 <= card["version"] <= CARD_VERSION):
        raise _Problem(
            f"expected version 1..{CARD_VERSION} (this adam_ext's), got {_short(card.get('version'))}"
        )
    _SCHEMA(card, "")
    return card


# --------------------------------------------------------------------------------------------
# the claims against the weights


def _check_claims(card: dict, weights: str, trunk: dict, arch: str, sha256: str | None) -> str:
    """Raises :class:`_Problem` at the first claim of ``card`` the weights contradict; returns what was
    found of the encoder claim (see :func:`_encoder_verdict`)."""
    w = card["weights"]
    actual = sha256 or file_sha256(weights)
    if w["sha256"] != actual:
        raise _Problem(
            f"it is stale: it describes weights with SHA-256 {w['sha256'][:16]}..., but "
            f"{weights!r} has {actual[:16]}... (the file was replaced after the card was written); "
            f"export again to write a card for these weights"
        )
    size = os.path.getsize(weights)
    if w["bytes"] != size:
        raise _Problem(f"it says {w['bytes']} bytes, the file has {size}")
    container = "safetensors" if is_safetensors(weights) else "torch"
    if (w["format"] == "safetensors") != (container == "safetensors"):
        raise _Problem(f"it says format {_short(w['format'])}, the file is a {container} file")
    if w["arch"] != arch:
        raise _Problem(f"it says {_short(w['arch'])}, the weights are a {arch}")
    derived = layer_counts(trunk)
    if w["keys"] != derived["keys"]:
        differ = sorted(set(w["keys"]) ^ set(derived["keys"])) or [
            k for k in derived["keys"] if w["keys"][k] != derived["keys"][k]
        ]
        raise _Problem(f"its keys and shapes are not the weights' (e.g. {_short(differ[:3])})")
    # a safetensors file holds its keys sorted: the layers' order is not a claim
    by_name = {"layers": lambda layers: sorted(layers, key=lambda g: g["name"])}
    for field in ("tensors", "parameters", "layers"):
        order = by_name.get(field, lambda value: value)
        if order(w[field]) != order(derived[field]):
            raise _Problem(f"it says {field} {_short(w[field])}, the weights have {_short(derived[field])}")
    channels = int(trunk["conv1.weight"].shape[1]) if "conv1.weight" in trunk else None
    if card["input"]["channels"] != channels:
        raise _Problem(f"it says {card['input']['channels']} input channels, conv1 takes {channels}")
    return _encoder_verdict(card, trunk)


def _same(trunk: dict, other: dict | None) -> bool:
    """Bit for bit the same tensors under the same keys (the first difference ends the comparison:
    a memory-mapped source is read no further)."""
    import torch

    return (
        other is not None
        and trunk.keys() == other.keys()
        and all(
            v.dtype == other[k].dtype and torch.equal(v.detach().cpu(), other[k].detach().cpu())
            for k, v in trunk.items()
        )
    )


def _encoder_verdict(card: dict, trunk: dict) -> str:
    """Which encoder of the card's source checkpoint (the first export's, for a re-export) the weights
    are: ``"verified against PATH"``, or ``"not checked: WHY"`` when that checkpoint is gone, unreadable
    or changed since (neither of its encoders is these weights). Weights that are the *other* encoder
    (and not the one claimed) raise :class:`_Problem`."""
    from .layouts import source_encoders  # layouts reads cards: imported when a card is checked

    origin = card["source"].get("original", card["source"])
    path, claimed = origin["checkpoint"], card["weights"]["encoder"]
    try:
        encoders = source_encoders(path)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, MemoryError) as err:
        reason = (
            "it is not there" if not os.path.exists(path) else f"it cannot be read ({type(err).__name__})"
        )
        return f"not checked: the source checkpoint {path!r} is needed, {reason}"
    matches = [name for name, encoder in encoders.items() if _same(trunk, encoder)]
    if claimed in matches:
        return f"verified against {path!r}"
    if matches:
        raise _Problem(f"it says the {claimed} encoder, the weights are the {matches[0]} encoder of {path!r}")
    return (
        f"not checked: the source checkpoint {path!r} has changed since the export (neither encoder is "
        f"these weights)"
    )


# --------------------------------------------------------------------------------------------
# reading


def read_card(
    weights, trunk: dict | None = None, arch: str | None = None, sha256: str | None = None
) -> dict | None:
    """The card of the weights file ``weights`` (``weights.card.json``), checked against the file.

    Args:
        weights (str | PathLike): the weights file.
        trunk (dict[str, Tensor] | None): the file's trunk as
            :func:`~adam_ext.checkpoints.load_pretrained` read it, with ``arch`` (the architecture it
            derived from the keys); None reads the file (through ``load_pretrained``, which calls back).
        arch (str | None): see ``trunk``.
        sha256 (str | None): the file's SHA-256 when already known (else it is computed, only when a
            card exists: 0.15 s for resnet50's 90 MiB on one core of a Xeon).

    Returns:
        dict | None: the parsed card, with ``"checked"`` added (not a card field: what was checked,
        and the encoder verdict: ``"verified against PATH"`` or ``"not checked: WHY"``); None when
        there is none, or when it does not parse or contradicts the weights (then a
        :class:`ModelCardWarning` names the card and the weights and says why). Never raises.
    """
    weights = os.fspath(weights)
    if trunk is None or arch is None:
        from .layouts import load_pretrained

        return load_pretrained(weights).card
    path = card_paths(weights)[0]
    if not os.path.lexists(path):
        return None
    try:
        if not os.path.isfile(path):
            raise _Problem("it is not a regular file")
        card = _parse(path)
    except _Problem as problem:
        _warn(f"model card {path!r} of {weights!r} is malformed: {problem}; it is ignored")
        return None
    try:
        encoder = _check_claims(card, weights, trunk, arch, sha256)
    except _Problem as problem:
        stale = str(problem).startswith("it is stale")
        what = str(problem) if stale else f"it does not match the weights: {problem}"
        _warn(f"model card {path!r} of {weights!r}: {what}; the card is ignored")
        return None
    except OSError as err:
        _warn(f"model card {path!r} of {weights!r} cannot be checked ({err}); it is ignored")
        return None
    card["checked"] = {
        "against": "sha256, bytes, container, arch, keys and shapes, counts, input channels",
        "encoder": encoder,
    }
    return card


def _warn(message: str) -> None:
    warnings.warn(printable(message), ModelCardWarning, stacklevel=3)


def card_line(card: dict, weights) -> str:
    """One line naming the card of ``weights`` and what it says (what ``adam export`` and
    ``adam finetune --init`` print). Only a card :func:`read_card` returned (checked) is
    said to match; what the weights cannot show (the training) is said to be the card's claim; every
    card-derived text is :func:`printable`."""
    w, t = card["weights"], card["training"]
    stages = t.get("stages")
    if isinstance(stages, list) and stages:
        made = (
            f"{t.get('method', UNKNOWN)}, stages n={','.join(str(s.get('n')) for s in stages)}, "
            f"data {t.get('data', {}).get('dataset', UNKNOWN)}"
        )
    else:
        made = f"training {UNKNOWN}"
    checked = card.get("checked")
    if not isinstance(checked, dict):
        verdict = "not checked against the weights"
    else:
        encoder = checked.get("encoder", "")
        verdict = (
            f"sha256 {w['sha256'][:12]}, arch, keys and shapes match the weights; encoder "
            f"{'verified' if encoder.startswith('verified') else encoder}"
        )
    return printable(
        f"model card {card_paths(weights)[0]} (+ .md): {w.get('arch')} {w.get('encoder')} "
        f"encoder ({verdict}); training, as the card says: {made}"
    )
