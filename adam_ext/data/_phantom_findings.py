"""The findings the chest radiograph phantom can draw (:data:`adam_ext.data._phantom.FINDINGS`):
each painter adds its lesion to the scene's density components and records its mask and box.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from ._phantom import _CP, MASKS, _scale_about, blur, catmull_rom, dome_profile, smooth_noise

if TYPE_CHECKING:
    from ._phantom_render import _Scene


# --------------------------------------------------------------------------- findings


def _record(scene: _Scene, name: str, mask: np.ndarray) -> None:
    ys, xs = np.nonzero(mask)
    if len(xs):
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        scene.findings.append((name, mask.astype(np.uint8), box))


def _pick_point(scene: _Scene, radius: float):
    """A pixel of either visible lung at least ``radius`` px from its edge (None if none)."""
    side = ("right_lung", "left_lung")[int(scene.rng.integers(2))]
    dist = cv2.distanceTransform(scene.masks[side], cv2.DIST_L2, 3)
    ys, xs = np.nonzero(dist >= min(radius, dist.max()))
    if not len(xs):
        return None
    i = int(scene.rng.integers(len(xs)))
    return np.array([xs[i], ys[i]], dtype=np.float64)


def _blob(scene: _Scene, radius_range, lobulation: float, strength: float, name: str) -> None:
    rng = scene.rng
    radius = rng.uniform(*radius_range) * scene.frame.scale
    center = _pick_point(scene, radius * 1.1)
    if center is None:
        return
    theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    wobble = sum(rng.normal(0, lobulation / h) * np.cos(h * theta + rng.uniform(0, 6.3)) for h in (2, 3, 5))
    r = radius * (1.0 + wobble)
    poly = center + np.stack([r * np.cos(theta), r * np.sin(theta)], 1)
    mask = scene.frame.fill(poly, pixels=True)
    scene.density.setdefault("lesions", np.zeros_like(scene.X))
    scene.density["lesions"] += blur(dome_profile(mask, radius), 0.8 * scene.px) * strength
    _record(scene, name, mask)


def _nodule(scene: _Scene) -> None:
    _blob(scene, (0.012, 0.022), 0.03, 0.75, "Nodule")


def _mass(scene: _Scene) -> None:
    _blob(scene, (0.035, 0.06), 0.12, 0.85, "Mass")


def _effusion(scene: _Scene) -> None:
    s, rng, X, Y = scene.subject, scene.rng, scene.X, scene.Y
    name = ("right", "left")[int(rng.integers(2))]
    lung = s.lungs[name]
    cp_y = lung[_CP, 1]
    level = cp_y - rng.uniform(0.05, 0.17)
    d = np.abs(X - 0.5)
    wall = np.abs(lung[_CP, 0] - 0.5)
    meniscus = level - rng.uniform(0.04, 0.09) * np.clip(d / wall, 0, 1) ** 2  # climbs the lateral wall
    region = scene.full[name] & ((Y > meniscus) & (np.sign(X - 0.5) == (1 if name == "left" else -1)))
    region = region.astype(np.uint8)
    grade = blur(region.astype(np.float32), 5 * scene.px) * np.clip((Y - meniscus) / 0.06, 0.25, 1.0)
    scene.density.setdefault("fluid", np.zeros_like(X))
    scene.density["fluid"] += grade
    _record(scene, "Effusion", region)


def _cardiomegaly(scene: _Scene) -> None:
    _record(scene, "Cardiomegaly", scene.masks["heart"])


def _pneumothorax(scene: _Scene) -> None:
    s, f, rng = scene.subject, scene.frame, scene.rng
    name = ("right", "left")[int(rng.integers(2))]
    hilum = s.hila[name] + (0.0, 0.06)
    collapsed = catmull_rom(_scale_about(s.lungs[name], hilum, *(rng.uniform(0.68, 0.86),) * 2))
    inner = f.fill(collapsed)
    region = scene.full[name] & (1 - inner) & (1 - scene.masks["mediastinum"]) & (1 - scene.masks["heart"])
    soft = blur(region.astype(np.float32), 1.5 * scene.px)
    scene.density["vessels"] *= 1.0 - soft
    scene.density["air"] = scene.density["air"] * (1.0 - 0.4 * soft) + 0.5 * soft
    line = np.zeros((scene.size, scene.size), np.uint8)
    cv2.polylines(
        line,
        [np.rint(f.to_pix(collapsed) * 16).astype(np.int32)],
        True,
        255,
        max(1, int(2 * scene.px)),
        cv2.LINE_AA,
        4,
    )
    scene.density.setdefault("lesions", np.zeros_like(scene.X))
    scene.density["lesions"] += line.astype(np.float32) * (0.25 / 255) * scene.full[name]
    _record(scene, "Pneumothorax", region)


def _consolidation(scene: _Scene) -> None:
    rng = scene.rng
    lobes = [m for m in MASKS[2:7] if scene.masks[m].sum() > 50]
    if not lobes:
        return
    lobe = scene.masks[lobes[int(rng.integers(len(lobes)))]]
    noise = smooth_noise(rng, scene.size, 10)
    threshold = np.quantile(noise[lobe > 0], rng.uniform(0.3, 0.6))
    region = ((lobe > 0) & (noise > threshold)).astype(np.uint8)
    # airspace opacity: dense where the noise is high, fading out softly; sharp only at fissures
    weight = np.clip((noise - threshold) / 0.8 + 0.3, 0.0, 1.0) * region
    fluffy = blur(weight, 9 * scene.px) * (0.9 + 0.1 * smooth_noise(rng, scene.size, 24))
    scene.density.setdefault("fluid", np.zeros_like(scene.X))
    scene.density["fluid"] += 0.55 * fluffy
    _record(scene, "Consolidation", region)


_FINDING_PAINTERS = {
    "Nodule": _nodule,
    "Mass": _mass,
    "Effusion": _effusion,
    "Cardiomegaly": _cardiomegaly,
    "Pneumothorax": _pneumothorax,
    "Consolidation": _consolidation,
}
