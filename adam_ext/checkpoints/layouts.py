"""Every checkpoint layout adam_ext reads, normalised to its MoCo layout: :func:`load_pretrained`.

Accepted checkpoint layouts (all read with ``torch.load(weights_only=True)``, nothing unpickled beyond
tensors and plain containers, or from a ``.safetensors`` file, recognised by its content whatever its
name: a flat dict of tensors, so a bare MoCo state dict or a torchvision trunk):

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

Every trunk tensor of both encoders is checked: floating point where torchvision's is, and finite.

A file exported by ``adam export`` has a model card beside it (``FILE.card.json``, see
:mod:`adam_ext.checkpoints.card`): :attr:`Pretrained.card` holds it when it parses and every claim the
weights can settle is true (SHA-256, bytes, arch, keys and shapes, which encoder); a stale, malformed or
untrue card is left out with a :class:`~adam_ext.checkpoints.card.ModelCardWarning`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .card import is_safetensors, read_card
from .format import PRETRAIN_KIND, PRETRAIN_VERSION, readable_version

__all__ = ["ARCHS", "Pretrained", "infer_arch", "load_pretrained", "source_encoders", "trunk_weights"]

#: ResNet architectures recognised, keyed by (bottleneck blocks?, number of blocks in layer3).
ARCHS = {
    (False, 2): "resnet18",
    (False, 6): "resnet34",
    (True, 6): "resnet50",
    (True, 23): "resnet101",
    (True, 36): "resnet152",
}

_SOURCES = ("adam_ext", "official", "torchvision")
#: Checkpoint fields kept in :attr:`Pretrained.provenance` (what a model card reports).
_PROVENANCE = ("versions", "world_size", "data", "val_loss", "summary")
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
        provenance (dict): what the file records of how it was made, where present: ``versions``
            (adam_ext, torch, Python, ``git_commit``), ``world_size``, ``data`` (image counts, steps
            per epoch), ``val_loss``, ``summary`` (a ``last.pt``'s finished stages).
        card (dict | None): the model card beside the file (``FILE.card.json``, written by
            ``adam export``) when it parses and the weights bear out its claims
            (:func:`~adam_ext.checkpoints.card.read_card`); else None.
    """

    path: str
    source: str
    arch: str
    state: dict | None
    encoder_q: dict
    encoder_k: dict | None = None
    config: dict | None = None
    meta: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    card: dict | None = None

    @property
    def dim(self) -> int | None:
        """Embedding dimension of the projection head (None without a MoCo model or head)."""
        return _head_dim(self.state) if self.state is not None else None

    @property
    def K(self) -> int | None:  # MoCo's name for the queue length
        """Queue length (None when the checkpoint holds no queue)."""
        if self.state is None or "queue" not in self.state:
            return None
        return int(self.state["queue"].shape[0])


# --------------------------------------------------------------------------------------------
# loading


def _read(path: str, map_location, mmap: bool = False):
    """The object of a torch file (``torch.load(weights_only=True)``; ``mmap``: tensors read when
    touched) or the tensors of a safetensors file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} must be a file, got a directory or special file")
    if is_safetensors(path):
        return _read_safetensors(path, map_location)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # UnpicklingError (weights_only refused); RuntimeError, KeyError (not torch)
        if mmap:  # a file of torch's legacy (pre-1.6) format cannot be mapped: read it whole
            return _read(path, map_location)
        raise ValueError(
            f"checkpoint {path!r} could not be read with torch.load(weights_only=True): "
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}. "
            "Only files of tensors and plain containers are read; re-save the model's state_dict alone "
            "if the file also pickles other objects"
        ) from err


def _read_safetensors(path: str, map_location) -> dict:
    """The tensors of a safetensors file, on the CPU then moved by ``map_location`` (a device, or
    ``"cpu"``): a flat state dict, every dtype as stored."""
    try:
        from safetensors.torch import load_file
    except ImportError as err:  # a declared dependency; said plainly if it is missing
        raise ValueError(
            f"checkpoint {path!r} is a safetensors file: pip install safetensors ({err})"
        ) from err
    try:
        tensors = load_file(path, device="cpu")
    except Exception as err:  # SafetensorError (a malformed header or truncated data), OSError
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(
            f"checkpoint {path!r} could not be read as a safetensors file: {type(err).__name__}: {first}"
        ) from err
    if map_location not in (None, "cpu") and not (callable(map_location) or isinstance(map_location, dict)):
        tensors = {k: v.to(map_location) for k, v in tensors.items()}
    return tensors


def _is_state_dict(obj) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, torch.Tensor) for v in obj.values())
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


def _check_trunk(
    trunk: dict, arch: str, *, what: str, declared_from: str | None, path: str | None = None, key_in_file=None
) -> None:
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


def source_encoders(path) -> dict:
    """The query and key encoders' trunks of a checkpoint, as :func:`load_pretrained` names them, read
    lazily (memory-mapped) and without checking values or reading a card: what a model card's encoder
    claim is compared with.

    Returns:
        dict: ``{"query": trunk, "key": trunk or None}``.

    Raises:
        FileNotFoundError, ValueError: no such regular file, or no layout recognised.
    """
    path = os.fspath(path)
    obj = _read(path, "cpu", mmap=True)
    if not isinstance(obj, dict):
        message = f"checkpoint {path!r} must hold a dict, got {type(obj).__name__}"
        raise ValueError(message)
    model, wrapper, config, _, _ = _unwrap(obj, path)
    _, _, encoder_q, encoder_k, _ = _encoders(model, wrapper, config, path)
    return {"query": encoder_q, "key": encoder_k}


def trunk_weights(path, arch: str) -> dict:
    """The query trunk of the checkpoint ``path`` (any layout :func:`load_pretrained` reads) as a state
    dict for :func:`adam_ext.models.build_backbone` / ``MoCo(weights=...)``.

    Raises:
        ValueError: the file holds another architecture than ``arch`` (naming both), or no trunk.
        FileNotFoundError: no such file.
    """
    pre = load_pretrained(path)
    if pre.arch != arch:
        raise ValueError(f"weights file {os.fspath(path)!r} holds a {pre.arch}, not the backbone {arch}")
    return dict(pre.encoder_q)


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

    Warns:
        ModelCardWarning: the model card beside the file is stale (another file's SHA-256), malformed
            or claims what the weights are not; it is then not in :attr:`Pretrained.card`.
    """
    path = os.fspath(path)
    obj = _read(path, map_location)
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path!r} must hold a dict, got {type(obj).__name__}; {_LAYOUTS_HELP}")

    meta = {
        k: obj[k]
        for k in ("epoch", "step", "stage", "version")
        if k in obj and not isinstance(obj[k], torch.Tensor)
    }
    provenance = {k: obj[k] for k in _PROVENANCE if isinstance(obj.get(k), (dict, list, int, float, str))}
    model, wrapper, config, declared, declared_from = _unwrap(obj, path)
    source, state, encoder_q, encoder_k, in_file = _encoders(model, wrapper, config, path)
    arch = declared if declared is not None else infer_arch(encoder_q, what=f"checkpoint {path!r}")
    prefix = "" if source == "torchvision" else "encoder_q."
    _check_trunk(
        encoder_q,
        arch,
        what=f"query encoder of {path!r}",
        declared_from=declared_from,
        path=path,
        key_in_file=lambda key: in_file.get(prefix + key, prefix + key),
    )
    if encoder_k is not None:
        _check_trunk(
            encoder_k,
            arch,
            what=f"key encoder of {path!r}",
            declared_from=declared_from,
            path=path,
            key_in_file=lambda key: in_file.get("encoder_k." + key, "encoder_k." + key),
        )
    return Pretrained(
        path=path,
        source=source,
        arch=arch,
        state=state,
        encoder_q=encoder_q,
        encoder_k=encoder_k,
        config=config,
        meta=meta,
        provenance=provenance,
        card=read_card(path, trunk=encoder_q, arch=arch),
    )


def _unwrap(obj: dict, path: str):
    """(model state dict, wrapper layout or None, config, declared arch, where it was declared)."""
    config, declared, declared_from = None, None, None
    if "kind" in obj:
        if obj["kind"] != PRETRAIN_KIND:
            raise ValueError(
                f"checkpoint {path!r} must be of kind {PRETRAIN_KIND!r}, got kind {obj['kind']!r}"
            )
        version = obj.get("version")
        if not readable_version(version, PRETRAIN_VERSION):
            raise ValueError(
                f"checkpoint {path!r} has version {version!r}; this adam_ext reads versions <= {PRETRAIN_VERSION}"
            )
        model = obj.get("model")
        if not _is_state_dict(model):
            raise ValueError(
                f"checkpoint {path!r} of kind {PRETRAIN_KIND!r} must hold a state dict under 'model', "
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
    return model, wrapper, config, declared, declared_from


def _encoders(model: dict, wrapper, config, path: str):
    """(source layout, normalised MoCo state or None, query trunk, key trunk or None, {stripped key:
    key in the file} for messages)."""
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
    return source, state, encoder_q, encoder_k, in_file


# --------------------------------------------------------------------------------------------
# export
