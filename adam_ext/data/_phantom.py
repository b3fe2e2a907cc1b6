"""Procedural posterior-anterior chest radiograph phantom (numpy + OpenCV; no torch): the anatomy.

This module holds the canonical anatomy, the subject and view dataclasses, the geometry and
raster helpers and the sampling of subjects and views; :mod:`adam_ext.data._phantom_render`
renders a film from them, :mod:`adam_ext.data._phantom_findings` paints its findings.

Coordinates. Anatomy is laid out in a canonical frame of an average subject, in
fractions of the image: X from 0 (image left, the patient's right as on a PA film)
to 1, Y from 0 (top) to 1. A subject perturbs the shapes; a view then maps the
canonical frame to pixels with its own transform (zoom, aspect, shift, rotation
up to ±7°). Masks and landmarks are rasterised from the same polygons as the
image, so they agree with it exactly. Lateral offsets from the midline are written
``d`` (positive towards the side's wall) and sides carry a sign: -1 for the
patient's right (image left), +1 for the patient's left.

Image formation. Structures add to (soft tissue, bone, fluid) or subtract from
(air) a projected density D; brightness is 1 - exp(-D), windowed like a processed
digital radiograph, edge-enhanced and given film grain. Nothing here loops over
pixels: shapes are filled polygons, profiles come from distance transforms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

CLASSES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
# Findings the phantom can draw (a subset of CLASSES).
FINDINGS = ("Nodule", "Mass", "Effusion", "Cardiomegaly", "Pneumothorax", "Consolidation")
MASKS = (
    "right_lung",
    "left_lung",
    "right_upper_lobe",
    "right_middle_lobe",
    "right_lower_lobe",
    "left_upper_lobe",
    "left_lower_lobe",
    "heart",
    "right_clavicle",
    "left_clavicle",
    "ribs",
    "mediastinum",
    "trachea",
)
LANDMARKS = (
    "carina",
    "heart_apex",
    "right_costophrenic_angle",
    "left_costophrenic_angle",
    "right_clavicle_head",
    "left_clavicle_head",
    "right_lung_apex",
    "left_lung_apex",
    "right_hemidiaphragm_dome",
    "left_hemidiaphragm_dome",
    "right_hilum",
    "left_hilum",
    "aortic_knob",
)
SIDES = (("right", -1.0), ("left", 1.0))

# Full lung outlines (including the parts behind heart and mediastinum) as (d, y) control
# points of a closed Catmull-Rom curve, clockwise on screen for the right lung.
_LUNG = np.array(
    [
        (0.165, 0.125),
        (0.245, 0.150),
        (0.305, 0.215),
        (0.340, 0.310),
        (0.357, 0.430),
        (0.362, 0.550),
        (0.358, 0.650),
        (0.352, 0.718),
        (0.352, 0.718),
        (0.300, 0.680),
        (0.200, 0.640),
        (0.110, 0.655),
        (0.050, 0.680),
        (0.046, 0.560),
        (0.052, 0.430),
        (0.060, 0.300),
        (0.072, 0.200),
        (0.110, 0.145),
    ]
)
_APEX, _CP, _DOME = 0, 7, 10
_DIAPHRAGM = slice(6, 13)  # the points that move with the diaphragm
# Heart outline (X, Y): right border, inferior border, apex, left border, base.
_HEART = np.array(
    [
        (0.490, 0.405),
        (0.445, 0.440),
        (0.415, 0.500),
        (0.405, 0.565),
        (0.415, 0.625),
        (0.445, 0.668),
        (0.540, 0.690),
        (0.625, 0.692),
        (0.672, 0.676),
        (0.682, 0.625),
        (0.665, 0.560),
        (0.630, 0.505),
        (0.590, 0.470),
        (0.570, 0.430),
        (0.545, 0.405),
    ]
)
_HEART_APEX = 8
# Mediastinum (X, Y): left side down (aortic knob, pulmonary trunk), then right side up.
_MEDIASTINUM = np.array(
    [
        (0.555, 0.060),
        (0.560, 0.190),
        (0.588, 0.262),
        (0.572, 0.315),
        (0.566, 0.370),
        (0.560, 0.450),
        (0.500, 0.470),
        (0.440, 0.450),
        (0.432, 0.370),
        (0.437, 0.260),
        (0.445, 0.120),
        (0.445, 0.060),
    ]
)
_KNOB = 2


@dataclass
class Subject:
    """Anatomy of one patient (shared by the patient's follow-up images); canonical units."""

    sex: str
    age: int
    lungs: dict  # side -> (N, 2) control points (X, Y)
    heart: np.ndarray
    mediastinum: np.ndarray
    carina: np.ndarray
    hila: dict
    clavicles: dict  # side -> (4, 2) Bezier controls, medial end first
    rib_top: float  # Y of the first thoracic vertebra
    rib_step: float
    rib_width: float
    rib_jitter: np.ndarray  # (2, 12, 3): per side and rib, offsets of level, drop and width
    thorax: float  # lateral scale
    soft: float  # soft-tissue thickness
    breast: float  # 0 for none
    vessel_seed: int
    fissure: bool


@dataclass
class View:
    """One exposure of a subject: pose, exposure, findings and what lies on the film besides
    the patient (side marker, ECG electrodes, collimation), as on real radiographs."""

    zoom: float
    aspect: float
    angle: float  # degrees, counter-clockwise on screen
    shift: np.ndarray
    gain: float
    gamma: float
    sharpen: float
    equalize: float
    grain: float
    bubble: float  # gastric air bubble size, 0 for none
    findings: tuple
    marker: tuple = ()  # (letter "L"/"R", x, y, height) in fractions of the side; () for none
    electrodes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (N, 2) centres, fractions
    collimation: np.ndarray = field(default_factory=lambda: np.zeros(4))  # left, top, right, bottom widths


@dataclass
class Phantom:
    """One rendered image with its ground truth (pixel units)."""

    brightness: np.ndarray  # float32[S, S] in [0, 255]
    masks: dict  # name -> uint8[S, S] of 0/1
    rib_index: np.ndarray  # uint8[S, S]: 0, 1-12 right ribs, 13-24 left ribs
    landmarks: dict  # name -> (x, y) pixels
    findings: list = field(default_factory=list)  # (name, uint8[S, S] mask, (x0, y0, x1, y1))

    @property
    def image(self) -> np.ndarray:
        """uint8[S, S] grey image."""
        return np.rint(self.brightness).astype(np.uint8)


# --------------------------------------------------------------------------- geometry helpers


def catmull_rom(points: np.ndarray, samples: int = 10) -> np.ndarray:
    """Closed uniform Catmull-Rom curve through ``points`` (N, 2) -> (N*samples, 2)."""
    p1 = np.asarray(points, dtype=np.float64)
    p0, p2, p3 = np.roll(p1, 1, 0), np.roll(p1, -1, 0), np.roll(p1, -2, 0)
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[:, None, None]
    curve = 0.5 * (
        2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3
    )
    return curve.transpose(1, 0, 2).reshape(-1, 2)


def bezier(ctrl, n: int = 24) -> np.ndarray:
    """Cubic Bezier through 4 control points (4, 2) -> (n, 2)."""
    c = np.asarray(ctrl, dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 3 * c[0] + 3 * (1 - t) ** 2 * t * c[1] + 3 * (1 - t) * t**2 * c[2] + t**3 * c[3]


def ribbon(center: np.ndarray, width) -> np.ndarray:
    """Polygon (2N, 2) of a band of per-point ``width`` (N,) around ``center`` (N, 2)."""
    tangent = np.gradient(center, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    half = np.broadcast_to(np.asarray(width, dtype=np.float64) / 2, center.shape[:1])[:, None]
    return np.concatenate([center + normal * half, (center - normal * half)[::-1]])


def side_points(dy: np.ndarray, sign: float, thorax: float) -> np.ndarray:
    """(d, y) pairs -> canonical (X, Y) on one side of the midline."""
    return np.stack([0.5 + sign * thorax * dy[:, 0], dy[:, 1]], axis=1)


class Frame:
    """The view's map from canonical (X, Y) to pixel (x, y) coordinates (pixel centres at integers)."""

    def __init__(self, size: int, view: View):
        self.size = size
        theta = np.deg2rad(view.angle)
        rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
        self.scale = size * view.zoom  # pixels per canonical unit
        self.a = self.scale * rot @ np.diag([view.aspect, 1.0 / view.aspect])
        self.b = size * (0.5 + view.shift) - self.a @ np.array([0.5, 0.5]) - 0.5

    def to_pix(self, pts) -> np.ndarray:
        """Canonical points (N, 2) -> pixel points (N, 2)."""
        return np.asarray(pts, dtype=np.float64) @ self.a.T + self.b

    def grid(self, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Canonical coordinates of every pixel: X, Y float32[S, S] (of every ``step``-th, at
        the centres of step x step blocks, with ``step`` > 1: the grid that cv2.resize expects)."""
        inv = np.linalg.inv(self.a)
        c = -inv @ self.b
        j = np.arange(-(-self.size // step), dtype=np.float32) * step + (step - 1) / 2
        gx = inv[0, 0] * j[None, :] + inv[0, 1] * j[:, None] + np.float32(c[0])
        gy = inv[1, 0] * j[None, :] + inv[1, 1] * j[:, None] + np.float32(c[1])
        return gx.astype(np.float32), gy.astype(np.float32)

    def fill(self, polygon, value: int = 1, canvas=None, antialias: bool = False, pixels: bool = False):
        """Fills one polygon (canonical, or pixel when ``pixels``) into a uint8 canvas."""
        if canvas is None:
            canvas = np.zeros((self.size, self.size), dtype=np.uint8)
        pts = polygon if pixels else self.to_pix(polygon)
        cv2.fillPoly(
            canvas,
            [np.rint(pts * 16).astype(np.int32)],
            int(value),
            lineType=cv2.LINE_AA if antialias else cv2.LINE_8,
            shift=4,
        )
        return canvas


def dome_profile(mask: np.ndarray, radius: float) -> np.ndarray:
    """Projected thickness of a rounded solid filling ``mask``: 0 at the edge, 1 beyond ``radius`` px."""
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    u = np.minimum(dist * np.float32(1.0 / max(radius, 1.0)), 1.0)
    return np.sqrt(u * (2.0 - u))


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with ``sigma`` in pixels (no-op below 0.3 px; wide ones on a coarser grid)."""
    if sigma < 0.3:
        return img
    if sigma <= 6:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    factor = sigma / 3  # same result to the eye, ~factor^2 cheaper
    h, w = img.shape
    small = cv2.resize(
        img, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA
    )
    small = cv2.GaussianBlur(small, (0, 0), 3 * small.shape[1] / w * factor)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise float32[size, size], roughly unit variance, ~``cells`` blobs per side."""
    step = -(-size // cells)
    coarse = rng.standard_normal((cells + 3, cells + 3), dtype=np.float32)
    big = cv2.resize(coarse, ((cells + 3) * step,) * 2, interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(big[step : step + size, step : step + size])


# --------------------------------------------------------------------------- sampling


def sample_subject(rng: np.random.Generator) -> Subject:
    """Draws one patient's anatomy (canonical units) from ``rng``."""
    sex = "F" if rng.random() < 0.45 else "M"
    age = int(rng.integers(18, 86))
    # Spreads of body habitus and inspiration depth; before they were widened (thorax 0.035, lung
    # height 0.04, dome 0.015, heart 0.05) landmarks moved by only 2-3% of the film between
    # patients and MoCo could not tell two phantoms apart even from nearly identical views.
    thorax, lung_h = rng.normal(1.0, 0.07), rng.normal(1.0, 0.07)
    apex_y = 0.125 + rng.normal(0.0, 0.012)
    dome_r = rng.normal(0.0, 0.03)
    dome_l = dome_r + rng.uniform(0.012, 0.035)  # the right hemidiaphragm sits higher

    def vertical(pts):  # stretch the template's heights about the lung apex
        return apex_y + (pts - 0.125) * lung_h

    lungs = {}
    for name, sign in SIDES:
        pts = _LUNG + rng.normal(0.0, 0.005, _LUNG.shape)
        pts[_CP + 1] = pts[_CP]  # a doubled point makes the costophrenic angle sharp
        pts[:, 1] = vertical(pts[:, 1])
        pts[_DIAPHRAGM, 1] += dome_l if sign > 0 else dome_r
        if sign > 0:  # the left dome peaks lateral to the heart
            pts[_DOME, 0] += 0.035
        lungs[name] = side_points(pts, sign, thorax)
    hila = {
        "right": np.array([0.5 - 0.07 * thorax, vertical(0.41)]) + rng.normal(0, 0.006, 2),
        "left": np.array([0.5 + 0.075 * thorax, vertical(0.39)]) + rng.normal(0, 0.006, 2),
    }
    heart_scale = rng.normal(1.0, 0.1)
    heart = _scale_about(
        _HEART + rng.normal(0.0, 0.004, _HEART.shape),
        (0.53, 0.41),
        heart_scale * thorax,
        heart_scale * lung_h,
    )
    heart += (rng.normal(0.0, 0.015), apex_y - 0.125 + 0.5 * dome_l)
    med = _MEDIASTINUM + rng.normal(0.0, 0.003, _MEDIASTINUM.shape)
    med[:, 0] = 0.5 + (med[:, 0] - 0.5) * rng.normal(1.0, 0.1)
    med[_KNOB, 0] += rng.uniform(-0.01, 0.012) + 0.012 * (age > 60)  # the aorta unfolds with age
    med[:, 1] = vertical(med[:, 1])
    carina = np.array([0.5 + rng.normal(0.004, 0.004), apex_y + rng.normal(0.185, 0.012) * lung_h])
    rib_top = apex_y - 0.04 + rng.normal(0.0, 0.005)
    return Subject(
        sex=sex,
        age=age,
        lungs=lungs,
        heart=heart,
        mediastinum=med,
        carina=carina,
        hila=hila,
        clavicles=_sample_clavicles(rng, apex_y, thorax),
        rib_top=rib_top,
        rib_step=(0.64 + dome_r - rib_top) / 11.0 * lung_h * rng.normal(1.0, 0.02),
        rib_width=rng.normal(1.0, 0.07),
        rib_jitter=rng.normal(0.0, 1.0, (2, 12, 3)),
        thorax=thorax,
        soft=rng.normal(1.0, 0.1),
        breast=rng.uniform(0.5, 1.0) if sex == "F" else 0.0,
        vessel_seed=int(rng.integers(2**31)),
        fissure=bool(rng.random() < 0.4),
    )


def _sample_clavicles(rng: np.random.Generator, apex_y: float, thorax: float) -> dict:
    """S-shaped clavicles as Bezier controls, medial head first, lateral end higher."""
    head_y = apex_y + rng.normal(0.055, 0.01)
    lateral_y = rng.normal(0.0, 0.008)
    clavicles = {}
    for name, sign in SIDES:
        ctrl = np.array(
            [
                (0.045, head_y),
                (0.17, head_y + 0.025),
                (0.24, head_y - 0.055 + lateral_y),
                (0.37, head_y - 0.04 + lateral_y),
            ]
        ) + rng.normal(0.0, 0.003, (4, 2))
        clavicles[name] = side_points(ctrl, sign, thorax * rng.normal(1.0, 0.02))
    return clavicles


@dataclass(frozen=True)
class FilmFeatures:
    """Which film-to-film variations besides anatomy and pose the phantoms carry (all on by
    default, as on real radiographs). Each tells two films apart without any anatomy, so a
    contrastive model may learn it instead of anatomy: switching one off keeps every random draw
    (the same subjects, poses, findings and noise), only that feature is not drawn on the film.

    Attributes:
        markers: the lead side marker ("L"/"R") near an upper corner (80% of films).
        electrodes: ECG electrodes and their leads (35% of films).
        collimation: unexposed borders (50% of films).
        exposure_variation: gain, contrast curve, sharpening, equalisation and grain vary per film;
            off, every film has the middle of each range.
    """

    markers: bool = True
    electrodes: bool = True
    collimation: bool = True
    exposure_variation: bool = True


#: The exposure of a film when exposure_variation is off: the middle of each range sample_view draws from.
_MID_EXPOSURE = {"gain": 1.025, "gamma": 0.9, "sharpen": 0.55, "equalize": 0.35, "grain": 0.0275}


def sample_view(
    rng: np.random.Generator, finding_rate: float, features: FilmFeatures = FilmFeatures()
) -> View:
    """Draws one exposure: pose (rotation up to ±7°), exposure, the findings to draw, a side marker
    (80% of films), ECG electrodes (35%) and collimation borders (50%); ``features`` switches the
    last four off (the draws are made all the same, so nothing else changes)."""
    findings: tuple = ()
    if rng.random() < finding_rate:
        k = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
        findings = tuple(sorted(rng.choice(FINDINGS, size=k, replace=False).tolist()))
    marker = ()
    if rng.random() < 0.8:  # a lead side marker near an upper corner
        left = rng.random() < 0.5
        marker = (
            "R" if rng.random() < 0.7 else "L",
            rng.uniform(0.03, 0.12) if left else rng.uniform(0.82, 0.9),
            rng.uniform(0.03, 0.14),
            rng.uniform(0.04, 0.07),
        )
    electrodes = (
        rng.uniform((0.15, 0.12), (0.85, 0.55), (int(rng.integers(2, 6)), 2))
        if rng.random() < 0.35
        else np.zeros((0, 2))
    )
    collimation = rng.uniform(0.0, 0.06, 4) * (rng.random(4) < 0.5) if rng.random() < 0.5 else np.zeros(4)
    view = View(
        zoom=rng.uniform(0.8, 1.08),
        aspect=rng.normal(1.0, 0.03),
        angle=rng.uniform(-7.0, 7.0),
        shift=rng.normal(0.0, 0.025, 2),
        gain=rng.uniform(0.75, 1.3),
        gamma=rng.uniform(0.6, 1.2),
        sharpen=rng.uniform(0.2, 0.9),
        equalize=rng.uniform(0.2, 0.5),
        grain=rng.uniform(0.01, 0.045),
        bubble=rng.uniform(0.6, 1.3) if rng.random() < 0.7 else 0.0,
        findings=findings,
        marker=marker,
        electrodes=electrodes,
        collimation=collimation,
    )
    if not features.markers:
        view.marker = ()
    if not features.electrodes:
        view.electrodes = np.zeros((0, 2))
    if not features.collimation:
        view.collimation = np.zeros(4)
    if not features.exposure_variation:
        for name, value in _MID_EXPOSURE.items():
            setattr(view, name, value)
    return view


def _scale_about(pts: np.ndarray, center, sx: float, sy: float) -> np.ndarray:
    c = np.asarray(center, dtype=np.float64)
    return c + (pts - c) * np.array([sx, sy])
