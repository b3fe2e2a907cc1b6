"""Embedded synthetic chest radiographs, written in the published layouts of the real data sets.

No data set can be downloaded on every machine, so ``adam synth`` makes procedural
posterior-anterior chest films (see :mod:`adam_ext.data._phantom`) with ground truth and
writes them where the real readers look:

``OUT/`` (ChestX-ray14 layout)
    ``images/PPPPPPPP_VVV.png`` (8-bit grey; patient id, follow-up number),
    ``Data_Entry_2017.csv``, ``BBox_List_2017.csv`` (headers exactly as NIH publishes them,
    including the bracketed headers that spill over several columns), ``train_val_list.txt``
    and ``test_list.txt`` (split by patient, about 80/20).
``OUT/scr/`` (SCR/JSRT layout, the first ``scr_count`` images)
    ``All247images/JPCLN001.IMG``... (headerless big-endian uint16, 12 bits used, square,
    high value = dark; JSRT numbering: JPCLN001-154 then JPCNN001...), and
    ``fold1|fold2/masks/{heart,left clavicle,left lung,right clavicle,right lung}/NAME.gif``
    (0/255 at half the image side; odd-numbered images in fold1, even in fold2).
``OUT/`` (ground truth of the generator)
    ``masks/STRUCTURE/NAME.png`` (1-bit PNGs that decode to 0/255, one folder per name in
    :data:`MASKS`),
    ``rib_index/NAME.png`` (0 background, 1-12 the patient's right ribs, 13-24 the left),
    ``landmarks.csv`` (image,landmark,x,y in pixels), ``findings.csv``
    (image,finding,x0,y0,x1,y1; x1, y1 exclusive), ``finding_masks/FINDING/NAME.png`` and
    ``synthetic.json`` (the settings and vocabularies of the run).

Everything is a function of ``seed``: image ``i`` draws from ``(seed, i)`` and its patient's
anatomy from ``(seed, patient)``, so the bytes do not depend on the number of workers, and a
run with ``n`` images is a prefix of a run with more.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .._util.seeds import holdout, numpy_rng
from . import _phantom, _phantom_render
from ._phantom import CLASSES, FINDINGS, LANDMARKS, MASKS, FilmFeatures
from .readers import Reader, require_files

__all__ = [
    "CLASSES",
    "FINDINGS",
    "LANDMARKS",
    "MASKS",
    "FilmFeatures",
    "SynthConfig",
    "SyntheticDataset",
    "ensure_synthetic",
    "contact_sheet",
    "generate",
]

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
# The eight classes NIH drew boxes for ("Infiltrate" there); the others stay in findings.csv only.
BBOX_CLASSES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltrate",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)
SCR_ORGANS = {
    "heart": "heart",
    "left clavicle": "left_clavicle",
    "left lung": "left_lung",
    "right clavicle": "right_clavicle",
    "right lung": "right_lung",
}
JSRT_NODULE_CASES = 154  # JPCLN001-154 in the real set, then JPCNN001-093
SCR_MAX = 247
FIELD_OF_VIEW_MM = 358.0  # ChestX-ray14: 0.143 mm pixels on ~2500 px films
VAL_FRACTION = 0.1
#: Version of the phantoms (synthetic.json). 2: wider habitus, pose and exposure, side markers,
#: ECG electrodes and collimation (version 1's phantoms were too alike for MoCo to tell apart).
#: 3: every draw from the package's one seed mixer and named streams (split version 2), the test
#: list from its one hold-out: the films and lists of a seed differ from version 2's.
GENERATOR_VERSION = 3
TEST_FRACTION = 0.2
_OWNED = (
    "images",
    "masks",
    "rib_index",
    "finding_masks",
    "scr",
    "Data_Entry_2017.csv",
    "BBox_List_2017.csv",
    "train_val_list.txt",
    "test_list.txt",
    "landmarks.csv",
    "findings.csv",
    "synthetic.json",
)


@dataclass
class SynthConfig:
    """Settings of one ``adam synth`` run (the single home of their defaults).

    Attributes:
        n: number of images (>= 1).
        size: side of the square images in pixels (>= 64).
        seed: seed of everything drawn.
        workers: worker processes (None: ``os.cpu_count()``; 1: in this process).
        finding_rate: probability in [0, 1] that an image has at least one finding.
        scr_count: images also written in the SCR/JSRT layout (None: ``min(n, 247)``).
        markers, electrodes, collimation, exposure_variation: the film features of
            :class:`~adam_ext.data._phantom.FilmFeatures` (all on by default). Off, the images are
            those of the same seed with that feature left out (every other pixel's draw unchanged).
    """

    n: int
    size: int = 512
    seed: int = 0
    workers: int | None = None
    finding_rate: float = 0.5
    scr_count: int | None = None
    markers: bool = True
    electrodes: bool = True
    collimation: bool = True
    exposure_variation: bool = True

    def __post_init__(self):
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        if not isinstance(self.size, int) or self.size < 64:
            raise ValueError(f"size must be an integer >= 64 pixels, got {self.size!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.workers is None:
            self.workers = os.cpu_count() or 1
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be an integer >= 1 or None, got {self.workers!r}")
        if not 0.0 <= self.finding_rate <= 1.0:
            raise ValueError(f"finding_rate must be in [0, 1], got {self.finding_rate!r}")
        if self.scr_count is None:
            self.scr_count = min(self.n, SCR_MAX)
        if not isinstance(self.scr_count, int) or not 0 <= self.scr_count <= self.n:
            raise ValueError(f"scr_count must be an integer in [0, n={self.n}], got {self.scr_count!r}")
        for name in ("markers", "electrodes", "collimation", "exposure_variation"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def features(self) -> FilmFeatures:
        """The film features as the phantoms take them."""
        return FilmFeatures(self.markers, self.electrodes, self.collimation, self.exposure_variation)


# --------------------------------------------------------------------------- generation


def image_name(patient: int, follow_up: int) -> str:
    """ChestX-ray14 file name ``PPPPPPPP_VVV.png``."""
    return f"{patient:08d}_{follow_up:03d}.png"


def jsrt_name(index: int) -> str:
    """JSRT name of the ``index``-th (0-based) SCR image: JPCLN001-154, then JPCNN001..."""
    if index < JSRT_NODULE_CASES:
        return f"JPCLN{index + 1:03d}"
    return f"JPCNN{index - JSRT_NODULE_CASES + 1:03d}"


def _schedule(seed: int, n: int) -> list[tuple[int, int]]:
    """(patient id, follow-up #) of images 0..n-1: patients have 1-5 visits, numbered from 1."""
    rng = numpy_rng(seed, "synthetic_schedule")
    visits: list[tuple[int, int]] = []
    patient = 0
    while len(visits) < n:
        patient += 1
        count = min(int(rng.geometric(0.55)), 5)
        visits.extend((patient, v) for v in range(count))
    return visits[:n]


#: Every film feature on (the default of the phantoms, as on real radiographs).
ALL_FEATURES = FilmFeatures()


def render_image(
    seed: int, index: int, patient: int, size: int, finding_rate: float, features: FilmFeatures = ALL_FEATURES
):
    """Renders image ``index`` (of patient ``patient``) of a run with ``seed``, in memory, with the
    film ``features`` given (all by default).

    Returns:
        (Subject, View, Phantom), see :mod:`adam_ext.data._phantom`.
    """
    subject = _phantom.sample_subject(numpy_rng(seed, "synthetic_subject", patient))
    rng = numpy_rng(seed, "synthetic_image", index)
    view = _phantom.sample_view(rng, finding_rate, features)
    return subject, view, _phantom_render.render(subject, view, size, rng)


# Measured on this 2-core machine, 512 px: the RLE strategy encodes an image in 6 ms (7 ms, and 15%
# larger, with the default), a 1-bit mask in 0.3 ms (2 ms as 8-bit); both decode to the same pixels.
_PNG_IMAGE = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
_PNG_MASK = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_BILEVEL, 1]


def _png(path: Path, array: np.ndarray, params=_PNG_IMAGE) -> None:
    ok, data = cv2.imencode(".png", array, params)
    if not ok:
        raise OSError(f"cannot encode {path}")
    path.write_bytes(data.tobytes())


def _write_scr(out: Path, index: int, phantom) -> None:
    name = jsrt_name(index)
    raw = np.rint(4095.0 - phantom.brightness.astype(np.float64) * (4095.0 / 255.0))
    (out / "scr" / "All247images" / f"{name}.IMG").write_bytes(raw.astype(">u2").tobytes())
    fold = "fold1" if int(name[5:]) % 2 else "fold2"
    half = phantom.brightness.shape[0] // 2
    for folder, key in SCR_ORGANS.items():
        small = cv2.resize(phantom.masks[key] * np.uint8(255), (half, half), interpolation=cv2.INTER_AREA)
        mask = np.where(small >= 128, 255, 0).astype(np.uint8)
        Image.fromarray(mask).save(out / "scr" / fold / "masks" / folder / f"{name}.gif")


def _make_image(task: tuple) -> dict:
    """Worker: renders one image, writes its files, returns its metadata rows."""
    out, seed, size, finding_rate, scr_count, features, index, patient, follow_up = task
    out = Path(out)
    subject, _, ph = render_image(seed, index, patient, size, finding_rate, features)
    name = image_name(patient, follow_up)
    _png(out / "images" / name, ph.image)
    for key in MASKS:
        _png(out / "masks" / key / name, ph.masks[key] * np.uint8(255), _PNG_MASK)
    _png(out / "rib_index" / name, ph.rib_index)
    for finding, mask, _ in ph.findings:
        _png(out / "finding_masks" / finding / name, mask * np.uint8(255), _PNG_MASK)
    if index < scr_count:
        _write_scr(out, index, ph)
    return {
        "name": name,
        "patient": patient,
        "follow_up": follow_up,
        "age": subject.age + follow_up // 3,
        "sex": subject.sex,
        "labels": sorted({f for f, _, _ in ph.findings}),
        "boxes": [(f, *box) for f, _, box in ph.findings],
        "landmarks": ph.landmarks,
    }


def _init_worker() -> None:
    # A fresh (spawned) process per core already: OpenCV's own threads would only contend.
    cv2.setNumThreads(1)


def _prepare(out: Path, cfg: SynthConfig) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a folder, got the file {out}")
    if out.exists() and any(out.iterdir()):
        if not (out / "synthetic.json").exists():
            raise ValueError(
                f"out must be an empty folder or an earlier `adam synth` output, got {out} "
                "(not empty, no synthetic.json)"
            )
        for entry in _OWNED:
            path = out / entry
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    folders = ["images", "rib_index", *(f"masks/{m}" for m in MASKS)]
    folders += [f"finding_masks/{f}" for f in FINDINGS]
    if cfg.scr_count:
        folders.append("scr/All247images")
        folders += [f"scr/{fold}/masks/{organ}" for fold in ("fold1", "fold2") for organ in SCR_ORGANS]
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)


def _make_in_workers(tasks: list, workers: int, bar) -> list:
    """:func:`_make_image` of every task in ``workers`` spawned processes, in the order of ``tasks``."""
    # spawn, not fork: a forked worker inherits OpenCV's and OpenMP's thread pools in whatever state
    # the parent's threads left them, and can hang for ever on a copied lock (seen: cv2.setNumThreads
    # in the child, 1 run in 3 once the parent had used cv2's pool). The workers need nothing from
    # this process but the task tuples; each takes ~1.6 s to start (it imports torch with adam_ext).
    spawn = multiprocessing.get_context("spawn")
    chunk = max(1, min(16, len(tasks) // (4 * workers)))
    rows = []
    try:
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=spawn, initializer=_init_worker
        ) as pool:
            for row in pool.map(_make_image, tasks, chunksize=chunk):
                rows.append(row)
                bar.update()
    except concurrent.futures.process.BrokenProcessPool as err:
        raise RuntimeError(
            f"a worker process of the synthetic generator (workers={workers}) died; its own error is "
            "printed above. The workers are spawned and import your __main__ module: a script that "
            "generates phantoms at top level (adam_ext.data.synthetic.generate, or pretraining on the "
            'synthetic data) needs `if __name__ == "__main__":`, or pass workers=1'
        ) from err
    return rows


def generate(
    out_dir,
    n: int,
    size: int = 512,
    seed: int = 0,
    workers: int | None = None,
    finding_rate: float = 0.5,
    scr_count: int | None = None,
    progress: bool | None = None,
    **features: bool,
) -> Path:
    """Writes ``n`` synthetic PA chest radiographs with ground truth under ``out_dir``.

    The layout is described in the module docstring. Deterministic: the same arguments give
    byte-identical files whatever ``workers`` is.

    Args:
        out_dir: folder to write (created; must be empty or an earlier output, which is replaced).
        n: number of images.
        size: image side in pixels (square images).
        seed: seed of all randomness.
        workers: worker processes (None: one per CPU core; 1: no subprocess). They are spawned, so
            they import your ``__main__`` module: a script that calls this at top level needs
            ``if __name__ == "__main__":`` (as any spawned multiprocessing does), or ``workers=1``.
        finding_rate: probability that an image has findings (1-3 of :data:`FINDINGS`).
        scr_count: how many of the first images also go to the SCR layout (None: min(n, 247)).
        progress: show a tqdm bar (None: only on a terminal).
        **features: ``markers``, ``electrodes``, ``collimation``, ``exposure_variation`` (each True by
            default; see :class:`SynthConfig`).

    Returns:
        The output folder.

    Raises:
        ValueError: an argument out of range, or ``out_dir`` holds something else.
        RuntimeError: a worker process died (its own error is printed above this one).
    """
    unknown = set(features) - {"markers", "electrodes", "collimation", "exposure_variation"}
    if unknown:
        raise ValueError(
            f"generate() takes the film features markers, electrodes, collimation and "
            f"exposure_variation, got {sorted(unknown)}"
        )
    cfg = SynthConfig(
        n=n, size=size, seed=seed, workers=workers, finding_rate=finding_rate, scr_count=scr_count, **features
    )
    out = Path(out_dir)
    _prepare(out, cfg)
    tasks = [
        (str(out), cfg.seed, cfg.size, cfg.finding_rate, cfg.scr_count, cfg.features, i, p, v)
        for i, (p, v) in enumerate(_schedule(cfg.seed, cfg.n))
    ]
    rows = []
    disable = None if progress is None else not progress  # None: tqdm shows it on terminals only
    with tqdm(total=cfg.n, unit="img", desc="adam synth", disable=disable) as bar:
        if cfg.workers == 1:
            for task in tasks:
                rows.append(_make_image(task))
                bar.update()
        else:
            rows = _make_in_workers(tasks, cfg.workers, bar)
    _write_tables(out, cfg, rows)
    return out


def _write_tables(out: Path, cfg: SynthConfig, rows: list[dict]) -> None:
    spacing = FIELD_OF_VIEW_MM / cfg.size
    entry = [DATA_ENTRY_HEADER]
    boxes = [BBOX_HEADER]
    findings = ["image,finding,x0,y0,x1,y1"]
    landmarks = ["image,landmark,x,y"]
    for r in rows:
        labels = "|".join(r["labels"]) or "No Finding"
        entry.append(
            f"{r['name']},{labels},{r['follow_up']},{r['patient']},{r['age']},{r['sex']},PA,"
            f"{cfg.size},{cfg.size},{spacing:.3f},{spacing:.3f},"
        )
        for finding, x0, y0, x1, y1 in r["boxes"]:
            findings.append(f"{r['name']},{finding},{x0},{y0},{x1},{y1}")
            if finding in BBOX_CLASSES:
                xywh = ",".join(str(float(v)) for v in (x0, y0, x1 - x0, y1 - y0))
                boxes.append(f"{r['name']},{finding},{xywh}")
        landmarks += [f"{r['name']},{k},{x:.2f},{y:.2f}" for k, (x, y) in r["landmarks"].items()]
    for name, lines in (
        ("Data_Entry_2017.csv", entry),
        ("BBox_List_2017.csv", boxes),
        ("findings.csv", findings),
        ("landmarks.csv", landmarks),
    ):
        (out / name).write_text("\n".join(lines) + "\n")
    held = holdout([r["patient"] for r in rows], TEST_FRACTION, cfg.seed, stream="synthetic_test")
    for name, keep in (("train_val_list.txt", False), ("test_list.txt", True)):
        names = [r["name"] for r, test in zip(rows, held) if test == keep]
        (out / name).write_text("".join(f"{x}\n" for x in names))
    meta = {
        "generator": "adam_ext.data.synthetic",
        "version": GENERATOR_VERSION,
        **asdict(cfg),
        "classes": CLASSES,
        "findings": FINDINGS,
        "masks": MASKS,
        "landmarks": LANDMARKS,
        "rib_index": "0 background, 1-12 right ribs 1-12, 13-24 left ribs 1-12",
        "scr_organs": SCR_ORGANS,
    }
    meta.pop("workers")
    (out / "synthetic.json").write_text(json.dumps(meta, indent=1) + "\n")


# --------------------------------------------------------------------------- reader


class SyntheticDataset(Reader):
    """The output of ``adam synth`` as a dataset of dicts (the readers' shared machinery:
    ``cache=``, ``skip_corrupt=``, ``transform=`` on the item dict, ``image_keys``).

    Splits: ``train`` and ``val`` partition ``train_val_list.txt`` by patient (``val`` = a
    ``seed``-ed 10% of its patients), ``test`` is ``test_list.txt``, ``all`` every image.

    Items:
        ``image`` uint8[1, H, W]; ``labels`` float32[14] multi-hot over :attr:`classes`;
        ``mask`` uint8[M, H, W] of 0/1 over :attr:`mask_names`; ``boxes`` float32[N, 4]
        (x0, y0, x1, y1) pixels and ``box_labels`` int64[N] indices into :attr:`classes`;
        ``landmarks`` float32[L, 2] (x, y) pixels in the order of :attr:`landmark_names`;
        ``path`` str. With ``size``, image and masks are resized to size x size and the
        coordinates scaled.

    Args:
        root: an ``adam synth`` output folder.
        split: "train", "val", "test" or "all".
        size: output side in pixels (None: as stored, or as cached).
        seed: seed of the train/val split.
        **options: ``cache``, ``skip_corrupt``, ``transform`` (see :mod:`adam_ext.data.readers`).
    """

    classes = CLASSES
    mask_names = MASKS
    landmark_names = LANDMARKS
    splits = ("train", "val", "test", "all")

    def __init__(self, root, split: str = "train", *, size: int | None = None, seed: int = 0, **options):
        root = Path(root)
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits}, got {split!r}")
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(f"size must be a positive integer or None, got {size!r}")
        entry = root / "Data_Entry_2017.csv"
        if not entry.is_file() or not (root / "images").is_dir():
            raise FileNotFoundError(
                f"no synthetic data under {root} (no Data_Entry_2017.csv and "
                f"images/); make some with `adam synth --out {root} --n N`"
            )
        super().__init__(root, split, **options)
        self.size = size
        labels = self._read_labels(entry)
        self.names = self._split_names(split, list(labels), seed)
        self.labels = np.stack([labels[n] for n in self.names]) if self.names else np.zeros((0, len(CLASSES)))
        self.boxes, self.box_labels = self._read_findings()
        self.landmarks = self._read_landmarks()
        self._keys = [f"images/{n}" for n in self.names]
        require_files(self.root, self._keys, str(entry))

    def _read_labels(self, entry: Path) -> dict:
        """{image name: multi-hot labels} of Data_Entry_2017.csv; also keeps each image's recorded
        side lengths (:attr:`_extent`) for checking the coordinates of the other side files."""
        index = {c: i for i, c in enumerate(CLASSES)}
        labels = {}
        self._extent = {}
        for line_no, line in enumerate(entry.read_text().splitlines()[1:], start=2):
            fields = line.split(",")
            if len(fields) < 2:
                raise ValueError(f"{entry}:{line_no}: malformed row {line!r}")
            vector = np.zeros(len(CLASSES), np.float32)
            for label in fields[1].split("|"):
                if label != "No Finding":
                    if label not in index:
                        raise ValueError(f"{entry}:{line_no}: unknown class {label!r}")
                    vector[index[label]] = 1.0
            self._inside_root(f"images/{fields[0]}", f"{entry}:{line_no}")
            labels[fields[0]] = vector
            try:  # OriginalImage[Width,Height]: columns 8 and 9
                self._extent[fields[0]] = (float(fields[7]), float(fields[8]))
            except (IndexError, ValueError):
                pass  # not recorded: coordinates are checked against the largest image side then
        return labels

    def _split_names(self, split: str, names: list, seed: int) -> list:
        if split == "all":
            return names
        known = set(names)
        lists = {}
        for key, file in (("train_val", "train_val_list.txt"), ("test", "test_list.txt")):
            path = self.root / file
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: missing; the {split!r} split of a synthetic data set is "
                    f"read from train_val_list.txt and test_list.txt (split 'all' needs "
                    f"neither)"
                )
            lists[key] = []
            for line_no, line in enumerate(path.read_text().splitlines(), start=1):
                name = line.strip()
                if not name:
                    continue
                if name not in known:
                    raise ValueError(f"{path}:{line_no}: image {name!r} is not listed in Data_Entry_2017.csv")
                lists[key].append(name)
        if split == "test":
            return lists["test"]
        held = holdout([n.split("_")[0] for n in lists["train_val"]], VAL_FRACTION, seed, stream="reader_val")
        return [n for n, val in zip(lists["train_val"], held) if val == (split == "val")]

    def _coordinates(
        self, path: Path, line_no: int, name: str, fields: list[str], labels: tuple
    ) -> list[float]:
        """``fields`` as finite pixel coordinates (x, y alternating) within one image side of the
        image ``name`` (its recorded width and height; the largest image side where not recorded):
        phantom landmarks lie up to a pixel outside the film, never -5e6 px away."""
        from . import _io

        width, height = self._extent.get(name, (float(np.sqrt(_io.MAX_IMAGE_PIXELS)),) * 2)
        values = []
        for label, text in zip(labels, fields):
            try:
                value = float(text)
            except ValueError:
                raise ValueError(
                    f"{path}:{line_no}: {label} must be a number (pixels), got {text!r}"
                ) from None
            side = width if label.startswith("x") else height
            if not -side <= value <= 2 * side:  # also refuses NaN and inf
                raise ValueError(
                    f"{path}:{line_no}: {label} = {text} px lies far outside the {width:g} x "
                    f"{height:g} image {name} (allowed: within one image side of it)"
                )
            values.append(value)
        return values

    def _side_rows(self, name: str, header: str):
        """(path, line number, fields) of each row of the side file ``name`` whose image is in this
        split; a row with another number of fields than ``header`` is an error naming file and line."""
        path = self.root / name
        if not path.is_file():
            return
        wanted = set(self.names)
        expected = header.split(",")
        for line_no, line in enumerate(path.read_text().splitlines()[1:], start=2):
            if not line.strip():
                continue
            fields = line.split(",")
            if len(fields) != len(expected):
                raise ValueError(
                    f"{path}:{line_no}: expected {len(expected)} fields ({header}), got "
                    f"{len(fields)}: {line[:80]!r}"
                )
            if fields[0] in wanted:
                yield path, line_no, fields

    def _read_findings(self):
        boxes = {n: [] for n in self.names}
        index = {c: i for i, c in enumerate(CLASSES)}
        rows = self._side_rows("findings.csv", "image,finding,x0,y0,x1,y1")
        for path, line_no, (name, finding, *coords) in rows:
            if finding not in index:
                raise ValueError(f"{path}:{line_no}: unknown finding {finding!r}; expected one of {CLASSES}")
            x0, y0, x1, y1 = self._coordinates(path, line_no, name, coords, ("x0", "y0", "x1", "y1"))
            if not (x0 <= x1 and y0 <= y1):
                raise ValueError(f"{path}:{line_no}: a box needs x0 <= x1 and y0 <= y1, got {coords}")
            boxes[name].append((index[finding], x0, y0, x1, y1))
        return (
            [np.array([b[1:] for b in boxes[n]], np.float32).reshape(-1, 4) for n in self.names],
            [np.array([b[0] for b in boxes[n]], np.int64) for n in self.names],
        )

    def _read_landmarks(self):
        points = {n: np.full((len(LANDMARKS), 2), np.nan, np.float32) for n in self.names}
        order = {k: i for i, k in enumerate(LANDMARKS)}
        for path, line_no, (name, key, x, y) in self._side_rows("landmarks.csv", "image,landmark,x,y"):
            if key not in order:
                raise ValueError(f"{path}:{line_no}: unknown landmark {key!r}; expected one of {LANDMARKS}")
            points[name][order[key]] = self._coordinates(path, line_no, name, [x, y], ("x", "y"))
        return [points[n] for n in self.names]

    def groups(self) -> list[str]:
        """The patient of each item (the file name's ``PPPPPPPP``): hold-outs keep a patient together."""
        return [name.split("_")[0] for name in self.names]

    def _image(self, key: str):
        image, original = super()._image(key)
        if self.size is not None and image.shape[1:] != (self.size, self.size):
            shrink = cv2.INTER_AREA if self.size < image.shape[1] else cv2.INTER_LINEAR
            image = cv2.resize(image[0], (self.size, self.size), interpolation=shrink)[None]
        return image, original

    def _annotations(self, index: int, original, size) -> dict:
        name = self.names[index]
        scale = np.array([size[1] / original[1], size[0] / original[0]], np.float32)
        masks = self._mask_files([f"masks/{m}/{name}" for m in MASKS], size)
        return {
            "labels": torch.from_numpy(self.labels[index]),
            "mask": (masks > 0).to(torch.uint8),
            "boxes": torch.from_numpy(self.boxes[index] * np.tile(scale, 2)),
            "box_labels": torch.from_numpy(self.box_labels[index]),
            "landmarks": torch.from_numpy((self.landmarks[index] + 0.5) * scale - 0.5),
        }


# --------------------------------------------------------------------------- contact sheet


def contact_sheet(root, out_png, n: int = 16, overlays: int | None = None, cols: int = 4) -> Path:
    """Draws a grid of the first ``n`` images of an ``adam synth`` output into a PNG.

    The last ``overlays`` images (default n // 4) carry the lung, heart and clavicle contours,
    the landmarks and the finding boxes; every tile is titled with its labels.

    Args:
        root: an ``adam synth`` output folder.
        out_png: the PNG to write.
        n: number of images.
        overlays: how many tiles get the overlay.
        cols: tiles per row.

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = SyntheticDataset(root, split="all")
    n = min(n, len(ds))
    overlays = n // 4 if overlays is None else overlays
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.75 * rows), squeeze=False)
    colours = {
        "right_lung": "#39a0ff",
        "left_lung": "#39a0ff",
        "heart": "#ff5a5a",
        "right_clavicle": "#ffd23f",
        "left_clavicle": "#ffd23f",
        "landmark": "#00ff88",
        "box": "#ff9f1c",
    }
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        item = ds[i]
        ax.imshow(item["image"][0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="lanczos")
        names = [CLASSES[j] for j in np.flatnonzero(item["labels"].numpy())]
        ax.set_title(", ".join(names) or "No Finding", fontsize=7)
        if i >= n - overlays:
            for key in MASKS[:2] + ("heart", "right_clavicle", "left_clavicle"):
                colour = colours[key]
                ax.contour(
                    item["mask"][MASKS.index(key)].numpy(), levels=[0.5], colors=colour, linewidths=0.6
                )
            xy = item["landmarks"].numpy()
            ax.scatter(xy[:, 0], xy[:, 1], s=5, c=colours["landmark"], linewidths=0)
            for x0, y0, x1, y1 in item["boxes"].numpy():
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colours["box"], lw=0.7))
    fig.tight_layout(pad=0.3)
    fig.set_dpi(110)
    fig.canvas.draw()
    rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    plt.close(fig)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    # An indexed PNG (greys + the overlay colours) keeps the film grain from bloating the file.
    indexed = rgb.quantize(palette=_sheet_palette(colours.values()), dither=Image.Dither.NONE)
    indexed.save(out_png, optimize=True)
    return out_png


def _sheet_palette(colours) -> Image.Image:
    """A palette image of 224 greys and the given '#rrggbb' colours."""
    greys = np.repeat(np.linspace(0, 255, 224).round().astype(np.uint8)[:, None], 3, 1)
    extra = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in sorted(set(colours))], np.uint8)
    table = np.concatenate([greys, extra, np.zeros((256 - len(greys) - len(extra), 3), np.uint8)])
    palette = Image.new("P", (1, 1))
    palette.putpalette(table.ravel().tolist())
    return palette


def ensure_synthetic(root, n: int, size: int, seed: int = 0, log=print, features: dict | None = None) -> bool:
    """Generates the synthetic data set in ``root`` when it is missing, or when ``synthetic.json``
    says an older generator made it (its phantoms differ; ``n`` and ``size`` of an existing
    folder are its own). A folder in the ChestX-ray14 layout that we did not make is used as it is.

    Args:
        features: film features to switch (``{"markers": False}``...; see :class:`SynthConfig`).

    Returns:
        True when it generated.

    Raises:
        ValueError: ``root`` was generated with other film features than ``features`` asks for.
    """
    root = Path(root)
    features = dict(features or {})
    made, meta = None, {}
    if (root / "synthetic.json").is_file():
        meta = json.loads((root / "synthetic.json").read_text())
        made = meta.get("version")
    if (root / "Data_Entry_2017.csv").is_file() and made in (None, GENERATOR_VERSION):
        differ = {k: (meta.get(k, True), v) for k, v in features.items() if meta and meta.get(k, True) != v}
        if differ:
            details = ", ".join(f"{k}: made {a}, asked {b}" for k, (a, b) in differ.items())
            raise ValueError(
                f"data.root {str(root)!r} holds synthetic films made with other film features "
                f"({details}); point data.root at another folder for these features"
            )
        return False
    why = f" (it held version {made} of the phantoms, now {GENERATOR_VERSION})" if made else " (once)"
    log(f"generating {n} synthetic radiographs of {size} px in {root}{why}")
    generate(root, n, size=size, seed=seed, workers=None, **features)
    return True
