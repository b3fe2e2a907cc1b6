"""Export a pretrained encoder for torchvision, segmentation-models-pytorch, timm or MONAI, as a torch
or a safetensors file.

A pretraining checkpoint holds the whole MoCo model (two encoders with their projection heads,
the queue); downstream code wants the query encoder's ResNet trunk alone, as a plain state dict.
:func:`~adam_ext.checkpoints.load_pretrained` reads every layout we support and normalises it
(see :mod:`adam_ext.checkpoints.layouts`; it is also importable from here);
:func:`export_encoder` writes the trunk in the key names of the chosen library after checking
that it loads there. ``adam export`` is the command-line form.

For ResNets, torchvision, segmentation-models-pytorch 0.6 (``Unet(...).encoder``), timm 1.0 and
MONAI 1.6 (``ResNet`` and ``FlexibleUNet``'s encoder shaped like torchvision's, see
:mod:`adam_ext.checkpoints.monai_nets`) use the same parameter and buffer names, so every format
writes the same keys; the format decides which library the file is verified against (and the usage
hint printed). ``safetensors`` writes those keys into a ``.safetensors`` file (no pickle; loads in
every one of these libraries with ``safetensors.torch.load_file``), verified against torchvision;
:func:`load_pretrained` reads it back bit for bit.

Beside ``OUT`` goes its model card (:mod:`adam_ext.checkpoints.card`): ``OUT.card.json`` and
``OUT.card.md`` say what the weights are (architecture, keys, input normalisation, which encoder,
how to load them in each library), how they were made (method, stages, data, schedule, config,
versions, git commit), their monitors at the end of pretraining and their SHA-256. Weights and
card are written together, all or nothing; :func:`load_pretrained` reads the card back
(``Pretrained.card``), checks its claims against the file and warns, ignoring it, when one is untrue.

An export interrupted by SIGKILL or a power cut leaves its temp files (``.OUT.XXXX.tmp``); the next
export into the folder removes those of its own names once no other export is writing there.

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
    adam export runs/adam/best.pt --format monai encoder_monai.pt
    adam export runs/adam/best.pt --format safetensors encoder.safetensors
"""

from __future__ import annotations

import contextlib
import glob
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
FORMATS = ("torchvision", "smp", "timm", "monai", "safetensors")
#: The libraries a file of each format loads in, as the card names them.
LIBRARIES = ("torchvision", "smp", "timm", "monai")


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
    * ``timm``: ``timm.create_model(arch, pretrained=False)`` like torchvision;
    * ``monai``: MONAI's ``ResNet`` of the same depth shaped like torchvision's, and the encoder of a
      ``FlexibleUNet`` with that backbone (:mod:`~adam_ext.checkpoints.monai_nets`), both ``strict=True``;
    * ``safetensors``: like torchvision (the file's keys are torchvision's).

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
    elif fmt == "monai":
        _require("monai", fmt, "monai")
        _verify_monai(trunk, arch)
        return
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


def _verify_monai(trunk: dict, arch: str) -> None:
    """Loads ``trunk`` strictly into MONAI's ResNet and a FlexibleUNet's encoder, built on ``meta``."""
    from .monai_nets import flexible_unet, resnet

    channels = int(trunk["conv1.weight"].shape[1]) if "conv1.weight" in trunk else 3
    with torch.device("meta"):
        nets = {
            "ResNet": resnet(arch, channels),
            "FlexibleUNet encoder": flexible_unet(arch, 1, channels).encoder,
        }
    for name, net in nets.items():
        try:
            net.load_state_dict(dict(trunk), strict=True, assign=True)
        except (RuntimeError, KeyError) as err:
            one_line = " ".join(str(err).split())
            raise ValueError(f"encoder does not load into monai {arch} ({name}): {one_line}") from err


def export_encoder(src, fmt: str, out, *, encoder: str = "q", map_location="cpu", card: bool = True) -> str:
    """Writes one encoder's ResNet trunk (no projection head) as a plain state dict file, with its model card.

    The file maps torchvision ResNet key names (``conv1.weight``, ``layer4.2.bn3.running_var``, ...)
    to CPU tensors, in a torch file or (``fmt="safetensors"``) a safetensors file; it is verified to
    load in ``fmt``'s library (see :func:`verify_encoder`) before it is written, atomically (temp file
    in the same directory, fsync, ``os.replace``). Temp files that an earlier, killed export into the
    same names left behind are removed first, when no other export is writing in the folder.
    A missing output directory is created; an existing file at ``out`` is replaced, and so is its
    card. The card, ``out.card.json`` and ``out.card.md`` (see :mod:`adam_ext.checkpoints.card`),
    is written with the weights, all three or none: it is named after ``out``'s whole file name,
    so exports into one folder never overwrite each other's cards.

    Args:
        src (str | PathLike | Pretrained): checkpoint file (any layout of :func:`load_pretrained`)
            or an already loaded :class:`Pretrained`.
        fmt (str): ``"torchvision"``, ``"smp"``, ``"timm"``, ``"monai"`` or ``"safetensors"``.
        out (str | PathLike): output file.
        encoder (str): ``"q"`` (default, the query encoder, the one the paper fine-tunes) or
            ``"k"`` (the momentum key encoder).
        map_location: passed to ``torch.load`` when ``src`` is a path.
        card (bool): write the model card (default); False writes the weights alone.

    Returns:
        str: ``out``.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: bad ``fmt`` / ``encoder`` / ``out`` (a directory, the checkpoint itself, a
            name ending in ``.card.json`` / ``.card.md``: another export's card, or in ``.safetensors``
            with another format), unreadable checkpoint, no key encoder in a torchvision source, or
            weights that do not load in ``fmt``.
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
        raise ValueError(
            f"out must not end in .card.json or .card.md (the names of model cards), got {out!r}"
        )
    if out.endswith(".safetensors") and fmt != "safetensors":
        raise ValueError(
            f"out ends in .safetensors but format is {fmt!r}: use format 'safetensors' (its keys "
            f"load in every library), or another name for a torch file, got {out!r}"
        )
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
    folder, name = os.path.split(os.path.abspath(out))
    with _export_folder(folder, [name, *(os.path.basename(p) for p in card_paths(name))]):
        if not card:  # its errors name out and the reason (full disk, read-only folder)
            if fmt == "safetensors":
                atomic_write_files(folder, {name: lambda f: f.write(_safetensors_bytes(trunk))})
            else:
                atomic_save(trunk, out)
            return out
        _write_with_card(pre, trunk, fmt, encoder, out)
    return out


def _safetensors_bytes(trunk: dict) -> bytes:
    from safetensors.torch import save

    return save(trunk, metadata={"format": "pt"})  # "pt": what readers of safetensors take for torch


@contextlib.contextmanager
def _export_folder(folder: str, names: list[str]):
    """Holds a shared ``flock`` on ``folder`` while an export writes there; first, when no other export
    holds it (an exclusive lock is free), removes the temp files (``.NAME.XXXX.tmp``) that a killed
    export of one of ``names`` left. Without ``fcntl`` (not POSIX) or a lockable folder, exports run
    unguarded and leave stale temp files alone."""
    os.makedirs(folder, exist_ok=True)
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _remove_stale_temps(folder, names)
        except OSError:  # another export is writing here (BlockingIOError), or no locks on this file system
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_stale_temps(folder: str, names: list[str]) -> list[str]:
    """Deletes the temp files of the atomic writes of ``names`` (adam_ext._util.atomic names them
    ``.NAME.XXXXXXXX.tmp``) in ``folder``: regular files only, never through a link."""
    removed = []
    for name in names:
        for path in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
            if os.path.isfile(path) and not os.path.islink(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed.append(path)
    return removed


def _write_with_card(pre: Pretrained, trunk: dict, fmt: str, encoder: str, out: str) -> None:
    """Writes ``trunk`` to ``out`` and its model card beside it, all or nothing."""
    folder, name = os.path.split(os.path.abspath(out))
    container = "safetensors" if fmt == "safetensors" else "torch"

    def load(source_input):
        return load_snippets(pre.arch, name, source_input, container=container)

    model_card = build_card(pre, trunk, fmt=fmt, encoder=encoder, weights_file=name, load=load)

    def weights(f):  # a torch file is streamed (no second copy of the weights in memory); hashed as written
        hashed = _HashingWriter(f)
        if container == "safetensors":
            hashed.write(_safetensors_bytes(trunk))
        else:
            torch.save(trunk, hashed)
        model_card["weights"].update(sha256=hashed.digest.hexdigest(), bytes=hashed.size)

    def text(render):
        return lambda f: f.write(render(model_card).encode("utf-8"))

    json_name, md_name = (os.path.basename(p) for p in card_paths(name))
    # In this order (the cards need the weights' hash), all or nothing; errors name the file and the
    # reason (full disk, read-only folder).
    atomic_write_files(
        folder,
        {
            name: weights,
            json_name: text(lambda c: json.dumps(json_safe(c), indent=2) + "\n"),
            md_name: text(render_card),
        },
    )


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


def load_snippets(
    arch: str, filename: str, source_input: dict | None = None, *, container: str = "torch"
) -> dict:
    """Python that loads an exported file in each library (what its model card shows).

    Each snippet runs as it is from the folder holding ``filename`` and leaves the loaded network in
    ``model`` (smp: a U-Net whose ``encoder`` holds the weights; MONAI: the ResNet trunk, and ``unet``
    a FlexibleUNet whose ``encoder`` holds them); torchvision's also builds ``normalize``, the
    pretraining's normalisation, when ``source_input`` states it. None needs adam_ext.

    Args:
        arch (str): ResNet name, e.g. ``"resnet50"``.
        filename (str): the weights file, as the snippets open it.
        source_input (dict | None): a model card's ``input`` section (``mean``, ``std``, ``channels``).
        container (str): ``"torch"`` (read with ``torch.load``) or ``"safetensors"`` (``load_file``).

    Returns:
        dict[str, str]: ``{"torchvision": ..., "smp": ..., "timm": ..., "monai": ...}``.
    """
    name = _python_str(filename)
    if container == "safetensors":
        load, imports = f"load_file({name})", ["from safetensors.torch import load_file"]
    else:
        load, imports = f"torch.load({name}, weights_only=True)", ["import torch"]
    check = 'assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected  # fc stays new: your head'
    torchvision = [
        *imports,
        "import torchvision",
        "",
        f"model = torchvision.models.{arch}(weights=None)",
        f"missing, unexpected = model.load_state_dict({load}, strict=False)",
        check,
    ]
    mean, std = (source_input or {}).get("mean"), (source_input or {}).get("std")
    if isinstance(mean, list) and isinstance(std, list):
        torchvision += [
            "# inputs: 3-channel float images in [0, 1] (grey repeated), normalised as in pretraining",
            f"normalize = torchvision.transforms.Normalize(mean={mean}, std={std})",
        ]
    smp = [
        "import segmentation_models_pytorch as smp",
        *imports,
        "",
        f'model = smp.Unet("{arch}", encoder_weights=None, classes=1)  # classes: your masks',
        f"model.encoder.load_state_dict({load})",
    ]
    timm = [
        "import timm",
        *imports,
        "",
        f'model = timm.create_model("{arch}", pretrained=False, num_classes=2)  # num_classes: yours',
        f"missing, unexpected = model.load_state_dict({load}, strict=False)",
        check,
    ]
    return {
        name: "\n".join(lines) + "\n"
        for name, lines in (
            ("torchvision", torchvision),
            ("smp", smp),
            ("timm", timm),
            ("monai", _monai_snippet(arch, load, imports, source_input)),
        )
    }


def _python_str(text: str) -> str:
    """A Python string literal of ``text`` (its ``repr``) with ``< > & ` `` as ``\\x`` escapes: the same
    string, with nothing a Markdown or HTML reader of the model card could take for markup."""
    return repr(text).replace("<", "\\x3c").replace(">", "\\x3e").replace("&", "\\x26").replace("`", "\\x60")


def _monai_snippet(arch: str, load: str, imports: list[str], source_input: dict | None) -> list[str]:
    """MONAI's ResNet shaped like torchvision's, and a FlexibleUNet with it as encoder (resnet18/34:
    MONAI's own encoders of those depths are MedicalNet's, without shortcut convolutions)."""
    from .monai_nets import MONAI_BLOCKS

    block, layers = MONAI_BLOCKS[arch]
    channels = (source_input or {}).get("channels")
    channels = channels if isinstance(channels, int) and not isinstance(channels, bool) else 3
    shape = (
        f'spatial_dims=2, n_input_channels={channels}, conv1_t_stride=2, shortcut_type="B", '
        f"bias_downsample=False, feed_forward=False"
    )
    lines = [
        *imports,
        "from monai.networks.nets import FlexibleUNet, ResNet",
        "from monai.networks.nets.resnet import ResNetFeatures, get_inplanes",
        "",
        "# torchvision's ResNet in MONAI: 2-D, a stride-2 stem, 1x1-conv shortcuts without bias, no fc",
        f"model = ResNet({block!r}, {layers}, get_inplanes(), {shape})".replace("'", '"'),
        f"model.load_state_dict({load}, strict=True)",
        "",
        f"unet = FlexibleUNet(in_channels={channels}, out_channels=1, backbone={arch!r}, "
        f"spatial_dims=2)  # out_channels: your masks".replace("'", '"'),
    ]
    if arch in ("resnet18", "resnet34"):
        lines += [
            "encoder = ResNetFeatures.__new__(ResNetFeatures)  # its forward gives the 5 feature maps",
            f"ResNet.__init__(encoder, {block!r}, {layers}, get_inplanes(), {shape})".replace("'", '"'),
            "unet.encoder = encoder",
        ]
    return lines + [f"unet.encoder.load_state_dict({load}, strict=True)"]


def usage_hint(fmt: str, arch: str, out: str) -> str:
    """One line of Python that loads an exported file ``out`` in ``fmt``'s library."""
    load = f"torch.load({out!r}, weights_only=True)"
    if fmt == "safetensors":
        return (
            f"torchvision.models.{arch}(weights=None).load_state_dict("
            f"safetensors.torch.load_file({out!r}), strict=False)  # fc stays new; smp, timm, MONAI: same keys"
        )
    if fmt == "monai":
        return (
            f"monai.networks.nets.ResNet(..., spatial_dims=2, conv1_t_stride=2, shortcut_type='B', "
            f"bias_downsample=False, feed_forward=False).load_state_dict({load})  # the card: all of it"
        )
    if fmt == "smp":
        return f'smp.Unet("{arch}", encoder_weights=None).encoder.load_state_dict({load})'
    if fmt == "timm":
        return (
            f'timm.create_model("{arch}", pretrained=False, num_classes=N)'
            f".load_state_dict({load}, strict=False)  # fc stays new"
        )
    return f"torchvision.models.{arch}(weights=None).load_state_dict({load}, strict=False)  # fc stays new"
