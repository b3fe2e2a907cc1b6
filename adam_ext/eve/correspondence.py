"""Dense correspondence: does a pixel's embedding find the same anatomy in another image?

The dense hypercolumns of every encoder given (see :class:`~adam_ext.eve.embed.Embedder`) are
matched by cosine nearest neighbour between pairs of images of two kinds:

* **view** pairs: an image and an augmented view of it (rotated by ±DEGREES about its centre,
  then a CROP fraction of each side cut out at a random place and resized back to the image's
  size). The geometry is known, so a landmark's true position in the view is the landmark moved
  by the same affine map (:func:`view_affine`);
* **subject** pairs: images of two different subjects (file names ``PATIENT_VISIT.png`` as in
  ChestX-ray14 and ``adam synth``; other names count as one subject per image), whose landmarks
  are annotated.

The number is the *landmark transfer error*: the feature vector at a landmark of the source image
(bilinearly sampled) is looked up among all pixels of the target's dense map, and the distance
from its nearest neighbour to the landmark's true position in the target is measured, in pixels
of the target image as stored (``px``; JSON also has ``input_px``, pixels of the SIZE x SIZE
encoder input). PCK is the share of landmarks transferred within TOLERANCE x the image side. A
"same position" row (the source coordinates taken as the answer, no matching) is the baseline.

Writes under OUT: correspondence.md (one row per encoder), correspondence.json (settings, pairs,
per-landmark errors), correspondence_error.png (errors per encoder, view vs subject), and
matches_view.png / matches_subject.png (the first pair of each kind with the LINES strongest
mutual nearest-neighbour matches, one row per encoder; view lines green where they land within
TOLERANCE of the truth, red elsewhere).

Points are (x, y) in pixels with pixel centres at integers, the readers' convention: pixel
(row i, column j) covers [j - 0.5, j + 0.5] x [i - 0.5, i + 0.5].

Example::

    adam eve correspondence --ckpt adam=runs/cxr/best.pt --ckpt random --arch resnet50 \\
        --data data/synth --split test --out runs/cxr/eve/correspondence
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from .._util.seeds import numpy_rng
from .common import (
    markdown_table,
    output_folder,
    plot_label,
    save_figure,
    spec_files,
    write_result,
)

__all__ = [
    "CorrespondenceConfig",
    "correspondence_analysis",
    "make_view",
    "mutual_matches",
    "nearest_match",
    "rescale_points",
    "sample_vectors",
    "transfer_error",
    "transform_points",
    "view_affine",
]

KINDS = ("view", "subject")
BASELINE = "(same position)"


@dataclass
class CorrespondenceConfig:
    """Settings of one correspondence analysis (the single home of their defaults).

    Attributes:
        pairs: image pairs of each kind (view, subject).
        degrees: rotation of the views in degrees, in [-45, 45]; each pair's sign is drawn.
        crop: side of the view's crop as a fraction of the image side, in (0, 1].
        size: encoder input side in pixels.
        dense_size: side of the dense maps matched (None: size // 2, one map pixel per 2 input
            pixels; the stride-16 features hold no finer detail).
        layers: stages of the hypercolumn.
        grid: side of the pooled maps whose mutual nearest neighbours are drawn.
        lines: how many of the strongest mutual matches are drawn.
        tolerance: a transfer is correct within this fraction of the image side (PCK, line colour).
        seed: seed of the pairs, crops and rotation signs (and of random encoders).
    """

    pairs: int = 16
    degrees: float = 10.0
    crop: float = 0.8
    size: int = 224
    dense_size: int | None = None
    layers: tuple[str, ...] = ("layer3", "layer4")
    grid: int = 24
    lines: int = 30
    tolerance: float = 0.05
    seed: int = 0

    def __post_init__(self):
        for name, low in (("pairs", 1), ("size", 32), ("grid", 2), ("lines", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.degrees, (int, float)) or not -45.0 <= self.degrees <= 45.0:
            raise ValueError(f"degrees must be a number in [-45, 45], got {self.degrees!r}")
        if not isinstance(self.crop, (int, float)) or not 0.0 < self.crop <= 1.0:
            raise ValueError(f"crop must be a fraction of the image side in (0, 1], got {self.crop!r}")
        if not isinstance(self.tolerance, (int, float)) or not 0.0 < self.tolerance <= 1.0:
            raise ValueError(
                f"tolerance must be a fraction of the image side in (0, 1], got {self.tolerance!r}"
            )
        if self.dense_size is None:
            self.dense_size = self.size // 2
        if not isinstance(self.dense_size, int) or isinstance(self.dense_size, bool) or self.dense_size < 2:
            raise ValueError(f"dense_size must be an integer >= 2 or None, got {self.dense_size!r}")
        self.layers = tuple(self.layers)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")


# --------------------------------------------------------------------------- geometry


def view_affine(height: int, width: int, degrees: float, box: tuple[int, int, int, int]) -> np.ndarray:
    """The affine map from pixel (x, y) of an image to pixel of its view :func:`make_view`.

    The view rotates the image by ``degrees`` (counter-clockwise on screen, about the image centre
    ((W - 1) / 2, (H - 1) / 2), as torchvision's ``rotate``), crops ``box`` and resizes the crop
    back to ``height`` x ``width``. With pixel centres at integers, resizing a side from n to m
    maps p to (p + 0.5) * m / n - 0.5.

    Args:
        height, width: image size in pixels.
        degrees: rotation angle in degrees.
        box: the crop (top, left, h, w) in pixels of the rotated image.

    Returns:
        float64 ndarray[2, 3] ``A``: a point p maps to ``A[:, :2] @ p + A[:, 2]``.
    """
    top, left, h, w = box
    cx, cy = (width - 1) / 2, (height - 1) / 2
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    # y points down, so an on-screen counter-clockwise turn is [[c, s], [-s, c]] about the centre
    rotate = np.array([[c, s, cx - c * cx - s * cy], [-s, c, cy + s * cx - c * cy], [0, 0, 1]])
    sx, sy = width / w, height / h
    crop_resize = np.array([[sx, 0, (0.5 - left) * sx - 0.5], [0, sy, (0.5 - top) * sy - 0.5], [0, 0, 1]])
    return (crop_resize @ rotate)[:2]


def transform_points(points, affine) -> torch.Tensor:
    """Applies an affine map to points.

    Args:
        points: (x, y) pixels, Tensor or ndarray [L, 2]; NaN rows stay NaN.
        affine: ndarray or Tensor [2, 3], as :func:`view_affine` returns.

    Returns:
        float32 Tensor[L, 2].
    """
    points = _points(points, "points").double()
    affine = torch.as_tensor(np.asarray(affine, np.float64))
    if affine.shape != (2, 3):
        raise ValueError(f"affine must be [2, 3], got {tuple(affine.shape)}")
    return (points @ affine[:, :2].T + affine[:, 2]).float()


def make_view(image: torch.Tensor, degrees: float, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The augmented view of ``image``: rotated by ``degrees`` about its centre (bilinear, black
    corners), cropped to ``box`` (top, left, h, w) and resized back to the image's size.

    Args:
        image: uint8 Tensor[C, H, W].

    Returns:
        uint8 Tensor[C, H, W]; :func:`view_affine` maps its points.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ValueError(
            f"image must be a Tensor[C, H, W], got {getattr(image, 'shape', type(image).__name__)}"
        )
    height, width = image.shape[1:]
    top, left, h, w = box
    if h < 1 or w < 1 or top < 0 or left < 0 or top + h > height or left + w > width:
        raise ValueError(f"box (top, left, h, w) must lie inside the {height}x{width} image, got {box}")
    rotated = TF.rotate(image, float(degrees), interpolation=TF.InterpolationMode.BILINEAR)
    return TF.resized_crop(rotated, top, left, h, w, [height, width], antialias=True)


def rescale_points(points, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    """The same positions in the image resized from ``from_hw`` to ``to_hw`` (height, width):
    p ↦ (p + 0.5) · to / from − 0.5 per axis. Points: [L, 2] (x, y); returns float32 Tensor[L, 2]."""
    points = _points(points, "points")
    scale = torch.tensor([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]], dtype=torch.float64)
    return ((points.double() + 0.5) * scale - 0.5).float()


def _points(points, name: str) -> torch.Tensor:
    points = torch.as_tensor(points)
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"{name} must be [L, 2] (x, y) pixels, got shape {tuple(points.shape)}")
    return points.float() if not points.is_floating_point() else points


# --------------------------------------------------------------------------- matching


def _dense_map(dense_map, name: str) -> torch.Tensor:
    if not isinstance(dense_map, torch.Tensor) or dense_map.dim() != 3 or not dense_map.is_floating_point():
        raise ValueError(
            f"{name} must be a float Tensor[C, H, W], got "
            f"{getattr(dense_map, 'shape', type(dense_map).__name__)}"
        )
    return dense_map


def sample_vectors(dense_map: torch.Tensor, points) -> torch.Tensor:
    """Feature vectors of ``dense_map`` at ``points``, bilinearly interpolated.

    Args:
        dense_map: float Tensor[C, H, W].
        points: [L, 2] (x, y) in pixels of the map (pixel centres at integers: an integer point
            gives that pixel's vector exactly); points outside take the border's value.

    Returns:
        Tensor[L, C] (dtype of the map); NaN rows where a point is NaN.
    """
    dense_map = _dense_map(dense_map, "dense_map")
    points = _points(points, "points").to(dense_map.device)
    finite = torch.isfinite(points).all(1)
    height, width = dense_map.shape[1:]
    size = torch.tensor([width, height], dtype=torch.float64, device=points.device)
    grid = ((2 * torch.where(finite[:, None], points, 0).double() + 1) / size - 1).to(dense_map.dtype)
    out = F.grid_sample(
        dense_map[None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=False
    )[0, :, 0].T
    return torch.where(finite[:, None], out, math.nan)


def nearest_match(vectors: torch.Tensor, dst_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine nearest neighbour of each vector among all pixels of ``dst_map``.

    Args:
        vectors: Tensor[L, C] (e.g. :func:`sample_vectors` of a source map at its landmarks).
        dst_map: float Tensor[C, H, W].

    Returns:
        ``(positions, similarity)``: float32 Tensor[L, 2], the (x, y) pixel of the best match in
        ``dst_map``, and float32 Tensor[L] its cosine similarity; NaN where a vector has NaN.
    """
    dst_map = _dense_map(dst_map, "dst_map")
    vectors = torch.as_tensor(vectors)
    if vectors.dim() != 2 or vectors.shape[1] != dst_map.shape[0]:
        raise ValueError(
            f"vectors must be [L, C] with C = {dst_map.shape[0]} like dst_map, "
            f"got shape {tuple(vectors.shape)}"
        )
    vectors = vectors.to(dst_map)
    finite = torch.isfinite(vectors).all(1)
    width = dst_map.shape[2]
    keys = F.normalize(dst_map.flatten(1), dim=0)
    similarity, index = (F.normalize(torch.where(finite[:, None], vectors, 0), dim=1) @ keys).max(1)
    positions = torch.stack([index % width, index // width], 1).float()
    nan = torch.tensor(math.nan)
    return (
        torch.where(finite[:, None].cpu(), positions.cpu(), nan),
        torch.where(finite.cpu(), similarity.float().cpu(), nan),
    )


def transfer_error(predicted, truth) -> torch.Tensor:
    """Euclidean distance between predicted and true positions, [L, 2] each (same pixel frame).

    Returns:
        float32 Tensor[L]; NaN where either position is NaN (a landmark absent or out of view).
    """
    predicted, truth = _points(predicted, "predicted"), _points(truth, "truth")
    if predicted.shape != truth.shape:
        raise ValueError(
            f"predicted and truth must have the same shape, got {tuple(predicted.shape)} "
            f"and {tuple(truth.shape)}"
        )
    return (predicted.double() - truth.double()).norm(dim=1).float()


def mutual_matches(src_map: torch.Tensor, dst_map: torch.Tensor, k: int):
    """The ``k`` most similar mutual nearest neighbours between the pixels of two maps.

    Pixel a of ``src_map`` and b of ``dst_map`` match when each is the other's cosine nearest
    neighbour. Cost O(H·W · H'·W'): pool large maps first (e.g. ``F.adaptive_avg_pool2d``).

    Args:
        src_map, dst_map: float Tensor[C, H, W] and [C, H', W'].
        k: at most this many matches, strongest first.

    Returns:
        ``(src_xy, dst_xy, similarity)``: float32 Tensor[M, 2] (x, y) pixels of each map and
        float32 Tensor[M], M <= k.
    """
    src_map, dst_map = _dense_map(src_map, "src_map"), _dense_map(dst_map, "dst_map")
    if src_map.shape[0] != dst_map.shape[0]:
        raise ValueError(
            f"src_map and dst_map must have the same channels, got {src_map.shape[0]} and {dst_map.shape[0]}"
        )
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    sim = F.normalize(src_map.flatten(1), dim=0).T @ F.normalize(dst_map.flatten(1), dim=0)
    forward, backward = sim.argmax(1), sim.argmax(0)
    src = torch.nonzero(backward[forward] == torch.arange(len(forward), device=sim.device))[:, 0]
    dst = forward[src]
    strength = sim[src, dst]
    order = strength.argsort(descending=True)[:k]
    src, dst = src[order], dst[order]
    w, w2 = src_map.shape[2], dst_map.shape[2]
    return (
        torch.stack([src % w, src // w], 1).float().cpu(),
        torch.stack([dst % w2, dst // w2], 1).float().cpu(),
        strength[order].float().cpu(),
    )


# --------------------------------------------------------------------------- pairs


def _subject(path: str, index: int) -> str:
    """Subject of an image: ``PATIENT`` of ``PATIENT_VISIT.png``, else the image itself."""
    stem = Path(path).stem if path else ""
    return stem.split("_")[0] if "_" in stem else f"#{index}"


def _landmarks(item: dict, dataset) -> torch.Tensor:
    if "landmarks" not in item:
        raise ValueError(
            f"data: {dataset!r} gives no landmarks; correspondence needs landmark "
            "annotations (e.g. --dataset synthetic, made by `adam synth`)"
        )
    return _points(item["landmarks"], "landmarks")


def _view_pairs(dataset, cfg: CorrespondenceConfig) -> list[dict]:
    """``cfg.pairs`` (image, view) pairs: images in a seeded order, each with its own crop and sign."""
    order = numpy_rng(cfg.seed, "correspondence_pairs").permutation(len(dataset))
    pairs = []
    for k in range(cfg.pairs):
        index = int(order[k % len(order)])
        item = dataset[index]
        image, points = item["image"], _landmarks(item, dataset)
        height, width = image.shape[1:]
        rng = numpy_rng(cfg.seed, "correspondence_views", k)
        h, w = max(1, round(cfg.crop * height)), max(1, round(cfg.crop * width))
        box = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
        degrees = float(cfg.degrees * rng.choice([-1.0, 1.0]))
        truth = transform_points(points, view_affine(height, width, degrees, box))
        inside = ((truth >= -0.5) & (truth <= torch.tensor([width - 0.5, height - 0.5]))).all(1)
        pairs.append(
            {
                "source": image,
                "target": make_view(image, degrees, box),
                "source_points": points,
                "target_points": torch.where(inside[:, None], truth, math.nan),
                "record": {"image": str(item.get("path", index)), "degrees": degrees, "box": list(box)},
            }
        )
    return pairs


def _subject_pairs(dataset, cfg: CorrespondenceConfig) -> list[dict]:
    """``cfg.pairs`` seeded (source, target) pairs of images of different subjects."""
    subjects = [_subject(path, i) for i, path in enumerate(_paths(dataset))]
    if len(set(subjects)) < 2:
        raise ValueError(
            f"data: subject pairs need images of at least 2 subjects, got {len(subjects)} "
            f"image(s) of {len(set(subjects))} subject(s) in {dataset!r} (see --split)"
        )
    rng = numpy_rng(cfg.seed, "correspondence_subjects")
    pairs = []
    for _ in range(cfg.pairs):
        i = int(rng.integers(len(subjects)))
        others = [j for j, s in enumerate(subjects) if s != subjects[i]]
        j = others[int(rng.integers(len(others)))]
        src, dst = dataset[i], dataset[j]
        pairs.append(
            {
                "source": src["image"],
                "target": dst["image"],
                "source_points": _landmarks(src, dataset),
                "target_points": _landmarks(dst, dataset),
                "record": {"source": str(src.get("path", i)), "target": str(dst.get("path", j))},
            }
        )
    return pairs


def _paths(dataset) -> list[str]:
    root = getattr(dataset, "root", None)
    if hasattr(dataset, "image_keys") and root is not None:
        return [str(Path(root) / key) for key in dataset.image_keys()]
    return [str(dataset[i].get("path", "")) for i in range(len(dataset))]


# --------------------------------------------------------------------------- measuring


def _pair_errors(src_map, dst_map, pair: dict, cfg: CorrespondenceConfig) -> dict:
    """Landmark transfer errors of one pair (``px``: target image pixels, ``input_px``: encoder
    input pixels) and, on the pooled grid, its mutual matches in image pixels."""
    map_hw, input_hw = (cfg.dense_size, cfg.dense_size), (cfg.size, cfg.size)
    src_hw, dst_hw = tuple(pair["source"].shape[1:]), tuple(pair["target"].shape[1:])
    vectors = sample_vectors(src_map, rescale_points(pair["source_points"], src_hw, map_hw))
    found, _ = nearest_match(vectors, dst_map)
    truth = pair["target_points"]
    px = transfer_error(rescale_points(found, map_hw, dst_hw), truth)
    input_px = transfer_error(
        rescale_points(found, map_hw, input_hw), rescale_points(truth, dst_hw, input_hw)
    )
    grid_hw = (cfg.grid, cfg.grid)
    src_xy, dst_xy, similarity = mutual_matches(
        F.adaptive_avg_pool2d(src_map, grid_hw), F.adaptive_avg_pool2d(dst_map, grid_hw), cfg.lines
    )
    return {
        "px": px,
        "input_px": input_px,
        "found": rescale_points(found, map_hw, dst_hw),
        "lines": (
            rescale_points(src_xy, grid_hw, src_hw),
            rescale_points(dst_xy, grid_hw, dst_hw),
            similarity,
        ),
    }


def _baseline_errors(pair: dict, cfg: CorrespondenceConfig) -> dict:
    """Errors of answering the source coordinates (moved to the target's frame) without matching."""
    src_hw, dst_hw = tuple(pair["source"].shape[1:]), tuple(pair["target"].shape[1:])
    guess, truth = rescale_points(pair["source_points"], src_hw, dst_hw), pair["target_points"]
    input_hw = (cfg.size, cfg.size)
    return {
        "px": transfer_error(guess, truth),
        "input_px": transfer_error(
            rescale_points(guess, dst_hw, input_hw), rescale_points(truth, dst_hw, input_hw)
        ),
    }


def _line_correct(pair: dict, lines, cfg: CorrespondenceConfig) -> torch.Tensor:
    """Per mutual match of a view pair: does the target point lie within tolerance of the source
    point moved by the view's known geometry?"""
    src_xy, dst_xy, _ = lines
    height, width = pair["source"].shape[1:]
    record = pair["record"]
    truth = transform_points(src_xy, view_affine(height, width, record["degrees"], tuple(record["box"])))
    return transfer_error(dst_xy, truth) <= cfg.tolerance * max(height, width)


def _summary(errors: list[dict], sides: list[int], names, cfg: CorrespondenceConfig) -> dict:
    """Mean, median, PCK and per-landmark mean over all pairs' landmarks (NaN ones left out)."""
    px = torch.stack([e["px"] for e in errors]).double()
    input_px = torch.stack([e["input_px"] for e in errors]).double()
    limit = cfg.tolerance * torch.tensor(sides, dtype=torch.float64)[:, None]
    valid = torch.isfinite(px)
    values = px[valid]
    per_landmark = torch.where(valid, px, 0).sum(0) / valid.sum(0)
    nan = math.nan
    return {
        "n": int(valid.sum()),
        "mean_px": values.mean().item() if len(values) else nan,
        "median_px": values.median().item() if len(values) else nan,
        "mean_input_px": input_px[valid].mean().item() if len(values) else nan,
        "median_input_px": input_px[valid].median().item() if len(values) else nan,
        "pck": (px[valid] <= limit.expand_as(px)[valid]).double().mean().item() if len(values) else nan,
        "per_landmark_px": {name: per_landmark[i].item() for i, name in enumerate(names)},
        "errors_px": values.tolist(),
    }


# --------------------------------------------------------------------------- analysis


def correspondence_analysis(
    checkpoints, dataset, out, *, arch: str | None = None, device="auto", progress: bool = True, **settings
) -> dict:
    """Landmark transfer errors of several encoders on view and subject pairs; writes the files.

    Args:
        checkpoints: [(name, spec)] encoders compared side by side (see
            :func:`adam_ext.eve.common.parse_checkpoints`).
        dataset: a data set whose items have ``image`` (uint8 Tensor[C, H, W]), ``landmarks``
            (float32 [L, 2] (x, y) pixels, NaN where absent) and ``path``; its reader's
            ``landmark_names`` name the rows.
        out: output folder.
        arch: ResNet name for ``random`` encoders.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: tqdm bars over the pairs.
        **settings: fields of :class:`CorrespondenceConfig` (pairs, degrees, crop, size, ...).

    Returns:
        The dict written to ``correspondence.json``: ``settings``, ``landmark_names``,
        ``pairs`` {kind: [...]}, ``encoders`` {name: {spec, arch, view, subject}} and
        ``baseline`` {view, subject}; each kind's entry has ``n``, ``mean_px``, ``median_px``,
        ``mean_input_px``, ``median_input_px``, ``pck``, ``per_landmark_px`` and ``errors_px``
        (view entries also ``mnn_precision``: the share of drawn mutual matches that are right).

    Raises:
        ValueError: a bad setting (naming it), no encoder, data without landmarks, or fewer
            than 2 subjects for subject pairs; FolderKindError: ``out`` is another command's folder.
    """
    cfg = CorrespondenceConfig(**settings)
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise ValueError("checkpoints must name at least one encoder as [(name, spec)]")
    if len(dataset) == 0:
        raise ValueError(f"data: {dataset!r} holds no images")
    inputs = [getattr(dataset, "root", None), *spec_files(checkpoints)]
    with output_folder(out, FILES, inputs=inputs) as folder:
        return _correspondence(checkpoints, dataset, folder, cfg, arch, device, progress)


#: What the analysis writes in its folder.
FILES = (
    "correspondence.md",
    "correspondence.json",
    "correspondence_error.png",
    "matches_view.png",
    "matches_subject.png",
)


def _correspondence(
    checkpoints, dataset, out: Path, cfg: CorrespondenceConfig, arch, device, progress
) -> dict:
    from tqdm import tqdm

    from .embed import Embedder

    pairs = {"view": _view_pairs(dataset, cfg), "subject": _subject_pairs(dataset, cfg)}
    n_landmarks = len(pairs["view"][0]["source_points"])
    names = list(getattr(dataset, "landmark_names", None) or [f"landmark_{i}" for i in range(n_landmarks)])
    sides = {kind: [max(p["target"].shape[1:]) for p in ps] for kind, ps in pairs.items()}
    result = {
        "settings": {**asdict(cfg), "arch": arch, "dataset": repr(dataset)},
        "landmark_names": names,
        "pairs": {kind: [p["record"] for p in ps] for kind, ps in pairs.items()},
        "encoders": {},
        "baseline": {
            kind: _summary([_baseline_errors(p, cfg) for p in ps], sides[kind], names, cfg)
            for kind, ps in pairs.items()
        },
    }
    drawn = {}
    for name, spec in checkpoints:
        embedder = Embedder(spec, arch=arch, size=cfg.size, layers=cfg.layers, device=device, seed=cfg.seed)
        entry = {"spec": spec, "arch": embedder.arch}
        for kind, kind_pairs in pairs.items():
            errors = []
            for pair in tqdm(
                kind_pairs, desc=f"correspondence {name} {kind}", unit="pair", disable=not progress
            ):
                src_map, dst_map = embedder.dense_embeddings([pair["source"], pair["target"]], cfg.dense_size)
                errors.append(_pair_errors(src_map, dst_map, pair, cfg))
            entry[kind] = _summary(errors, sides[kind], names, cfg)
            if kind == "view":
                correct = torch.cat([_line_correct(p, e["lines"], cfg) for p, e in zip(kind_pairs, errors)])
                entry[kind]["mnn_precision"] = correct.double().mean().item() if len(correct) else math.nan
            drawn[(name, kind)] = errors[0]
        result["encoders"][name] = entry
        del embedder
    _write_outputs(out, result, pairs, drawn, cfg)
    return result


def _table(result: dict, cfg: CorrespondenceConfig) -> str:
    header = [
        "encoder",
        "view mean px",
        "view median px",
        f"view PCK@{cfg.tolerance:g}",
        "view MNN precision",
        "subject mean px",
        "subject median px",
        f"subject PCK@{cfg.tolerance:g}",
    ]
    rows = []
    for name, entry in [*result["encoders"].items(), (BASELINE, result["baseline"])]:
        view, subject = entry["view"], entry["subject"]
        rows.append(
            [
                name,
                view["mean_px"],
                view["median_px"],
                view["pck"],
                view.get("mnn_precision", math.nan),
                subject["mean_px"],
                subject["median_px"],
                subject["pck"],
            ]
        )
    return markdown_table(header, rows)


def _write_outputs(out: Path, result: dict, pairs: dict, drawn: dict, cfg: CorrespondenceConfig) -> None:
    text = (
        "# Dense correspondence\n\nLandmark transfer error in pixels of the target image "
        f"({len(pairs['view'])} view pairs: ±{cfg.degrees:g}° and a {cfg.crop:g} crop; "
        f"{len(pairs['subject'])} pairs of different subjects; encoder input {cfg.size} px, maps "
        f"{cfg.dense_size} px). PCK: share within {cfg.tolerance:g} x the image side. MNN precision: share "
        f"of the {cfg.lines} strongest mutual matches per view pair within that tolerance.\n\n"
    )
    write_result(out, "correspondence", result, text + _table(result, cfg))
    _error_figure(out / "correspondence_error.png", result)
    for kind in KINDS:
        _match_figure(out / f"matches_{kind}.png", kind, pairs[kind][0], drawn, cfg)


def _error_figure(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*result["encoders"], BASELINE]
    entries = [*result["encoders"].values(), result["baseline"]]
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.1 * len(labels) * 2, 3.6), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], KINDS):
        data = [e[kind]["errors_px"] or [math.nan] for e in entries]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), [plot_label(x) for x in labels], rotation=20, fontsize=8)
        ax.set_title(f"{kind} pairs")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("landmark transfer error (px)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def _grey(image: torch.Tensor) -> np.ndarray:
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def _match_figure(path: Path, kind: str, pair: dict, drawn: dict, cfg: CorrespondenceConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, k in drawn if k == kind]
    src, dst = _grey(pair["source"]), _grey(pair["target"])
    height = max(src.shape[0], dst.shape[0])
    pad = [(0, height - src.shape[0]), (0, 0)] + [(0, 0)] * (src.ndim - 2)
    pad_dst = [(0, height - dst.shape[0]), (0, 0)] + [(0, 0)] * (dst.ndim - 2)
    canvas = np.concatenate([np.pad(src, pad), np.pad(dst, pad_dst)], axis=1)
    offset = src.shape[1]
    fig, axes = plt.subplots(len(names), 1, figsize=(6.4, 3.3 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        errors = drawn[(name, kind)]
        src_xy, dst_xy, similarity = errors["lines"]
        if kind == "view":
            correct = _line_correct(pair, errors["lines"], cfg)
            colours = ["#2ecc40" if c else "#ff4136" for c in correct.tolist()]
            right = correct.double().mean().item()
            title = f"{plot_label(name)}: {len(correct)} mutual matches, {right:.0%} right"
        else:
            colours = plt.cm.viridis(similarity.clamp(0, 1).numpy())
            title = f"{plot_label(name)}: {len(similarity)} mutual matches (colour: cosine)"
        ax.imshow(canvas, cmap="gray", vmin=0, vmax=255)
        for (x0, y0), (x1, y1), colour in zip(src_xy.tolist(), dst_xy.tolist(), colours):
            ax.plot([x0, x1 + offset], [y0, y1], color=colour, lw=0.8, alpha=0.9)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{kind} pair: source (left), target (right)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- command line
