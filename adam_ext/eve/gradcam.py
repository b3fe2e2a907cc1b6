"""Grad-CAM of fine-tuned classifiers against the ground-truth boxes of findings.

Every classifier given with --model NAME=PATH (the seed<S>/best.pt of an `adam finetune cls` run)
makes, for each image of the split that carries boxes and each finding boxed on it, one Grad-CAM
heatmap: the last ResNet stage (encoder.layer4) weighted by the gradient of the finding's logit,
ReLU-ed, min-max scaled to [0, 1] and resized to the model's input side (pytorch-grad-cam's
GradCAM). Each heatmap is scored against the union of that finding's boxes on the image:

  pointing game  the heatmap's maximum lies inside a box (hit) or not (miss);
  IoU            pixels >= threshold x maximum (default 0.5) against the boxes' union.

Images go in whole, resized to the model's fine-tuning size (no evaluation centre crop, so no box
is cut away), boxes scaled with them. Per finding and model: pointing accuracy, mean IoU and n,
the number of (image, finding) pairs; the row "all" pools every pair.

Writes under --out: gradcam.md (findings x models), gradcam.png (grouped bars), gradcam.json
(the numbers and every pair's) and overlays.png (a few images: boxes, then each model's heatmap
with its peak marked).
"""

from __future__ import annotations

import math
import pickle
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoints import FINETUNE_KIND
from ..data.registry import SPLITS
from ..models import Classifier
from .common import markdown_table, parse_checkpoints, resolve_device, write_result

__all__ = ["TARGET_LAYER", "FinetunedClassifier", "box_iou", "box_mask", "classifier_input", "gradcam_analysis",
           "gradcam_heatmaps", "heatmap_peak", "load_classifier", "parse_models", "pointing_game"]

#: the module of :class:`~adam_ext.downstream.classification.Classifier` whose maps Grad-CAM weighs
TARGET_LAYER = "encoder.layer4"


# ----------------------------------------------------------------------------------------------
# Metrics


def _heatmap(heatmap) -> np.ndarray:
    array = np.asarray(heatmap.detach().cpu() if isinstance(heatmap, torch.Tensor) else heatmap)
    if array.ndim != 2 or 0 in array.shape or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"heatmap must be a numeric 2-D array (H, W), got shape {array.shape} {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"heatmap must be finite, got {np.count_nonzero(~np.isfinite(array))} NaN/inf values")
    if array.min() < 0:
        raise ValueError(f"heatmap must be >= 0 (a Grad-CAM map), got a minimum of {array.min()}")
    return array


def box_mask(boxes, shape: tuple[int, int]) -> np.ndarray:
    """The union of ``boxes`` rasterised on an (H, W) pixel grid.

    A pixel (row r, column c) covers [c, c+1) x [r, r+1) and belongs to a box when its centre
    (c + 0.5, r + 0.5) does, so integer boxes with exclusive x1, y1 cover exactly x0 <= c < x1,
    y0 <= r < y1; a box narrower than a pixel keeps the pixel holding its centre. Boxes are clipped
    to the grid.

    Args:
        boxes: float[N, 4] (x0, y0, x1, y1) in pixels of the grid, N >= 1, x1 > x0, y1 > y0 (the
            readers' ``boxes`` layout).
        shape: (H, W).

    Returns:
        bool ndarray[H, W].

    Raises:
        ValueError: malformed boxes, or boxes that all lie outside the grid.
    """
    height, width = shape
    array = np.asarray(boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) with N >= 1 boxes (x0, y0, x1, y1), got shape {array.shape}")
    if not np.isfinite(array).all() or (array[:, 2] <= array[:, 0]).any() or (array[:, 3] <= array[:, 1]).any():
        raise ValueError(f"boxes must be finite (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {array.tolist()}")
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in array:
        c0, c1 = _pixel_span(x0, x1)
        r0, r1 = _pixel_span(y0, y1)
        mask[max(0, r0):max(0, r1), max(0, c0):max(0, c1)] = True
    if not mask.any():
        raise ValueError(f"boxes must overlap the {height}x{width} heatmap, got {array.tolist()}")
    return mask


def _pixel_span(lo: float, hi: float) -> tuple[int, int]:
    """Pixels [first, last + 1) whose centres lie in [lo, hi); the centre's pixel when none does."""
    first, end = math.ceil(lo - 0.5), math.ceil(hi - 0.5)
    if end <= first:
        first = math.floor((lo + hi) / 2)
        end = first + 1
    return first, end


def pointing_game(heatmap, boxes) -> bool:
    """Whether the heatmap's maximum falls inside one of ``boxes`` (a pointing-game hit).

    The maximum is the pixel of :func:`heatmap_peak`; a flat heatmap (maximum = minimum, e.g. all
    zero) points nowhere and is a miss.

    Args:
        heatmap: float[H, W] >= 0 (ndarray or Tensor).
        boxes: float[N, 4] (x0, y0, x1, y1) pixels of the heatmap's frame (see :func:`box_mask`).

    Raises:
        ValueError: naming ``heatmap`` or ``boxes`` when malformed.
    """
    heat = _heatmap(heatmap)
    mask = box_mask(boxes, heat.shape)
    peak = heatmap_peak(heat)
    return peak is not None and bool(mask[peak])


def heatmap_peak(heatmap) -> tuple[int, int] | None:
    """(row, column) of the heatmap's maximum; None for a flat heatmap.

    An upsampled Grad-CAM map often holds its maximum on a plateau (bilinear resizing repeats the
    border cells of the coarse map), so among several maximal pixels the one nearest their
    centroid is taken, not the first in row-major order (a plateau's corner).

    Args:
        heatmap: float[H, W] >= 0 (ndarray or Tensor).
    """
    heat = _heatmap(heatmap)
    top = heat.max()
    if top == heat.min():
        return None
    rows, cols = np.nonzero(heat == top)
    nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return int(rows[nearest]), int(cols[nearest])


def box_iou(heatmap, boxes, threshold: float = 0.5) -> float:
    """IoU of the thresholded heatmap with the union of ``boxes``.

    The map is the set of pixels with ``heatmap >= threshold * heatmap.max()``: threshold 1 keeps
    the maximal pixels only, 0 the whole image. An all-zero heatmap marks nothing (IoU 0).

    Args:
        heatmap: float[H, W] >= 0 (ndarray or Tensor).
        boxes: float[N, 4] (x0, y0, x1, y1) pixels of the heatmap's frame (see :func:`box_mask`).
        threshold: fraction of the maximum in [0, 1].

    Returns:
        float in [0, 1].

    Raises:
        ValueError: naming ``heatmap``, ``boxes`` or ``threshold`` when malformed.
    """
    _check_threshold(threshold)
    heat = _heatmap(heatmap)
    mask = box_mask(boxes, heat.shape)
    peak = heat.max()
    if peak <= 0:
        return 0.0
    marked = heat >= threshold * peak
    return float(np.logical_and(marked, mask).sum() / np.logical_or(marked, mask).sum())


def _check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a fraction of the heatmap's maximum in [0, 1], got {threshold!r}")


# ----------------------------------------------------------------------------------------------
# Models


@dataclass
class FinetunedClassifier:
    """A classifier rebuilt from the ``seed<S>/best.pt`` of an ``adam finetune cls`` run.

    Attributes:
        name: its label in tables; path: the file.
        model: :class:`~adam_ext.downstream.classification.Classifier` in evaluation mode.
        arch: ResNet name; classes: its output names (logit i = classes[i]).
        size: input side in pixels (the run's ``size``).
        config: the run's resolved :class:`~adam_ext.downstream.protocol.FinetuneConfig` as a dict.
    """

    name: str
    path: str
    model: nn.Module
    arch: str
    classes: tuple[str, ...]
    size: int
    config: dict


def load_classifier(path, *, name: str = "model", device="cpu") -> FinetunedClassifier:
    """Rebuilds the classifier saved by a fine-tuning run (``kind`` ``adam_ext.finetune``, task cls).

    Args:
        path: the run's ``seed<S>/best.pt``.
        name: label used in error messages and tables.
        device: torch device of the model.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a classifier checkpoint of ``adam finetune cls``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model {name}: {str(path)!r} does not exist (give the seed<S>/best.pt of an "
                                "`adam finetune cls` run)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"model {name}: {str(path)!r} must be a torch checkpoint, got an unreadable file "
                         f"({type(exc).__name__})") from None
    kind = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
    if kind != FINETUNE_KIND or ckpt.get("task") != "cls":
        what = f"a {ckpt.get('task')!r} fine-tuning run" if kind == FINETUNE_KIND else f"kind {kind!r}"
        raise ValueError(f"model {name}: {str(path)!r} must be a classifier checkpoint (seed<S>/best.pt of "
                         f"`adam finetune cls`), got {what}")
    missing = [key for key in ("arch", "classes", "model") if key not in ckpt]
    if missing:
        raise ValueError(f"model {name}: {str(path)!r} must hold the arch, classes and weights of a classifier, "
                         f"got none for {missing}")
    classes, config = tuple(ckpt["classes"]), dict(ckpt.get("config") or {})
    model = Classifier(ckpt["arch"], len(classes))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"model {name}: {str(path)!r} holds weights that do not fit a {ckpt['arch']} "
                         f"classifier of {len(classes)} classes: {str(exc).splitlines()[0]}") from None
    size = config.get("size") or 224
    return FinetunedClassifier(name, str(path), model.eval().to(device), ckpt["arch"], classes, int(size), config)


def _run_name(path: str) -> str:
    """``runs/rand/seed0/best.pt`` → ``rand``: the run folder above the seed folders."""
    parents = [p.name for p in Path(path).parents if p.name and not p.name.startswith("seed")]
    return parents[0] if parents else Path(path).stem


def parse_models(values) -> list[tuple[str, str]]:
    """``["adam=runs/a/seed0/best.pt", "runs/rand/seed0/best.pt"]`` → [(name, path), ...].

    A bare PATH is named after its run folder (``runs/rand/seed0/best.pt`` → ``rand``).

    Raises:
        ValueError: no value, an empty name or path, or a repeated name.
    """
    return parse_checkpoints(values, flag="model", name_of=_run_name)


def gradcam_heatmaps(model: nn.Module, inputs: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM of ``model.encoder.layer4`` for one logit per input.

    Args:
        model: a :class:`~adam_ext.downstream.classification.Classifier` (any module with
            ``encoder.layer4`` and logits [B, C]).
        inputs: float32 Tensor[B, 3, S, S], normalised as the classifier was trained.
        classes: B logit indices, the target of each input.

    Returns:
        float32 ndarray[B, S, S] in [0, 1] (each map min-max scaled; all zero where the ReLU-ed
        map is).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if inputs.dim() != 4 or len(classes) != inputs.shape[0]:
        raise ValueError(f"classes must give one logit index per input, got {len(classes)} for inputs of "
                         f"shape {tuple(inputs.shape)}")
    cam = GradCAM(model=model, target_layers=[model.encoder.layer4])
    try:
        with torch.enable_grad():
            maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    return maps


def classifier_input(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 Tensor[C, H, W] → float32 Tensor[3, size, size]: the whole image resized, ImageNet-normalised."""
    from torchvision.transforms.v2 import functional as TF

    from ..data.views import IMAGENET_MEAN, IMAGENET_STD, ToNormalizedRGB

    return ToNormalizedRGB(IMAGENET_MEAN, IMAGENET_STD)(TF.resize(image, [size, size], antialias=True))


# ----------------------------------------------------------------------------------------------
# Data


@dataclass
class _Data:
    reader: object
    dataset: str
    root: str
    split: str


def _open_data(first: FinetunedClassifier, root, dataset, split) -> _Data:
    """The split to analyse; dataset, root, split and reader options default to ``first``'s run."""
    from ..data.registry import open_dataset

    cfg = first.config
    dataset = dataset or cfg.get("dataset")
    root = root or cfg.get("root")
    if not dataset:
        raise ValueError(f"dataset: model {first.name}'s checkpoint names none; give --dataset")
    if not root:
        raise ValueError(f"data: model {first.name}'s checkpoint names no folder; give --data ROOT")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"data {str(root)!r} must be the folder of the {dataset} data set; it does not exist")
    own = dataset == cfg.get("dataset")
    split = split or (cfg.get("test_split") if own else None) or SPLITS.get(dataset, (None, "test"))[1]
    options = dict(cfg.get("options") or {}) if own and str(root) == str(cfg.get("root")) else {}
    return _Data(open_dataset(dataset, root, split=split, **options), dataset, str(root), split)


def _candidates(reader) -> Sequence[int]:
    """Indices of images that may have boxes, from the reader's parsed annotations when it keeps
    them (the synthetic set, ChestX-ray14, VinDr-CXR), so that only those are decoded."""
    if hasattr(reader, "box_labels") and isinstance(getattr(reader, "boxes", None), list):
        return [i for i, b in enumerate(reader.boxes) if len(b)]
    parsed = getattr(reader, "_boxes", None)  # per image (boxes, labels) or None
    if isinstance(parsed, list) and len(parsed) == len(reader):
        return [i for i, b in enumerate(parsed) if b is not None and len(b[0])]
    return range(len(reader))


def _boxes_by_finding(item, names: Sequence[str], wanted: set, skipped: Counter) -> dict[str, np.ndarray]:
    """{finding: float32[N, 4] boxes} of an item, for the ``wanted`` findings (others counted in ``skipped``)."""
    boxes, labels = item.get("boxes"), item.get("box_labels")
    found: dict[str, list] = {}
    if boxes is None or labels is None:
        return {}
    for box, label in zip(np.asarray(boxes, dtype=np.float32), np.asarray(labels).tolist()):
        finding = names[label]
        if finding in wanted:
            found.setdefault(finding, []).append(box)
        else:
            skipped[finding] += 1
    return {f: np.stack(b) for f, b in found.items()}


# ----------------------------------------------------------------------------------------------
# Analysis


def _image_key(item: dict, root: str, index: int) -> str:
    """The item's image path relative to ``root`` (posix), or its index when it has no path."""
    path = item.get("path")
    if path is None:
        return str(index)
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _check_model_list(models) -> list[tuple[str, str]]:
    pairs = [tuple(m) for m in models] if isinstance(models, (list, tuple)) else None
    if not pairs or any(len(m) != 2 or not all(isinstance(v, (str, Path)) and str(v) for v in m) for m in pairs):
        raise ValueError(f"models must be a non-empty list of (name, path) pairs, got {models!r}")
    names = [str(name) for name, _ in pairs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"models must have unique names, got {repeated[0]!r} twice")
    return [(str(name), str(path)) for name, path in pairs]


def _findings(findings, classes: tuple[str, ...]) -> list[str] | None:
    if findings is None:
        return None
    if isinstance(findings, str):
        findings = [f.strip() for f in findings.split(",") if f.strip()]
    unknown = [f for f in findings if f not in classes]
    if not findings or unknown:
        raise ValueError(f"findings must name classes of the models ({', '.join(classes)}), got {list(findings)}"
                         + (f" (unknown: {', '.join(map(str, unknown))})" if unknown else ""))
    return list(dict.fromkeys(findings))


def _check_models(classifiers: list[FinetunedClassifier]) -> None:
    first = classifiers[0]
    for other in classifiers[1:]:
        if other.classes != first.classes:
            raise ValueError(f"model {other.name}: classes {list(other.classes)} differ from model {first.name}'s "
                             f"{list(first.classes)}; compare classifiers fine-tuned on the same data set")


def _check_counts(batch_size, limit, overlays) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or a positive integer (images with boxes), got {limit!r}")
    if isinstance(overlays, bool) or not isinstance(overlays, int) or overlays < 0:
        raise ValueError(f"overlays must be an integer >= 0 (rows of overlays.png), got {overlays!r}")


def _score_batch(batch, classifiers, threshold) -> list[tuple[dict, torch.Tensor, np.ndarray]]:
    """Heatmaps and scores of every (image, finding) pair of ``batch``, a list of (key, uint8 image
    Tensor[C, H, W], {finding: float32[N, 4] boxes}); returns (record, image, boxes) per pair."""
    pairs = [(key, image, finding, boxes) for key, image, found in batch for finding, boxes in found.items()]
    records = [{"image": key, "finding": finding, "boxes": len(boxes), "hit": {}, "iou": {}, "heatmaps": {}}
               for key, _, finding, boxes in pairs]
    for clf in classifiers:
        device = next(clf.model.parameters()).device
        inputs = torch.stack([classifier_input(image, clf.size) for _, image, _, _ in pairs]).to(device)
        maps = gradcam_heatmaps(clf.model, inputs, [clf.classes.index(f) for _, _, f, _ in pairs])
        for record, (_, image, _, boxes), heat in zip(records, pairs, maps):
            height, width = image.shape[1:]
            scaled = boxes * np.array([clf.size / width, clf.size / height] * 2, dtype=np.float32)
            record["hit"][clf.name] = pointing_game(heat, scaled)
            record["iou"][clf.name] = box_iou(heat, scaled, threshold)
            record["heatmaps"][clf.name] = heat
    return [(record, image, boxes) for record, (_, image, _, boxes) in zip(records, pairs)]


def _summary(records: list[dict], names: list[str], findings: list[str]) -> dict:
    """{model: {finding or "all": {pointing, iou, n}}} (NaN where n = 0)."""
    out = {}
    for name in names:
        rows = {}
        for finding in findings + ["all"]:
            mine = [r for r in records if finding in ("all", r["finding"])]
            rows[finding] = {"pointing": float(np.mean([r["hit"][name] for r in mine])) if mine else math.nan,
                             "iou": float(np.mean([r["iou"][name] for r in mine])) if mine else math.nan,
                             "n": len(mine)}
        out[name] = rows
    return out


class _OverlayPicker:
    """Keeps the pairs for overlays.png: the first of each finding, then the earliest others, ``k`` in all."""

    def __init__(self, k: int):
        self.k, self.kept, self.seen = k, [], set()

    def offer(self, record, image, boxes) -> None:
        new = record["finding"] not in self.seen
        self.seen.add(record["finding"])
        if self.k and (new or len(self.kept) < self.k):
            self.kept.append((new, {**record, "image_array": image.numpy(), "box_array": boxes}))

    def rows(self) -> list[dict]:
        firsts = [r for new, r in self.kept if new][: self.k]
        others = [r for new, r in self.kept if not new][: self.k - len(firsts)]
        order = {id(r): i for i, (_, r) in enumerate(self.kept)}
        return sorted(firsts + others, key=lambda r: order[id(r)])


def _score_data(data: _Data, classifiers, wanted: set, skipped: Counter, picker: _OverlayPicker, *,
                threshold: float, batch_size: int, limit: int | None, progress: bool) -> tuple[list[dict], int]:
    """Scores every (image, finding) pair of the split in batches of images; returns (records, images used).

    Boxes of findings outside ``wanted`` are counted in ``skipped``; ``picker`` is offered each pair.
    """
    from tqdm.auto import tqdm

    names = tuple(getattr(data.reader, "classes", ()) or ())
    candidates = _candidates(data.reader)
    records, batch, n_images = [], [], 0

    def flush():
        if not batch:
            return
        for record, image, boxes in _score_batch(batch, classifiers, threshold):
            picker.offer(record, image, boxes)
            records.append({k: v for k, v in record.items() if k != "heatmaps"})
        batch.clear()

    with tqdm(total=len(candidates), desc="grad-cam", unit="img", disable=not progress) as bar:
        for index in candidates:
            bar.update()
            item = data.reader[index]
            found = _boxes_by_finding(item, names, wanted, skipped) if names else {}
            if not found:
                continue
            batch.append((_image_key(item, data.root, index), item["image"], found))
            n_images += 1
            if len(batch) == batch_size or n_images == limit:
                flush()
            if n_images == limit:
                break
        flush()
    return records, n_images


def gradcam_analysis(models, root=None, *, out, dataset: str | None = None, split: str | None = None,
                     findings=None, threshold: float = 0.5, batch_size: int = 16, limit: int | None = None,
                     overlays: int = 4, device="auto", progress: bool = True) -> dict:
    """Grad-CAM localisation of several fine-tuned classifiers, side by side (see the module docstring).

    Args:
        models: [(name, path)] of ``seed<S>/best.pt`` files of ``adam finetune cls`` runs with the
            same classes.
        root: the data set's folder (default: the first model's run's).
        out: output folder.
        dataset, split: reader name and split (default: the first model's data set and test split).
        findings: names (list or comma-separated) to analyse (default: every finding boxed in the
            data that the models classify).
        threshold: IoU map = pixels >= threshold x maximum, in [0, 1].
        batch_size: images per Grad-CAM batch; limit: analyse at most this many images with boxes.
        overlays: rows of ``overlays.png`` (0: no overlays).
        device: auto / cpu / cuda.
        progress: tqdm bar over the images.

    Returns:
        dict: ``findings``, ``models`` (path, arch, size, init), ``results`` ({model: {finding or
        "all": {pointing, iou, n}}}), ``pairs`` (per (image, finding): boxes, hit and iou per
        model), ``skipped`` (boxes of findings not analysed), data set fields and the paths
        ``gradcam_md``, ``gradcam_png``, ``gradcam_json``, ``overlays_png``.

    Raises:
        FileNotFoundError: a model file or the data folder is missing.
        ValueError: naming the argument: not a classifier checkpoint, models with different
            classes, an unknown finding, data without boxes of the findings, a bad threshold.
    """
    _check_threshold(threshold)
    _check_counts(batch_size, limit, overlays)
    dev = resolve_device(device)
    classifiers = [load_classifier(path, name=name, device=dev) for name, path in _check_model_list(models)]
    _check_models(classifiers)
    classes = classifiers[0].classes
    chosen = _findings(findings, classes)
    data = _open_data(classifiers[0], root, dataset, split)
    wanted, skipped, picker = set(chosen or classes), Counter(), _OverlayPicker(overlays)
    records, n_images = _score_data(data, classifiers, wanted, skipped, picker, threshold=threshold,
                                    batch_size=batch_size, limit=limit, progress=progress)
    if not records:
        raise ValueError(f"data: no image of {data.dataset} split {data.split!r} at {data.root} has boxes of "
                         f"the findings {sorted(wanted)}" + (f" (boxes of others: {dict(skipped)})" if skipped else ""))
    order = chosen or [c for c in classes if any(r["finding"] == c for r in records)]
    result = {"kind": "adam_ext.eve.gradcam", "dataset": data.dataset, "root": data.root, "split": data.split,
              "target_layer": TARGET_LAYER, "threshold": threshold, "n_images": n_images, "findings": order,
              "models": {c.name: {"path": c.path, "arch": c.arch, "size": c.size, "init": c.config.get("init")}
                         for c in classifiers},
              "results": _summary(records, [c.name for c in classifiers], order), "skipped": dict(skipped),
              "pairs": records}
    result.update(_write_outputs(Path(out), result, picker.rows()))
    return result


# ----------------------------------------------------------------------------------------------
# Outputs


def gradcam_markdown(result: dict) -> str:
    """``gradcam.md``: one row per finding (and "all"), pointing accuracy and mean IoU per model, n."""
    names = list(result["models"])
    header = ["finding", "n"] + [f"{metric} ({name})" for name in names for metric in ("pointing", "IoU")]
    rows = []
    for finding in result["findings"] + ["all"]:
        first = result["results"][names[0]][finding]
        cells = [v for name in names for v in (result["results"][name][finding]["pointing"],
                                                result["results"][name][finding]["iou"])]
        rows.append([finding, first["n"], *cells])
    models = "; ".join(f"`{name}` = `{m['path']}` ({m['arch']}, {m['size']} px, init `{m['init']}`)"
                       for name, m in result["models"].items())
    return "\n".join([
        f"# Grad-CAM localisation: {result['dataset']} ({result['split']})",
        "",
        (f"{result['n_images']} images with boxes. Grad-CAM of `{result['target_layer']}` for the finding's "
         "logit, the whole image resized to the model's input side. pointing: share of heatmaps whose maximum "
         f"lies in a box of the finding; IoU: mean IoU of the map >= {result['threshold']} x its maximum with "
         "the union of the finding's boxes; n: (image, finding) pairs; n/a: no pair."),
        "",
        markdown_table(header, rows),
        f"Models: {models}",
        "",
    ])


def _plot_bars(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, rows = list(result["models"]), result["findings"] + ["all"]
    x, width = np.arange(len(rows)), 0.8 / len(names)
    n = [result["results"][names[0]][f]["n"] for f in rows]
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.55 * len(rows) * (1 + 0.3 * len(names))), 7), dpi=110)
    for ax, metric, title in zip(axes, ("pointing", "iou"), ("pointing-game accuracy",
                                                              f"IoU (map >= {result['threshold']} x max)")):
        for j, name in enumerate(names):
            values = [result["results"][name][f][metric] for f in rows]
            ax.bar(x + (j - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.set_xticks(x, [f"{f}\n(n={k})" for f, k in zip(rows, n)], fontsize=8)
        ax.set(ylim=(0, 1), title=title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_overlays(rows: list[dict], names: list[str], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(rows), 1 + len(names), figsize=(2.6 * (1 + len(names)), 2.6 * len(rows)),
                             dpi=110, squeeze=False)
    for ax_row, row in zip(axes, rows):
        image = row["image_array"]
        height, width = image.shape[1:]
        shown = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        extent = (0, width, height, 0)
        for col, ax in enumerate(ax_row):
            ax.imshow(shown, cmap="gray", extent=extent)
            if col == 0:
                ax.set_title(f"{row['finding']} ({row['boxes']} box{'es' if row['boxes'] > 1 else ''})", fontsize=8)
            else:
                name = names[col - 1]
                heat = row["heatmaps"][name]
                ax.imshow(heat, cmap="jet", alpha=0.45, extent=extent, vmin=0, vmax=1)
                peak = heatmap_peak(heat)
                if peak is not None:
                    ax.contour(heat, levels=[threshold * heat.max()], colors="white", linewidths=0.8,
                               extent=extent, origin="upper")
                    ax.plot((peak[1] + 0.5) * width / heat.shape[1], (peak[0] + 0.5) * height / heat.shape[0],
                            "w+", ms=10, mew=2)
                ax.set_title(f"{name}: {'hit' if row['hit'][name] else 'miss'}, IoU {row['iou'][name]:.2f}",
                             fontsize=8)
            for x0, y0, x1, y1 in row["box_array"]:
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.2))
            ax.set(xlim=(0, width), ylim=(height, 0))
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _write_outputs(out: Path, result: dict, overlay_rows: list[dict]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"gradcam_md": str(out / "gradcam.md"), "gradcam_png": str(out / "gradcam.png"),
             "gradcam_json": str(out / "gradcam.json"), "overlays_png": None}
    _plot_bars(result, out / "gradcam.png")
    if overlay_rows:
        _plot_overlays(overlay_rows, list(result["models"]), result["threshold"], out / "overlays.png")
        paths["overlays_png"] = str(out / "overlays.png")
    write_result(out, "gradcam", {**result, **paths}, gradcam_markdown(result))
    return paths


# ----------------------------------------------------------------------------------------------
# Command line
