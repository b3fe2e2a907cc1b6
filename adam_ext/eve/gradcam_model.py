"""The classifiers of Grad-CAM: rebuilt from ``adam finetune cls`` checkpoints, their inputs and
their Grad-CAM heatmaps (see :mod:`adam_ext.eve.gradcam`)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoints import FINETUNE_KIND
from ..models import Classifier
from .common import parse_checkpoints

__all__ = ["FinetunedClassifier", "classifier_input", "gradcam_heatmaps", "load_classifier", "parse_models"]


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
        raise FileNotFoundError(
            f"model {name}: {str(path)!r} does not exist (give the seed<S>/best.pt of an "
            "`adam finetune cls` run)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(
            f"model {name}: {str(path)!r} must be a torch checkpoint, got an unreadable file "
            f"({type(exc).__name__})"
        ) from None
    kind = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
    if kind != FINETUNE_KIND or ckpt.get("task") != "cls":
        what = f"a {ckpt.get('task')!r} fine-tuning run" if kind == FINETUNE_KIND else f"kind {kind!r}"
        raise ValueError(
            f"model {name}: {str(path)!r} must be a classifier checkpoint (seed<S>/best.pt of "
            f"`adam finetune cls`), got {what}"
        )
    missing = [key for key in ("arch", "classes", "model") if key not in ckpt]
    if missing:
        raise ValueError(
            f"model {name}: {str(path)!r} must hold the arch, classes and weights of a classifier, "
            f"got none for {missing}"
        )
    classes, config = tuple(ckpt["classes"]), dict(ckpt.get("config") or {})
    model = Classifier(ckpt["arch"], len(classes))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(
            f"model {name}: {str(path)!r} holds weights that do not fit a {ckpt['arch']} "
            f"classifier of {len(classes)} classes: {str(exc).splitlines()[0]}"
        ) from None
    size = config.get("size") or 224
    return FinetunedClassifier(
        name, str(path), model.eval().to(device), ckpt["arch"], classes, int(size), config
    )


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
        raise ValueError(
            f"classes must give one logit index per input, got {len(classes)} for inputs of "
            f"shape {tuple(inputs.shape)}"
        )
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
