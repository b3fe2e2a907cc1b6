"""Global and dense embeddings of images from a pretrained encoder (``adam embed``).

An :class:`Embedder` holds a torchvision ResNet trunk initialised from a checkpoint spec
(``random``, ``imagenet:PATH`` or a checkpoint PATH in any layout that
:func:`adam_ext.checkpoints.load_pretrained` reads: ours, official Adam-v1/MoCo, torchvision). From
an image batch it returns

* **global** embeddings: the last stage's feature map average-pooled, Tensor[N, C] (C = 512 for
  resnet18/34, 2048 for resnet50/101): what pretraining's projection head sees;
* **dense** embeddings: per-pixel feature vectors, a *hypercolumn* of the chosen stages
  (default ``layer3`` + ``layer4``): each stage's map L2-normalised over channels, bilinearly
  upsampled to a common size (by default the input's) and concatenated, Tensor[N, C', H, W].

``adam embed`` writes ``OUT/global.npy``, ``OUT/dense.npy`` (with ``--dense``), ``OUT/paths.txt``
and ``OUT/embed.json`` all or nothing: each goes to a temp file in ``OUT`` first and they replace the
previous outputs only once every one is written, so a failed write (full disk, read-only folder)
leaves the previous outputs as they were and no partial file. ``paths.txt`` holds one path per
line (row ``i`` of the arrays), as the file system's bytes (:func:`os.fsencode`): a file name
that is not valid UTF-8 is written as its raw bytes, exactly as ``ls`` / ``find`` give it; read
the file as bytes, or in Python with ``open(path, encoding="utf-8", errors="surrogateescape")``,
and every line opens its file. A path with a line break cannot be listed so and is refused.

Images go in as the data readers give them (uint8, 1 or 3 channels, any size); they are resized
to ``size`` × ``size`` and normalised like pretraining's views (grey → 3 channels, ImageNet mean
and std). Evaluation mode, no gradients, deterministic for a given input.

Example::

    from adam_ext.eve import Embedder
    emb = Embedder("runs/demo/best.pt", size=224)
    g = emb.global_embeddings(batch_uint8)            # (N, 512)
    d = emb.dense_embeddings(batch_uint8)             # (N, 768, 224, 224)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from .._util import runfolder
from .._util.runfolder import write_errors
from ..checkpoints import atomic_write_files
from ..data.views import IMAGENET_MEAN, IMAGENET_STD, ToNormalizedRGB
from ..engine.config import check_side
from ..models import BACKBONES, build_backbone
from .common import resolve_device

__all__ = [
    "EMBED_KIND",
    "INPUT_BYTES_PER_PIXEL",
    "STAGES",
    "Embedder",
    "check_writable",
    "embed_dataset",
    "embed_output",
    "open_encoder_spec",
    "write_embeddings",
]

#: ``kind`` in ``embed.json``: what the folder is (its files are its output, so it has no marker file).
EMBED_KIND = "adam_ext.embed"
#: Bytes per input pixel an image in a batch takes at the least: the float32 input (3 channels) and
#: the stem's conv1 and bn1 maps at stride 2 (64 channels each), 4 x (3 + 2 x 16); the size limits
#: of ``adam embed --size`` multiply it by the batch (issue 24).
INPUT_BYTES_PER_PIXEL = 140

#: the ResNet stages whose maps dense embeddings can use, with their strides
STAGES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


def open_encoder_spec(spec: str, arch: str | None):
    """The encoder architecture for ``spec`` and the file behind it, read once.

    Returns:
        ``(arch, pretrained)``: the checkpoint's architecture (or ``arch`` for ``random``) and its
        :class:`~adam_ext.export.Pretrained` (None for ``random``), which
        :func:`~adam_ext.checkpoints.encoder.load_encoder` then loads without reading the file again.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``random`` without ``arch``, an unknown ``arch``, an unreadable file, or an
            ``arch`` that differs from the checkpoint's.
    """
    from ..checkpoints import parse_init

    if arch is not None and arch not in BACKBONES:
        raise ValueError(f"arch must be one of {', '.join(BACKBONES)}, got {arch!r}")
    kind, path = parse_init(spec)
    if kind == "random":
        if arch is None:
            raise ValueError("arch is required for a random encoder (e.g. arch='resnet18')")
        return arch, None
    from ..checkpoints import load_pretrained

    pretrained = load_pretrained(path)
    if arch is not None and arch != pretrained.arch:
        raise ValueError(f"checkpoint {path!r} holds a {pretrained.arch} encoder, but arch is {arch}")
    return pretrained.arch, pretrained


class Embedder(nn.Module):
    """A pretrained ResNet trunk that maps images to global and dense embeddings.

    Args:
        spec: ``random``, ``imagenet:PATH`` or a checkpoint PATH (see
            :func:`adam_ext.checkpoints.encoder.parse_init`).
        arch: the ResNet name; taken from the checkpoint when None (required for ``random``).
        size: side in pixels the images are resized to (default 224, the paper's).
        layers: stages whose maps make the dense hypercolumn (subset of :data:`STAGES`).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        seed: seed of the random initialisation (``random`` only), so random baselines repeat.

    Attributes:
        report: the :class:`~adam_ext.checkpoints.encoder.InitReport` of what was loaded.
        dim: global embedding width; ``dense_dim``: hypercolumn width.
    """

    def __init__(
        self,
        spec: str = "random",
        *,
        arch: str | None = None,
        size: int = 224,
        layers: Sequence[str] = ("layer3", "layer4"),
        device="auto",
        seed: int = 0,
    ):
        super().__init__()
        from ..checkpoints import load_encoder

        if not isinstance(size, int) or isinstance(size, bool) or size < 32:
            raise ValueError(f"size must be an integer >= 32 (pixels), got {size!r}")
        check_side("size", size)  # before any image is resized to it
        layers = tuple(layers)
        if not layers or any(layer not in STAGES for layer in layers):
            raise ValueError(f"layers must be a non-empty subset of {list(STAGES)}, got {list(layers)}")
        self.spec, self.size, self.layers = spec, size, tuple(sorted(layers, key=list(STAGES).index))
        self.arch, pretrained = open_encoder_spec(spec, arch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            trunk, self.dim = build_backbone(self.arch)
        self.report = load_encoder(trunk, spec, self.arch, pretrained=pretrained)
        self.trunk = trunk
        widths = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
        factor = 1 if BACKBONES[self.arch] == 512 else 4
        self.dense_dim = sum(widths[layer] * factor for layer in self.layers)
        self.normalize = ToNormalizedRGB(IMAGENET_MEAN, IMAGENET_STD)
        self.device = resolve_device(device)
        self.eval().to(self.device)

    def train(self, mode: bool = True):  # always evaluation mode: BN uses its running statistics
        return super().train(False)

    def prepare(self, images) -> torch.Tensor:
        """uint8 images (Tensor[N, C, H, W], or a list of Tensor[C, H, W] of any sizes; C = 1 or 3)
        → normalised float32 Tensor[N, 3, size, size] on the embedder's device."""
        if isinstance(images, torch.Tensor):
            if images.dim() == 3:
                images = images.unsqueeze(0)
            if images.dim() != 4:
                raise ValueError(
                    f"images must be Tensor[N, C, H, W] or a list of Tensor[C, H, W], "
                    f"got shape {tuple(images.shape)}"
                )
            images = list(images)
        if not images:
            raise ValueError("images is empty")
        out = []
        for i, image in enumerate(images):
            if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] not in (1, 3):
                raise ValueError(
                    f"images[{i}] must be a Tensor[C, H, W] with C = 1 or 3, got "
                    f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}"
                )
            if image.dtype != torch.uint8:
                raise ValueError(
                    f"images[{i}] must be uint8 (0-255) as the data readers give, got {image.dtype}"
                )
            if tuple(image.shape[1:]) != (self.size, self.size):
                image = TF.resize(image, [self.size, self.size], antialias=True)
            out.append(self.normalize(image))
        return torch.stack(out).to(self.device)

    def _stages(self, x: torch.Tensor, wanted: Sequence[str]) -> dict[str, torch.Tensor]:
        t = self.trunk
        x = t.maxpool(t.relu(t.bn1(t.conv1(x))))
        maps = {}
        last = max(list(STAGES).index(w) for w in wanted)
        for name in list(STAGES)[: last + 1]:
            x = getattr(t, name)(x)
            if name in wanted:
                maps[name] = x
        return maps

    @torch.no_grad()
    def feature_maps(self, images, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The raw maps of ``layers`` (default: the embedder's), {stage: Tensor[N, C, H/s, W/s]}."""
        return self._stages(self.prepare(images), tuple(layers or self.layers))

    @torch.no_grad()
    def global_embeddings(self, images) -> torch.Tensor:
        """Average-pooled last-stage features, float32 Tensor[N, dim] (not normalised)."""
        return self._stages(self.prepare(images), ("layer4",))["layer4"].mean(dim=(2, 3)).float()

    @torch.no_grad()
    def dense_embeddings(self, images, out_size: int | None = None) -> torch.Tensor:
        """Hypercolumns, float32 Tensor[N, dense_dim, S, S] with S = ``out_size`` (default: ``size``).

        Each stage's map is L2-normalised over channels before upsampling (bilinear), so every
        stage weighs the same (a pixel's vector has norm at most sqrt(len(layers)); less between
        feature-map cells, where bilinear interpolation mixes unit vectors).
        """
        out_size = self.size if out_size is None else out_size
        if not isinstance(out_size, int) or out_size < 1:
            raise ValueError(f"out_size must be a positive integer, got {out_size!r}")
        maps = self._stages(self.prepare(images), self.layers)
        parts = [
            F.interpolate(
                F.normalize(maps[name].float(), dim=1),
                size=(out_size, out_size),
                mode="bilinear",
                align_corners=False,
            )
            for name in self.layers
        ]
        return torch.cat(parts, dim=1)


def embed_dataset(
    embedder: Embedder,
    dataset,
    *,
    batch_size: int = 32,
    dense: bool = False,
    dense_size: int | None = None,
    progress: bool = True,
) -> dict:
    """Embeds every image of ``dataset`` (items with ``image``, optionally ``path``) in batches.

    Returns:
        dict with ``global`` float32 ndarray[N, dim], ``paths`` (list of str, "" where unknown)
        and, when ``dense``, ``dense`` float16 ndarray[N, dense_dim, S, S] (S = ``dense_size``,
        default size / 4: a full-resolution hypercolumn of every image would rarely fit in memory).

    Raises:
        ValueError: a bad ``batch_size``, no images, or a path with a line break (``paths.txt``
            lists one path per line), raised at the batch that holds it.
    """
    from tqdm import tqdm

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(dataset)
    if n == 0:
        raise ValueError("the data set holds no images")
    dense_size = dense_size or max(1, embedder.size // 4)
    glob, dens, paths = [], [], []
    bar = tqdm(total=n, desc="embed", unit="img", disable=not progress)
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        images = [item["image"] for item in items]
        batch_paths = [str(item.get("path", "")) for item in items]
        for path in batch_paths:
            if "\n" in path or "\r" in path:
                raise ValueError(
                    f"image path {path!r} contains a line break; paths.txt lists one path per line: "
                    "rename the file"
                )
        paths += batch_paths
        glob.append(embedder.global_embeddings(images).cpu().numpy())
        if dense:
            dens.append(embedder.dense_embeddings(images, dense_size).half().cpu().numpy())
        bar.update(len(items))
    bar.close()
    out = {"global": np.concatenate(glob), "paths": paths}
    if dense:
        out["dense"] = np.concatenate(dens)
    return out


def write_embeddings(out, result: dict, meta: dict) -> None:
    """Writes what :func:`embed_dataset` returned into ``out`` (``global.npy``, ``dense.npy`` when
    present, ``paths.txt``, ``embed.json`` holding ``meta``), all or nothing (see the module docstring).

    Raises:
        OSError: ``cannot write OUT/NAME: REASON``; the previous outputs are left as they were.
    """
    outputs = {"global.npy": lambda f: np.save(f, result["global"])}
    if "dense" in result:
        outputs["dense.npy"] = lambda f: np.save(f, result["dense"])
    outputs["paths.txt"] = lambda f: f.write(b"".join(os.fsencode(p) + b"\n" for p in result["paths"]))
    meta = {"kind": EMBED_KIND, **meta}
    outputs["embed.json"] = lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode("utf-8"))
    atomic_write_files(out, outputs)


@contextmanager
def embed_output(out, inputs=()):
    """The output folder of ``adam embed`` while the block runs: refused when it is another command's
    folder or is (or contains) one of ``inputs`` (:func:`adam_ext._util.runfolder.check_folder`),
    locked against a second writer (on the folder itself: nothing is added to it), free of links,
    and rid of the temp files a killed ``adam embed`` left (they are as large as the outputs).
    Yields the temp files removed."""
    runfolder.check_folder(out, "embed", inputs=inputs)
    with runfolder.lock_directory(out):
        runfolder.refuse_symlinks(out)
        yield runfolder.remove_stale_temps(out)


def check_writable(out: Path) -> None:
    """Creates ``out`` and a file in it (removed at once), so that an unwritable output folder is an
    error before the embedding rather than after it."""
    with write_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".embed-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
