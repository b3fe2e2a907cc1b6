"""Downstream segmentation augmentations (the paper's F.2), applied to image and mask together.

Random gamma, elastic transformation, random brightness/contrast, optical distortion and grid
distortion, from albumentations (2.x API). Geometric transforms move image and mask with one
displacement field; masks are resampled with nearest neighbour and filled with 0 outside the
image, so label values never mix. Kept apart from :mod:`adam_ext.data.views` so that pretraining
never imports albumentations.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from .randomness import ProcessRandomness


@dataclasses.dataclass(frozen=True)
class SegmentationAugmentConfig:
    """Probabilities and strengths of the segmentation augmentations.

    albumentations' defaults, except the elastic field: alpha = 120 px, sigma = 120·0.05 px, the
    setting widespread in medical segmentation code (the default alpha = 1 barely moves a pixel).

    Attributes:
        gamma_p, gamma_limit: RandomGamma; γ in gamma_limit / 100.
        elastic_p, elastic_alpha, elastic_sigma: ElasticTransform; displacement scale and
            smoothness of the field, in pixels.
        brightness_contrast_p, brightness_limit, contrast_limit: RandomBrightnessContrast.
        optical_p, optical_limit: OpticalDistortion's distortion coefficient range.
        grid_p, grid_steps, grid_limit: GridDistortion's cells per side and per-cell shift range.
    """

    gamma_p: float = 0.5
    gamma_limit: tuple[float, float] = (80, 120)
    elastic_p: float = 0.5
    elastic_alpha: float = 120.0
    elastic_sigma: float = 6.0
    brightness_contrast_p: float = 0.5
    brightness_limit: tuple[float, float] = (-0.2, 0.2)
    contrast_limit: tuple[float, float] = (-0.2, 0.2)
    optical_p: float = 0.5
    optical_limit: tuple[float, float] = (-0.05, 0.05)
    grid_p: float = 0.5
    grid_steps: int = 5
    grid_limit: tuple[float, float] = (-0.3, 0.3)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if field.name.endswith("_p") and not 0 <= getattr(self, field.name) <= 1:
                value = getattr(self, field.name)
                raise ValueError(f"{field.name} must be a probability in [0, 1], got {value}")
        if self.grid_steps < 1:
            raise ValueError(f"grid_steps must be >= 1, got {self.grid_steps}")


class SegmentationAugment:
    """Callable ``(image, mask) -> (image, mask)`` applying the paper's segmentation augmentations.

    Args:
        seed: int or None. An int makes the sequence of augmentations reproducible; inside
            DataLoader workers it is mixed with each worker's seed (see
            :class:`~adam_ext.data.randomness.ProcessRandomness`) so workers differ.
        **options: fields of :class:`SegmentationAugmentConfig`.

    Call with ``image`` (np.uint8 [H, W] or [H, W, C]) and ``mask`` (integer or bool array
    [H, W] or [H, W, K]); returns both augmented, same shapes and dtypes.
    """

    def __init__(self, seed: int | None = None, **options):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.config = SegmentationAugmentConfig(**options)
        self.randomness = ProcessRandomness(seed)
        self._compose = None
        self._owner = object()  # process the compose was seeded for

    def _pipeline(self):
        # albumentations asks PyPI for a newer version at import (up to a 2 s stall, and network
        # access from compute nodes) unless told not to; an explicit user setting wins.
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import albumentations as A
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        owner = None if info is None else info.seed
        if self._compose is None:
            cfg = self.config
            self._compose = A.Compose(
                [
                    A.RandomGamma(gamma_limit=cfg.gamma_limit, p=cfg.gamma_p),
                    A.ElasticTransform(alpha=cfg.elastic_alpha, sigma=cfg.elastic_sigma, p=cfg.elastic_p),
                    A.RandomBrightnessContrast(
                        brightness_limit=cfg.brightness_limit,
                        contrast_limit=cfg.contrast_limit,
                        p=cfg.brightness_contrast_p,
                    ),
                    A.OpticalDistortion(distort_limit=cfg.optical_limit, p=cfg.optical_p),
                    A.GridDistortion(num_steps=cfg.grid_steps, distort_limit=cfg.grid_limit, p=cfg.grid_p),
                ]
            )
        if owner != self._owner:
            seed = self.randomness.seed
            if seed is not None and owner is not None:
                seed = self.randomness.process_seed(owner)
            elif seed is None and owner is not None:
                seed = owner % (1 << 32)  # unseeded: differ per worker like torch's generator
            if seed is not None:
                self._compose.set_random_seed(seed)
            self._owner = owner
        return self._compose

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
            got = _describe(image)
            raise ValueError(f"image must be a uint8 array (H, W) or (H, W, C), got {got}")
        if not isinstance(mask, np.ndarray) or mask.shape[:2] != image.shape[:2]:
            got = _describe(mask)
            shape = image.shape[:2]
            raise ValueError(f"mask must be an array (H, W) or (H, W, K) with (H, W) = {shape}, got {got}")
        dtype = mask.dtype
        work = mask.astype(np.uint8) if dtype == np.bool_ else mask
        out = self._pipeline()(image=image, mask=work)
        return out["image"], out["mask"].astype(dtype, copy=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_compose=None, _owner=object())
        return state

    def __repr__(self) -> str:
        return f"SegmentationAugment({self.config})"


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
