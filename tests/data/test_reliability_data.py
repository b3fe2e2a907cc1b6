"""Reliability of the data readers and the decoded-image cache (issue 15, defects 3-6).

3: label files cannot make a reader open files outside its root; 4: images below
``MIN_IMAGE_SIDE`` are undecodable samples (named, skippable); 5: a cache is checked against the
data set and files it was built from (``adam cache --verify``, folder mode); 6: images above
``MAX_IMAGE_PIXELS`` are refused from their header, and decoding holds no float64 copies.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
import sys
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from adam_ext.data import _io, readers
from adam_ext.data import cache as cache_module
from adam_ext.data._io import DecodeError, read_image
from adam_ext.data.cache import INDEX_FILE, ImageCache
from adam_ext.data.synthetic import SyntheticDataset, generate
from adam_ext.data.views import TwoViews

sys.path.insert(0, str(Path(__file__).parent / "data"))
import fabricate as fab  # tests/data/fabricate.py: the published layouts, in tiny files


def esc(path) -> str:
    """``path`` as a regular expression matching itself."""
    return re.escape(str(path))


# ----------------------------------------------------------------------------- defect 3: paths


def _append_csv_row(path: Path, row: str) -> int:
    """Appends ``row`` to a CSV and returns its line number."""
    text = path.read_text()
    path.write_text(text + row + "\n")
    return text.count("\n") + 1


def _escape_eyepacs(root):
    line = _append_csv_row(root / "trainLabels.csv", "../../outside,1")
    return readers.EyePACS, "train", rf"trainLabels.csv:{line}:"


def _escape_vindr_cxr(root):
    row = ",".join(["../../outside", "R1", *["0"] * 27, "1"])
    line = _append_csv_row(root / "annotations/image_labels_train.csv", row)
    return readers.VinDrCXR, "train", rf"image_labels_train.csv:{line}:"


def _escape_chestx_det(root):
    path = root / "ChestX_Det_train.json"
    entries = json.loads(path.read_text())
    entries.append({"file_name": "../../outside.png", "syms": [], "boxes": [], "polygons": []})
    path.write_text(json.dumps(entries))
    return readers.ChestXDet, "train", rf"ChestX_Det_train.json: entry {len(entries) - 1}\b"


def _escape_vindr_rib(root):
    path = root / "data/train/Vindr_RibCXR_train_mask.json"
    table = json.loads(path.read_text())
    table["img"]["3"] = str((root.parent / "outside.png").resolve())  # an absolute path
    for rib in readers.VINDR_RIBS:
        table[rib]["3"] = "None"
    path.write_text(json.dumps(table))
    return readers.VinDrRib, "train", r"Vindr_RibCXR_train_mask.json: entry 3\b"


def _escape_cxr14(root):
    row = "../outside.png,No Finding,0,99,40,M,PA,32,32,0.1,0.1"
    line = _append_csv_row(root / "Data_Entry_2017.csv", row)
    with open(root / "test_list.txt", "a") as f:
        f.write("../outside.png\n")
    return readers.ChestXray14, "test", rf"Data_Entry_2017.csv:{line}:"


def _escape_synthetic(root):
    line = _append_csv_row(
        root / "Data_Entry_2017.csv", "../../outside.png,No Finding,0,99,40,M,PA,64,64,0.1,0.1,"
    )
    return SyntheticDataset, "all", rf"Data_Entry_2017.csv:{line}:"


def _synthetic(root):
    generate(root, 3, size=64, seed=1, workers=1, progress=False)


# reader -> (builder of a fixture data set under root, the injection of an escaping row or None)
READERS = {
    "ChestXray14": (lambda r: fab.chestxray14(r, n_patients=3, per_patient=1), _escape_cxr14),
    "Shenzhen": (lambda r: fab.shenzhen(r, n=4), None),
    "VinDrCXR": (lambda r: fab.vindr_cxr(r, readers.VINDR_CXR_CLASSES), _escape_vindr_cxr),
    "SIIMACR": (lambda r: fab.siim_acr(r, n=3), None),
    "ChestXDet": (lambda r: fab.chestx_det(r, readers.CHESTX_DET_CLASSES), _escape_chestx_det),
    "SCR": (lambda r: fab.scr(r, readers.SCR_ORGANS), None),
    "VinDrRib": (lambda r: fab.vindr_rib(r, readers.VINDR_RIBS), _escape_vindr_rib),
    "EyePACS": (fab.eyepacs, _escape_eyepacs),
    "DRIVE": (fab.drive, None),
    "ImageFolder": (fab.folder, None),
    "SyntheticDataset": (_synthetic, _escape_synthetic),
}
READER_CLASSES = {name: getattr(readers, name, SyntheticDataset) for name in READERS}


def test_every_reader_is_covered():
    classes = {name for name in readers.__all__ if isinstance(getattr(readers, name), type)}
    assert classes - {"DecodeError", "Reader"} | {"SyntheticDataset"} == set(
        READERS
    )  # Reader: the base class


def _outside_files(tmp_path: Path) -> None:
    """Decodable images just outside the data root (tmp_path/data), which no reader may open."""
    pixels = fab.texture(7)
    fab.write_png(tmp_path / "outside.png", pixels)
    Image.fromarray(np.stack([pixels] * 3, axis=2)).save(tmp_path / "outside.jpeg")
    fab.write_dicom(tmp_path / "outside.dicom", fab.stored_values(7))


@pytest.mark.parametrize("name", list(READERS))
def test_label_rows_cannot_leave_the_root(tmp_path, name):
    """Rows naming ``../`` or absolute paths are refused, naming the label file and line (entry)."""
    root = tmp_path / "data"
    build, escape = READERS[name]
    build(root)
    _outside_files(tmp_path)
    cls = READER_CLASSES[name]
    split = {"SCR": "fold1", "DRIVE": "training", "SyntheticDataset": "all"}.get(name, "train")
    reader = cls(root, split=split)
    assert all(".." not in key.split("/") and not key.startswith("/") for key in reader.image_keys())
    # load_image takes a key too: the same check applies.
    with pytest.raises(ValueError, match=r"'\.\./outside\.png'.*must lie inside the data root"):
        reader.load_image("../outside.png")
    with pytest.raises(ValueError, match="must lie inside the data root"):
        reader.load_image(str(tmp_path / "outside.png"))
    if escape is not None:
        cls, split, where = escape(root)
        with pytest.raises(ValueError, match=rf"{where}.*outside.*must lie inside the data root"):
            cls(root, split=split)


def test_dot_dot_is_refused_even_inside_the_root_but_symlinks_are_followed(tmp_path):
    """Documented choice: any '..' component is refused (a symlinked folder makes 'a/../b' point
    elsewhere); symlinks placed inside the root by its owner (a symlinked image folder) are followed."""
    root = tmp_path / "data"
    fab.eyepacs(root)
    line = _append_csv_row(root / "trainLabels.csv", "x/../10_left,1")
    with pytest.raises(ValueError, match=rf"trainLabels.csv:{line}: .*'train/x/\.\./10_left\.jpeg'"):
        readers.EyePACS(root, split="train")
    elsewhere = tmp_path / "elsewhere"
    fab.write_png(elsewhere / "linked.png", fab.texture(3))
    folder = tmp_path / "folder"
    fab.write_png(folder / "own.png", fab.texture(4))
    (folder / "sub").symlink_to(elsewhere, target_is_directory=True)
    (folder / "file.png").symlink_to(elsewhere / "linked.png")
    reader = readers.ImageFolder(folder, split="all")
    assert reader.image_keys() == ["file.png", "own.png"]  # os.walk does not enter symlinked folders
    assert reader.load_image("sub/linked.png").shape == (1, fab.SIDE, fab.SIDE)


# ----------------------------------------------------------------------------- defect 4: tiny images


@pytest.fixture
def folder_with_tiny(tmp_path):
    """A folder data set: 7 normal 32-px PNGs and one valid 2x1 PNG (width 2, height 1)."""
    for i in range(7):
        fab.write_png(tmp_path / f"img{i}.png", fab.texture(i))
    fab.write_png(tmp_path / "img3_tiny.png", np.array([[10, 200]], np.uint8))
    return tmp_path


def test_tiny_image_is_a_decode_error_naming_the_file(folder_with_tiny):
    path = folder_with_tiny / "img3_tiny.png"
    message = rf"{esc(path)} is 2x1 .*at least MIN_IMAGE_SIDE = {_io.MIN_IMAGE_SIDE} px"
    with pytest.raises(DecodeError, match=message):
        read_image(path, 1)
    reader = readers.ImageFolder(folder_with_tiny, split="all")
    index = reader.image_keys().index("img3_tiny.png")
    with pytest.raises(DecodeError, match=message):
        reader.image(index)
    with pytest.raises(DecodeError, match=message):
        reader[index]


def test_tiny_image_is_skipped_and_twoviews_n2_works(folder_with_tiny):
    reader = readers.ImageFolder(folder_with_tiny, split="all", skip_corrupt=True)
    views = TwoViews(16, n=2, seed=0)
    for i in range(len(reader)):
        q, k = views(reader.image(i))
        assert q.shape == k.shape == (3, 16, 16)
    assert reader.n_corrupt == 1
    assert all(min(reader[i]["image"].shape[1:]) >= _io.MIN_IMAGE_SIDE for i in range(len(reader)))


def test_tiny_image_from_a_cache_is_a_decode_error(folder_with_tiny):
    class Cache:
        def get(self, key):
            return (np.full((1, 1, 2), 7, np.uint8), (1, 2)) if "tiny" in key else None

    reader = readers.ImageFolder(folder_with_tiny, split="all", cache=Cache())
    index = reader.image_keys().index("img3_tiny.png")
    message = rf"cached image {esc(folder_with_tiny / 'img3_tiny.png')} is 2x1 .*at least MIN_IMAGE_SIDE"
    with pytest.raises(DecodeError, match=message):
        reader.image(index)
    skipping = readers.ImageFolder(folder_with_tiny, split="all", cache=Cache(), skip_corrupt=True)
    assert skipping.image(index).shape == (1, fab.SIDE, fab.SIDE) and skipping.n_corrupt == 1


# ----------------------------------------------------------------------------- defect 5: cache checks


def _build(reader, out, **kw):
    return ImageCache.build(reader, out, size=16, workers=0, progress=False, **kw)


@pytest.fixture
def two_folders(tmp_path):
    for name in ("a", "b"):
        for i in range(4):
            fab.write_png(tmp_path / name / f"img{i}.png", fab.texture(10 * (name == "b") + i))
    return tmp_path / "a", tmp_path / "b"


def test_cache_records_its_source(two_folders, tmp_path):
    a, _ = two_folders
    reader = readers.ImageFolder(a, split="all")
    cache = _build(reader, tmp_path / "cache")
    index = json.loads((tmp_path / "cache" / INDEX_FILE).read_text())
    assert index["version"] == cache_module.VERSION >= 2
    source = {"dataset": "ImageFolder", "root": str(a.resolve()), "split": "all", "n_images": 4}
    assert index["source"] == source
    for key, entry in index["entries"].items():
        st = os.stat(a / key)
        assert entry[6:] == [st.st_size, st.st_mtime_ns]
    assert cache.source["root"] == str(a.resolve())


def test_cache_of_another_data_set_is_refused(two_folders, tmp_path):
    a, b = two_folders
    _build(readers.ImageFolder(a, split="all"), tmp_path / "cache")
    with pytest.raises(ValueError, match=rf"differs in root {esc(a.resolve())}, not {esc(b.resolve())}"):
        readers.ImageFolder(b, split="all", cache=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"data set ImageFolder, not Shenzhen"):
        readers.Shenzhen(a, split="train", cache=tmp_path / "cache")
    # Another split of the same data set and root: same files, checked per file (train.py and
    # the fine-tuning protocol open their validation/test splits with the training cache).
    val = readers.ImageFolder(a, split="val", val_fraction=0.5, cache=tmp_path / "cache")
    assert val.image(0).shape == (1, 16, 16)


def test_stale_cache_is_refused_at_open(two_folders, tmp_path):
    a, _ = two_folders
    _build(readers.ImageFolder(a, split="all"), tmp_path / "cache")
    assert readers.ImageFolder(a, split="all", cache=tmp_path / "cache").image(1).shape == (1, 16, 16)
    val_keys = readers.ImageFolder(a, split="val", val_fraction=0.25).image_keys()
    changed = next(key for key in readers.ImageFolder(a, split="all").image_keys() if key not in val_keys)
    st = os.stat(a / changed)
    fab.write_png(a / changed, fab.texture(99))  # same size: only the time tells
    os.utime(a / changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match=rf"{esc(a / changed)}: changed.*stale.*adam cache --verify"):
        readers.ImageFolder(a, split="all", cache=tmp_path / "cache")
    # The check covers the reader's own keys: a split without the changed file opens.
    val = readers.ImageFolder(a, split="val", val_fraction=0.25, cache=tmp_path / "cache")
    assert val.image_keys() == val_keys and val.image(0).shape == (1, 16, 16)


def test_old_cache_format_asks_for_a_rebuild(two_folders, tmp_path):
    a, _ = two_folders
    _build(readers.ImageFolder(a, split="all"), tmp_path / "cache")
    path = tmp_path / "cache" / INDEX_FILE
    index = json.loads(path.read_text())
    index["version"] = 1
    path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"version 1.*rebuild .*adam cache"):
        ImageCache(tmp_path / "cache")


def test_adam_cache_verify(two_folders, tmp_path, capsys):
    from adam_ext.cli import main

    a, _ = two_folders
    out = tmp_path / "cache"
    argv = ["cache", "folder", str(a), str(out), "--size", "16", "--workers", "1", "--split", "all"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["cache", "--verify", str(out)]) == 0
    assert "all 4 files match" in capsys.readouterr().out
    fab.write_png(a / "img2.png", fab.texture(98, (40, 40)))
    (a / "img3.png").unlink()
    assert main(["cache", "--verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "img2.png" in printed and "changed" in printed and "img3.png" in printed and "missing" in printed
    assert "img0.png" not in printed
    assert main(["cache", "--verify", str(out), "folder"]) == 2  # --verify takes no other argument


def test_adam_cache_folder_gets_an_ordinary_mode(two_folders, tmp_path):
    a, _ = two_folders
    before = os.umask(0o027)
    try:
        cache = _build(readers.ImageFolder(a, split="all"), tmp_path / "cache")
        _build(readers.ImageFolder(a, split="all"), tmp_path / "cache", overwrite=True)
    finally:
        os.umask(before)
    assert stat.S_IMODE(os.stat(cache.path).st_mode) == 0o777 & ~0o027


# ----------------------------------------------------------------------------- defect 6: pixel limit


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_huge_1bit_png_is_refused_from_its_header(tmp_path):
    """30000x30000 1-bit PNG (~110 KB): refused in well under a second, without decoding."""
    side, row = 30000, b"\0" * (1 + 30000 // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    path = tmp_path / "bomb.png"
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))  # 1-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b""))
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DecodeError, match=rf"{esc(path)} is 30000x30000 .*900000000 pixels, above MAX"):
            read_image(path, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0 and peak < 2**20


@pytest.mark.parametrize("suffix", [".png", ".jpeg", ".tif", ".dcm", ".IMG"])
def test_pixel_limit_refuses_before_decoding(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"image{suffix}"
    pixels = fab.texture(1, (32, 40))
    if suffix == ".dcm":
        fab.write_dicom(path, fab.stored_values(1, (32, 40)))
    elif suffix == ".IMG":
        fab.write_jsrt(path, fab.stored_values(1, (36, 36)))
        pixels = np.zeros((36, 36))
    else:
        Image.fromarray(pixels).save(path)
    height, width = pixels.shape
    monkeypatch.setattr(_io, "MAX_IMAGE_PIXELS", height * width)
    assert read_image(path, 1).shape == (1, height, width)  # at the limit: fine
    decoded = []
    monkeypatch.setattr(_io, "MAX_IMAGE_PIXELS", height * width - 1)
    monkeypatch.setattr(_io.cv2, "imdecode", lambda *a: decoded.append(a))
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self))
    monkeypatch.setattr(np, "fromfile", lambda *a, **k: decoded.append(a) or np.zeros(0, np.uint8))
    import pydicom.dataset

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(lambda self: decoded.append(self)))
    message = rf"{esc(path)} is {width}x{height} .*, {height * width} pixels, above MAX_IMAGE_PIXELS"
    with pytest.raises(DecodeError, match=message):
        read_image(path, 1)
    assert decoded == []


def test_mask_pixel_limit(tmp_path, monkeypatch):
    path = fab.write_gif(tmp_path / "mask.gif", fab.texture(3, (16, 20)) > 128)
    assert _io.read_mask(path).shape == (16, 20)
    monkeypatch.setattr(_io, "MAX_IMAGE_PIXELS", 16 * 20 - 1)
    with pytest.raises(DecodeError, match=rf"mask {esc(path)} is 20x16, above MAX_IMAGE_PIXELS"):
        _io.read_mask(path)


def test_pillow_decompression_bomb_checks_never_escape(tmp_path, monkeypatch):
    path = tmp_path / "image.jpeg"
    Image.fromarray(fab.texture(2, (32, 40))).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1280 pixels: Pillow warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(path, 1).shape == (1, 32, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over twice Pillow's limit: it raises
    with pytest.raises(DecodeError, match=rf"{esc(path)}: DecompressionBombError"):
        read_image(path, 1)


def test_16bit_png_decodes_without_float64_copies(tmp_path):
    values = np.random.default_rng(0).integers(100, 60000, (1024, 1024), dtype=np.uint16)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), values)
    tracemalloc.start()
    try:
        pixels = read_image(path, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    lo, hi = values.min(), values.max()
    expected = np.rint((values.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    np.testing.assert_array_equal(pixels[0], expected)
    assert peak < 5 * values.size, f"peak {peak / values.size:.1f} B/pixel"  # was 26 (float64 copies)


def test_minmax_scaling_is_exact_for_every_dtype():
    rng = np.random.default_rng(1)
    for values in (rng.integers(-5000, 5000, (300, 700)).astype(np.int32), rng.random((3, 100_001)) * 7 - 2):
        lo, hi = float(values.min()), float(values.max())
        expected = np.rint((values.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        np.testing.assert_array_equal(_io._minmax_uint8(values, Path("x")), expected)
