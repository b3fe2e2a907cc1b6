"""Rendering of the chest radiograph phantom (see :mod:`adam_ext.data._phantom` for the anatomy
and its coordinates): organs, lobes, bones, soft tissue, vessels and landmarks as density
components, the findings of :mod:`adam_ext.data._phantom_findings`, then the exposure.

Image formation. Structures add to (soft tissue, bone, fluid) or subtract from (air) a projected
density D; brightness is 1 - exp(-D), windowed like a processed digital radiograph, edge-enhanced
and given film grain, and what lies on the film besides the patient (ECG electrodes, side marker,
collimation) is drawn last.
"""

from __future__ import annotations

import cv2
import numpy as np

from .._util.seeds import numpy_rng
from ._phantom import (
    _APEX,
    _CP,
    _DOME,
    _HEART_APEX,
    _KNOB,
    LANDMARKS,
    MASKS,
    SIDES,
    Frame,
    Phantom,
    Subject,
    View,
    _scale_about,
    bezier,
    blur,
    catmull_rom,
    dome_profile,
    ribbon,
    side_points,
    smooth_noise,
)
from ._phantom_findings import _FINDING_PAINTERS

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
    return Phantom(
        brightness=brightness,
        masks={k: scene.masks[k] for k in MASKS},
        rib_index=rib_index,
        landmarks=scene.landmarks,
        findings=scene.findings,
    )


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
    bronchi = [
        bezier([s.carina, s.carina + (-0.012, 0.02), right + (0.02, -0.03), right], 12),
        bezier([s.carina, s.carina + (0.02, 0.018), left + (-0.03, -0.02), left], 12),
    ]
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
        front = bezier(
            [
                (reach, y0 + drop),
                (reach, y0 + drop + 0.045),
                (end_d + 0.4 * (reach - end_d), end_y - 0.04),
                (end_d, end_y),
            ],
            28,
        )
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
    half_width = s.thorax * np.interp(
        Y,
        [-0.1, 0.05, 0.09, 0.12, 0.15, 0.2, 0.3, 0.6, 1.1],
        [0.11, 0.12, 0.2, 0.36, 0.46, 0.53, 0.5, 0.445, 0.425],
    )
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
    rng = numpy_rng(s.vessel_seed, "synthetic_vessels")
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
            cv2.polylines(
                canvas, list(paths.reshape(-1, 3, 2)), False, int(240 - 28 * gen), thick, cv2.LINE_AA, 4
            )
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
        cv2.putText(
            glyph,
            letter,
            (round(x * size), round((y + height) * size)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            255,
            max(1, round(height * size / 6)),
            cv2.LINE_AA,
        )
        alpha = glyph.astype(np.float32) / 255.0
        b = b * (1.0 - alpha) + 250.0 * alpha
    left, top, right, bottom = np.rint(v.collimation * size).astype(int)
    b[:, :left] = b[:top, :] = 225.0
    if right:
        b[:, size - right :] = 225.0
    if bottom:
        b[size - bottom :, :] = 225.0
    return b


# --------------------------------------------------------------------------- exposure

# Weights of the density components (units of D; tuned by eye on contact sheets).
_WEIGHTS = {
    "body": 1.7,
    "humeri": 0.4,
    "air": -1.15,
    "heart": 0.45,
    "mediastinum": 0.45,
    "trachea": -0.45,
    "spine": 0.3,
    "ribs": 0.14,
    "anterior_ribs": 0.05,
    "clavicles": 0.35,
    "vessels": 0.2,
    "hila": 0.2,
    "breast": 0.3,
    "bubble": -0.6,
    "fissure": 0.12,
    "lesions": 0.6,
    "fluid": 1.0,
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
