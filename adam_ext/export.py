"""Export a pretrained encoder for torchvision, segmentation-models-pytorch or timm.

A pretraining checkpoint holds the whole MoCo model (two encoders with their projection heads,
the queue); downstream code wants the query encoder's ResNet trunk alone, as a plain state dict.
:func:`load_pretrained` reads any of the layouts below and normalises them;
:func:`export_encoder` writes the trunk in the key names of the chosen library after checking
that it loads there. ``adam export`` is the command-line form.

Accepted checkpoint layouts (all read with ``torch.load(weights_only=True)``; nothing is
unpickled beyond tensors and plain containers):

* ``adam_ext`` — written by ``adam_ext``'s trainer (also its "best weights" file)::

      {"kind": "adam_ext.pretrain", "version": 1, "model": MoCo.state_dict(),
       "config": {"model": {"backbone": "resnet50", "dim": 128, "K": 65536, ...}, ...},
       "stage": {...}, "epoch": int, "step": int, ...}

  A bare ``MoCo.state_dict()`` (keys ``encoder_q.*``, ``encoder_k.*``, ``queue``,
  ``queue_ptr``) is read the same way, without a config.
* ``official`` — the official Adam-v1 / MoCo code (DDP)::

      {"epoch": int, "arch": "resnet50", "state_dict": {"module.encoder_q.conv1.weight": ...,
       "module.encoder_q.fc.0.weight": ..., "module.encoder_k.*": ...,
       "module.queue": Tensor[dim, K], "module.queue_ptr": ...}, "optimizer": {...}}

  The ``module.`` prefix is stripped and the queue is transposed to our (K, dim). The head may
  be the MoCo v2 MLP (``encoder_q.fc.0/2.*``) or MoCo v1's linear ``encoder_q.fc.*``; ``arch``
  may be missing (it is then inferred from the weights).
* ``torchvision`` — a plain torchvision ResNet state dict (``conv1.weight``,
  ``layer1.0.conv1.weight``, ..., optionally ``fc.*`` and a ``module.`` prefix), on its own or
  under a ``"state_dict"`` / ``"model"`` key. It is the query encoder; there is no key encoder.

The architecture is taken from the checkpoint (``config["model"]["backbone"]`` or ``arch``)
or, when absent, inferred from the trunk: bottleneck blocks (``layer1.0.conv3``) tell resnet50/101/152
from resnet18/34, the number of blocks in ``layer3`` tells the depth. A declared architecture
that does not match the weights is an error.

For ResNets, torchvision, segmentation-models-pytorch 0.6 (``Unet(...).encoder``) and timm 1.0
use the same parameter and buffer names, so the three formats write the same keys; the format
decides which library the file is verified against (and the usage hint printed).

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

import os
from dataclasses import dataclass, field

import torch

from .checkpoint import WriteError, atomic_save

__all__ = [
    "ARCHS",
    "FORMATS",
    "Pretrained",
    "export_encoder",
    "infer_arch",
    "load_pretrained",
    "usage_hint",
    "verify_encoder",
]

#: Export formats accepted by :func:`export_encoder`.
FORMATS = ("torchvision", "smp", "timm")

#: ResNet architectures recognised, keyed by (bottleneck blocks?, number of blocks in layer3).
ARCHS = {
    (False, 2): "resnet18",
    (False, 6): "resnet34",
    (True, 6): "resnet50",
    (True, 23): "resnet101",
    (True, 36): "resnet152",
}

_KIND = "adam_ext.pretrain"
_VERSION = 1
_SOURCES = ("adam_ext", "official", "torchvision")
_LAYOUTS_HELP = (
    "accepted layouts: an adam_ext checkpoint "
    "{'kind': 'adam_ext.pretrain', 'model': MoCo.state_dict(), ...}, "
    "an official Adam/MoCo checkpoint {'arch', 'state_dict': {'module.encoder_q.*', 'module.queue', ...}}, "
    "a bare MoCo state dict (encoder_q.*, encoder_k.*, queue), "
    "or a torchvision ResNet state dict (conv1.weight, layer1.0.conv1.weight, ...)"
)


@dataclass
class Pretrained:
    """A pretraining checkpoint normalised to ``adam_ext``'s MoCo layout.

    Attributes:
        path (str): the file read.
        source (str): layout of the file: ``"adam_ext"``, ``"official"`` or ``"torchvision"``.
        arch (str): ResNet name, e.g. ``"resnet50"`` (from the checkpoint, else inferred).
        state (dict[str, Tensor] | None): the MoCo state dict in our key layout
            (``encoder_q.*``, ``encoder_k.*``, ``queue`` Tensor[K, dim], ``queue_ptr``), the
            ``module.`` prefix stripped and an official (dim, K) queue transposed; loadable into
            ``MoCo(arch, dim, K)`` when the head is the MLP. None for a ``torchvision`` source.
        encoder_q (dict[str, Tensor]): the query encoder's trunk, torchvision ResNet key names,
            no ``fc.*`` keys (loads strictly into ``torchvision.models.<arch>()`` with ``fc``
            excepted). Tensors are shared with ``state``.
        encoder_k (dict[str, Tensor] | None): the momentum key encoder's trunk likewise; None
            for a ``torchvision`` source.
        config (dict | None): the training config of an ``adam_ext`` checkpoint, else None.
        meta (dict): scalars of the checkpoint worth reporting (``epoch``, ``step``, ``stage``,
            ``version`` where present).
    """

    path: str
    source: str
    arch: str
    state: dict | None
    encoder_q: dict
    encoder_k: dict | None = None
    config: dict | None = None
    meta: dict = field(default_factory=dict)

    @property
    def dim(self) -> int | None:
        """Embedding dimension of the projection head (None without a MoCo model or head)."""
        return _head_dim(self.state) if self.state is not None else None

    @property
    def K(self) -> int | None:  # noqa: N802 - MoCo's name for the queue length
        """Queue length (None when the checkpoint holds no queue)."""
        if self.state is None or "queue" not in self.state:
            return None
        return int(self.state["queue"].shape[0])


# --------------------------------------------------------------------------------------------
# loading


def _read(path: str, map_location):
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} must be a file, got a directory or special file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # UnpicklingError (weights_only refused); RuntimeError, KeyError (not torch)
        raise ValueError(
            f"checkpoint {path!r} could not be read with torch.load(weights_only=True): "
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}. "
            "Only files of tensors and plain containers are read; re-save the model's state_dict alone "
            "if the file also pickles other objects"
        ) from err


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(k, str) for k in obj) and any(
        isinstance(v, torch.Tensor) for v in obj.values()
    )


def _strip_key(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def _strip_module(state: dict) -> dict:
    """Removes a leading ``module.`` (DDP / DataParallel), repeatedly, from every key that has it."""
    return {_strip_key(key): value for key, value in state.items()}


def _few_keys(obj, n: int = 6) -> str:
    if not isinstance(obj, dict):
        return ""
    keys = [repr(k) for k in list(obj)[:n]]
    more = f", ... ({len(obj)} in all)" if len(obj) > n else ""
    return f"; keys found: {', '.join(keys)}{more}" if keys else "; the dict is empty"


def _head_dim(state: dict) -> int | None:
    for key in ("encoder_q.fc.2.weight", "encoder_q.fc.weight"):
        if key in state and state[key].ndim == 2:
            return int(state[key].shape[0])
    return None


def _is_trunk(state: dict) -> bool:
    return "conv1.weight" in state and any(k.startswith("layer1.") for k in state)


def _sub(state: dict, prefix: str) -> dict:
    """Trunk of the encoder under ``prefix`` (e.g. ``encoder_q.``): prefix removed, ``fc.*`` dropped."""
    return {
        key[len(prefix) :]: value
        for key, value in state.items()
        if key.startswith(prefix) and not key[len(prefix) :].startswith("fc.")
    }


def infer_arch(trunk: dict, *, what: str = "checkpoint") -> str:
    """The torchvision ResNet name of a trunk state dict, from its keys.

    Args:
        trunk (dict[str, Tensor]): torchvision ResNet key names (``conv1.weight``,
            ``layer3.5.bn2.weight``, ...).
        what (str): how to name the source in errors.

    Returns:
        str: one of ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``resnet152``.

    Raises:
        ValueError: no ``layer3`` blocks, or a block count no ResNet has.
    """
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in trunk)
    blocks = {k.split(".")[1] for k in trunk if k.startswith("layer3.") and k.split(".")[1].isdigit()}
    arch = ARCHS.get((bottleneck, len(blocks)))
    if arch is None:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        known = ", ".join(
            f"{name} ({'Bottleneck' if b else 'BasicBlock'}, {n} blocks)" for (b, n), name in ARCHS.items()
        )
        raise ValueError(
            f"cannot infer the ResNet architecture of {what}: layer3 has {len(blocks)} {kind} blocks; "
            f"expected one of {known}"
        )
    return arch


def _check_trunk(trunk: dict, arch: str, *, what: str, declared_from: str | None, path: str | None = None,
                 key_in_file=None) -> None:
    """Checks ``trunk``'s keys and shapes against torchvision's ``arch`` (fc excepted), built on meta,
    then its values (see :func:`_check_values`) when ``path`` is given."""
    import torchvision

    if arch not in ARCHS.values():
        origin = f" (from {declared_from})" if declared_from else ""
        raise ValueError(f"arch of {what} must be one of {', '.join(ARCHS.values())}, got {arch!r}{origin}")
    with torch.device("meta"):
        reference = getattr(torchvision.models, arch)(weights=None).state_dict()
    reference = {k: v for k, v in reference.items() if not k.startswith("fc.")}
    missing = sorted(set(reference) - set(trunk))
    unexpected = sorted(set(trunk) - set(reference))
    bad_shapes = [
        f"{k}: expected {tuple(reference[k].shape)}, got {tuple(trunk[k].shape)}"
        for k in reference
        if k in trunk and tuple(trunk[k].shape) != tuple(reference[k].shape)
    ]
    if missing or unexpected or bad_shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if bad_shapes:
            problems.append(f"{len(bad_shapes)} shape mismatches (e.g. {'; '.join(bad_shapes[:2])})")
        hint = ""
        if declared_from:
            try:
                hint = f"; the weights look like {infer_arch(trunk, what=what)}"
            except ValueError:
                pass
        origin = f" declared by {declared_from}" if declared_from else " (inferred)"
        raise ValueError(f"{what} does not match torchvision {arch}{origin}: {', '.join(problems)}{hint}")
    if path is not None:
        _check_values(trunk, reference, path, key_in_file or (lambda key: key))


def _check_values(trunk: dict, reference: dict, path: str, key_in_file) -> None:
    """Refuses a trunk tensor that is not floating where torchvision's is (an int64 conv weight would
    be cast silently), or that holds NaN / inf; one reduction per tensor. Integer buffers of
    the reference (BatchNorm's ``num_batches_tracked``) stay as they are.

    ``key_in_file`` maps a trunk key to the key the file holds (``module.encoder_q.conv1.weight``).
    """
    for key, ref in reference.items():
        if not ref.is_floating_point():
            continue
        tensor = trunk[key]
        if not tensor.is_floating_point():
            raise ValueError(
                f"tensor {key_in_file(key)!r} in checkpoint {path!r} must be floating point like torchvision's "
                f"({str(ref.dtype).replace('torch.', '')}), got {str(tensor.dtype).replace('torch.', '')} "
                "(integer weights would be cast to float silently)"
            )
        # A NaN or inf element makes the sum NaN or inf: one reduction without a temporary (12x faster
        # than isfinite(t).all() on the CPU); the exact test only when it fails (or the sum overflowed).
        if not bool(torch.isfinite(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
            n_nan = int(torch.isnan(tensor).sum())
            n_inf = int(torch.isinf(tensor).sum())
            raise ValueError(
                f"tensor {key_in_file(key)!r} in checkpoint {path!r} must be finite, got {n_nan} NaN and "
                f"{n_inf} inf of {tensor.numel()} values: the weights are corrupted (diverged training?)"
            )


def _normalise_queue(state: dict, source: str, model_cfg: dict, path: str) -> None:
    """Puts ``state['queue']`` in our (K, dim) layout in place."""
    queue = state.get("queue")
    if not isinstance(queue, torch.Tensor):
        return
    if queue.ndim != 2:
        raise ValueError(
            f"queue in checkpoint {path!r} must be 2-D, (K, dim) or (dim, K), got {tuple(queue.shape)}"
        )
    dim = _head_dim(state) or model_cfg.get("dim")
    K = model_cfg.get("K")
    rows, cols = queue.shape
    if dim is not None and rows != cols:
        if cols == dim:
            transpose = False
        elif rows == dim:
            transpose = True
        else:
            raise ValueError(
                f"queue in checkpoint {path!r} must be (K, {dim}) or ({dim}, K) for embedding dim {dim}, "
                f"got {(rows, cols)}"
            )
    elif K is not None and rows != cols:
        transpose = cols == K
    else:  # square, or nothing to decide by: each layout's own convention
        transpose = source == "official"
    if transpose:
        state["queue"] = queue.t().contiguous()


def load_pretrained(path, map_location="cpu") -> Pretrained:
    """Reads a pretraining checkpoint of any accepted layout (see the module docstring).

    Args:
        path (str | PathLike): the checkpoint file.
        map_location: passed to ``torch.load`` (default ``"cpu"``).

    Returns:
        Pretrained: the normalised state, the trunks of both encoders, arch, config and source.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read with ``weights_only=True``, is not a dict, has no
            recognisable keys, is an ``adam_ext`` file of another kind or a newer version, or
            its architecture cannot be inferred or does not match its weights; or a trunk tensor
            (query or key encoder, BN statistics included) holds NaN / inf, or is not floating
            point where torchvision's is (an int64 conv weight). The message names the tensor's
            key in the file and the file. Integer buffers (``num_batches_tracked``, ``queue_ptr``)
            are fine; the projection head and the queue are not checked (never loaded downstream).
    """
    path = os.fspath(path)
    obj = _read(path, map_location)
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path!r} must hold a dict, got {type(obj).__name__}; {_LAYOUTS_HELP}")

    config, declared, declared_from = None, None, None
    meta = {
        k: obj[k]
        for k in ("epoch", "step", "stage", "version")
        if k in obj and not isinstance(obj[k], torch.Tensor)
    }
    if "kind" in obj:
        if obj["kind"] != _KIND:
            raise ValueError(f"checkpoint {path!r} must be of kind {_KIND!r}, got kind {obj['kind']!r}")
        version = obj.get("version")
        if not isinstance(version, int) or version > _VERSION:
            raise ValueError(
                f"checkpoint {path!r} has version {version!r}; this adam_ext reads versions <= {_VERSION}"
            )
        model = obj.get("model")
        if not _is_state_dict(model):
            raise ValueError(
                f"checkpoint {path!r} of kind {_KIND!r} must hold a state dict under 'model', "
                f"got {type(model).__name__}"
            )
        config = obj.get("config") if isinstance(obj.get("config"), dict) else None
        model_cfg = (config or {}).get("model")
        backbone = model_cfg.get("backbone") if isinstance(model_cfg, dict) else None
        if isinstance(backbone, str):
            declared, declared_from = backbone, "config['model']['backbone']"
        wrapper = "adam_ext"
    elif _is_state_dict(obj.get("state_dict")):
        model, wrapper = obj["state_dict"], "official"
    elif _is_state_dict(obj.get("model")):
        model, wrapper = obj["model"], "official"
    elif _is_state_dict(obj):
        model, wrapper = obj, None
    else:
        raise ValueError(f"checkpoint {path!r} has no recognisable keys{_few_keys(obj)}; {_LAYOUTS_HELP}")
    if declared is None and isinstance(obj.get("arch"), str):
        declared, declared_from = obj["arch"], "the checkpoint's 'arch'"

    had_module = any(k.startswith("module.") for k in model)
    state = _strip_module(model)
    # the key each (stripped) tensor has in the file, for error messages
    in_file = {_strip_key(key): key for key in model} if had_module else {}
    if any(k.startswith("encoder_q.") for k in state):
        # A bare MoCo state dict is ours unless it carries DDP's prefix or sits in an official wrapper.
        source = wrapper or ("official" if had_module else "adam_ext")
        model_cfg = (config or {}).get("model")
        model_cfg = model_cfg if isinstance(model_cfg, dict) else {}
        _normalise_queue(state, source, model_cfg, path)
        encoder_q = _sub(state, "encoder_q.")
        encoder_k = _sub(state, "encoder_k.") or None
    elif _is_trunk(state):
        source = "torchvision"
        encoder_q = {k: v for k, v in state.items() if not k.startswith("fc.")}
        encoder_k, state = None, None
    else:
        raise ValueError(f"checkpoint {path!r} has no recognisable keys{_few_keys(model)}; {_LAYOUTS_HELP}")

    arch = declared if declared is not None else infer_arch(encoder_q, what=f"checkpoint {path!r}")
    prefix = "" if source == "torchvision" else "encoder_q."
    _check_trunk(encoder_q, arch, what=f"query encoder of {path!r}", declared_from=declared_from, path=path,
                 key_in_file=lambda key: in_file.get(prefix + key, prefix + key))
    if encoder_k is not None:
        _check_trunk(encoder_k, arch, what=f"key encoder of {path!r}", declared_from=declared_from, path=path,
                     key_in_file=lambda key: in_file.get("encoder_k." + key, "encoder_k." + key))
    return Pretrained(
        path=path, source=source, arch=arch, state=state, encoder_q=encoder_q, encoder_k=encoder_k,
        config=config, meta=meta,
    )


# --------------------------------------------------------------------------------------------
# export


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


def export_encoder(src, fmt: str, out, *, encoder: str = "q", map_location="cpu") -> str:
    """Writes one encoder's ResNet trunk (no projection head) as a plain state dict file.

    The file maps torchvision ResNet key names (``conv1.weight``, ``layer4.2.bn3.running_var``, ...)
    to CPU tensors; it is verified to load in ``fmt``'s library (see :func:`verify_encoder`)
    before it is written, atomically (temp file in the same directory, fsync, ``os.replace``).
    A missing output directory is created; an existing file at ``out`` is replaced.

    Args:
        src (str | PathLike | Pretrained): checkpoint file (any layout of :func:`load_pretrained`)
            or an already loaded :class:`Pretrained`.
        fmt (str): ``"torchvision"``, ``"smp"`` or ``"timm"``.
        out (str | PathLike): output file.
        encoder (str): ``"q"`` (default, the query encoder, the one the paper fine-tunes) or
            ``"k"`` (the momentum key encoder).
        map_location: passed to ``torch.load`` when ``src`` is a path.

    Returns:
        str: ``out``.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: bad ``fmt`` / ``encoder`` / ``out``, unreadable checkpoint, no key encoder
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
    directory = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise WriteError(err.errno, f"cannot write {out}: {err.strerror or err}") from err
    atomic_save(trunk, out)  # its errors name out and the reason (full disk, read-only folder)
    return out


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
