"""Small fabricated data sets, each written in the exact on-disk layout its provider publishes.

Images are tiny (32 px) random textures so that the tests stay fast; every writer returns what
the tests need to check the readers against (names, labels, boxes, masks). Files are written
with Pillow and pydicom, independently of the readers' decoders.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 32
CXR14_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
CXR14_FINDINGS = (
    "No Finding",
    "Cardiomegaly|Effusion",
    "Hernia",
    "Infiltration|Mass|Nodule",
    "Pleural_Thickening",
)


def texture(seed: int, shape=(SIDE, SIDE)) -> np.ndarray:
    """A non-constant uint8 image (random values in 10..245)."""
    return np.random.default_rng(seed).integers(10, 246, size=shape, dtype=np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_gif(path: Path, mask01: np.ndarray) -> Path:
    """A 0/255 GIF mask, as SCR and DRIVE ship them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask01 > 0).astype(np.uint8) * 255).save(path)
    return path


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        if isinstance(header, str):
            handle.write(header + "\n")
        else:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    photometric="MONOCHROME2",
    slope=None,
    intercept=None,
    center=None,
    width=None,
    bits_stored=12,
) -> Path:
    """A minimal DX DICOM file (explicit VR little endian) holding ``stored`` (uint16)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def stored_values(seed: int, shape=(SIDE, SIDE)) -> np.ndarray:
    """uint16 values over the whole 12-bit range."""
    return np.random.default_rng(seed).integers(0, 4096, size=shape, dtype=np.uint16)


def encode_relative_rle(mask: np.ndarray) -> str:
    """SIIM-ACR's relative RLE, written as the challenge's own encoder does (pixel by pixel).

    Pixels are visited down each column (x outer, y inner); each run is written as (offset from
    the end of the previous run, length).
    """
    height, width = mask.shape
    numbers, previous_end, run_start, position, inside = [], 0, 0, 0, False
    for x in range(width):
        for y in range(height):
            if mask[y, x] and not inside:
                run_start, inside = position, True
            elif not mask[y, x] and inside:
                numbers += [run_start - previous_end, position - run_start]
                previous_end, inside = position, False
            position += 1
    if inside:
        numbers += [run_start - previous_end, position - run_start]
    return " ".join(map(str, numbers)) if numbers else "-1"


def encode_absolute_rle(mask: np.ndarray) -> str:
    """The standard Kaggle RLE: 1-based absolute starts, column-major."""
    flat = np.concatenate([[0], mask.T.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat)) + 1
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends))


# ----------------------------------------------------------------------------- per data set


def chestxray14(root: Path, *, n_patients=10, per_patient=2, archives=True) -> dict:
    """ChestX-ray14: Data_Entry_2017.csv, split lists, BBox_List_2017.csv, PNG folders.

    Patients 1..n-2 are in train_val_list.txt, the last two in test_list.txt. With
    ``archives`` the images are spread over images_001/images and images_002/images as the
    NIH archives unpack; otherwise they are all in images/.
    """
    names, rows, seed = [], [], 0
    for patient in range(1, n_patients + 1):
        for k in range(per_patient):
            name = f"{patient:08d}_{k:03d}.png"
            findings = CXR14_FINDINGS[seed % len(CXR14_FINDINGS)]
            folder = f"images_00{1 + patient % 2}/images" if archives else "images"
            write_png(root / folder / name, texture(seed))
            rows.append([name, findings, k, patient, 40 + patient, "M", "PA", SIDE, SIDE, 0.143, 0.143])
            names.append((name, patient, findings))
            seed += 1
    write_csv(root / "Data_Entry_2017.csv", CXR14_HEADER, rows)
    train_val = [n for n, p, _ in names if p <= n_patients - 2]
    test = [n for n, p, _ in names if p > n_patients - 2]
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    # The real header (three empty trailing columns) and "Infiltrate" for Infiltration.
    boxes = {test[0]: [("Cardiomegaly", 4.0, 6.0, 10.0, 8.0), ("Infiltrate", 1.5, 2.5, 3.0, 4.0)]}
    box_rows = [[name, label, *box, "", "", ""] for name, items in boxes.items() for label, *box in items]
    write_csv(root / "BBox_List_2017.csv", "Image Index,Finding Label,Bbox [x,y,w,h],,,", box_rows)
    return {"names": names, "train_val": train_val, "test": test, "boxes": boxes}


def shenzhen(root: Path, n=10) -> dict:
    folder = root / "ChinaSet_AllFiles" / "CXR_png"
    labels = {}
    for i in range(1, n + 1):
        name = f"CHNCXR_{i:04d}_{i % 2}.png"
        rgb = np.repeat(texture(i)[..., None], 3, axis=2)  # the published PNGs are partly RGB
        write_png(folder / name, rgb if i % 3 == 0 else texture(i))
        labels[name] = i % 2
    write_png(folder / "CHNCXR_0001_0_mask.png", texture(99))  # a mask add-on: ignored
    return {"labels": labels}


VINDR_HEADER_TRAIN = ["image_id", "rad_id"]  # then the 28 classes in the published order


def vindr_cxr(root: Path, classes) -> dict:
    """PhysioNet VinDr-CXR: train/ and test/ DICOMs, annotations/*.csv (train: 3 readers)."""
    ids = {"train": [f"tr{i:03d}" for i in range(4)], "test": [f"te{i:03d}" for i in range(2)]}
    for split, image_ids in ids.items():
        for i, image_id in enumerate(image_ids):
            photometric = "MONOCHROME1" if i % 2 else "MONOCHROME2"
            write_dicom(root / split / f"{image_id}.dicom", stored_values(i), photometric=photometric)
    k_cardio, k_effusion = classes.index("Cardiomegaly"), classes.index("Pleural effusion")
    k_none = classes.index("No finding")
    label_rows = []
    for i, image_id in enumerate(ids["train"]):
        for reader in ("R1", "R2", "R3"):
            values = [0] * len(classes)
            if i == 0 and reader == "R2":
                values[k_cardio] = 1
            elif i == 1:
                values[k_effusion] = 1
            else:
                values[k_none] = 1
            label_rows.append([image_id, reader, *values])
    write_csv(root / "annotations/image_labels_train.csv", [*VINDR_HEADER_TRAIN, *classes], label_rows)
    test_header = ["image_id", *[("Other disease" if c == "Other diseases" else c) for c in classes]]
    test_rows = [[image_id, *[int(c == "No finding") for c in classes]] for image_id in ids["test"]]
    write_csv(root / "annotations/image_labels_test.csv", test_header, test_rows)
    box_rows = [
        [ids["train"][0], "R2", "Cardiomegaly", 8.0, 16.0, 24.0, 28.0],
        [ids["train"][1], "R1", "Pleural effusion", 2.0, 20.0, 10.0, 30.0],
        [ids["train"][1], "R3", "Pleural effusion", 3.0, 21.0, 11.0, 31.0],
        [ids["train"][2], "R1", "No finding", "", "", "", ""],
    ]
    header = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    write_csv(root / "annotations/annotations_train.csv", header, box_rows)
    return {"ids": ids, "boxes": box_rows}


def siim_masks(seed: int, n_parts: int, shape=(SIDE, SIDE)):
    """``n_parts`` rectangles (one per CSV row) on an image."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n_parts):
        mask = np.zeros(shape, dtype=np.uint8)
        y0, x0 = rng.integers(0, shape[0] - 8, size=2)
        mask[y0 : y0 + rng.integers(2, 8), x0 : x0 + rng.integers(2, 8)] = 1
        parts.append(mask)
    return parts


def siim_acr(root: Path, n=10, encoder=encode_relative_rle, csv_name="train-rle.csv") -> dict:
    """Kaggle SIIM-ACR: dicom-images-train/<study>/<series>/<ImageId>.dcm and train-rle.csv."""
    rows, masks = [], {}
    for i in range(n):
        image_id = f"1.2.276.0.7230010.3.1.4.8323329.{1000 + i}.1517875166.{i}"
        study, series = f"1.2.{i}", f"1.3.{i}"
        write_dicom(root / "dicom-images-train" / study / series / f"{image_id}.dcm", stored_values(100 + i))
        parts = siim_masks(i, i % 3)  # 0, 1 or 2 rows per image
        masks[image_id] = np.zeros((SIDE, SIDE), np.uint8) if not parts else np.bitwise_or.reduce(parts)
        rows += [[image_id, " " + encoder(p)] for p in parts] or [[image_id, " -1"]]
    write_csv(root / csv_name, ["ImageId", " EncodedPixels"], rows)
    return {"masks": masks, "rows": rows}


def chestx_det(root: Path, classes) -> dict:
    """ChestX-Det: ChestX_Det_{train,test}.json and train/ test/ PNG folders."""
    entries = {
        "train": [
            {"file_name": "100.png", "syms": [], "boxes": [], "polygons": []},
            {
                "file_name": "101.png",
                "syms": ["Effusion", "Diffuse Nodule", "Effusion"],
                "boxes": [[2, 4, 12, 14], [20, 20, 28, 30], [0, 0, 3, 3]],
                "polygons": [
                    [[2, 4], [12, 4], [12, 14], [2, 14]],
                    [[20, 20], [28, 20], [28, 30], [20, 30]],
                    [[0, 0], [3, 0], [3, 3], [0, 3]],
                ],
            },
        ],
        "test": [
            {
                "file_name": "200.png",
                "syms": ["Pleural Thickening"],
                "boxes": [[4, 4, 8, 8]],
                "polygons": [[[4, 4], [8, 4], [8, 8], [4, 8]]],
            }
        ],
    }
    for split, items in entries.items():
        for k, entry in enumerate(items):
            write_png(root / split / entry["file_name"], texture(300 + k))
        (root / f"ChestX_Det_{split}.json").write_text(json.dumps(items))
    return {"entries": entries}


def write_jsrt(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    values.astype(">u2").tofile(path)
    return path


def scr(root: Path, organs, side=SIDE) -> dict:
    """JSRT All247images/*.IMG (big-endian 12-bit raw) with SCR fold1/fold2 organ GIFs at side/2."""
    folds = {"fold1": ["JPCLN001", "JPCLN003", "JPCNN001"], "fold2": ["JPCLN002", "JPCNN002"]}
    values, masks = {}, {}
    for fold, ids in folds.items():
        for n, image_id in enumerate(ids):
            rng = np.random.default_rng(n + len(fold))
            values[image_id] = rng.integers(0, 4096, (side, side), dtype=np.uint16)
            write_jsrt(root / "All247images" / f"{image_id}.IMG", values[image_id])
            half = np.zeros((len(organs), side // 2, side // 2), dtype=np.uint8)
            for m, organ in enumerate(organs):
                half[m, m : m + 4, 2 * m : 2 * m + 5] = 1
                write_gif(root / fold / "masks" / organ / f"{image_id}.gif", half[m])
            masks[image_id] = half
    return {"folds": folds, "values": values, "masks": masks}


def vindr_rib(root: Path, ribs) -> dict:
    """VinDr-RibCXR: data/<split>/img/*.png, data/<split>/Vindr_RibCXR_<split>_mask.json (pandas columns).

    Rib r of image i is the 2-row band y = r+1..r+2, x = 2..20, or "None" when (r + i) % 5 == 4.
    """
    out = {}
    for split, n in (("train", 3), ("val", 2)):
        table = {"img": {}, **{rib: {} for rib in ribs}}
        for i in range(n):
            name = f"VinDr_RibCXR_{split}_{i:03d}.png"
            write_png(root / "data" / split / "img" / name, texture(400 + i))
            table["img"][str(i)] = f"data/{split}/img/{name}"
            for r, rib in enumerate(ribs):
                if (r + i) % 5 == 4:
                    table[rib][str(i)] = "None"
                else:
                    y0 = r + 1.0
                    corners = ((2.0, y0), (20.0, y0), (20.0, y0 + 1), (2.0, y0 + 1))
                    table[rib][str(i)] = [{"x": x, "y": y} for x, y in corners]
        (root / "data" / split / f"Vindr_RibCXR_{split}_mask.json").write_text(json.dumps(table))
        out[split] = table
    return out


def eyepacs(root: Path) -> dict:
    """Kaggle EyePACS: train/*.jpeg, trainLabels.csv; test/*.jpeg, retinopathy_solution.csv."""
    labels = {"train": {"10_left": 0, "10_right": 2, "13_left": 4}, "test": {"1_left": 1, "1_right": 3}}
    rng = np.random.default_rng(5)
    for split, items in labels.items():
        for name in items:
            path = root / split / f"{name}.jpeg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (SIDE, SIDE + 8, 3), dtype=np.uint8)).save(path, quality=95)
    write_csv(root / "trainLabels.csv", ["image", "level"], list(labels["train"].items()))
    test_rows = [[k, v, "Public"] for k, v in labels["test"].items()]
    write_csv(root / "retinopathy_solution.csv", ["image", "level", "Usage"], test_rows)
    return {"labels": labels}


def drive(root: Path) -> dict:
    """DRIVE: {training,test}/images/*.tif, 1st_manual/*_manual1.gif, mask/*_{split}_mask.gif."""
    ids = {"training": ["21", "22"], "test": ["01", "02"]}
    masks = {}
    rng = np.random.default_rng(7)
    for split, numbers in ids.items():
        for number in numbers:
            image = root / split / "images" / f"{number}_{split}.tif"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (SIDE, SIDE - 4, 3), dtype=np.uint8)).save(image)
            vessel = (rng.random((SIDE, SIDE - 4)) > 0.7).astype(np.uint8)
            fov = np.zeros((SIDE, SIDE - 4), np.uint8)
            fov[4:-4, 4:-4] = 1
            write_gif(root / split / "1st_manual" / f"{number}_manual1.gif", vessel)
            write_gif(root / split / "mask" / f"{number}_{split}_mask.gif", fov)
            masks[(split, number)] = np.stack([vessel, fov])
    return {"ids": ids, "masks": masks}


def folder(root: Path) -> list[str]:
    """A tree of PNG, JPEG, TIFF and DICOM files plus a non-image file."""
    keys = []
    for i in range(12):
        key = f"site{i % 3}/patient{i}/view.png"
        write_png(root / key, texture(500 + i))
        keys.append(key)
    Image.fromarray(texture(600)).save(root / "a.jpg")
    Image.fromarray(texture(601)).save(root / "b.TIFF")
    write_dicom(root / "c" / "d.dcm", stored_values(602))
    (root / "notes.txt").write_text("not an image")
    return sorted(keys + ["a.jpg", "b.TIFF", "c/d.dcm"])
