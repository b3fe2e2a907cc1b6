"""Readers of the published data-set layouts, on small fabricated files (tests/data/fabricate.py)."""

from __future__ import annotations

import logging
import pickle

import fabricate as fab  # tests/data/fabricate.py (pytest puts this folder on sys.path)
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import maximum_filter

from adam_ext.data import readers
from adam_ext.data._io import DecodeError, read_image
from adam_ext.data.registry import DATASETS, dataset_class, open_dataset

SIDE = fab.SIDE


class FakeCache:
    """The decoded-image cache protocol, dict-backed: images stored at ``size`` px."""

    def __init__(self, dataset, size):
        self.entries, self.asked = {}, []
        for key in dataset.image_keys():
            image = dataset.load_image(key)
            rows, cols = (np.arange(s) * image.shape[1 + i] // s for i, s in enumerate(size))
            self.entries[key] = (image[:, rows[:, None], cols[None, :]], tuple(image.shape[1:]))

    def get(self, key):
        self.asked.append(key)
        return self.entries.get(key)


def minmax_uint8(values):
    values = values.astype(np.float64)
    return np.rint((values - values.min()) * 255.0 / (values.max() - values.min())).astype(np.uint8)


def corrupt(path, how="garbage"):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else b"this is not an image at all")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cxr14(tmp_path_factory):
    root = tmp_path_factory.mktemp("cxr14")
    return root, fab.chestxray14(root)


@pytest.fixture(scope="module")
def vindr(tmp_path_factory):
    root = tmp_path_factory.mktemp("vindr")
    return root, fab.vindr_cxr(root, readers.VINDR_CXR_CLASSES)


@pytest.fixture(scope="module")
def siim(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim")
    return root, fab.siim_acr(root)


@pytest.fixture(scope="module")
def chestx_det(tmp_path_factory):
    root = tmp_path_factory.mktemp("chestx_det")
    return root, fab.chestx_det(root, readers.CHESTX_DET_CLASSES)


@pytest.fixture(scope="module")
def scr(tmp_path_factory):
    root = tmp_path_factory.mktemp("scr")
    return root, fab.scr(root, readers.SCR_ORGANS)


@pytest.fixture(scope="module")
def rib(tmp_path_factory):
    root = tmp_path_factory.mktemp("rib")
    return root, fab.vindr_rib(root, readers.VINDR_RIBS)


@pytest.fixture(scope="module")
def eyepacs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eyepacs")
    return root, fab.eyepacs(root)


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    root = tmp_path_factory.mktemp("drive")
    return root, fab.drive(root)


# ----------------------------------------------------------------------------- ChestX-ray14


def test_chestxray14_items_labels_and_boxes(cxr14):
    root, meta = cxr14
    ds = readers.ChestXray14(root, split="test")
    assert len(ds) == len(meta["test"])
    findings = {name: f for name, _, f in meta["names"]}
    for i, name in enumerate(meta["test"]):
        item = ds[i]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (1, SIDE, SIDE)
        assert item["path"].endswith(name)
        want = np.zeros(14, np.float32)
        for f in findings[name].split("|"):
            if f != "No Finding":
                want[ds.classes.index(f)] = 1
        assert item["labels"].dtype == torch.float32 and np.array_equal(item["labels"].numpy(), want)
        assert item["boxes"].dtype == torch.float32 and item["box_labels"].dtype == torch.int64
    first = ds[0]
    np.testing.assert_allclose(first["boxes"].numpy(), [[4, 6, 14, 14], [1.5, 2.5, 4.5, 6.5]])
    assert first["box_labels"].tolist() == [ds.classes.index(c) for c in ("Cardiomegaly", "Infiltration")]
    assert ds[1]["boxes"].shape == (0, 4) and ds[1]["box_labels"].shape == (0,)
    seed = [name for name, _, _ in meta["names"]].index(meta["test"][0])  # fabricate seeds image i with i
    assert np.array_equal(first["image"][0].numpy(), fab.texture(seed))
    assert ds.classes[-1] == "Hernia" and ds.classes[3] == "Infiltration"


def test_chestxray14_val_is_a_seeded_patient_split(cxr14):
    root, meta = cxr14
    patient = {name: p for name, p, _ in meta["names"]}
    seen = set()
    for seed in range(6):
        train = readers.ChestXray14(root, split="train", seed=seed)
        val = readers.ChestXray14(root, split="val", seed=seed)
        train_names = {k.rsplit("/", 1)[1] for k in train.image_keys()}
        val_names = {k.rsplit("/", 1)[1] for k in val.image_keys()}
        assert train_names.isdisjoint(val_names) and train_names | val_names == set(meta["train_val"])
        assert {patient[n] for n in train_names}.isdisjoint({patient[n] for n in val_names})
        assert len(val_names) == 2  # 10% of 16 images, rounded up to whole patients
        assert val.image_keys() == readers.ChestXray14(root, split="val", seed=seed).image_keys()
        seen.add(frozenset(val_names))
    assert len(seen) > 1
    test_names = {k.rsplit("/", 1)[1] for k in readers.ChestXray14(root, split="test").image_keys()}
    assert test_names == set(meta["test"])


def test_chestxray14_flat_images_folder(tmp_path):
    meta = fab.chestxray14(tmp_path, archives=False)
    ds = readers.ChestXray14(tmp_path, split="test")
    assert all(k.startswith("images/") for k in ds.image_keys()) and len(ds) == len(meta["test"])


# ----------------------------------------------------------------------------- Shenzhen


def test_shenzhen_labels_from_names_and_seeded_split(tmp_path):
    meta = fab.shenzhen(tmp_path)
    train, test = readers.Shenzhen(tmp_path, split="train"), readers.Shenzhen(tmp_path, split="test", seed=0)
    assert len(test) == 2 and len(train) == 8
    assert set(train.image_keys()).isdisjoint(test.image_keys())
    assert test.image_keys() == readers.Shenzhen(tmp_path, split="test", seed=0).image_keys()
    for ds in (train, test):
        for i in range(len(ds)):
            item = ds[i]
            name = item["path"].rsplit("/", 1)[1]
            assert item["labels"].dtype == torch.int64 and item["labels"].ndim == 0
            assert int(item["labels"]) == meta["labels"][name]
            assert item["image"].shape == (1, SIDE, SIDE)  # RGB PNGs come back grey
    assert all("_mask" not in k for k in train.image_keys() + test.image_keys())


# ----------------------------------------------------------------------------- DICOM decoding


def test_dicom_modality_rescale_window_and_monochrome1(tmp_path):
    stored = fab.stored_values(1)
    slope, intercept, center, width = 2.0, -100.0, 4000.0, 5000.0
    window = dict(slope=slope, intercept=intercept, center=center, width=width)
    path = fab.write_dicom(tmp_path / "x.dcm", stored, photometric="MONOCHROME1", **window)
    values = stored.astype(np.float64) * slope + intercept
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR), output range mapped to 0-255, then MONOCHROME1 inverted.
    shown = np.clip(((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0, 0, 255)
    got = read_image(path, channels=1)[0].astype(np.int32)
    assert np.abs(got - (255 - shown)).max() <= 1
    plain = fab.write_dicom(tmp_path / "y.dcm", stored)  # no window: min-max of the rescaled values
    assert np.abs(read_image(plain, 1)[0].astype(int) - minmax_uint8(stored)).max() <= 1


def test_dicom_voi_lut_sequence(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset

    stored = fab.stored_values(3)
    path = fab.write_dicom(tmp_path / "lut.dcm", stored)
    ds = pydicom.dcmread(path)
    lut = (np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new((0x0028, 0x3006), "US", lut.tolist())  # LUT Data
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    assert np.abs(read_image(path, 1)[0].astype(int) - minmax_uint8(lut[stored])).max() <= 1


# ----------------------------------------------------------------------------- VinDr-CXR


def test_vindr_cxr_labels_boxes_and_dicom(vindr):
    root, meta = vindr
    ds = readers.VinDrCXR(root, split="train")
    classes = ds.classes
    assert len(ds) == 4 and len(classes) == 28
    items = [ds[i] for i in range(4)]
    assert items[0]["labels"][classes.index("Cardiomegaly")] == 1  # one reader of three suffices
    assert items[1]["labels"][classes.index("Pleural effusion")] == 1
    np.testing.assert_allclose(items[1]["boxes"].numpy(), [[2, 20, 10, 30], [3, 21, 11, 31]])
    assert items[1]["box_labels"].tolist() == [classes.index("Pleural effusion")] * 2
    assert items[2]["boxes"].shape == (0, 4)  # "No finding" rows carry no box
    assert np.abs(items[0]["image"][0].numpy().astype(int) - minmax_uint8(fab.stored_values(0))).max() <= 1
    inverted = 255 - minmax_uint8(fab.stored_values(1)).astype(int)  # MONOCHROME1
    assert np.abs(items[1]["image"][0].numpy().astype(int) - inverted).max() <= 1
    test = readers.VinDrCXR(root, split="test")  # "Other disease" spelling, no rad_id column
    assert len(test) == 2 and test[0]["labels"][classes.index("No finding")] == 1
    assert test[0]["boxes"].shape == (0, 4)


# ----------------------------------------------------------------------------- SIIM-ACR


@pytest.mark.parametrize("split", ["train", "test"])
def test_siim_acr_masks_union_of_relative_rle_rows(siim, split):
    root, meta = siim
    ds = readers.SIIMACR(root, split=split)
    assert len(ds) == (8 if split == "train" else 2)
    for i in range(len(ds)):
        item = ds[i]
        image_id = item["path"].rsplit("/", 1)[1][: -len(".dcm")]
        want = meta["masks"][image_id]
        assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (1, SIDE, SIDE)
        assert np.array_equal(item["mask"][0].numpy(), want)
        assert int(item["labels"]) == int(want.any())
    other = readers.SIIMACR(root, split="test" if split == "train" else "train")
    assert set(ds.image_keys()).isdisjoint(other.image_keys())


def test_siim_acr_absolute_rle_option(tmp_path):
    meta = fab.siim_acr(tmp_path, encoder=fab.encode_absolute_rle, csv_name="stage_2_train.csv")
    ds = readers.SIIMACR(tmp_path, split="train", rle="absolute", test_fraction=0.0)
    for i in range(len(ds)):
        item = ds[i]
        assert np.array_equal(item["mask"][0].numpy(), meta["masks"][item["path"].rsplit("/", 1)[1][:-4]])


def test_siim_acr_run_outside_image_names_line(tmp_path):
    fab.siim_acr(tmp_path, n=1)
    rows = (tmp_path / "train-rle.csv").read_text().splitlines()
    image_id = rows[1].split(",")[0]
    (tmp_path / "train-rle.csv").write_text(f"{rows[0]}\n{image_id}, 1000 5 2000 3\n")
    ds = readers.SIIMACR(tmp_path, split="train", test_fraction=0.0)
    with pytest.raises(ValueError, match=r"train-rle\.csv:2: .*within the 32x32 image"):
        ds[0]


# ----------------------------------------------------------------------------- ChestX-Det


def test_chestx_det_polygons_boxes_labels(chestx_det):
    root, _ = chestx_det
    ds = readers.ChestXDet(root, split="train")
    empty, full = ds[0], ds[1]
    assert empty["mask"].shape == (13, SIDE, SIDE) and empty["mask"].sum() == 0
    assert empty["boxes"].shape == (0, 4)
    effusion, diffuse = ds.classes.index("Effusion"), ds.classes.index("Diffuse Nodule")
    assert full["labels"].nonzero().flatten().tolist() == sorted([effusion, diffuse])
    assert full["box_labels"].tolist() == [effusion, diffuse, effusion]
    mask = full["mask"].numpy()
    assert mask[effusion, 4:15, 2:13].all() and mask[effusion, :4, :4].all()
    assert mask[effusion].sum() == 11 * 11 + 4 * 4 and mask[diffuse].sum() == 9 * 11
    assert mask.sum() == mask[effusion].sum() + mask[diffuse].sum()
    assert ds.mask_names == ds.classes and len(readers.ChestXDet(root, split="test")) == 1


# ----------------------------------------------------------------------------- SCR / JSRT


def test_scr_jsrt_polarity_and_masks(scr):
    root, meta = scr
    for split, fold in (("fold1", "fold1"), ("test", "fold2")):
        ds = readers.SCR(root, split=split)
        assert [k.rsplit("/", 1)[1][:-4] for k in ds.image_keys()] == sorted(meta["folds"][fold])
        for i in range(len(ds)):
            item = ds[i]
            image_id = item["path"].rsplit("/", 1)[1][:-4]
            values = meta["values"][image_id].astype(np.float64)
            assert np.abs(item["image"][0].numpy() - (4095 - values) * 255 / 4095).max() <= 0.5 + 1e-9
            want = meta["masks"][image_id].repeat(2, axis=1).repeat(2, axis=2)
            assert item["mask"].shape == (5, SIDE, SIDE) and np.array_equal(item["mask"].numpy(), want)
    assert readers.SCR.mask_names == ("heart", "left clavicle", "left lung", "right clavicle", "right lung")


def test_scr_side_inferred_from_file_size(tmp_path):
    fab.scr(tmp_path, readers.SCR_ORGANS, side=64)
    assert readers.SCR(tmp_path, split="fold2")[0]["image"].shape == (1, 64, 64)


# ----------------------------------------------------------------------------- VinDr-RibCXR


def test_vindr_rib_polygons_and_none(rib):
    root, tables = rib
    ds = readers.VinDrRib(root, split="train")
    assert len(ds) == 3 and ds.mask_names == tuple(f"{side}{i}" for side in "RL" for i in range(1, 11))
    for i in range(3):
        mask = ds[i]["mask"].numpy()
        assert mask.shape == (20, SIDE, SIDE)
        for r, rib_name in enumerate(ds.mask_names):
            if tables["train"][rib_name][str(i)] == "None":
                assert mask[r].sum() == 0
            else:
                assert mask[r, r + 1 : r + 3, 2:21].all() and mask[r].sum() == 2 * 19
    assert len(readers.VinDrRib(root / "data", split="val")) == 2  # root = the published data/ folder


# ----------------------------------------------------------------------------- EyePACS, DRIVE, folder


def test_eyepacs_colour_and_levels(eyepacs):
    root, meta = eyepacs
    for split in ("train", "test"):
        ds = readers.EyePACS(root, split=split)
        for i in range(len(ds)):
            item = ds[i]
            name = item["path"].rsplit("/", 1)[1][: -len(".jpeg")]
            assert item["image"].shape == (3, SIDE, SIDE + 8) and item["image"].dtype == torch.uint8
            pillow = np.asarray(Image.open(item["path"]).convert("RGB")).transpose(2, 0, 1)
            assert np.array_equal(item["image"].numpy(), pillow)
            assert item["labels"].dtype == torch.int64 and int(item["labels"]) == meta["labels"][split][name]


def test_drive_vessels_and_fov(tmp_path):
    meta = fab.drive(tmp_path)
    ds = readers.DRIVE(tmp_path, split="train")
    assert ds.mask_names == ("vessel", "fov") and len(ds) == 2
    item = ds[1]
    assert item["image"].shape == (3, SIDE, SIDE - 4) and item["mask"].dtype == torch.uint8
    assert np.array_equal(item["mask"].numpy(), meta["masks"][("training", "22")])
    for path in (tmp_path / "test" / "1st_manual").iterdir():
        path.unlink()
    (tmp_path / "test" / "1st_manual").rmdir()
    test = readers.DRIVE(tmp_path, split="test")
    assert test.mask_names == ("fov",)
    assert np.array_equal(test[0]["mask"].numpy(), meta["masks"][("test", "01")][1:])


def test_image_folder_tree_and_split(tmp_path):
    keys = fab.folder(tmp_path)
    everything = readers.ImageFolder(tmp_path, split="all")
    assert everything.image_keys() == keys
    train, val = readers.ImageFolder(tmp_path, split="train"), readers.ImageFolder(tmp_path, split="val")
    assert len(val) == 2 and sorted(train.image_keys() + val.image_keys()) == keys
    assert set(train.image_keys()).isdisjoint(val.image_keys())
    for i in range(len(everything)):
        assert everything[i]["image"].shape[0] == 1 and set(everything[i]) == {"image", "path"}
    assert readers.ImageFolder(tmp_path, split="all", channels=3)[0]["image"].shape == (3, SIDE, SIDE)


def test_holdout_rounds_to_whole_samples(tmp_path):
    for i in range(5):
        fab.write_png(tmp_path / f"{i}.png", fab.texture(i))
    assert (
        len(readers.ImageFolder(tmp_path, split="val")) == 1
    )  # 10% of 5 rounds to none: one, so both sides exist
    assert len(readers.ImageFolder(tmp_path, split="val", val_fraction=0.3)) == 2
    assert len(readers.ImageFolder(tmp_path, split="val", val_fraction=0.0)) == 0


def test_readers_pickle_for_dataloader_workers(siim):
    root, _ = siim
    ds = readers.SIIMACR(root, split="train")
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.image_keys() == ds.image_keys() and torch.equal(clone[3]["mask"], ds[3]["mask"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, SIDE, SIDE) and batch["mask"].shape == (4, 1, SIDE, SIDE)


# ----------------------------------------------------------------------------- cache protocol


def test_cache_replaces_decoding_and_rescales_annotations(cxr14):
    root, _ = cxr14
    plain = readers.ChestXray14(root, split="test")
    cache = FakeCache(plain, (16, 8))
    cached = readers.ChestXray14(root, split="test", cache=cache)
    item = cached[0]
    assert item["image"].shape == (1, 16, 8) and cache.asked == [plain.image_keys()[0]]
    scale = np.array([8 / SIDE, 16 / SIDE, 8 / SIDE, 16 / SIDE])  # (w/W, h/H) per corner
    np.testing.assert_allclose(item["boxes"].numpy(), plain[0]["boxes"].numpy() * scale)
    assert torch.equal(item["labels"], plain[0]["labels"])


def test_cache_is_used_instead_of_the_files(tmp_path):
    meta = fab.scr(tmp_path, readers.SCR_ORGANS)
    plain = readers.SCR(tmp_path, split="fold1")
    cache = FakeCache(plain, (16, 16))
    for key in plain.image_keys():
        corrupt(tmp_path / key)  # only the cache can serve the images now
    item = readers.SCR(tmp_path, split="fold1", cache=cache)[0]
    assert item["image"].shape == (1, 16, 16) and item["mask"].shape == (5, 16, 16)
    assert np.array_equal(item["mask"].numpy(), meta["masks"]["JPCLN001"])  # the 16-px GIFs, untouched
    with pytest.raises(DecodeError):
        plain[0]


@pytest.mark.parametrize("name", ["siim", "chestx_det", "rib"])
def test_cache_resizes_masks(name, siim, chestx_det, rib):
    root, _ = {"siim": siim, "chestx_det": chestx_det, "rib": rib}[name]
    cls = {"siim": readers.SIIMACR, "chestx_det": readers.ChestXDet, "rib": readers.VinDrRib}[name]
    plain = cls(root, split="train")
    cached = cls(root, split="train", cache=FakeCache(plain, (16, 16)))
    for i in range(len(plain)):
        full, small = plain[i]["mask"].numpy(), cached[i]["mask"].numpy()
        assert small.shape == (full.shape[0], 16, 16) and small.dtype == np.uint8
        # Drawn or resized at the cached size: each structure stays where it was, none vanishes.
        blocks = full.reshape(full.shape[0], 16, 2, 16, 2).max(axis=(2, 4))
        assert not (small.astype(bool) & ~(maximum_filter(blocks, size=(1, 3, 3)) > 0)).any()
        assert np.array_equal(small.any(axis=(1, 2)), full.any(axis=(1, 2)))


def test_cache_returning_none_falls_back_to_files(cxr14):
    root, _ = cxr14

    class Empty:
        def get(self, key):
            return None

    assert readers.ChestXray14(root, split="test", cache=Empty())[0]["image"].shape == (1, SIDE, SIDE)


def test_image_keys_and_load_image(cxr14):
    root, _ = cxr14
    ds = readers.ChestXray14(root, split="test")
    key = ds.image_keys()[1]
    image = ds.load_image(key)
    assert image.dtype == np.uint8 and image.shape == (1, SIDE, SIDE)
    assert np.array_equal(image, ds[1]["image"].numpy()) and (root / key).is_file()


# ----------------------------------------------------------------------------- bad data: missing files


def _remove(root, keys):
    for key in keys:
        (root / key).unlink()


@pytest.mark.parametrize(
    "build, cls, split",
    [
        (fab.chestxray14, readers.ChestXray14, "train"),
        (lambda r: fab.vindr_cxr(r, readers.VINDR_CXR_CLASSES), readers.VinDrCXR, "train"),
        (lambda r: fab.chestx_det(r, readers.CHESTX_DET_CLASSES), readers.ChestXDet, "train"),
        (lambda r: fab.vindr_rib(r, readers.VINDR_RIBS), readers.VinDrRib, "train"),
        (fab.eyepacs, readers.EyePACS, "train"),
    ],
)
def test_missing_listed_files_fail_with_count_and_paths(tmp_path, build, cls, split):
    build(tmp_path)
    keys = cls(tmp_path, split=split).image_keys()
    _remove(tmp_path, keys[:2])
    with pytest.raises(FileNotFoundError, match=rf"2 of {len(keys)} files .* missing") as info:
        cls(tmp_path, split=split)
    assert all(key.rsplit("/", 1)[1] in str(info.value) for key in keys[:2])


def test_missing_masks_and_dicoms(tmp_path):
    fab.scr(tmp_path / "scr", readers.SCR_ORGANS)
    (tmp_path / "scr/fold1/masks/heart/JPCLN003.gif").unlink()
    (tmp_path / "scr/All247images/JPCLN001.IMG").unlink()
    expected = r"2 of 18 files .*All247images/JPCLN001\.IMG.*heart/JPCLN003\.gif"  # 3 images + 15 masks
    with pytest.raises(FileNotFoundError, match=expected):
        readers.SCR(tmp_path / "scr", split="fold1")
    fab.drive(tmp_path / "drive")
    (tmp_path / "drive/training/mask/21_training_mask.gif").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 4 files .*21_training_mask\.gif"):
        readers.DRIVE(tmp_path / "drive", split="training")
    meta = fab.siim_acr(tmp_path / "siim", n=5)
    gone = sorted(meta["masks"])[:3]
    for image_id in gone:
        next((tmp_path / "siim").rglob(f"{image_id}.dcm")).unlink()
    with pytest.raises(FileNotFoundError, match=rf"3 of 5 images .*{gone[0]}"):
        readers.SIIMACR(tmp_path / "siim")


def test_missing_annotation_file_and_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="root must be"):
        readers.EyePACS(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="trainLabels.csv"):
        readers.EyePACS(tmp_path)
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\)"):
        readers.EyePACS(tmp_path, split="validation")


# ----------------------------------------------------------------------------- bad data: corrupt files


@pytest.mark.parametrize(
    "build, cls, how",
    [
        (fab.chestxray14, readers.ChestXray14, "garbage"),
        (fab.chestxray14, readers.ChestXray14, "truncate"),
        (lambda r: fab.vindr_cxr(r, readers.VINDR_CXR_CLASSES), readers.VinDrCXR, "garbage"),
        (fab.eyepacs, readers.EyePACS, "truncate"),
        (lambda r: fab.scr(r, readers.SCR_ORGANS), readers.SCR, "truncate"),
        (fab.drive, readers.DRIVE, "garbage"),
    ],
)
def test_undecodable_image_raises_naming_the_path(tmp_path, build, cls, how):
    build(tmp_path)
    ds = cls(tmp_path, split="train")
    corrupt(tmp_path / ds.image_keys()[1], how)
    with pytest.raises(DecodeError, match=ds.image_keys()[1].rsplit("/", 1)[1].replace(".", r"\.")):
        ds[1]
    assert isinstance(ds[0]["image"], torch.Tensor)


def test_undecodable_mask_raises_naming_the_path(tmp_path):
    fab.scr(tmp_path, readers.SCR_ORGANS)
    corrupt(tmp_path / "fold1/masks/left lung/JPCLN001.gif")
    with pytest.raises(DecodeError, match=r"left lung/JPCLN001\.gif"):
        readers.SCR(tmp_path, split="fold1")[0]


def test_constant_image_is_refused(tmp_path):
    fab.write_png(tmp_path / "flat.png", np.zeros((SIDE, SIDE), np.uint8))
    with pytest.raises(DecodeError, match=r"flat\.png decodes to a constant image"):
        readers.ImageFolder(tmp_path, split="all")[0]
    fab.write_dicom(tmp_path / "flat.dcm", np.full((SIDE, SIDE), 700, np.uint16))
    with pytest.raises(DecodeError, match=r"flat\.dcm decodes to a constant image"):
        read_image(tmp_path / "flat.dcm", 1)


def test_skip_corrupt_logs_counts_and_replaces_deterministically(tmp_path, caplog):
    fab.chestxray14(tmp_path)
    ds = readers.ChestXray14(tmp_path, split="train", skip_corrupt=True)
    keys = ds.image_keys()
    corrupt(tmp_path / keys[2])
    corrupt(tmp_path / keys[3], "truncate")
    with caplog.at_level(logging.WARNING, logger="adam_ext.data.readers"):
        item = ds[2]
    assert item["path"].endswith(keys[4]) and ds.n_corrupt == 2
    assert sum("skipping corrupt sample" in r.message for r in caplog.records) == 2
    assert keys[2] in caplog.text
    assert ds[3]["path"].endswith(keys[4]) and ds.n_corrupt == 2  # known bad samples are not re-read
    assert ds[-1]["path"].endswith(keys[-1])
    for key in keys:
        corrupt(tmp_path / key)
    with pytest.raises(DecodeError, match="none of the"):
        ds[0]


# ----------------------------------------------------------------------------- bad data: label files


def _rewrite(path, old, new, count=1):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def _line_of(path, needle):
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def test_unknown_class_and_malformed_rows_name_file_and_line(tmp_path):
    fab.chestxray14(tmp_path)
    entries = tmp_path / "Data_Entry_2017.csv"
    _rewrite(entries, "Hernia", "Hernai")
    line = _line_of(entries, "Hernai")
    with pytest.raises(ValueError, match=rf"Data_Entry_2017\.csv:{line}: unknown finding 'Hernai'"):
        readers.ChestXray14(tmp_path)
    _rewrite(entries, "Hernai", "Hernia")
    text = entries.read_text().splitlines()
    text[4] = text[4].split(",")[0]
    entries.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"Data_Entry_2017\.csv:5: malformed row"):
        readers.ChestXray14(tmp_path)


def test_chestxray14_bad_box_and_list_rows(tmp_path):
    fab.chestxray14(tmp_path)
    boxes = tmp_path / "BBox_List_2017.csv"
    _rewrite(boxes, "Infiltrate", "Pneumonitis")
    with pytest.raises(ValueError, match=r"BBox_List_2017\.csv:3: unknown finding 'Pneumonitis'"):
        readers.ChestXray14(tmp_path, split="test")
    _rewrite(boxes, "Pneumonitis,1.5", "Infiltrate,one")
    with pytest.raises(ValueError, match=r"BBox_List_2017\.csv:3: malformed row"):
        readers.ChestXray14(tmp_path, split="test")
    _rewrite(boxes, "Infiltrate,one", "Infiltrate,1.5")
    (tmp_path / "test_list.txt").write_text("00000009_000.png\n00000099_000.png\n")
    with pytest.raises(ValueError, match=r"test_list\.txt:2: image '00000099_000\.png' has no row"):
        readers.ChestXray14(tmp_path, split="test")


def test_vindr_unknown_class_column_and_bad_values(tmp_path):
    fab.vindr_cxr(tmp_path, readers.VINDR_CXR_CLASSES)
    labels = tmp_path / "annotations/image_labels_train.csv"
    _rewrite(labels, "Lung cyst", "Lung cist")
    with pytest.raises(ValueError, match=r"image_labels_train\.csv:1: unknown class column 'Lung cist'"):
        readers.VinDrCXR(tmp_path)
    _rewrite(labels, "Lung cist", "Lung cyst")
    lines = labels.read_text().splitlines()
    lines[3] = lines[3][:-1] + "2"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"image_labels_train\.csv:4: malformed row: 'No finding' must be 0"):
        readers.VinDrCXR(tmp_path)
    lines[3] = lines[3][:-1] + "0"
    labels.write_text("\n".join(lines) + "\n")
    boxes = tmp_path / "annotations/annotations_train.csv"
    _rewrite(boxes, "Pleural effusion", "Pleural efusion")
    with pytest.raises(ValueError, match=r"annotations_train\.csv:3: unknown class 'Pleural efusion'"):
        readers.VinDrCXR(tmp_path)


def test_siim_malformed_rle_names_line(tmp_path):
    fab.siim_acr(tmp_path, n=4)
    path = tmp_path / "train-rle.csv"
    lines = path.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if not line.endswith("-1") and i > 0)
    lines[row] = lines[row] + " 7"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"train-rle\.csv:{row + 1}: malformed run-length encoding"):
        readers.SIIMACR(tmp_path)


def test_eyepacs_unknown_level_and_short_row(tmp_path):
    fab.eyepacs(tmp_path)
    path = tmp_path / "trainLabels.csv"
    _rewrite(path, "10_right,2", "10_right,5")
    with pytest.raises(ValueError, match=r"trainLabels\.csv:3: unknown level '5'"):
        readers.EyePACS(tmp_path)
    _rewrite(path, "10_right,5", "10_right")
    with pytest.raises(ValueError, match=r"trainLabels\.csv:3: malformed row"):
        readers.EyePACS(tmp_path)


def test_chestx_det_unknown_class_and_malformed_entry(tmp_path):
    fab.chestx_det(tmp_path, readers.CHESTX_DET_CLASSES)
    path = tmp_path / "ChestX_Det_train.json"
    _rewrite(path, '"Diffuse Nodule"', '"Diffuse Nodules"')
    with pytest.raises(ValueError, match=r"ChestX_Det_train\.json: entry 1 \(101\.png\): unknown class 'D"):
        readers.ChestXDet(tmp_path)
    _rewrite(path, '"Diffuse Nodules", ', "")
    with pytest.raises(ValueError, match=r"entry 1 \(101\.png\): malformed entry: 2 syms, 3 boxes"):
        readers.ChestXDet(tmp_path)


# ----------------------------------------------------------------------------- registry, transform, collate


BUILDERS = {
    "chestxray14": (fab.chestxray14, "train"),
    "shenzhen": (fab.shenzhen, "train"),
    "vindr_cxr": (lambda r: fab.vindr_cxr(r, readers.VINDR_CXR_CLASSES), "train"),
    "siim_acr": (fab.siim_acr, "train"),
    "chestx_det": (lambda r: fab.chestx_det(r, readers.CHESTX_DET_CLASSES), "train"),
    "scr": (lambda r: fab.scr(r, readers.SCR_ORGANS), "fold1"),
    "vindr_rib": (lambda r: fab.vindr_rib(r, readers.VINDR_RIBS), "train"),
    "eyepacs": (fab.eyepacs, "train"),
    "drive": (fab.drive, "training"),
    "folder": (fab.folder, "train"),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_open_dataset_by_name(tmp_path, name):
    build, split = BUILDERS[name]
    build(tmp_path)
    ds = open_dataset(name, tmp_path, split=split, transform=lambda item: {**item, "seen": True})
    assert isinstance(ds, dataset_class(name)) and len(ds) > 0
    item = ds[0]
    assert item["seen"] and item["image"].dtype == torch.uint8 and item["image"].ndim == 3
    assert isinstance(item["path"], str)


def test_every_registered_reader_is_covered():
    assert set(DATASETS) - set(BUILDERS) == {"synthetic"}  # the generator's own tests cover it


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"dataset name must be one of .*got 'chestxray15'"):
        open_dataset("chestxray15", ".")


def test_collate_items_keeps_ragged_boxes_as_lists(cxr14):
    root, _ = cxr14
    ds = readers.ChestXray14(root, split="test")
    batch = readers.collate_items([ds[0], ds[1]])
    assert batch["image"].shape == (2, 1, SIDE, SIDE) and batch["labels"].shape == (2, 14)
    assert isinstance(batch["boxes"], list) and batch["boxes"][0].shape == (2, 4)
    assert isinstance(batch["path"], list)


def test_a_new_reader_is_one_file_and_one_registry_line(tmp_path, monkeypatch):
    """A data set registered from outside the package: open_dataset, the fine-tuning splits and the
    configuration all know it; its facts (modality, splits, input size) live in its entry only."""
    from adam_ext.data import registry
    from adam_ext.downstream import FinetuneConfig

    monkeypatch.setitem(
        registry.DATASETS, "my_fundus", None
    )  # so that monkeypatch removes the entry at the end
    del registry.DATASETS["my_fundus"]
    for i in range(4):
        fab.write_png(tmp_path / f"{i}.png", fab.texture(i))
    registry.register_dataset(
        "my_fundus",
        registry.Dataset(
            "adam_ext.data.readers.folder:ImageFolder", "fundus", "train", "val", finetune_size=384
        ),
    )
    assert len(open_dataset("my_fundus", tmp_path, split="all")) == 4
    assert registry.SPLITS["my_fundus"] == ("train", "val", None) and "folder" not in registry.SPLITS
    cfg = FinetuneConfig(task="cls", dataset="my_fundus", root=str(tmp_path), out="unused").resolved()
    assert (cfg.size, cfg.train_split, cfg.test_split) == (384, "train", "val")
    with pytest.raises(ValueError, match="name must be a new data set name"):
        registry.register_dataset("scr", registry.Dataset("x:Y"))
    with pytest.raises(ValueError, match="reader must be 'module:Class'"):
        registry.Dataset("nocolon")
