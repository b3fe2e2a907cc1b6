"""``adam eve gradcam``: pointing game and IoU on hand-made heatmaps, then tiny classifiers end to end."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from adam_ext.cli import main
from adam_ext.data import open_dataset
from adam_ext.data.synthetic import generate
from adam_ext.downstream import FinetuneConfig, finetune
from adam_ext.eve.gradcam import (
    box_iou,
    box_mask,
    classifier_input,
    gradcam_analysis,
    gradcam_heatmaps,
    heatmap_peak,
    load_classifier,
    parse_models,
    pointing_game,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _square(shape=(10, 10), rows=(2, 6), cols=(2, 6), inside=1.0, outside=0.2) -> np.ndarray:
    heat = np.full(shape, outside)
    heat[rows[0] : rows[1], cols[0] : cols[1]] = inside
    return heat


# ------------------------------------------------------------------------------------ metrics


def test_pointing_game_hits_when_the_peak_is_in_a_box():
    heat = np.zeros((10, 10))
    heat[3, 4] = 1.0  # row 3, column 4: the pixel [4, 5) x [3, 4)
    assert pointing_game(heat, [[2, 2, 6, 5]])
    assert not pointing_game(heat, [[5, 0, 9, 3]])
    assert not pointing_game(heat, [[0, 0, 4, 3]])  # x1 and y1 exclusive
    assert pointing_game(torch.from_numpy(heat).float(), torch.tensor([[4.0, 3.0, 5.0, 4.0]]))


def test_peak_of_a_plateau_is_its_centre_and_a_flat_map_points_nowhere():
    heat = _square(rows=(0, 4), cols=(0, 4), outside=0.0)
    assert heatmap_peak(heat) == (1, 1)  # not the plateau's corner (0, 0)
    assert pointing_game(heat, [[1, 1, 2, 2]]) and not pointing_game(heat, [[0, 0, 1, 1]])
    assert heatmap_peak(np.zeros((5, 5))) is None
    assert not pointing_game(np.zeros((5, 5)), [[0, 0, 5, 5]])
    assert not pointing_game(np.full((5, 5), 0.3), [[0, 0, 5, 5]])


def test_iou_of_a_thresholded_square_against_a_box():
    heat = _square()  # 1 on rows and columns 2..5 (16 px), 0.2 elsewhere
    box = [[4, 4, 8, 8]]  # rows and columns 4..7 (16 px), 4 px shared
    assert box_iou(heat, box) == pytest.approx(4 / 28)
    assert box_iou(heat, box, threshold=0.1) == pytest.approx(16 / 100)  # every pixel >= 0.1 x max
    assert box_iou(heat, [[2, 2, 6, 6]]) == pytest.approx(1.0)
    assert box_iou(heat, [[7, 7, 10, 10]]) == 0.0


def test_threshold_edges():
    heat = _square()
    heat[4, 4] = 2.0  # one maximal pixel, inside the box
    box = [[4, 4, 8, 8]]
    assert box_iou(heat, box, threshold=1.0) == pytest.approx(1 / 16)  # the maximum only
    assert box_iou(heat, box, threshold=0.0) == pytest.approx(16 / 100)  # the whole image
    assert box_iou(heat, box, threshold=0.5) == pytest.approx(4 / 28)  # 1.0 = 0.5 x 2 is kept
    assert box_iou(heat, box, threshold=0.51) == pytest.approx(1 / 16)
    assert box_iou(np.zeros((10, 10)), box, threshold=0.0) == 0.0  # an all-zero map marks nothing


def test_several_boxes_count_as_their_union():
    boxes = [[0, 0, 2, 2], [1, 1, 3, 3]]  # 4 + 4 px sharing 1
    assert box_mask(boxes, (5, 5)).sum() == 7
    heat = _square((5, 5), rows=(0, 2), cols=(0, 2), outside=0.0)
    assert box_iou(heat, boxes) == pytest.approx(4 / 7)
    only_b = np.zeros((5, 5))
    only_b[2, 2] = 1.0
    assert pointing_game(only_b, boxes) and not pointing_game(only_b, boxes[:1])


def test_fractional_clipped_and_tiny_boxes_rasterise_by_pixel_centre():
    assert box_mask([[1.5, 0, 3.5, 1]], (4, 4))[0].tolist() == [False, True, True, False]
    tiny = box_mask([[2.2, 2.2, 2.6, 2.6]], (5, 5))  # no pixel centre inside: the centre's pixel
    assert tiny.sum() == 1 and tiny[2, 2]
    assert box_mask([[-5, -5, 2, 2]], (4, 4)).sum() == 4


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: pointing_game(np.zeros(5), [[0, 0, 1, 1]]), "heatmap"),
        (lambda: box_iou(-np.ones((4, 4)), [[0, 0, 1, 1]]), "heatmap"),
        (lambda: box_iou(np.full((4, 4), np.nan), [[0, 0, 1, 1]]), "heatmap"),
        (lambda: pointing_game(np.ones((4, 4)), np.zeros((0, 4))), "boxes"),
        (lambda: pointing_game(np.ones((4, 4)), [[0, 0, 1]]), "boxes"),
        (lambda: box_iou(np.ones((4, 4)), [[2, 0, 1, 1]]), "boxes"),
        (lambda: box_iou(np.ones((4, 4)), [[10, 10, 12, 12]]), "boxes"),
        (lambda: box_iou(np.ones((4, 4)), [[0, 0, 1, 1]], threshold=1.5), "threshold"),
        (lambda: box_iou(np.ones((4, 4)), [[0, 0, 1, 1]], threshold=-0.1), "threshold"),
        (lambda: box_iou(np.ones((4, 4)), [[0, 0, 1, 1]], threshold=True), "threshold"),
    ],
)
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises(ValueError, match=f"^{name} must"):
        call()


def test_model_arguments():
    assert parse_models(["adam=runs/a/seed0/best.pt", "runs/rand/seed1/best.pt"]) == [
        ("adam", "runs/a/seed0/best.pt"),
        ("rand", "runs/rand/seed1/best.pt"),
    ]
    with pytest.raises(ValueError, match="model names must be unique"):
        parse_models(["a=x.pt", "a=y.pt"])
    with pytest.raises(ValueError, match="model must be NAME=SPEC"):
        parse_models(["a="])


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """24 synthetic 64-px radiographs and two resnet18 classifiers fine-tuned 1 epoch: at 64 px and at 96 px."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, 24, size=64, workers=1, progress=False)
    out = tmp_path_factory.mktemp("cls")
    paths = {}
    for name, size in (("small", 64), ("large", 96)):
        cfg = FinetuneConfig(
            task="cls",
            dataset="synthetic",
            root=str(root),
            arch="resnet18",
            size=size,
            epochs=1,
            batch_size=8,
            workers=0,
            lr=1e-3,
            out=str(out / name),
            device="cpu",
        )
        finetune(cfg, progress=False)
        paths[name] = out / name / "seed0" / "best.pt"
    return root, paths


def _expected_pairs(root, split="all") -> Counter:
    reader = open_dataset("synthetic", root, split)
    pairs = {
        (i, reader.classes[label]) for i, labels in enumerate(reader.box_labels) for label in labels.tolist()
    }
    return Counter(finding for _, finding in pairs)


def test_cli_compares_two_classifiers(runs, tmp_path):
    root, paths = runs
    out = tmp_path / "gradcam"
    code = main(
        [
            "eve",
            "gradcam",
            "--model",
            f"small={paths['small']}",
            "--model",
            f"large={paths['large']}",
            "--split",
            "all",
            "--overlays",
            "3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    for name in ("gradcam.md", "gradcam.png", "gradcam.json", "overlays.png"):
        assert (out / name).stat().st_size > 0
    body = json.loads((out / "gradcam.json").read_text())
    expected = _expected_pairs(root)
    assert body["findings"] == [c for c in body["findings"] if c in expected] and set(
        body["findings"]
    ) == set(expected)
    for model in ("small", "large"):
        rows = body["results"][model]
        assert {f: rows[f]["n"] for f in expected} == dict(expected)
        assert rows["all"]["n"] == sum(expected.values()) == len(body["pairs"])
        for row in rows.values():
            assert 0 <= row["pointing"] <= 1 and 0 <= row["iou"] <= 1
    assert body["models"]["large"]["size"] == 96 and body["split"] == "all"
    table = (out / "gradcam.md").read_text()
    assert "| all |" in table and "pointing (small)" in table and "IoU (large)" in table


def test_pair_scores_are_those_of_the_heatmap_in_the_models_frame(runs, tmp_path):
    root, paths = runs
    result = gradcam_analysis(
        [("large", paths["large"])],
        out=tmp_path,
        split="all",
        findings="Cardiomegaly,Mass",
        threshold=0.3,
        limit=3,
        overlays=0,
        device="cpu",
        progress=False,
    )
    assert result["findings"] == ["Cardiomegaly", "Mass"] and result["n_images"] <= 3
    assert result["overlays_png"] is None and not (tmp_path / "overlays.png").exists()
    clf = load_classifier(paths["large"])
    reader = open_dataset("synthetic", root, "all")
    pair = result["pairs"][0]
    index = reader.image_keys().index(pair["image"])
    item = reader[index]
    heat = gradcam_heatmaps(
        clf.model, classifier_input(item["image"], 96)[None], [clf.classes.index(pair["finding"])]
    )[0]
    assert heat.shape == (96, 96) and 0 <= heat.min() and heat.max() <= 1
    boxes = item["boxes"][item["box_labels"] == reader.classes.index(pair["finding"])] * 1.5  # 64 px -> 96 px
    assert pair["hit"]["large"] == pointing_game(heat, boxes)
    assert pair["iou"]["large"] == pytest.approx(box_iou(heat, boxes, 0.3))


def test_bad_arguments_are_named(runs, tmp_path, capsys):
    _, paths = runs
    model = [("small", paths["small"])]
    with pytest.raises(FileNotFoundError, match="model nope: .*does not exist"):
        gradcam_analysis([("nope", tmp_path / "missing.pt")], out=tmp_path, progress=False)
    torch.save({"kind": "adam_ext.finetune", "task": "seg"}, tmp_path / "seg.pt")
    torch.save({"kind": "adam_ext.pretrain", "model": {}}, tmp_path / "pretrain.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for name, what in (
        ("seg", "a 'seg' fine-tuning run"),
        ("pretrain", "kind 'adam_ext.pretrain'"),
        ("text", "an unreadable file"),
    ):
        with pytest.raises(ValueError, match=f"model {name}: .*must be a .*, got {what}"):
            gradcam_analysis([(name, tmp_path / f"{name}.pt")], out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="findings must name classes of the models .*unknown: Foo"):
        gradcam_analysis(model, out=tmp_path, findings="Nodule,Foo", progress=False)
    with pytest.raises(
        ValueError, match="data: no image of synthetic split 'all' .* has boxes of the findings"
    ):
        gradcam_analysis(model, out=tmp_path, split="all", findings=["Hernia"], progress=False)
    with pytest.raises(FileNotFoundError, match="data .*does not exist"):
        gradcam_analysis(model, tmp_path / "nowhere", out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="threshold must be"):
        gradcam_analysis(model, out=tmp_path, threshold=2.0, progress=False)
    assert main(["eve", "gradcam", "--model", f"x={tmp_path / 'seg.pt'}", "--out", str(tmp_path)]) == 2
    assert "model x: " in capsys.readouterr().err
