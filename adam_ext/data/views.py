"""Augmented views: Adam's two-view pipeline (on the anchor picked by the anatomy decomposer,
:mod:`adam_ext.data.decomposer`), the downstream classification transform, and the official
pipeline rebuilt as the benchmark's baseline.

Everything here works on ``uint8`` tensors ``C×H×W`` with C = 1 (X-rays) or 3 (fundus). Grey
images stay single-channel through every geometric and intensity step (saturation and hue jitter
are identities on grey and are skipped) and become three channels only in the final
normalisation, the one float conversion of a view. The official code instead decodes every X-ray
to 3-channel RGB PIL and augments there: three times the pixels, and PIL round trips for the blur.

Kernels: crop-and-resize and colour jitter are :mod:`torchvision.transforms.v2.functional`'s on
uint8 tensors (torch's native uint8 antialiased resize). The Gaussian blur and the rotation give
torchvision's results (same kernel, border and geometry) through OpenCV on the tensors' memory,
because on one core torchvision's float convolution and grid_sample cost 13 ms and 1 ms for a
224-px view against 0.15 ms and 0.08 ms (see :func:`gaussian_blur`, :func:`rotate`). DataLoader
workers should run OpenCV sequentially, as torch does for itself: ``cv2.setNumThreads(0)`` in
``worker_init_fn`` — not 1, which hangs in a forked child once the parent has used cv2's thread
pool (seen with opencv 5.0.0). :func:`worker_init` does that.

Example:
    >>> views = TwoViews(size=224, n=2, seed=0)
    >>> image = torch.randint(0, 256, (1, 512, 512), dtype=torch.uint8)
    >>> q, k = views(image)
    >>> q.shape, q.dtype
    (torch.Size([3, 224, 224]), torch.float32)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

# The decomposer (and the randomness it shares with the views) had its home here: still importable from here.
from .decomposer import REMAINDERS, AnatomyDecomposer, grid_bounds, grid_boxes  # noqa: F401
from .randomness import ProcessRandomness, SeedLike


def worker_init(_worker_id: int = 0) -> None:
    """``worker_init_fn`` for DataLoaders of these views: one thread per worker for torch and
    OpenCV (``cv2.setNumThreads(0)``, never 1: see the module docstring)."""
    cv2.setNumThreads(0)
    torch.set_num_threads(1)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_image(image, name: str = "image") -> None:
    expected = f"{name} must be a uint8 tensor of shape (1, H, W) or (3, H, W)"
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{expected}, got {type(image).__name__}")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"{expected}, got {image.dtype} tensor of shape {tuple(image.shape)}")


def _check_size_and_scale(size: int, scale: tuple[float, float]) -> None:
    """Validation shared by the view configurations: raises ValueError naming the field."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {scale}")


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """Adam's view augmentations (the paper's protocol, MoCo v2's list without flips).

    Applied in this order: RandomResizedCrop → ColorJitter (p) → GaussianBlur (p) →
    RandomRotation → normalise. No flips: left and right differ in anatomy.

    Attributes:
        size: output side in pixels.
        scale: RandomResizedCrop's range of crop area, as a fraction of the anchor's area.
        ratio: RandomResizedCrop's range of aspect ratio (width / height).
        brightness, contrast, saturation: ColorJitter's strengths (factor in [max(0, 1 - s), 1 + s]).
        hue: ColorJitter's hue shift range [-hue, hue] (fraction of the colour circle).
        jitter_p: probability of the ColorJitter.
        blur_sigma: range of the Gaussian blur's σ in pixels of the ``size``-px view. None (default):
            MoCo v2's (0.1, 2.0) at 224 px, scaled by size / 224, so a smaller view is blurred as
            much relative to its content (unscaled, a 64-px view got 3.5 times the paper's blur).
        blur_kernel: blur kernel side in pixels, odd. None (default): MoCo v2's 23 at 224 px
            (~10% of the side), scaled likewise to the nearest odd number, at least 3.
        blur_p: probability of the blur.
        degrees: rotation angle drawn from [-degrees, degrees]; nearest neighbour, corners filled 0.
        mean, std: per-channel normalisation of the [0, 1] intensities (ImageNet's by default).
        augmentations: the names of the view's steps, in order, among :data:`AUGMENTATIONS` (which a
            program extends with :func:`register_augmentation`); the first makes the ``size``-px view.
            Default: the paper's four. Each step draws its own uniforms after those of the steps
            before it, so a step appended at the end leaves every earlier draw as it was.
        grid_remainder: the decomposer's cells when the side is not a multiple of n: ``spread``
            (default: they tile the image) or ``drop`` (the official code's equal cells).
    """

    size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    blur_sigma: tuple[float, float] | None = None
    blur_kernel: int | None = None
    blur_p: float = 0.5
    degrees: float = 30.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    augmentations: tuple[str, ...] = ("resized_crop", "color_jitter", "gaussian_blur", "rotation")
    grid_remainder: str = "spread"

    def __post_init__(self):
        _check_size_and_scale(self.size, self.scale)
        object.__setattr__(self, "augmentations", tuple(self.augmentations))
        unknown = [a for a in self.augmentations if a not in AUGMENTATIONS]
        if not self.augmentations or unknown:
            raise ValueError(
                f"augmentations must name steps among {sorted(AUGMENTATIONS)} (register more with "
                f"adam_ext.data.views.register_augmentation), got {list(self.augmentations)}"
            )
        relative = self.size / 224  # the paper's sizes are for 224-px views
        if self.blur_sigma is None:
            object.__setattr__(self, "blur_sigma", (0.1 * relative, 2.0 * relative))
        if self.blur_kernel is None:
            object.__setattr__(self, "blur_kernel", max(3, 2 * round((23 * relative - 1) / 2) + 1))
        if self.grid_remainder not in REMAINDERS:
            raise ValueError(f"grid_remainder must be one of {REMAINDERS}, got {self.grid_remainder!r}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {self.ratio}")
        for name in ("brightness", "contrast", "saturation", "degrees"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        for name in ("jitter_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (lo, hi) with 0 < lo <= hi, got {self.blur_sigma}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be an odd int >= 1, got {self.blur_kernel}")
        if self.blur_kernel // 2 >= self.size:
            raise ValueError(f"blur_kernel must be <= 2 * size, got {self.blur_kernel} at size {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std must be 3 values with std > 0, got {self.mean} and {self.std}")


# RandomResizedCrop's 10 attempts (torchvision's), then a central crop: two uniforms an attempt
# (area, log-ratio) and two for the position.
_CROP_ATTEMPTS = 10


def resized_crop_box(height: int, width: int, u: Sequence[float], scale, ratio) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box ``(top, left, h, w)`` for an anchor of ``height``×``width`` pixels.

    torchvision's algorithm (10 attempts at a random area and log-uniform aspect ratio, then a
    central crop), driven by 22 given uniforms in [0, 1) instead of the global generator.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(_CROP_ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * attempt])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * attempt + 1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[20] * (height - h + 1)), height - h)
            left = min(int(u[21] * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _on_planes(image: torch.Tensor, op) -> torch.Tensor:
    """Runs OpenCV ``op`` (uint8 [H, W] or [H, W, 3] array → same layout) on uint8 Tensor[C, H, W].

    No copy for a contiguous grey image; a colour image is handed over as H×W×3 (one copy unless
    it already is a permuted view of such memory) and comes back as a C×H×W view of OpenCV's output.
    """
    if image.shape[0] == 1:
        return torch.from_numpy(op(image[0].numpy()))[None]
    planes = op(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
    return torch.from_numpy(planes).permute(2, 0, 1)


def gaussian_kernel1d(kernel_size: int, sigma: float) -> np.ndarray:
    """torchvision's 1-D Gaussian (exp(-i²/2σ²) for |i| ≤ kernel_size // 2, summing to 1), float32."""
    x = np.arange(-(kernel_size // 2), kernel_size // 2 + 1, dtype=np.float64)
    kernel = np.exp(-(x * x) / (2 * sigma * sigma))
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """``torchvision.transforms.v2.functional.gaussian_blur`` on uint8, as two 1-D OpenCV passes.

    Same kernel and border (reflect without repeating the edge, OpenCV's BORDER_REFLECT_101);
    results differ from torchvision's by at most one grey level (rounding). torchvision runs a
    k×k float convolution: 13 ms for a 224-px grey image at k = 23 on one core of this machine's
    AMD EPYC, against 0.15 ms here (also 12× faster than a separable torch conv2d).

    Args:
        image: uint8 Tensor[C, H, W], C = 1 or 3.
        kernel_size: odd kernel side in pixels.
        sigma: standard deviation in pixels.

    Returns:
        uint8 Tensor[C, H, W].
    """
    kernel = gaussian_kernel1d(kernel_size, sigma)
    border = cv2.BORDER_REFLECT_101
    return _on_planes(image, lambda a: cv2.sepFilter2D(a, -1, kernel, kernel, borderType=border))


def rotate(image: torch.Tensor, angle: float) -> torch.Tensor:
    """``torchvision.transforms.v2.functional.rotate`` (nearest, no expand, fill 0), by OpenCV.

    Rotates counter-clockwise by ``angle`` degrees about the image centre, like torchvision (the
    same pixels except where a sample falls exactly half-way between two, which the two round
    differently; ~1 in 25,000 pixels of a 224-px view at a random angle); 0.08 ms
    instead of torchvision's 1.0 ms (grid_sample in float) for a 224-px grey image on one core.

    Args:
        image: uint8 Tensor[C, H, W], C = 1 or 3.
        angle: degrees, counter-clockwise.

    Returns:
        uint8 Tensor[C, H, W], corners outside the rotated image set to 0.
    """
    height, width = image.shape[-2:]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
    return _on_planes(
        image,
        lambda a: cv2.warpAffine(
            a, matrix, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        ),
    )


class ToNormalizedRGB:
    """uint8 Tensor[C, H, W] (C = 1 or 3) → float32 Tensor[3, H, W], (x/255 - mean) / std.

    A grey image is expanded to three channels here, in the one float operation of a view (a
    single broadcast multiply-add).

    Args:
        mean, std: per-channel statistics of the [0, 1] intensities.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(mean), tuple(std)
        self.scale = torch.tensor([1 / (255 * s) for s in std], dtype=torch.float32).view(3, 1, 1)
        self.shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        # contiguous C×H×W out even when OpenCV handed a colour image back as a permuted H×W×C view
        pixels = image.to(torch.float32, memory_format=torch.contiguous_format)
        return torch.addcmul(self.shift, pixels, self.scale)

    def __repr__(self) -> str:
        return f"ToNormalizedRGB(mean={self.mean}, std={self.std})"


class Augmentation:
    """One step of a view: a function of the image and of its own uniform draws.

    A subclass sets ``draws`` (how many uniforms in [0, 1) one application consumes) and implements
    :meth:`__call__`. :class:`TwoViews` gives every step its own consecutive slice of a view's
    uniforms, in the order of the list, so a view is a pure function of (anchor, seed) and a step
    added at the end of the list changes no earlier draw.
    """

    draws: int = 0

    def __call__(self, image: torch.Tensor, u: Sequence[float]) -> torch.Tensor:
        """``image``: uint8 Tensor[C, H, W]; ``u``: this step's ``draws`` uniforms. Returns uint8 Tensor[C, H', W']."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class ResizedCrop(Augmentation):
    """RandomResizedCrop to ``size`` px (torchvision's algorithm, :func:`resized_crop_box`), resized once
    with the antialiased bilinear filter on uint8."""

    draws = 2 * _CROP_ATTEMPTS + 2

    def __init__(self, size: int, scale, ratio):
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)

    def __call__(self, image, u):
        top, left, h, w = resized_crop_box(*image.shape[-2:], u, self.scale, self.ratio)
        return F.resized_crop(image, top, left, h, w, [self.size] * 2, InterpolationMode.BILINEAR)


class ColorJitter(Augmentation):
    """ColorJitter with probability ``p``, its four adjustments in a random order; saturation and hue
    are identities on grey and skipped. Draws: apply?, four factors, four order keys."""

    draws = 9

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, p: float):
        self.brightness, self.contrast, self.saturation, self.hue, self.p = (
            brightness,
            contrast,
            saturation,
            hue,
            p,
        )

    def __call__(self, x, u):
        if not u[0] < self.p:
            return x
        factors, order = u[1:5], u[5:9]
        grey = x.shape[0] == 1
        for op in sorted(range(4), key=lambda i: order[i]):
            if op == 0 and self.brightness > 0:
                x = F.adjust_brightness(x, _factor(self.brightness, factors[0]))
            elif op == 1 and self.contrast > 0:
                x = F.adjust_contrast(x, _factor(self.contrast, factors[1]))
            elif op == 2 and self.saturation > 0 and not grey:
                x = F.adjust_saturation(x, _factor(self.saturation, factors[2]))
            elif op == 3 and self.hue > 0 and not grey:
                x = F.adjust_hue(x, self.hue * (2 * factors[3] - 1))
        return x


class GaussianBlur(Augmentation):
    """Gaussian blur with probability ``p``, sigma uniform in ``sigma`` (:func:`gaussian_blur`). Draws: apply?, sigma."""

    draws = 2

    def __init__(self, kernel: int, sigma, p: float):
        self.kernel, self.sigma, self.p = kernel, tuple(sigma), p

    def __call__(self, x, u):
        if not u[0] < self.p:
            return x
        return gaussian_blur(x, self.kernel, self.sigma[0] + (self.sigma[1] - self.sigma[0]) * u[1])


class Rotation(Augmentation):
    """Rotation by an angle uniform in [-degrees, degrees] (:func:`rotate`: nearest, corners 0). Draws: the angle."""

    draws = 1

    def __init__(self, degrees: float):
        self.degrees = degrees

    def __call__(self, x, u):
        return rotate(x, self.degrees * (2 * u[0] - 1))


#: The view steps a configuration can name: name -> factory of the step from a :class:`ViewConfig`.
AUGMENTATIONS: dict[str, Callable[[ViewConfig], Augmentation]] = {
    "resized_crop": lambda cfg: ResizedCrop(cfg.size, cfg.scale, cfg.ratio),
    "color_jitter": lambda cfg: ColorJitter(
        cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, cfg.jitter_p
    ),
    "gaussian_blur": lambda cfg: GaussianBlur(cfg.blur_kernel, cfg.blur_sigma, cfg.blur_p),
    "rotation": lambda cfg: Rotation(cfg.degrees),
}


def register_augmentation(name: str, factory: Callable[[ViewConfig], Augmentation]) -> None:
    """Makes ``name`` usable in ``data.views.augmentations`` (and ``ViewConfig.augmentations``).

    Args:
        name: a new step name (refused if taken: a program cannot silently replace the paper's steps).
        factory: builds the step from the run's :class:`ViewConfig` (``lambda cfg: MyNoise(0.05)``).

    Register before the configuration is loaded, in the program that runs the training (DataLoader
    workers started by fork inherit it; with spawn, register at the import of your own module).
    """
    if not isinstance(name, str) or not name or name in AUGMENTATIONS:
        raise ValueError(
            f"name must be a new augmentation name (taken: {sorted(AUGMENTATIONS)}), got {name!r}"
        )
    if not callable(factory):
        raise ValueError(
            f"factory must be callable (ViewConfig -> Augmentation), got {type(factory).__name__}"
        )
    AUGMENTATIONS[name] = factory


class TwoViews:
    """Adam's pair of views: anchor from the decomposer, then two independent augmentations.

    Args:
        size: output side in pixels.
        n: the decomposer's grid size (0: the anchor is the whole image).
        seed: int, ``torch.Generator`` or None (see :class:`ProcessRandomness`).
        augmentations: the view's steps in order: names of :data:`AUGMENTATIONS` and/or
            :class:`Augmentation` objects (None: ``ViewConfig.augmentations``, the paper's four).
        **options: other fields of :class:`ViewConfig` (``scale``, ``degrees``, ``mean``, ...).

    Call with a uint8 Tensor[C, H, W] (C = 1 or 3); returns ``(q, k)``, two float32
    Tensor[3, size, size], normalised.
    """

    def __init__(
        self,
        size: int = ViewConfig.size,
        n: int = 0,
        *,
        seed: SeedLike = None,
        augmentations: Sequence[str | Augmentation] | None = None,
        **options,
    ):
        names = augmentations is None or all(isinstance(a, str) for a in augmentations)
        if augmentations is not None and names:
            options["augmentations"] = tuple(augmentations)
        self.config = ViewConfig(size=size, **options)
        self.randomness = ProcessRandomness(seed)
        self.decomposer = AnatomyDecomposer(n, remainder=self.config.grid_remainder)
        self.normalize = ToNormalizedRGB(self.config.mean, self.config.std)
        if names:
            augmentations = self.config.augmentations
        if not augmentations or not all(isinstance(a, (str, Augmentation)) for a in augmentations):
            raise ValueError(
                f"augmentations must be a non-empty list of step names or Augmentation objects, "
                f"got {augmentations!r}"
            )
        unknown = [a for a in augmentations if isinstance(a, str) and a not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"augmentations must name steps among {sorted(AUGMENTATIONS)}, got {unknown}")
        self.steps = [AUGMENTATIONS[a](self.config) if isinstance(a, str) else a for a in augmentations]
        self.draws_per_view = sum(step.draws for step in self.steps)

    @property
    def n(self) -> int:
        return self.decomposer.n

    def __call__(
        self, image: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views of ``image``; draws from ``generator`` when given (e.g. one seeded per sample
        and epoch, which makes a resumed run draw exactly what an uninterrupted one would)."""
        _check_image(image)
        if generator is None:
            generator = self.randomness.generator()
        anchor = self.decomposer.sample(image, generator)[0]
        draws = torch.rand(2, self.draws_per_view, generator=generator).tolist()
        return self.view(anchor, draws[0]), self.view(anchor, draws[1])

    def view(self, anchor: torch.Tensor, u: Sequence[float]) -> torch.Tensor:
        """One augmented view of ``anchor`` (uint8 Tensor[C, h, w]) from ``draws_per_view`` uniforms ``u``.

        Each step takes its consecutive slice of ``u``; everything stays uint8 until the normalisation."""
        at = 0
        for step in self.steps:
            anchor = step(anchor, u[at : at + step.draws])
            at += step.draws
        return self.normalize(anchor)

    def __repr__(self) -> str:
        return f"TwoViews(n={self.n}, steps={self.steps})"


def _factor(strength: float, u: float) -> float:
    """ColorJitter's factor, uniform in [max(0, 1 - strength), 1 + strength]."""
    lo = max(0.0, 1.0 - strength)
    return lo + (1.0 + strength - lo) * u


@dataclasses.dataclass(frozen=True)
class ClassificationConfig:
    """Downstream classification augmentation (the paper's F.2: rotation ±7°, random crop,
    horizontal flip p = 0.5) — the only place flips are allowed.

    The random crop follows the benchmark code the paper builds on (jlianglab's
    BenchmarkTransferLearning): RandomResizedCrop(size) with torchvision's default range of area.
    Evaluation: resize the shorter side to ``size·eval_resize_ratio``, centre crop ``size``.

    Attributes:
        size: output side in pixels (224 for X-rays, 512 for fundus).
        scale: RandomResizedCrop's range of area fraction.
        degrees: rotation angle range [-degrees, degrees].
        flip_p: probability of a horizontal flip.
        eval_resize_ratio: evaluation resize / crop ratio (256 / 224).
        mean, std: per-channel normalisation of the [0, 1] intensities.
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    degrees: float = 7.0
    flip_p: float = 0.5
    eval_resize_ratio: float = 256 / 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        _check_size_and_scale(self.size, self.scale)
        if not 0 <= self.flip_p <= 1:
            raise ValueError(f"flip_p must be a probability in [0, 1], got {self.flip_p}")
        if self.eval_resize_ratio < 1:
            raise ValueError(f"eval_resize_ratio must be >= 1, got {self.eval_resize_ratio}")


class ClassificationTransform:
    """Downstream classification transform: uint8 Tensor[C, H, W] → float32 Tensor[3, size, size].

    Training: RandomResizedCrop → RandomHorizontalFlip → RandomRotation, on uint8 (grey stays
    one channel), then the expand-and-normalise of :class:`ToNormalizedRGB`. Evaluation: resize
    and centre crop. Randomness from torch's global generator, which DataLoader workers seed.

    Args:
        train: training (random) or evaluation (deterministic) transform.
        size: output side in pixels.
        **options: other fields of :class:`ClassificationConfig`.
    """

    def __init__(self, train: bool = True, size: int = ClassificationConfig.size, **options):
        from torchvision.transforms import v2

        self.config = cfg = ClassificationConfig(size=size, **options)
        self.train = train
        if train:
            self.geometry = v2.Compose(
                [
                    v2.RandomResizedCrop(cfg.size, scale=cfg.scale, antialias=True),
                    v2.RandomHorizontalFlip(cfg.flip_p),
                    v2.RandomRotation(cfg.degrees),
                ]
            )
        else:
            self.geometry = v2.Compose(
                [
                    v2.Resize(round(cfg.size * cfg.eval_resize_ratio), antialias=True),
                    v2.CenterCrop(cfg.size),
                ]
            )
        self.normalize = ToNormalizedRGB(cfg.mean, cfg.std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image(image)
        return self.normalize(self.geometry(image))

    def __repr__(self) -> str:
        return f"ClassificationTransform(train={self.train}, {self.config})"


class OfficialTwoViews:
    """The official Adam pipeline, rebuilt as the data benchmark's baseline (not for training).

    PIL open → ``convert("RGB")`` → torchvision v1 transforms on PIL (RandomResizedCrop,
    RandomApply(ColorJitter), RandomApply(GaussianBlur(23)), RandomRotation, ToTensor, Normalize),
    applied twice. Decomposition is left out (n = 0, as in its first stage).

    Call with an image file path; returns ``(q, k)``, two float32 Tensor[3, size, size].
    """

    def __init__(self, size: int = ViewConfig.size):
        from torchvision import transforms as v1

        cfg = ViewConfig(size=size)
        self.transform = v1.Compose(
            [
                v1.RandomResizedCrop(cfg.size, scale=cfg.scale),
                v1.RandomApply(
                    [v1.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p
                ),
                v1.RandomApply([v1.GaussianBlur(cfg.blur_kernel, sigma=cfg.blur_sigma)], p=cfg.blur_p),
                v1.RandomRotation(cfg.degrees),
                v1.ToTensor(),
                v1.Normalize(cfg.mean, cfg.std),
            ]
        )

    def __call__(self, path) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        with Image.open(path) as file:
            image = file.convert("RGB")
        return self.transform(image), self.transform(image)
