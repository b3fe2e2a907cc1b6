"""Export a pretrained encoder for torchvision, segmentation-models-pytorch or timm.

A pretraining checkpoint holds the whole MoCo model (two encoders with their projection heads,
the queue); downstream code wants the query encoder's ResNet trunk alone, as a plain state dict.
:func:`~adam_ext.checkpoints.load_pretrained` reads every layout we support and normalises it
(see :mod:`adam_ext.checkpoints.layouts`; it is also importable from here);
:func:`export_encoder` writes the trunk in the key names of the chosen library after checking
that it loads there. ``adam export`` is the command-line form.

For ResNets, torchvision, segmentation-models-pytorch 0.6 (``Unet(...).encoder``) and timm 1.0
use the same parameter and buffer names, so the three formats write the same keys; the format
decides which library the file is verified against (and the usage hint printed).

Beside ``OUT`` goes its model card (:mod:`adam_ext.checkpoints.card`): ``OUT.card.json`` and
``OUT.card.md`` say what the weights are (architecture, keys, input normalisation, which encoder,
how to load them in each library), how they were made (method, stages, data, schedule, config,
versions, git commit), their monitors at the end of pretraining and their SHA-256. Weights and
card are written together, all or nothing; :func:`load_pretrained` reads the card back
(``Pretrained.card``) and warns when it no longer matches the file.

Example:
    >>> from adam_ext.export import export_encoder, load_pretrained      # doctest: +SKIP
    >>> pre = load_pretrained("runs/adam/best.pt")                       # doctest: +SKIP
    >>> pre.arch, pre.source                                             # doctest: +SKIP
    ('resnet50', 'adam_ext')
    >>> export_encoder(pre, "smp", "encoder_smp.pt")                     # doctest: +SKIP
    'encoder_smp.pt'
    >>> import segmentation_models_pytorch as smp, torch                 # doctest: +SKIP
    >>> net = smp.Unet("resnet50", encoder_weights=None, classes=1)      # doctest: +SKIP
    >>> net.encoder.load_state_dict(torch.load("encoder_smp.pt", weights_only=True))  # doctest: +SKIP

From the shell::

    adam export runs/adam/best.pt --format torchvision encoder.pt
    adam export moco_v2_800ep.pth.tar --format smp encoder_smp.pt --encoder k
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from . import (
    ARCHS,
    Pretrained,
    atomic_save,
    atomic_write_files,
    build_card,
    card_paths,
    infer_arch,
    json_safe,
    load_pretrained,
    render_card,
)

__all__ = [
    "ARCHS",
    "FORMATS",
    "Pretrained",
    "export_encoder",
    "infer_arch",
    "load_pretrained",
    "load_snippets",
    "usage_hint",
    "verify_encoder",
]

#: Export formats accepted by :func:`export_encoder`.
FORMATS = ("torchvision", "smp", "timm")


def _require(module: str, fmt: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"format {fmt!r} needs {package} (pip install {package}): {err}") from err


def verify_encoder(trunk: dict, arch: str, fmt: str) -> None:
    """Loads ``trunk`` into the ``fmt`` library's ``arch`` model, built without any download.

    * ``torchvision``: ``torchvision.models.<arch>(weights=None).load_state_dict(trunk, strict=False)``
      with only ``fc.weight``/``fc.bias`` missing and nothing unexpected;
    * ``smp``: the encoder ``smp.Unet(arch, encoder_weights=None)`` builds
      (``smp.encoders.get_encoder(arch, weights=None)``), ``strict=True``;
    * ``timm``: ``timm.create_model(arch, pretrained=False)`` like torchvision.

    The model is built on the ``meta`` device and loaded with ``assign=True``: the library's own
    module tree and ``load_state_dict`` check every key and shape, without allocating or
    initialising real weights (a tenth of the time for resnet50). ``trunk`` is not modified.

    Args:
        trunk (dict[str, Tensor]): ResNet trunk state dict (no ``fc.*``).
        arch (str): ResNet name, e.g. ``"resnet50"``.
        fmt (str): one of :data:`FORMATS`.

    Raises:
        ValueError: unknown ``fmt``, or the state dict does not load.
        ImportError: the library of ``fmt`` is not installed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "smp":
        smp = _require("segmentation_models_pytorch", fmt, "segmentation-models-pytorch")
    elif fmt == "timm":
        timm = _require("timm", fmt, "timm")
    else:
        import torchvision
    trunk = dict(trunk)  # smp's ResNetEncoder.load_state_dict pops keys from its argument
    try:
        with torch.device("meta"):
            if fmt == "smp":
                # The same encoder smp.Unet(arch, encoder_weights=None) builds, without its decoder.
                model = smp.encoders.get_encoder(arch, in_channels=3, depth=5, weights=None)
            elif fmt == "timm":
                model = timm.create_model(arch, pretrained=False)
            else:
                model = getattr(torchvision.models, arch)(weights=None)
        if fmt == "smp":
            model.load_state_dict(trunk, strict=True, assign=True)
            return
        result = model.load_state_dict(trunk, strict=False, assign=True)
    except (RuntimeError, KeyError) as err:
        raise ValueError(f"encoder does not load into {fmt} {arch}: {err}") from err
    if sorted(result.missing_keys) != ["fc.bias", "fc.weight"] or result.unexpected_keys:
        raise ValueError(
            f"encoder does not load into {fmt} {arch}: expected only fc.weight/fc.bias missing and "
            "no unexpected keys, "
            f"got missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def export_encoder(src, fmt: str, out, *, encoder: str = "q", map_location="cpu", card: bool = True) -> str:
    """Writes one encoder's ResNet trunk (no projection head) as a plain state dict file, with its model card.

    The file maps torchvision ResNet key names (``conv1.weight``, ``layer4.2.bn3.running_var``, ...)
    to CPU tensors; it is verified to load in ``fmt``'s library (see :func:`verify_encoder`)
    before it is written, atomically (temp file in the same directory, fsync, ``os.replace``).
    A missing output directory is created; an existing file at ``out`` is replaced, and so is its
    card. The card, ``out.card.json`` and ``out.card.md`` (see :mod:`adam_ext.checkpoints.card`),
    is written with the weights, all three or none: it is named after ``out``'s whole file name,
    so exports into one folder never overwrite each other's cards.

    Args:
        src (str | PathLike | Pretrained): checkpoint file (any layout of :func:`load_pretrained`)
            or an already loaded :class:`Pretrained`.
        fmt (str): ``"torchvision"``, ``"smp"`` or ``"timm"``.
        out (str | PathLike): output file.
        encoder (str): ``"q"`` (default, the query encoder, the one the paper fine-tunes) or
            ``"k"`` (the momentum key encoder).
        map_location: passed to ``torch.load`` when ``src`` is a path.
        card (bool): write the model card (default); False writes the weights alone.

    Returns:
        str: ``out``.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: bad ``fmt`` / ``encoder`` / ``out`` (a directory, the checkpoint itself, or a
            name ending in ``.card.json`` / ``.card.md``: another export's card), unreadable checkpoint, no key encoder
            in a torchvision source, or weights that do not load in ``fmt``.
        ImportError: the library of ``fmt`` is not installed.
        OSError: ``out`` cannot be written (read-only folder, full disk): ``cannot write OUT:
            REASON``, one line; no partial ``out`` or temp file is left.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if encoder not in ("q", "k"):
        raise ValueError(f"encoder must be 'q' or 'k', got {encoder!r}")
    out = os.fspath(out)
    if not out or out.endswith(os.sep) or os.path.isdir(out):
        raise ValueError(f"out must be a file path, got {out!r} (a directory)")
    if out.endswith((".card.json", ".card.md")):
        raise ValueError(f"out must not end in .card.json or .card.md (the names of model cards), got {out!r}")
    pre = src if isinstance(src, Pretrained) else load_pretrained(src, map_location=map_location)
    if os.path.exists(out) and os.path.exists(pre.path) and os.path.samefile(out, pre.path):
        raise ValueError(f"out must differ from the checkpoint, got {out!r} for both")
    trunk = pre.encoder_q if encoder == "q" else pre.encoder_k
    if trunk is None:
        raise ValueError(
            f"encoder 'k' requested but checkpoint {pre.path!r} ({pre.source} layout) has no key encoder"
        )
    # Own, contiguous CPU tensors: saving a view would write its whole underlying storage.
    trunk = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in trunk.items()}
    verify_encoder(trunk, pre.arch, fmt)
    if not card:
        atomic_save(trunk, out)  # makes the folder; its errors name out and the reason (full disk, read-only folder)
        return out
    _write_with_card(pre, trunk, fmt, encoder, out)
    return out


def _write_with_card(pre: Pretrained, trunk: dict, fmt: str, encoder: str, out: str) -> None:
    """Writes ``trunk`` to ``out`` and its model card beside it, all or nothing."""
    folder, name = os.path.split(os.path.abspath(out))
    model_card = build_card(pre, trunk, fmt=fmt, encoder=encoder, weights_file=name,
                            load=lambda source_input: load_snippets(pre.arch, name, source_input))

    def weights(f):  # streamed: no second copy of the weights in memory; hashed as written
        hashed = _HashingWriter(f)
        torch.save(trunk, hashed)
        model_card["weights"].update(sha256=hashed.digest.hexdigest(), bytes=hashed.size)

    def text(render):
        return lambda f: f.write(render(model_card).encode("utf-8"))

    json_name, md_name = (os.path.basename(p) for p in card_paths(name))
    # In this order (the cards need the weights' hash), all or nothing; errors name the file and the
    # reason (full disk, read-only folder).
    atomic_write_files(folder, {name: weights, json_name: text(lambda c: json.dumps(json_safe(c), indent=2) + "\n"),
                                md_name: text(render_card)})


class _HashingWriter:
    """A binary file's ``write`` that also feeds SHA-256 and counts bytes (what torch.save needs of a file)."""

    def __init__(self, f):
        self.f, self.digest, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += memoryview(data).nbytes
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def load_snippets(arch: str, filename: str, source_input: dict | None = None) -> dict:
    """Python that loads an exported file in each library (what its model card shows).

    Each snippet runs as it is from the folder holding ``filename`` and leaves the loaded network in
    ``model`` (smp: a U-Net whose ``encoder`` holds the weights); torchvision's also builds
    ``normalize``, the pretraining's normalisation, when ``source_input`` states it.

    Args:
        arch (str): ResNet name, e.g. ``"resnet50"``.
        filename (str): the weights file, as the snippets open it.
        source_input (dict | None): a model card's ``input`` section (``mean``, ``std``).

    Returns:
        dict[str, str]: ``{"torchvision": ..., "smp": ..., "timm": ...}``.
    """
    load = f"torch.load({filename!r}, weights_only=True)"
    check = 'assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected  # fc stays new: your head'
    torchvision = ["import torch", "import torchvision", "",
                   f'model = torchvision.models.{arch}(weights=None)',
                   f"missing, unexpected = model.load_state_dict({load}, strict=False)", check]
    mean, std = (source_input or {}).get("mean"), (source_input or {}).get("std")
    if isinstance(mean, list) and isinstance(std, list):
        torchvision += ["# inputs: 3-channel float images in [0, 1] (grey repeated), normalised as in pretraining",
                        f"normalize = torchvision.transforms.Normalize(mean={mean}, std={std})"]
    smp = ["import segmentation_models_pytorch as smp", "import torch", "",
           f'model = smp.Unet("{arch}", encoder_weights=None, classes=1)  # classes: your masks',
           f"model.encoder.load_state_dict({load})"]
    timm = ["import timm", "import torch", "",
            f'model = timm.create_model("{arch}", pretrained=False, num_classes=2)  # num_classes: yours',
            f"missing, unexpected = model.load_state_dict({load}, strict=False)", check]
    return {name: "\n".join(lines) + "\n" for name, lines in
            (("torchvision", torchvision), ("smp", smp), ("timm", timm))}


def usage_hint(fmt: str, arch: str, out: str) -> str:
    """One line of Python that loads an exported file ``out`` in ``fmt``'s library."""
    load = f"torch.load({out!r}, weights_only=True)"
    if fmt == "smp":
        return f'smp.Unet("{arch}", encoder_weights=None).encoder.load_state_dict({load})'
    if fmt == "timm":
        return (
            f'timm.create_model("{arch}", pretrained=False, num_classes=N)'
            f".load_state_dict({load}, strict=False)  # fc stays new"
        )
    return f"torchvision.models.{arch}(weights=None).load_state_dict({load}, strict=False)  # fc stays new"
