"""The embedded synthetic chest-radiograph generator: determinism, anatomy, layouts, reader, CLI."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from adam_ext.data import _phantom, synthetic
from adam_ext.data.synthetic import CLASSES, LANDMARKS, MASKS, SyntheticDataset, generate

ANATOMY_SIZE = 256
FINDINGS_SIZE = 128


@pytest.fixture(scope="module")
def anatomy(tmp_path_factory):
    """8 images without findings, 256 px: for checks of the drawn anatomy."""
    return generate(
        tmp_path_factory.mktemp("anatomy"), 8, size=ANATOMY_SIZE, seed=11, workers=1, finding_rate=0.0
    )


@pytest.fixture(scope="module")
def findings(tmp_path_factory):
    """24 images that all have findings, 128 px: for the tables, SCR files and the reader."""
    return generate(
        tmp_path_factory.mktemp("findings"), 24, size=FINDINGS_SIZE, seed=5, workers=1, finding_rate=1.0
    )


def grey(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, seed):
    one = files(generate(tmp_path / "one", 5, size=96, seed=seed, workers=1, finding_rate=0.8))
    two = files(generate(tmp_path / "two", 5, size=96, seed=seed, workers=2, finding_rate=0.8))
    assert one.keys() == two.keys()
    assert [k for k in one if one[k] != two[k]] == []
    assert "scr/All247images/JPCLN005.IMG" in one and "images/00000001_000.png" in one


WARM_POOL_THEN_GENERATE = """
import sys
import cv2, numpy as np
from adam_ext.data.synthetic import generate
cv2.setNumThreads(2)
image = np.random.default_rng(0).random((2000, 2000), dtype=np.float32)
for _ in range(3):
    cv2.GaussianBlur(image, (31, 31), 0)  # OpenCV's thread pool is busy and warm
generate(sys.argv[1], 4, size=64, seed=1, workers=2, progress=False)
print("done")
"""


def test_workers_start_clean_after_the_parent_used_opencv_threads(tmp_path):
    # A worker forked while OpenCV's pool was warm hung for ever (cv2.setNumThreads on a copied
    # lock): CI timed out on it. Run in a child process so that a hang fails here, not the suite.
    child = subprocess.Popen(
        [sys.executable, "-c", WARM_POOL_THEN_GENERATE, str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = child.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        pytest.fail("generate(workers=2) hung after the parent had used OpenCV's thread pool")
    assert child.returncode == 0, out
    assert out.strip().endswith("done")
    assert len(list((tmp_path / "out" / "images").glob("*.png"))) == 4


def test_a_script_without_a_main_guard_gets_a_clear_error(tmp_path):
    # Spawned workers import the caller's __main__: a top-level generate() there starts workers
    # while a worker is still importing, which multiprocessing refuses; the pool breaks.
    script = tmp_path / "no_guard.py"
    script.write_text(
        "from adam_ext.data.synthetic import generate\n"
        f"generate({str(tmp_path / 'out')!r}, 4, size=64, seed=1, workers=2, progress=False)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: a worker process of the synthetic generator (workers=2) died")
    assert 'if __name__ == "__main__":' in last and "workers=1" in last


def test_different_seeds_differ_and_no_two_images_match(tmp_path, findings, seed):
    other = generate(tmp_path / "other", 3, size=FINDINGS_SIZE, seed=seed % 1000 + 100, workers=1)
    ours = sorted((findings / "images").iterdir())
    theirs = sorted((other / "images").iterdir())
    for a, b in zip(ours, theirs):
        assert not np.array_equal(grey(a), grey(b))
    digests = {zlib.crc32(grey(p).tobytes()) for p in ours}
    assert len(digests) == len(ours)


def test_a_smaller_run_is_a_prefix_of_a_larger_one(tmp_path, findings):
    small = generate(tmp_path / "small", 4, size=FINDINGS_SIZE, seed=5, workers=1, finding_rate=1.0)
    for p in sorted((small / "images").iterdir()):
        assert p.read_bytes() == (findings / "images" / p.name).read_bytes()


def test_rerun_into_the_same_folder_replaces_it(tmp_path):
    out = generate(tmp_path / "out", 4, size=64, seed=1, workers=1)
    generate(out, 2, size=64, seed=1, workers=1)
    assert len(list((out / "images").iterdir())) == 2


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="n must be"):
        generate(tmp_path / "a", 0)
    with pytest.raises(ValueError, match="size must be"):
        generate(tmp_path / "a", 1, size=32)
    with pytest.raises(ValueError, match="scr_count must be"):
        generate(tmp_path / "a", 2, size=64, scr_count=3)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="empty folder"):
        generate(tmp_path / "foreign", 1, size=64)
    assert (tmp_path / "foreign" / "precious.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- anatomy


def load(root: Path, name: str):
    image = grey(root / "images" / name).astype(np.float64)
    masks = {m: grey(root / "masks" / m / name) > 127 for m in MASKS}
    return image, masks


def landmarks(root: Path) -> dict:
    out: dict = {}
    for image, key, x, y in read_rows(root / "landmarks.csv")[1:]:
        out.setdefault(image, {})[key] = (float(x), float(y))
    return out


def names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "images").iterdir())


def test_lungs_are_dark_heart_and_bones_bright(anatomy):
    for name in names(anatomy):
        image, m = load(anatomy, name)
        lungs = m["right_lung"] | m["left_lung"]
        ring = cv2.dilate(lungs.astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
        body = ring & ~lungs & (image > 20)  # the tissue around the lungs, not the air outside
        assert image[lungs].mean() + 25 < image[body].mean(), name
        assert image[m["heart"]].mean() > image[lungs].mean() + 30, name
        bare_lung = lungs & ~m["ribs"] & ~m["right_clavicle"] & ~m["left_clavicle"]
        assert image[lungs & m["ribs"]].mean() > image[bare_lung].mean() + 5, name
        clavicles = m["right_clavicle"] | m["left_clavicle"]
        assert image[clavicles].mean() > image[bare_lung].mean() + 20, name


def test_every_structure_is_drawn_and_lobes_tile_the_lungs(anatomy):
    for name in names(anatomy):
        _, m = load(anatomy, name)
        for key in MASKS:
            assert m[key].sum() > 30, (name, key)
        right = m["right_upper_lobe"] | m["right_middle_lobe"] | m["right_lower_lobe"]
        left = m["left_upper_lobe"] | m["left_lower_lobe"]
        assert np.array_equal(right, m["right_lung"]) and np.array_equal(left, m["left_lung"])
        lobes = np.stack([m[k] for k in MASKS[2:7]]).sum(0)
        assert lobes.max() == 1
        assert not (m["heart"] & (m["right_lung"] | m["left_lung"])).any()
        # radiological convention: the patient's right lung is on the image's left
        assert np.nonzero(m["right_lung"])[1].mean() < ANATOMY_SIZE / 2 < np.nonzero(m["left_lung"])[1].mean()


def near(mask: np.ndarray, xy, pixels: float) -> bool:
    dist = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3)
    x, y = np.clip(np.rint(xy).astype(int), 0, mask.shape[0] - 1)
    return dist[y, x] <= pixels


def test_landmarks_lie_on_their_structures(anatomy):
    size = ANATOMY_SIZE
    table = landmarks(anatomy)
    for name in names(anatomy):
        _, m = load(anatomy, name)
        pts = table[name]
        assert set(pts) == set(LANDMARKS)
        assert near(m["mediastinum"], pts["carina"], 1) and near(m["trachea"], pts["carina"], 1)
        assert abs(pts["carina"][0] - size / 2) < 0.08 * size
        assert near(m["heart"], pts["heart_apex"], 2)
        hy, hx = np.nonzero(m["heart"])
        assert pts["heart_apex"][0] > hx.max() - 0.2 * np.ptp(hx) and pts["heart_apex"][1] > hy.mean()
        for side, lateral in (("right", -1), ("left", 1)):
            lung = m[f"{side}_lung"]
            ys, xs = np.nonzero(lung)
            cx, cy = pts[f"{side}_costophrenic_angle"]
            assert near(lung, (cx, cy), 3), (name, side)
            assert cy > ys.min() + 0.75 * np.ptp(ys)
            edge = xs.min() if lateral < 0 else xs.max()
            assert abs(cx - edge) < 0.2 * np.ptp(xs)
            hx_, hy_ = pts[f"{side}_clavicle_head"]
            assert near(m[f"{side}_clavicle"], (hx_, hy_), 2)
            assert lateral * (hx_ - pts["carina"][0]) > 0  # on its own side of the midline
            assert abs(hx_ - size / 2) < 0.12 * size and hy_ < 0.35 * size
            assert near(lung, pts[f"{side}_lung_apex"], 3)
            assert near(lung, pts[f"{side}_hemidiaphragm_dome"], 3)


def test_right_hemidiaphragm_is_higher_and_rotation_is_small(seed):
    for k in range(6):
        rng = np.random.default_rng([seed, k])
        subject = _phantom.sample_subject(rng)
        view = _phantom.sample_view(rng, 0.0)
        assert abs(view.angle) <= 7.0
        right, left = subject.lungs["right"][_phantom._DOME], subject.lungs["left"][_phantom._DOME]
        assert right[1] < left[1]
        assert subject.heart[_phantom._HEART_APEX][0] > 0.5  # apex to the patient's left


FEATURES = ("markers", "electrodes", "collimation", "exposure_variation")


@pytest.mark.parametrize("off", FEATURES)
def test_a_film_feature_switched_off_changes_only_itself(seed, off):
    features = _phantom.FilmFeatures(**{off: False})
    for k in range(12):
        rng_on, rng_off = np.random.default_rng([seed, k]), np.random.default_rng([seed, k])
        on, less = _phantom.sample_view(rng_on, 0.5), _phantom.sample_view(rng_off, 0.5, features)
        assert rng_on.bit_generator.state == rng_off.bit_generator.state  # the same draws were made
        changed = {
            "markers": ["marker"],
            "electrodes": ["electrodes"],
            "collimation": ["collimation"],
            "exposure_variation": list(_phantom._MID_EXPOSURE),
        }[off]
        for name in (
            "zoom",
            "aspect",
            "angle",
            "shift",
            "bubble",
            "findings",
            "marker",
            "electrodes",
            "collimation",
            *_phantom._MID_EXPOSURE,
        ):
            if name not in changed:
                assert np.array_equal(getattr(on, name), getattr(less, name)), name
        assert less.marker == () if off == "markers" else True
        assert len(less.electrodes) == 0 if off == "electrodes" else True
        assert not less.collimation.any() if off == "collimation" else True
        if off == "exposure_variation":
            assert {n: getattr(less, n) for n in _phantom._MID_EXPOSURE} == _phantom._MID_EXPOSURE


def test_films_without_features_keep_anatomy_lists_and_say_so(tmp_path):
    off = {name: False for name in FEATURES}
    plain = generate(tmp_path / "plain", 8, size=64, seed=2, workers=1, progress=False, **off)
    full = generate(tmp_path / "full", 8, size=64, seed=2, workers=1, progress=False)
    for name in (
        "landmarks.csv",
        "findings.csv",
        "test_list.txt",
        "train_val_list.txt",
        "Data_Entry_2017.csv",
    ):
        assert (plain / name).read_bytes() == (full / name).read_bytes(), name
    for path in (full / "masks").rglob("*.png"):
        assert path.read_bytes() == (plain / path.relative_to(full)).read_bytes()
    assert any(
        grey(p).tobytes() != grey(plain / "images" / p.name).tobytes() for p in (full / "images").iterdir()
    )
    meta = __import__("json").loads((plain / "synthetic.json").read_text())
    assert {k: meta[k] for k in FEATURES} == off
    with pytest.raises(ValueError, match="film features"):
        generate(tmp_path / "x", 2, size=64, progress=False, side_markers=False)
    with pytest.raises(ValueError, match="markers must be true or false"):
        generate(tmp_path / "x", 2, size=64, progress=False, markers="no")
    # a pretraining run asking for other features than the folder holds is refused, naming both
    with pytest.raises(ValueError, match=r"markers: made False, asked True"):
        synthetic.ensure_synthetic(plain, 8, 64, features={"markers": True})
    assert synthetic.ensure_synthetic(plain, 8, 64, features=off) is False


# --------------------------------------------------------------------------- ChestX-ray14 layout


def test_chestxray14_tables_follow_the_published_layout(findings):
    entry = (findings / "Data_Entry_2017.csv").read_text().splitlines()
    assert entry[0] == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    )
    rows = read_rows(findings / "Data_Entry_2017.csv")[1:]
    assert len(rows) == 24 and all(len(r) == 12 for r in rows)
    multi = 0
    for r in rows:
        assert (findings / "images" / r[0]).is_file()
        assert r[0] == f"{int(r[3]):08d}_{int(r[2]):03d}.png"
        labels = r[1].split("|")
        multi += len(labels) > 1
        assert labels == ["No Finding"] or set(labels) <= set(CLASSES)
        assert r[5] in ("M", "F") and r[6] == "PA" and r[7] == r[8] == str(FINDINGS_SIZE)
    assert multi > 0
    bbox_header = (findings / "BBox_List_2017.csv").read_text().splitlines()[0]
    assert bbox_header == "Image Index,Finding Label,Bbox [x,y,w,h],,,"


def test_boxes_are_inside_the_image_and_match_the_labels(findings):
    labels = {r[0]: set(r[1].split("|")) for r in read_rows(findings / "Data_Entry_2017.csv")[1:]}
    bbox_rows = read_rows(findings / "BBox_List_2017.csv")[1:]
    assert bbox_rows
    for name, label, *xywh in bbox_rows:
        x, y, w, h = map(float, xywh)
        assert label in labels[name] and label in synthetic.BBOX_CLASSES
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= FINDINGS_SIZE and y + h <= FINDINGS_SIZE
    drawn: dict = {}
    for name, finding, *box in read_rows(findings / "findings.csv")[1:]:
        drawn.setdefault(name, set()).add(finding)
        x0, y0, x1, y1 = map(int, box)
        mask = grey(findings / "finding_masks" / finding / name) > 127
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
    assert drawn == {n: v for n, v in labels.items() if v != {"No Finding"}}


def test_split_lists_cover_every_image_once_and_separate_patients(findings):
    train_val = (findings / "train_val_list.txt").read_text().split()
    test = (findings / "test_list.txt").read_text().split()
    assert sorted(train_val + test) == names(findings)
    assert not {n[:8] for n in train_val} & {n[:8] for n in test}
    assert 0.05 < len(test) / 24 < 0.45


# --------------------------------------------------------------------------- SCR / JSRT layout


def test_scr_files_follow_the_jsrt_and_scr_layout(findings):
    scr = findings / "scr"
    raws = sorted((scr / "All247images").iterdir())
    assert [p.stem for p in raws] == [f"JPCLN{i:03d}" for i in range(1, 25)]
    for index, path in enumerate(raws):
        assert path.stat().st_size == FINDINGS_SIZE * FINDINGS_SIZE * 2
        raw = np.fromfile(path, dtype=">u2").reshape(FINDINGS_SIZE, FINDINGS_SIZE).astype(np.float64)
        assert raw.max() <= 4095
        png = grey(findings / "images" / png_name(findings, index)).astype(np.float64)
        assert np.abs(raw - (4095 - png * 4095 / 255)).max() <= 9
        assert np.corrcoef(raw.ravel(), png.ravel())[0, 1] < -0.99
        number = int(path.stem[5:])
        fold, other = ("fold1", "fold2") if number % 2 else ("fold2", "fold1")
        for organ, key in synthetic.SCR_ORGANS.items():
            gif = scr / fold / "masks" / organ / f"{path.stem}.gif"
            assert not (scr / other / "masks" / organ / gif.name).exists()
            mask = np.asarray(Image.open(gif).convert("L"))
            assert mask.shape == (FINDINGS_SIZE // 2,) * 2 and set(np.unique(mask)) <= {0, 255}
            full = grey(findings / "masks" / key / png_name(findings, index))
            small = cv2.resize(full, mask.shape[::-1], interpolation=cv2.INTER_AREA) >= 128  # area majority
            assert np.array_equal(small, mask > 0) and small.any(), (gif, key)


def png_name(root: Path, index: int) -> str:
    return names(root)[index]


def test_scr_count_and_jsrt_numbering():
    assert synthetic.jsrt_name(0) == "JPCLN001" and synthetic.jsrt_name(153) == "JPCLN154"
    assert synthetic.jsrt_name(154) == "JPCNN001" and synthetic.jsrt_name(246) == "JPCNN093"


# --------------------------------------------------------------------------- reader and CLI


def test_dataset_items(findings):
    ds = SyntheticDataset(findings, split="all")
    assert len(ds) == 24
    assert ds.classes == CLASSES and ds.mask_names == MASKS and ds.landmark_names == LANDMARKS
    item = ds[0]
    s = FINDINGS_SIZE
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (1, s, s)
    assert item["labels"].dtype == torch.float32 and item["labels"].shape == (14,)
    assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (len(MASKS), s, s)
    assert set(item["mask"].unique().tolist()) <= {0, 1}
    assert item["boxes"].dtype == torch.float32 and item["boxes"].shape[1:] == (4,)
    assert item["box_labels"].dtype == torch.int64 and len(item["box_labels"]) == len(item["boxes"])
    assert item["landmarks"].dtype == torch.float32 and item["landmarks"].shape == (len(LANDMARKS), 2)
    assert Path(item["path"]).is_file()
    for i in range(len(ds)):
        it = ds[i]
        assert set(it["box_labels"].tolist()) == set(torch.nonzero(it["labels"]).ravel().tolist())
    small = SyntheticDataset(
        findings, split="all", size=64, transform=lambda it: {**it, "image": it["image"][:, ::2]}
    )[0]
    assert small["image"].shape == (1, 32, 64) and small["mask"].shape == (len(MASKS), 64, 64)
    assert torch.allclose(small["landmarks"], (item["landmarks"] + 0.5) * 0.5 - 0.5)


def test_dataset_splits_are_disjoint_cover_and_val_is_a_tenth_of_patients(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("splits"), 60, size=64, seed=3, workers=1, scr_count=0)
    split = {s: SyntheticDataset(root, split=s, seed=7).names for s in ("train", "val", "test", "all")}
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(split["all"])
    patients = {s: {n[:8] for n in v} for s, v in split.items()}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert len(patients["val"]) == round(0.1 * len(patients["train"] | patients["val"]))
    assert SyntheticDataset(root, split="val", seed=8).names != split["val"]
    assert not (root / "scr").exists()


def test_missing_data_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"adam synth --out .* --n N"):
        SyntheticDataset(tmp_path / "nothing")
    with pytest.raises(ValueError, match="split must be"):
        SyntheticDataset(tmp_path, split="training")


def test_adam_synth_command(tmp_path, capsys):
    from adam_ext.cli import main

    out = tmp_path / "cli"
    argv = ["synth", "--out", str(out), "--n", "3", "--size", "64", "--seed", "2", "--workers", "1"]
    assert main(argv) == 0
    assert "adam synth: 3 images of 64 px" in capsys.readouterr().out
    assert len(SyntheticDataset(out, split="all")) == 3
    assert main(["synth", "--out", str(out), "--n", "0"]) == 2


def test_dataset_reads_through_a_decoded_image_cache(findings):
    """A cache hit replaces decoding; masks, boxes and landmarks follow the cached size."""
    plain = SyntheticDataset(findings, split="all")
    key = plain.image_keys()[0]
    full = plain.load_image(key)

    class HalfSizeCache:
        def get(self, k):
            return (full[:, ::2, ::2].copy(), full.shape[1:]) if k == key else None

    cached = SyntheticDataset(findings, split="all", cache=HalfSizeCache())
    item, reference = cached[0], plain[0]
    half = (full.shape[1] // 2, full.shape[2] // 2)
    assert item["image"].shape[1:] == half and item["mask"].shape[1:] == half
    assert torch.allclose(item["landmarks"], (reference["landmarks"] + 0.5) * 0.5 - 0.5)
    assert torch.allclose(item["boxes"], reference["boxes"] * 0.5)
    assert cached[1]["image"].shape == reference["image"].shape  # a miss decodes the file
