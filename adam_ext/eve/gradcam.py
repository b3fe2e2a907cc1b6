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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.registry import SPLITS
from .common import output_folder, resolve_device
from .gradcam_model import (
    FinetunedClassifier,
    classifier_input,
    gradcam_heatmaps,
    load_classifier,
    parse_models,
)
from .gradcam_report import (  # noqa: F401 (gradcam_markdown: public here too)
    FILES,
    _write_outputs,
    gradcam_markdown,
)
from .gradcam_scores import _check_threshold, box_iou, box_mask, heatmap_peak, pointing_game

__all__ = [
    "TARGET_LAYER",
    "FinetunedClassifier",
    "box_iou",
    "box_mask",
    "classifier_input",
    "gradcam_analysis",
    "gradcam_heatmaps",
    "heatmap_peak",
    "load_classifier",
    "parse_models",
    "pointing_game",
]

#: the module of :class:`~adam_ext.downstream.classification.Classifier` whose maps Grad-CAM weighs
TARGET_LAYER = "encoder.layer4"


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
        raise FileNotFoundError(
            f"data {str(root)!r} must be the folder of the {dataset} data set; it does not exist"
        )
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
    if not pairs or any(
        len(m) != 2 or not all(isinstance(v, (str, Path)) and str(v) for v in m) for m in pairs
    ):
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
        raise ValueError(
            f"findings must name classes of the models ({', '.join(classes)}), got {list(findings)}"
            + (f" (unknown: {', '.join(map(str, unknown))})" if unknown else "")
        )
    return list(dict.fromkeys(findings))


def _check_models(classifiers: list[FinetunedClassifier]) -> None:
    first = classifiers[0]
    for other in classifiers[1:]:
        if other.classes != first.classes:
            raise ValueError(
                f"model {other.name}: classes {list(other.classes)} differ from model {first.name}'s "
                f"{list(first.classes)}; compare classifiers fine-tuned on the same data set"
            )


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
    records = [
        {"image": key, "finding": finding, "boxes": len(boxes), "hit": {}, "iou": {}, "heatmaps": {}}
        for key, _, finding, boxes in pairs
    ]
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
            rows[finding] = {
                "pointing": float(np.mean([r["hit"][name] for r in mine])) if mine else math.nan,
                "iou": float(np.mean([r["iou"][name] for r in mine])) if mine else math.nan,
                "n": len(mine),
            }
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


def _score_data(
    data: _Data,
    classifiers,
    wanted: set,
    skipped: Counter,
    picker: _OverlayPicker,
    *,
    threshold: float,
    batch_size: int,
    limit: int | None,
    progress: bool,
) -> tuple[list[dict], int]:
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


def gradcam_analysis(
    models,
    root=None,
    *,
    out,
    dataset: str | None = None,
    split: str | None = None,
    findings=None,
    threshold: float = 0.5,
    batch_size: int = 16,
    limit: int | None = None,
    overlays: int = 4,
    device="auto",
    progress: bool = True,
) -> dict:
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
    with output_folder(out, FILES, inputs=[data.root, *(c.path for c in classifiers)]) as folder:
        result, rows = _analyse(
            data,
            classifiers,
            chosen,
            overlays,
            threshold=threshold,
            batch_size=batch_size,
            limit=limit,
            progress=progress,
        )
        result.update(_write_outputs(folder, result, rows))
    return result


def _analyse(data, classifiers, chosen, overlays, *, threshold, batch_size, limit, progress):
    """The result of :func:`gradcam_analysis` before its files are written, and the overlay rows."""
    classes = classifiers[0].classes
    wanted, skipped, picker = set(chosen or classes), Counter(), _OverlayPicker(overlays)
    records, n_images = _score_data(
        data,
        classifiers,
        wanted,
        skipped,
        picker,
        threshold=threshold,
        batch_size=batch_size,
        limit=limit,
        progress=progress,
    )
    if not records:
        raise ValueError(
            f"data: no image of {data.dataset} split {data.split!r} at {data.root} has boxes of "
            f"the findings {sorted(wanted)}" + (f" (boxes of others: {dict(skipped)})" if skipped else "")
        )
    order = chosen or [c for c in classes if any(r["finding"] == c for r in records)]
    result = {
        "kind": "adam_ext.eve.gradcam",
        "dataset": data.dataset,
        "root": data.root,
        "split": data.split,
        "target_layer": TARGET_LAYER,
        "threshold": threshold,
        "n_images": n_images,
        "findings": order,
        "models": {
            c.name: {"path": c.path, "arch": c.arch, "size": c.size, "init": c.config.get("init")}
            for c in classifiers
        },
        "results": _summary(records, [c.name for c in classifiers], order),
        "skipped": dict(skipped),
        "pairs": records,
    }
    return result, picker.rows()
