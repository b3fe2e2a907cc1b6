"""The Eve explorer: where does this point of this image land in that one? (``adam eve explore``)

Writes ``OUT/explore.html``, ONE self-contained page: no server and no network, it works opened
from disk (``file://``). The radiographs are inline PNG data URIs, every encoder's dense
hypercolumns (see :class:`~adam_ext.eve.embed.Embedder`) inline as base64 float16, and the code
inline JavaScript. In the page:

* two or more radiographs side by side, one encoder at a time (a menu switches between them);
* moving the pointer over one image (the *source*) shows over every other image the heat map of
  the cosine similarity between the source's feature vector at the pointer (bilinearly sampled
  from the dense map, as :func:`~adam_ext.eve.correspondence.sample_vectors` does) and every
  position of the other image's map, with the best match (the cosine nearest neighbour, as
  :func:`~adam_ext.eve.correspondence.nearest_match` finds it) marked by a cross;
* the data set's landmarks drawn on each image (dots), the matches of the source's landmarks on
  the others (rings, a dashed line to the true landmark), and a table of the landmark transfer
  errors: the distance from each match to the true landmark, in pixels of the target image as
  stored. Clicking a landmark's name in the table points at it. A second table gives every
  encoder's mean and median error over all ordered image pairs, beside the "(same position)"
  baseline (the source coordinates taken as the answer).

Points are (x, y) in image pixels with pixel centres at integers, the readers' convention; a
dense map of side S covers the whole image, so map pixel m lies at image pixel
(m + 0.5) · W / S − 0.5 (:func:`~adam_ext.eve.correspondence.rescale_points`).

Size. Each map is stored as it is computed, S x S positions x C channels of float16 (no channel
reduction, so that the page shows exactly what ``Embedder.dense_embeddings`` gives: C = 768 for
resnet18/34 and 3072 for resnet50/101 with ``layer3,layer4``), base64-encoded: 8/3 · S² · C bytes a
map (image and encoder). By default (``dense_size=None``) S is the largest side up to SIZE / 4 for
which the whole page stays within ``max_mb`` (default 20 MB, 10⁶ bytes each): layer3 has stride 16,
so maps finer than SIZE / 16 only interpolate, and SIZE / 4 is smooth enough for a heat map. The
images are PNGs at most DISPLAY pixels a side (default 300). Measured (4 synthetic 256-px
radiographs of ``adam synth``, encoder input 224 px, ``layer3,layer4``): 2 resnet18 encoders,
S = 34, a 19.2-MB page; 1 resnet18, S = 49, 19.9 MB; 3 resnet18, S = 28, 19.5 MB; 2 resnet50
(C = 3072), S = 17, 19.2 MB; the demo's 64-px input (2 resnet18), S = 16 (the cap), 4.4 MB. A
pointer move computes S² · C multiply-adds per other image (0.9 million at S = 34, C = 768):
Chromium 156 opens the 19-MB page in 1.1 s and answers a move over 3 other images in 4 ms.

State for tests and scripts: ``window.adamExplorer`` holds ``ready`` (true once the data is
decoded and the images drawn), ``encoder`` (the name shown), ``source`` (the image under the
pointer), ``pointer`` ({x, y} in source image pixels, the point queried), ``matches`` (per image:
null for the source, else {x, y, mapX, mapY, similarity}: the best match in image pixels and in
map pixels, and its cosine), ``updates`` (counts queries) and two functions, ``query(image, x, y)``
and ``setEncoder(name)``. Each image's panel (``.panel``) carries ``data-index``, ``data-match-x``,
``data-match-y`` and ``data-similarity``; ``<body data-ready="true">`` once ready. The data lies
in ``<script id="adam-explorer-data" type="application/json">``; :func:`read_explorer` reads it
back (the maps as float16 ndarray[N, C, S, S]).

Example::

    adam eve explore --ckpt adam=runs/demo/best.pt --ckpt random --arch resnet18 --size 64 \\
        --data data/synthetic --split test --images 4 --out runs/demo/eve/explore
    # then open runs/demo/eve/explore/explore.html in any browser (explore.md: the errors table)
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .._util.escape import html_text
from .._util.seeds import numpy_rng
from ..checkpoints import atomic_write_files
from .common import markdown_table, output_folder, spec_files
from .correspondence import nearest_match, rescale_points, sample_vectors, transfer_error

__all__ = [
    "ExploreConfig",
    "choose_dense_size",
    "decode_features",
    "encode_features",
    "explore_markdown",
    "explore_page",
    "landmark_transfer",
    "page_bytes",
    "read_explorer",
]

TEMPLATE = "explore.html"  # package data of adam_ext.eve (pyproject.toml [tool.setuptools.package-data])
#: The template's two markers, replaced in one pass: a name holding one is never expanded.
_MARKERS = re.compile("__ADAM_EXPLORER_(?:TITLE|DATA)__")
#: What the explorer writes in its folder.
FILES = ("explore.html", "explore.md")
DATA_ID = "adam-explorer-data"
BASELINE = "(same position)"
MIN_AUTO_SIZE = 8  # below this a heat map no longer tells anatomy apart: refuse rather than shrink further
# Bytes reserved per landmark match in the page's JSON ("[x,y,cosine,error]," at most ~40 characters).
_MATCH_BYTES = 48


@dataclass
class ExploreConfig:
    """Settings of one explorer page (the single home of their defaults).

    Attributes:
        images: how many images of the data set to show, drawn with ``seed`` (at most all it has).
        indices: the data set indices of the images to show instead (2 or more, distinct).
        landmarks: names of the landmarks to draw and match (None: all the data set has).
        size: encoder input side in pixels.
        dense_size: side S of the dense maps in the page; None chooses the largest S up to
            ``size // 4`` that keeps the page within ``max_mb`` (see the module docstring).
        layers: stages of the hypercolumn.
        max_mb: largest page allowed, in MB (10⁶ bytes).
        display: longest side of the images as shown, in CSS pixels.
        seed: seed of the image sample (and of random encoders).
    """

    images: int = 4
    indices: tuple[int, ...] | None = None
    landmarks: tuple[str, ...] | None = None
    size: int = 224
    dense_size: int | None = None
    layers: tuple[str, ...] = ("layer3", "layer4")
    max_mb: float = 20.0
    display: int = 300
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.images, int) or isinstance(self.images, bool) or self.images < 2:
            raise ValueError(
                f"images must be at least 2 (one image is matched against the others), got {self.images!r}"
            )
        for name, low in (("size", 32), ("display", 32), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.indices is not None:
            self.indices = tuple(self.indices)
            if (
                len(self.indices) < 2
                or len(set(self.indices)) != len(self.indices)
                or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in self.indices)
            ):
                raise ValueError(
                    f"indices must be 2 or more distinct image indices >= 0, got {list(self.indices)}"
                )
        if self.landmarks is not None:
            self.landmarks = tuple(self.landmarks)
            if not self.landmarks or any(not isinstance(n, str) or not n for n in self.landmarks):
                raise ValueError(
                    f"landmarks must be one or more landmark names or None (all), got {self.landmarks}"
                )
        if self.dense_size is not None and (
            not isinstance(self.dense_size, int) or isinstance(self.dense_size, bool) or self.dense_size < 2
        ):
            raise ValueError(
                f"dense_size must be an integer >= 2 or None (chosen from max_mb), got {self.dense_size!r}"
            )
        if isinstance(self.max_mb, bool) or not isinstance(self.max_mb, (int, float)) or not self.max_mb > 0:
            raise ValueError(f"max_mb must be a positive number of megabytes, got {self.max_mb!r}")
        self.layers = tuple(self.layers)


# --------------------------------------------------------------------------- the dense maps in the page


def encode_features(dense: torch.Tensor) -> str:
    """One dense map as the page stores it: float16, little-endian, positions row-major with each
    position's C channels contiguous ([S, S, C], what the page reads per position), base64 (ASCII).

    Args:
        dense: float Tensor[C, S, S].
    """
    if not isinstance(dense, torch.Tensor) or dense.dim() != 3 or not dense.is_floating_point():
        raise ValueError(
            f"dense must be a float Tensor[C, S, S], got {getattr(dense, 'shape', type(dense).__name__)}"
        )
    values = dense.detach().to("cpu", torch.float16).permute(1, 2, 0).contiguous().numpy()
    return base64.b64encode(values.astype("<f2").tobytes()).decode("ascii")


def decode_features(text: str, dense_size: int, channels: int) -> np.ndarray:
    """The inverse of :func:`encode_features`: float16 ndarray[C, S, S]."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 2 * dense_size * dense_size * channels:
        raise ValueError(f"features hold {len(raw)} bytes, expected 2 x {dense_size}² x {channels}")
    return np.frombuffer(raw, "<f2").reshape(dense_size, dense_size, channels).transpose(2, 0, 1)


def page_bytes(fixed: int, images: int, channels, dense_size: int) -> int:
    """Size in bytes of a page whose other content takes ``fixed`` bytes, holding ``images`` maps of
    side ``dense_size`` for each encoder of ``channels`` (their C): base64 plus quotes and comma."""
    return fixed + images * sum(4 * math.ceil(2 * dense_size * dense_size * c / 3) + 3 for c in channels)


def choose_dense_size(fixed: int, images: int, channels, cfg: ExploreConfig) -> int:
    """``cfg.dense_size``, or the largest side up to ``cfg.size // 4`` whose page fits ``cfg.max_mb``.

    Raises:
        ValueError: the page would exceed ``max_mb`` at the given ``dense_size``, or at
            :data:`MIN_AUTO_SIZE` when choosing.
    """
    limit = cfg.max_mb * 1e6
    if cfg.dense_size is not None:
        size = page_bytes(fixed, images, channels, cfg.dense_size)
        if size > limit:
            raise ValueError(
                f"dense_size {cfg.dense_size} makes a page of {size / 1e6:.1f} MB, over max_mb "
                f"{cfg.max_mb:g}: lower --dense-size or raise --max-mb"
            )
        return cfg.dense_size
    for side in range(max(cfg.size // 4, MIN_AUTO_SIZE), MIN_AUTO_SIZE - 1, -1):
        if page_bytes(fixed, images, channels, side) <= limit:
            return side
    size = page_bytes(fixed, images, channels, MIN_AUTO_SIZE)
    raise ValueError(
        f"max_mb {cfg.max_mb:g} is too small for {images} images x {len(channels)} encoders: the page "
        f"would take {size / 1e6:.1f} MB even with dense maps of {MIN_AUTO_SIZE} x {MIN_AUTO_SIZE}; "
        "show fewer images or encoders, or raise --max-mb"
    )


# --------------------------------------------------------------------------- landmarks


def landmark_transfer(maps: torch.Tensor, points: list, shapes: list) -> list[list]:
    """Every image's landmarks matched in every other image, with their transfer errors.

    Args:
        maps: float Tensor[N, C, S, S], the dense maps of the N images (the page's float16 values).
        points: N float Tensor[L, 2], the landmarks (x, y) in each image's pixels, NaN where absent.
        shapes: N (height, width) of the images as stored.

    Returns:
        ``table[i][j]`` for source i and target j: None where i == j, else L entries
        ``[x, y, cosine, error]`` (the match in pixels of image j, its similarity, its distance to
        landmark j in pixels of image j) or None where the landmark is absent from i; the error is
        None where the landmark is absent from j.
    """
    n, side = len(maps), maps.shape[-1]
    table = [[None] * n for _ in range(n)]
    for i in range(n):
        vectors = sample_vectors(maps[i].double(), rescale_points(points[i], shapes[i], (side, side)))
        for j in range(n):
            if i == j:
                continue
            found, similarity = nearest_match(vectors, maps[j].double())
            found = rescale_points(found, (side, side), shapes[j])
            error = transfer_error(found, points[j])
            table[i][j] = [
                None
                if math.isnan(s)
                else [round(x, 2), round(y, 2), round(s, 4), None if math.isnan(e) else round(e, 2)]
                for (x, y), s, e in zip(found.tolist(), similarity.tolist(), error.tolist())
            ]
    return table


def _baseline(points: list, shapes: list) -> list[float]:
    """Errors of answering the source coordinates (moved to the target's frame), every ordered pair."""
    errors = []
    for i, src in enumerate(points):
        for j, dst in enumerate(points):
            if i != j:
                errors += transfer_error(rescale_points(src, shapes[i], shapes[j]), dst).tolist()
    return [e for e in errors if not math.isnan(e)]


def _summary(errors: list[float]) -> dict:
    values = np.asarray(errors, np.float64)
    return {
        "n": len(values),
        "mean_px": float(values.mean()) if len(values) else None,
        "median_px": float(np.median(values)) if len(values) else None,
    }


def _landmark_names(dataset, wanted) -> tuple[list[str], list[int]]:
    """The landmark names of ``dataset`` (of the data set a Subset wraps) and the rows ``wanted``."""
    names = getattr(dataset, "landmark_names", None)
    if names is None and hasattr(dataset, "dataset"):
        names = getattr(dataset.dataset, "landmark_names", None)
    names = list(names or [])
    if wanted is None:
        return names, list(range(len(names)))
    if not names:
        raise ValueError(
            f"landmarks: the data set {dataset!r} has no landmark annotations; leave --landmarks out"
        )
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ValueError(f"landmarks must be names among {names}, got unknown {unknown}")
    return list(wanted), [names.index(n) for n in wanted]


# --------------------------------------------------------------------------- the page


def _choose_indices(dataset, cfg: ExploreConfig) -> list[int]:
    n = len(dataset)
    if n < 2:
        raise ValueError(f"data: {dataset!r} holds {n} image(s); the explorer needs at least 2 (see --split)")
    if cfg.indices is not None:
        outside = [i for i in cfg.indices if i >= n]
        if outside:
            raise ValueError(f"indices {outside} are out of range for the {n} images of {dataset!r}")
        return list(cfg.indices)
    if cfg.images >= n:
        return list(range(n))
    return np.sort(numpy_rng(cfg.seed, "eve_images").choice(n, size=cfg.images, replace=False)).tolist()


def _png_data_uri(image: torch.Tensor, display: int) -> str:
    """uint8 Tensor[C, H, W] → a PNG data URI, shrunk to at most ``display`` pixels a side."""
    from PIL import Image

    array = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
    picture = Image.fromarray(np.ascontiguousarray(array))
    scale = display / max(picture.size)
    if scale < 1:
        picture = picture.resize(
            (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
            Image.Resampling.LANCZOS,
        )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _render(data: dict, title: str) -> str:
    """The page: the template with ``data`` as JSON (``<``, ``>`` and ``&`` escaped, so no string can
    close the script element) and the title (HTML-escaped), both markers replaced in one pass, so a
    name holding a marker stays text."""
    template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    fields = {"__ADAM_EXPLORER_TITLE__": html_text(title), "__ADAM_EXPLORER_DATA__": text}
    return _MARKERS.sub(lambda found: fields[found.group()], template)


def read_explorer(path) -> dict:
    """Reads an explorer page's data back.

    Returns:
        The page's JSON (``dense_size``, ``images``, ``landmark_names``, ``encoders``, ...) with each
        encoder's ``features`` decoded into a float16 ndarray[N, C, S, S].

    Raises:
        ValueError: ``path`` is not a page written by :func:`explore_page`.
    """
    text = Path(path).read_text(encoding="utf-8")
    found = re.search(rf'<script id="{DATA_ID}" type="application/json">(.*?)</script>', text, re.DOTALL)
    if found is None:
        raise ValueError(f"{os.fspath(path)!r} is not an explorer page (no {DATA_ID} script)")
    data = json.loads(found.group(1))
    side = data["dense_size"]
    for encoder in data["encoders"]:
        encoder["features"] = np.stack(
            [decode_features(t, side, encoder["channels"]) for t in encoder["features"]]
        )
    return data


def _open_encoders(checkpoints, cfg: ExploreConfig, arch, device) -> list:
    """Every encoder of ``checkpoints``, loaded before any work so that a bad one fails at once."""
    from .embed import Embedder

    encoders = []
    for name, spec in checkpoints:
        try:
            encoders.append(
                (
                    name,
                    spec,
                    Embedder(spec, arch=arch, size=cfg.size, layers=cfg.layers, device=device, seed=cfg.seed),
                )
            )
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"ckpt {name}={spec}: {exc}") from exc
        except ValueError as exc:
            raise ValueError(f"ckpt {name}={spec}: {exc}") from exc
    return encoders


def _read_images(dataset, indices: list[int], rows: list[int]) -> tuple[list, list, list, list]:
    """Images, their landmarks (the ``rows`` wanted, NaN where absent), shapes and names."""
    images, points, shapes, names = [], [], [], []
    for index in indices:
        item = dataset[index]
        image = item["image"]
        images.append(image)
        shapes.append(tuple(image.shape[1:]))
        names.append(Path(str(item.get("path", ""))).name or f"#{index}")
        landmarks = item.get("landmarks")
        if rows and landmarks is None:
            raise ValueError(
                f"data: item {index} of {dataset!r} has no 'landmarks' though the data set names them"
            )
        points.append(torch.as_tensor(landmarks, dtype=torch.float32)[rows] if rows else torch.zeros(0, 2))
    return images, points, shapes, names


def explore_page(
    checkpoints, dataset, out, *, arch: str | None = None, device="auto", progress: bool = True, **settings
) -> dict:
    """Writes ``OUT/explore.html`` (the page) and ``OUT/explore.md`` (the transfer errors), all or nothing:
    a failed write leaves the previous files as they were and no partial file.

    Args:
        checkpoints: [(name, spec)] encoders, switchable in the page (see
            :func:`adam_ext.eve.common.parse_checkpoints`).
        dataset: a data set whose items have ``image`` (uint8 Tensor[C, H, W]), ``path`` and, when
            its reader has ``landmark_names``, ``landmarks`` (float32 [L, 2] (x, y) pixels, NaN
            where absent); without landmarks the page shows the heat maps only.
        out: output folder.
        arch: ResNet name for ``random`` encoders.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: a tqdm bar over the encoders.
        **settings: fields of :class:`ExploreConfig` (images, indices, landmarks, size, dense_size, ...).

    Returns:
        dict with ``html`` and ``markdown`` (the paths written), ``bytes`` (the page's size),
        ``dense_size``, ``indices`` (the images shown) and ``summary`` {encoder: {n, mean_px,
        median_px}} of the landmark transfer errors over every ordered pair of images, the
        baseline's under :data:`BASELINE`.

    Raises:
        ValueError: a bad setting (naming it), fewer than 2 images, an unknown landmark, a
            ``--ckpt`` that cannot be loaded (``ckpt NAME=SPEC: ...``), or a page over ``max_mb``;
            FolderKindError: ``out`` is another command's folder (see :func:`~.common.output_folder`).
        OSError: ``out`` cannot be written (checked before the encoders run: its marker is written).
    """
    cfg = ExploreConfig(**settings)
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise ValueError("checkpoints must name at least one encoder as [(name, spec)]")
    indices = _choose_indices(dataset, cfg)
    landmark_names, rows = _landmark_names(dataset, cfg.landmarks)
    inputs = [getattr(dataset, "root", None), *spec_files(checkpoints)]
    with output_folder(out, FILES, inputs=inputs) as folder:
        return _explore(
            checkpoints, dataset, folder, cfg, indices, landmark_names, rows, arch, device, progress
        )


def _explore(
    checkpoints, dataset, out: Path, cfg: ExploreConfig, indices, landmark_names, rows, arch, device, progress
) -> dict:
    from tqdm import tqdm

    images, points, shapes, names = _read_images(dataset, indices, rows)
    encoders = _open_encoders(checkpoints, cfg, arch, device)
    data = {
        "version": 1,
        "size": cfg.size,
        "layers": list(cfg.layers),
        "dense_size": None,
        "display": cfg.display,
        "landmark_names": landmark_names,
        "asked": cfg.images if cfg.indices is None else len(cfg.indices),
        "images": [
            {"name": name, "index": index, "height": h, "width": w, "src": _png_data_uri(image, cfg.display)}
            for name, index, (h, w), image in zip(names, indices, shapes, images)
        ],
        "landmarks": [
            [None if math.isnan(x) or math.isnan(y) else [x, y] for x, y in p.tolist()] for p in points
        ],
        "encoders": [
            {
                "name": name,
                "spec": spec,
                "arch": e.arch,
                "channels": e.dense_dim,
                "features": [],
                "transfer": None,
            }
            for name, spec, e in encoders
        ],
    }
    baseline = _summary(_baseline(points, shapes))
    summary = {name: {"n": 0, "mean_px": None, "median_px": None} for name, _, _ in encoders}
    data["summary"] = {"encoders": summary, "baseline": baseline}
    title = f"Eve explorer: {', '.join(summary)} on {len(indices)} images"
    reserve = _MATCH_BYTES * len(encoders) * len(indices) ** 2 * max(1, len(rows)) + 4096
    fixed = len(_render(data, title).encode("utf-8")) + reserve
    side = choose_dense_size(fixed, len(indices), [e.dense_dim for _, _, e in encoders], cfg)
    data["dense_size"] = side
    for entry, (name, _, embedder) in zip(
        data["encoders"], tqdm(encoders, desc="explore", unit="encoder", disable=not progress)
    ):
        maps = embedder.dense_embeddings(images, side).half().cpu()
        entry["features"] = [encode_features(m) for m in maps]
        if rows:
            entry["transfer"] = landmark_transfer(maps.float(), points, shapes)
            summary[name] = _summary(
                [
                    m[3]
                    for row in entry["transfer"]
                    for cell in row
                    if cell
                    for m in cell
                    if m and m[3] is not None
                ]
            )
    page = _render(data, title).encode("utf-8")
    if len(page) > cfg.max_mb * 1e6:  # the reserve covers the matches: a bug if reached
        raise RuntimeError(f"the page takes {len(page) / 1e6:.2f} MB, over max_mb {cfg.max_mb:g}")
    markdown = explore_markdown(data, cfg).encode("utf-8")
    atomic_write_files(
        out, {"explore.html": lambda f: f.write(page), "explore.md": lambda f: f.write(markdown)}
    )
    return {
        "html": os.fspath(out / "explore.html"),
        "markdown": os.fspath(out / "explore.md"),
        "bytes": len(page),
        "dense_size": side,
        "indices": indices,
        "summary": {**summary, BASELINE: baseline},
        "settings": asdict(cfg),
    }


def explore_markdown(data: dict, cfg: ExploreConfig) -> str:
    """``explore.md``: what the page shows (and that it shows fewer images than asked, when the data
    set holds fewer) and, with landmarks, each encoder's transfer errors (names escaped)."""
    side, n = data["dense_size"], len(data["images"])
    asked = data.get("asked", n)
    fewer = f" (of the {asked} asked: the data set holds only {n})" if asked > n else ""
    text = (
        f"# Eve explorer\n\nOpen `explore.html` (self-contained, works from disk): {n} images{fewer}, "
        f"dense maps {side} x {side} (encoder input {cfg.size} px, {'+'.join(cfg.layers)}), pointer → "
        "cosine heat map and best match in the other images.\n\n"
    )
    if not data["landmark_names"]:
        return text
    text += (
        f"Landmark transfer error in pixels of the target image, over the {n * (n - 1)} ordered pairs of "
        f"the {n} images and their {len(data['landmark_names'])} landmarks.\n\n"
    )
    rows = [
        [name, s["n"], _number(s["mean_px"]), _number(s["median_px"])]
        for name, s in [*data["summary"]["encoders"].items(), (BASELINE, data["summary"]["baseline"])]
    ]
    return text + markdown_table(["encoder", "matches", "mean px", "median px"], rows)


def _number(value):
    return math.nan if value is None else value
