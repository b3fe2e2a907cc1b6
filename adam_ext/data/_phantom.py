"""Procedural posterior-anterior chest radiograph phantom (numpy + OpenCV; no torch).

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
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
# Findings the phantom can draw (a subset of CLASSES).
FINDINGS = ("Nodule", "Mass", "Effusion", "Cardiomegaly", "Pneumothorax", "Consolidation")
MASKS = (
    "right_lung", "left_lung",
    "right_upper_lobe", "right_middle_lobe", "right_lower_lobe", "left_upper_lobe", "left_lower_lobe",
    "heart", "right_clavicle", "left_clavicle", "ribs", "mediastinum", "trachea",
)
LANDMARKS = (
    "carina", "heart_apex", "right_costophrenic_angle", "left_costophrenic_angle",
    "right_clavicle_head", "left_clavicle_head", "right_lung_apex", "left_lung_apex",
    "right_hemidiaphragm_dome", "left_hemidiaphragm_dome", "right_hilum", "left_hilum", "aortic_knob",
)
SIDES = (("right", -1.0), ("left", 1.0))

# Full lung outlines (including the parts behind heart and mediastinum) as (d, y) control
# points of a closed Catmull-Rom curve, clockwise on screen for the right lung.
_LUNG = np.array([
    (0.165, 0.125), (0.245, 0.150), (0.305, 0.215), (0.340, 0.310), (0.357, 0.430), (0.362, 0.550),
    (0.358, 0.650), (0.352, 0.718), (0.352, 0.718), (0.300, 0.680), (0.200, 0.640), (0.110, 0.655),
    (0.050, 0.680), (0.046, 0.560), (0.052, 0.430), (0.060, 0.300), (0.072, 0.200), (0.110, 0.145),
])
_APEX, _CP, _DOME = 0, 7, 10
_DIAPHRAGM = slice(6, 13)  # the points that move with the diaphragm
# Heart outline (X, Y): right border, inferior border, apex, left border, base.
_HEART = np.array([
    (0.490, 0.405), (0.445, 0.440), (0.415, 0.500), (0.405, 0.565), (0.415, 0.625), (0.445, 0.668),
    (0.540, 0.690), (0.625, 0.692), (0.672, 0.676), (0.682, 0.625), (0.665, 0.560), (0.630, 0.505),
    (0.590, 0.470), (0.570, 0.430), (0.545, 0.405),
])
_HEART_APEX = 8
# Mediastinum (X, Y): left side down (aortic knob, pulmonary trunk), then right side up.
_MEDIASTINUM = np.array([
    (0.555, 0.060), (0.560, 0.190), (0.588, 0.262), (0.572, 0.315), (0.566, 0.370), (0.560, 0.450),
    (0.500, 0.470), (0.440, 0.450), (0.432, 0.370), (0.437, 0.260), (0.445, 0.120), (0.445, 0.060),
])
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
    curve = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                   + (3 * p1 - p0 - 3 * p2 + p3) * t**3)
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


def _film_extras(scene: _Scene, b: np.ndarray) -> np.ndarray:
    """Draws what lies on the film besides the patient: ECG electrodes with their leads, the lead
    side marker and collimation borders (unexposed, so bright after processing)."""
    v, size = scene.view, scene.size
    for x, y in v.electrodes * size:
        r = 0.012 * size
        cv2.circle(b, (int(x * 16), int(y * 16)), int(r * 16), 235.0, -1, cv2.LINE_AA, shift=4)
        end = (int((x + scene.rng.uniform(-0.2, 0.2) * size) * 16), int(-0.05 * size * 16))
        cv2.line(b, (int(x * 16), int(y * 16)), end, 200.0, max(1, round(0.004 * size)), cv2.LINE_AA, shift=4)
    if v.marker:
        letter, x, y, height = v.marker
        scale = cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_SIMPLEX, max(4, round(height * size)))
        glyph = np.zeros((size, size), np.uint8)  # putText draws on 8-bit images only
        cv2.putText(glyph, letter, (round(x * size), round((y + height) * size)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    255, max(1, round(height * size / 6)), cv2.LINE_AA)
        alpha = glyph.astype(np.float32) / 255.0
        b = b * (1.0 - alpha) + 250.0 * alpha
    left, top, right, bottom = np.rint(v.collimation * size).astype(int)
    b[:, :left] = b[:top, :] = 225.0
    if right:
        b[:, size - right:] = 225.0
    if bottom:
        b[size - bottom:, :] = 225.0
    return b


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
        cv2.fillPoly(canvas, [np.rint(pts * 16).astype(np.int32)], int(value),
                     lineType=cv2.LINE_AA if antialias else cv2.LINE_8, shift=4)
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
    small = cv2.resize(img, (max(1, round(w / factor)), max(1, round(h / factor))),
                       interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 3 * small.shape[1] / w * factor)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise float32[size, size], roughly unit variance, ~``cells`` blobs per side."""
    step = -(-size // cells)
    coarse = rng.standard_normal((cells + 3, cells + 3), dtype=np.float32)
    big = cv2.resize(coarse, ((cells + 3) * step,) * 2, interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(big[step:step + size, step:step + size])


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
    hila = {"right": np.array([0.5 - 0.07 * thorax, vertical(0.41)]) + rng.normal(0, 0.006, 2),
            "left": np.array([0.5 + 0.075 * thorax, vertical(0.39)]) + rng.normal(0, 0.006, 2)}
    heart_scale = rng.normal(1.0, 0.1)
    heart = _scale_about(_HEART + rng.normal(0.0, 0.004, _HEART.shape), (0.53, 0.41),
                         heart_scale * thorax, heart_scale * lung_h)
    heart += (rng.normal(0.0, 0.015), apex_y - 0.125 + 0.5 * dome_l)
    med = _MEDIASTINUM + rng.normal(0.0, 0.003, _MEDIASTINUM.shape)
    med[:, 0] = 0.5 + (med[:, 0] - 0.5) * rng.normal(1.0, 0.1)
    med[_KNOB, 0] += rng.uniform(-0.01, 0.012) + 0.012 * (age > 60)  # the aorta unfolds with age
    med[:, 1] = vertical(med[:, 1])
    carina = np.array([0.5 + rng.normal(0.004, 0.004), apex_y + rng.normal(0.185, 0.012) * lung_h])
    rib_top = apex_y - 0.04 + rng.normal(0.0, 0.005)
    return Subject(
        sex=sex, age=age, lungs=lungs, heart=heart, mediastinum=med, carina=carina, hila=hila,
        clavicles=_sample_clavicles(rng, apex_y, thorax), rib_top=rib_top,
        rib_step=(0.64 + dome_r - rib_top) / 11.0 * lung_h * rng.normal(1.0, 0.02),
        rib_width=rng.normal(1.0, 0.07), rib_jitter=rng.normal(0.0, 1.0, (2, 12, 3)), thorax=thorax,
        soft=rng.normal(1.0, 0.1), breast=rng.uniform(0.5, 1.0) if sex == "F" else 0.0,
        vessel_seed=int(rng.integers(2**31)), fissure=bool(rng.random() < 0.4),
    )


def _sample_clavicles(rng: np.random.Generator, apex_y: float, thorax: float) -> dict:
    """S-shaped clavicles as Bezier controls, medial head first, lateral end higher."""
    head_y = apex_y + rng.normal(0.055, 0.01)
    lateral_y = rng.normal(0.0, 0.008)
    clavicles = {}
    for name, sign in SIDES:
        ctrl = np.array([(0.045, head_y), (0.17, head_y + 0.025), (0.24, head_y - 0.055 + lateral_y),
                         (0.37, head_y - 0.04 + lateral_y)]) + rng.normal(0.0, 0.003, (4, 2))
        clavicles[name] = side_points(ctrl, sign, thorax * rng.normal(1.0, 0.02))
    return clavicles


def sample_view(rng: np.random.Generator, finding_rate: float) -> View:
    """Draws one exposure: pose (rotation up to ±7°), exposure, the findings to draw, a side marker
    (80% of films), ECG electrodes (35%) and collimation borders (50%)."""
    findings: tuple = ()
    if rng.random() < finding_rate:
        k = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
        findings = tuple(sorted(rng.choice(FINDINGS, size=k, replace=False).tolist()))
    marker = ()
    if rng.random() < 0.8:  # a lead side marker near an upper corner
        left = rng.random() < 0.5
        marker = ("R" if rng.random() < 0.7 else "L", rng.uniform(0.03, 0.12) if left else rng.uniform(0.82, 0.9),
                  rng.uniform(0.03, 0.14), rng.uniform(0.04, 0.07))
    electrodes = rng.uniform((0.15, 0.12), (0.85, 0.55), (int(rng.integers(2, 6)), 2)) if rng.random() < 0.35 \
        else np.zeros((0, 2))
    collimation = rng.uniform(0.0, 0.06, 4) * (rng.random(4) < 0.5) if rng.random() < 0.5 else np.zeros(4)
    return View(zoom=rng.uniform(0.8, 1.08), aspect=rng.normal(1.0, 0.03), angle=rng.uniform(-7.0, 7.0),
                shift=rng.normal(0.0, 0.025, 2), gain=rng.uniform(0.75, 1.3), gamma=rng.uniform(0.6, 1.2),
                sharpen=rng.uniform(0.2, 0.9), equalize=rng.uniform(0.2, 0.5), grain=rng.uniform(0.01, 0.045),
                bubble=rng.uniform(0.6, 1.3) if rng.random() < 0.7 else 0.0, findings=findings, marker=marker,
                electrodes=electrodes, collimation=collimation)


def _scale_about(pts: np.ndarray, center, sx: float, sy: float) -> np.ndarray:
    c = np.asarray(center, dtype=np.float64)
    return c + (pts - c) * np.array([sx, sy])


# --------------------------------------------------------------------------- rendering


class _Scene:
    """Working state of one rendering: frame, canonical grid, masks and density components."""

    def __init__(self, subject: Subject, view: View, size: int, rng: np.random.Generator):
        self.subject, self.view, self.size, self.rng = subject, view, size, rng
        self.frame = Frame(size, view)
        self.px = self.frame.scale / 1000.0  # pixels per 1/1000 of the canonical frame
        self.X, self.Y = self.frame.grid()
        # smooth analytic fields are evaluated on a 4x coarser grid and interpolated up
        self.Xc, self.Yc = self.frame.grid(4)
        self.masks: dict = {}
        self.full: dict = {}  # side -> full lung mask (including retro-cardiac part)
        self.density: dict = {}
        self.landmarks: dict = {}
        self.findings: list = []
        self.minor_fissure = None  # uint8[S, S], set with the lobes

    def up(self, field: np.ndarray) -> np.ndarray:
        """A field of the coarse grid resized to the image: float32[S, S]."""
        return cv2.resize(field.astype(np.float32), (self.size, self.size), interpolation=cv2.INTER_LINEAR)


def render(subject: Subject, view: View, size: int, rng: np.random.Generator) -> Phantom:
    """Renders one PA radiograph of ``subject`` seen as ``view``.

    Args:
        subject: anatomy (see :func:`sample_subject`).
        view: pose, exposure, findings (see :func:`sample_view`).
        size: side S of the square image in pixels (>= 64).
        rng: the image's generator (texture, noise, finding placement).

    Returns:
        A :class:`Phantom` with brightness float32[S, S] in [0, 255], masks, rib index map,
        landmarks and findings, all in pixels of this image.
    """
    scene = _Scene(subject, view, size, rng)
    heart = subject.heart
    if "Cardiomegaly" in view.findings:
        heart = _scale_about(heart, (0.47, 0.42), rng.uniform(1.22, 1.38), rng.uniform(1.05, 1.15))
    _organs(scene, heart)
    _lobes(scene)
    _bones(scene)
    _soft_tissue(scene)
    _vessels(scene)
    _landmarks(scene, heart)
    for name in view.findings:
        _FINDING_PAINTERS[name](scene)
    brightness = _film_extras(scene, _expose(scene))
    rib_index = scene.masks.pop("rib_index")
    return Phantom(brightness=brightness, masks={k: scene.masks[k] for k in MASKS}, rib_index=rib_index,
                   landmarks=scene.landmarks, findings=scene.findings)


def _organs(scene: _Scene, heart: np.ndarray) -> None:
    s, f = scene.subject, scene.frame
    scene.masks["heart"] = f.fill(catmull_rom(heart))
    scene.masks["mediastinum"] = f.fill(catmull_rom(s.mediastinum))
    cover = scene.masks["heart"] | scene.masks["mediastinum"]
    for name, _ in SIDES:
        scene.full[name] = f.fill(catmull_rom(s.lungs[name]))
        scene.masks[f"{name}_lung"] = scene.full[name] & (1 - cover)
    top = np.array([0.5 + (s.carina[0] - 0.5) * 0.3, -0.05])
    trachea = bezier([top, top + (0.0, 0.1), s.carina - (0.006, 0.08), s.carina])
    right, left = s.hila["right"], s.hila["left"]
    bronchi = [bezier([s.carina, s.carina + (-0.012, 0.02), right + (0.02, -0.03), right], 12),
               bezier([s.carina, s.carina + (0.02, 0.018), left + (-0.03, -0.02), left], 12)]
    scene.masks["trachea"] = f.fill(ribbon(trachea, 0.034))  # with the main bronchi
    for bronchus in bronchi:
        f.fill(ribbon(bronchus, np.linspace(0.024, 0.014, len(bronchus))), canvas=scene.masks["trachea"])


def _lobes(scene: _Scene) -> None:
    """Partitions each visible lung into lobes as the fissures project on a PA film."""
    s, X, Y = scene.subject, scene.X, scene.Y
    d = np.abs(X - 0.5) / s.thorax
    right, left = scene.masks["right_lung"], scene.masks["left_lung"]
    dome_r = s.lungs["right"][_DOME, 1]
    minor_y = s.hila["right"][1] + 0.01 + 0.04 * (d - 0.07)
    upper = Y < minor_y
    t = (Y - s.hila["right"][1]) / (dome_r + 0.03 - s.hila["right"][1])
    medial = d < 0.07 + 0.2 * t
    scene.masks["right_upper_lobe"] = right & upper
    scene.masks["right_middle_lobe"] = right & ~upper & medial
    scene.masks["right_lower_lobe"] = right & ~upper & ~medial
    dome_l = s.lungs["left"][_DOME, 1]
    start = s.hila["left"][1] - 0.09
    t = (Y - start) / (dome_l + 0.03 - start)
    upper = (t < 0) | (d < 0.06 + 0.26 * t)
    scene.masks["left_upper_lobe"] = left & upper
    scene.masks["left_lower_lobe"] = left & ~upper
    scene.minor_fissure = right & (np.abs(Y - minor_y) < 1.2 / scene.frame.scale) & ~medial


def _bones(scene: _Scene) -> None:
    s, f, size = scene.subject, scene.frame, scene.size
    posterior = np.zeros((size, size), np.uint8)
    anterior = np.zeros((size, size), np.uint8)
    index = np.zeros((size, size), np.uint8)
    for side_no, (name, sign) in enumerate(SIDES):
        wall = catmull_rom(s.lungs[name])[: _CP * 10 + 1]
        wall_d = np.abs(wall[:, 0] - 0.5)
        for k in range(1, 13):
            parts = _rib(s, k, sign, wall_d, wall[:, 1], s.rib_jitter[side_no, k - 1])
            for part_no, (center, width) in enumerate(parts):
                outer, inner = ribbon(center, width), ribbon(center, width * 0.45)
                canvas = posterior if part_no == 0 else anterior
                f.fill(outer, 255, canvas, antialias=True)
                f.fill(inner, 150, canvas, antialias=True)
                f.fill(outer, side_no * 12 + k, index)
    clav = np.zeros((size, size), np.uint8)
    for name, _ in SIDES:
        center = bezier(s.clavicles[name], 32)
        width = 0.026 - 0.008 * np.sin(np.linspace(0, np.pi, len(center)))
        outer = ribbon(center, width)
        scene.masks[f"{name}_clavicle"] = f.fill(outer)
        f.fill(outer, 255, clav, antialias=True)
        f.fill(ribbon(center, width * 0.5), 170, clav, antialias=True)
    scene.masks["ribs"] = (index > 0).astype(np.uint8)
    scene.masks["rib_index"] = index
    soft = 0.6 * scene.px
    scene.density["ribs"] = blur(posterior.astype(np.float32) * (1 / 255), soft)
    scene.density["anterior_ribs"] = blur(anterior.astype(np.float32) * (1 / 255), soft * 1.5)
    scene.density["clavicles"] = blur(clav.astype(np.float32) * (1 / 255), soft)
    scene.density["spine"] = _spine(scene)


def _rib(s: Subject, k: int, sign: float, wall_d: np.ndarray, wall_y: np.ndarray, jitter: np.ndarray):
    """Centre lines and widths of rib ``k`` (1-12): its posterior arc and, for k <= 10, anterior arc."""
    y0 = s.rib_top + (k - 1) * s.rib_step * (1.0 + 0.015 * (k - 1)) + 0.003 * jitter[0]
    drop = ((0.045, 0.085, 0.11)[k - 1] if k <= 3 else 0.125) + 0.008 * jitter[1]
    if k <= 10:
        reach = np.interp(y0 + drop, wall_y, wall_d) + 0.014
    else:  # floating ribs: short stubs below the diaphragm
        reach, drop = 0.15 - 0.04 * (k - 11), 0.07
    width = (0.016 + 0.0008 * k) * s.rib_width * (1.0 + 0.06 * jitter[2])
    # posterior arc: part of an ellipse, rising a little from the spine, then bending down
    # ever more steeply to the lateral wall
    if k <= 10:
        a, b = (reach - 0.026) / 1.34, drop / 0.94
        theta = np.linspace(-0.35, np.pi / 2, 32)
        arc = np.stack([0.026 + a * (0.34 + np.sin(theta)), y0 + drop - b * np.cos(theta)], 1)
    else:
        arc = bezier([(0.026, y0), (0.06, y0 + 0.005), (0.7 * reach, y0 + 0.4 * drop), (reach, y0 + drop)])
    parts = [(arc, width * np.linspace(0.8, 1.0, len(arc)))]
    if k <= 9:  # anterior arc: turns at the wall, runs down and medially to the costal cartilage
        end_d = 0.075 if k == 1 else 0.1 + 0.012 * k
        end_y = y0 + drop + (0.07 if k == 1 else 0.13 + 0.006 * k)
        front = bezier([(reach, y0 + drop), (reach, y0 + drop + 0.045),
                        (end_d + 0.4 * (reach - end_d), end_y - 0.04), (end_d, end_y)], 28)
        parts.append((front, width * np.linspace(1.0, 1.25, len(front))))
    return [(side_points(c, sign, s.thorax), w) for c, w in parts]


def _spine(scene: _Scene) -> np.ndarray:
    s, f, size = scene.subject, scene.frame, scene.size
    canvas = np.zeros((size, size), np.uint8)
    for k in range(-4, 17):
        y = s.rib_top + (k - 1) * s.rib_step
        half = (0.03 + 0.0012 * k) * s.thorax
        h = 0.4 * s.rib_step
        body = np.array([(0.5 - half, y - h), (0.5 + half, y - h), (0.5 + half, y + h), (0.5 - half, y + h)])
        f.fill(body, 150, canvas, antialias=True)
        for sign in (-1, 1):  # pedicles: small dense ovals at the upper corners of the body
            center = f.to_pix([(0.5 + sign * 0.75 * half, y - 0.3 * h)])[0]
            axes = (max(1, int(0.007 * f.scale)), max(1, int(0.011 * f.scale)))
            cv2.ellipse(canvas, (int(center[0]), int(center[1])), axes, 0, 0, 360, 255, -1, cv2.LINE_AA)
    return blur(canvas.astype(np.float32) * (1 / 255), 2.5 * scene.px)


def _soft_tissue(scene: _Scene) -> None:
    s, v, X, Y, px = scene.subject, scene.view, scene.Xc, scene.Yc, scene.px
    # torso half-width (neck, shoulders, chest, waist) and front-to-back depth against height
    half_width = s.thorax * np.interp(Y, [-0.1, 0.05, 0.09, 0.12, 0.15, 0.2, 0.3, 0.6, 1.1],
                                      [0.11, 0.12, 0.2, 0.36, 0.46, 0.53, 0.5, 0.445, 0.425])
    depth = np.interp(Y, [-0.1, 0.08, 0.17, 0.5, 0.8, 1.1], [0.5, 0.55, 0.85, 1.0, 1.1, 1.12])
    u = scene.up((X - 0.5) / half_width)  # smooth, so interpolating it keeps the skin line sharp
    body = np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0)) * scene.up(depth)
    texture = smooth_noise(scene.rng, scene.size, 10)
    scene.density["body"] = body * (1.0 + 0.04 * texture) * s.soft
    hum = np.zeros((scene.size, scene.size), np.uint8)
    for sign in (-1, 1):  # humeral head and the top of the shaft, leaving the field laterally
        head = np.array([0.5 + sign * 0.465 * s.thorax, 0.235])
        turn = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        scene.frame.fill(catmull_rom(head + 0.05 * np.stack([np.cos(turn), np.sin(turn)], 1)), canvas=hum)
        shaft = np.array([head, head + (sign * 0.09, 0.3)])
        scene.frame.fill(ribbon(shaft, 0.065), canvas=hum)
    scene.density["humeri"] = blur(dome_profile(hum, 40 * px), 1.5 * px)
    full = scene.full["right"] | scene.full["left"]
    air = dome_profile(full, 45 * px)
    zone = scene.up(np.interp(Y, [0.1, 0.2, 0.45, 0.62, 0.75], [0.7, 0.92, 1.0, 0.9, 0.8]))
    noise = scene.rng.standard_normal(air.shape, dtype=np.float32)
    lung_tex = 2.0 * (blur(noise, 3.0 * px) - blur(noise, 9.0 * px))  # band-pass mottling
    heart = blur(dome_profile(scene.masks["heart"], 70 * px), 1.5 * px)
    # the heart displaces most of the lung behind it; texture is the parenchyma's mottling
    scene.density["air"] = blur(air * zone, 2 * px) * (1.0 - 0.75 * heart) * (1.0 + 0.07 * lung_tex)
    scene.density["heart"] = heart
    scene.density["mediastinum"] = blur(dome_profile(scene.masks["mediastinum"], 25 * px), 2 * px)
    scene.density["trachea"] = blur(dome_profile(scene.masks["trachea"], 8 * px), 1.5 * px)
    breast = np.zeros_like(X)
    if s.breast:
        for sign in (-1, 1):
            r2 = ((X - 0.5 - sign * 0.23 * s.thorax) / 0.16) ** 2 + ((Y - 0.66) / 0.11) ** 2
            breast += np.sqrt(np.clip(1.0 - r2, 0.0, 1.0)) * s.breast
    scene.density["breast"] = scene.up(breast)
    bubble = np.zeros_like(X)
    if v.bubble:
        cy = s.lungs["left"][_DOME, 1] + 0.055
        r2 = ((X - 0.5 - 0.15 * s.thorax) / (0.045 * v.bubble)) ** 2 + ((Y - cy) / (0.03 * v.bubble)) ** 2
        bubble = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0)) * (Y < cy + 0.01)
    scene.density["bubble"] = scene.up(bubble)
    if s.fissure:
        scene.density["fissure"] = blur(scene.minor_fissure.astype(np.float32), 0.8 * px)


def _vessels(scene: _Scene) -> None:
    """Branching pulmonary vessel trees from each hilum, curving and tapering towards the periphery."""
    s, f, size = scene.subject, scene.frame, scene.size
    rng = np.random.default_rng(s.vessel_seed)
    canvas = np.zeros((size, size), np.uint8)
    for name, sign in SIDES:
        n0 = 6
        angle = np.deg2rad(np.linspace(-95, 105, n0) + rng.normal(0, 10, n0))
        angle = np.where(sign < 0, np.pi - angle, angle)  # point towards this side's wall
        start = np.repeat(s.hila[name][None], n0, 0)
        length = np.full(n0, 0.07) * rng.uniform(0.8, 1.2, n0)
        for gen in range(7):
            bend = rng.normal(0, 0.25, len(angle))
            mid = start + 0.5 * length[:, None] * np.stack([np.cos(angle + bend), np.sin(angle + bend)], 1)
            angle = angle - bend * 0.5
            end = mid + 0.5 * length[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
            paths = np.rint(f.to_pix(np.stack([start, mid, end], 1).reshape(-1, 2)) * 16).astype(np.int32)
            thick = max(1, int(round((5.0 - 0.75 * gen) * scene.px)))
            cv2.polylines(canvas, list(paths.reshape(-1, 3, 2)), False, int(240 - 28 * gen), thick,
                          cv2.LINE_AA, 4)
            spread = np.deg2rad(rng.uniform(12, 35, (len(end), 2)) * np.array([-1, 1]))
            angle = (angle[:, None] + spread).ravel()
            start = np.repeat(end, 2, 0)
            length = np.repeat(length * rng.uniform(0.68, 0.82, len(length)), 2)
    lungs = (scene.full["right"] | scene.full["left"]).astype(np.float32)
    vessels = blur(canvas.astype(np.float32) * (1 / 255), 1.0 * scene.px) * blur(lungs, 6 * scene.px)
    hila = np.zeros_like(scene.Xc)
    for name, _ in SIDES:
        hx, hy = s.hila[name]
        hila += np.exp(-(((scene.Xc - hx) / 0.03) ** 2 + ((scene.Yc - hy) / 0.045) ** 2))
    scene.density["vessels"] = vessels
    scene.density["hila"] = scene.up(hila)


def _landmarks(scene: _Scene, heart: np.ndarray) -> None:
    s = scene.subject
    points = {
        "carina": s.carina,
        "heart_apex": heart[_HEART_APEX],
        "aortic_knob": s.mediastinum[_KNOB],
    }
    for name, _ in SIDES:
        points[f"{name}_costophrenic_angle"] = s.lungs[name][_CP]
        points[f"{name}_clavicle_head"] = s.clavicles[name][0]
        points[f"{name}_lung_apex"] = s.lungs[name][_APEX]
        points[f"{name}_hemidiaphragm_dome"] = s.lungs[name][_DOME]
        points[f"{name}_hilum"] = s.hila[name]
    pix = scene.frame.to_pix(np.array([points[k] for k in LANDMARKS]))
    scene.landmarks = {k: (float(x), float(y)) for k, (x, y) in zip(LANDMARKS, pix)}


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
    cv2.polylines(line, [np.rint(f.to_pix(collapsed) * 16).astype(np.int32)], True, 255,
                  max(1, int(2 * scene.px)), cv2.LINE_AA, 4)
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
    "Nodule": _nodule, "Mass": _mass, "Effusion": _effusion, "Cardiomegaly": _cardiomegaly,
    "Pneumothorax": _pneumothorax, "Consolidation": _consolidation,
}


# --------------------------------------------------------------------------- exposure

# Weights of the density components (units of D; tuned by eye on contact sheets).
_WEIGHTS = {
    "body": 1.7, "humeri": 0.4, "air": -1.15, "heart": 0.45, "mediastinum": 0.45, "trachea": -0.45,
    "spine": 0.3, "ribs": 0.14, "anterior_ribs": 0.05, "clavicles": 0.35, "vessels": 0.2, "hila": 0.2,
    "breast": 0.3, "bubble": -0.6, "fissure": 0.12, "lesions": 0.6, "fluid": 1.0,
}


def _expose(scene: _Scene) -> np.ndarray:
    v, size, px = scene.view, scene.size, scene.px
    dens = np.zeros((size, size), np.float32)
    for key, value in scene.density.items():
        dens += np.float32(_WEIGHTS[key]) * value
    if "fluid" in scene.density:  # fluid replaces air, it does not sit on top of it
        dens -= np.float32(_WEIGHTS["air"]) * scene.density["air"] * np.minimum(scene.density["fluid"], 1.0)
    b = 1.0 - np.exp(-np.maximum(dens, 0.0) * np.float32(v.gain))
    b -= np.float32(v.equalize) * (blur(b, 60 * px) - b.mean())  # dynamic-range compression
    lo, hi = np.percentile(b[::4, ::4], [0.5, 99.7])
    b = np.clip((b - lo) / max(hi - lo, 1e-3), 0.0, 1.0) ** np.float32(v.gamma)
    b = b + np.float32(v.sharpen) * (b - blur(b, 8 * px))
    heel = scene.up(1.0 + 0.03 * (scene.Yc - 0.5))
    grain = blur(scene.rng.standard_normal((size, size), dtype=np.float32), 0.6)
    b = b * heel + np.float32(v.grain) * grain
    return np.clip(b * 255.0, 0.0, 255.0).astype(np.float32)
