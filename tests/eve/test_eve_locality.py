"""``adam eve locality``: metrics on constructed embeddings with known answers, patch extraction,
bad inputs, and the command end to end on tiny synthetic radiographs."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from adam_ext.eve.locality import (
    LocalityConfig,
    extract_patch,
    knn_accuracy_across_levels,
    landmark_patches,
    level_sides,
    parse_fractions,
    same_vs_different,
    silhouette,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _design(n_landmarks: int, n_levels: int, n_images: int):
    """Labels of every (image, landmark, level) patch, in that order: landmark, level, image."""
    grid = np.array([(m, j, v) for m in range(n_images) for j in range(n_landmarks) for v in range(n_levels)])
    return grid[:, 1], grid[:, 2], grid[:, 0]


def _reference_knn(emb, landmark, level, k, groups=None):
    """k-NN vote across levels with explicit loops: majority, ties to the larger similarity sum."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    right = 0
    for i in range(len(x)):
        cands = [
            j for j in range(len(x)) if level[j] != level[i] and (groups is None or groups[j] != groups[i])
        ]
        sims = sorted(((float(x[i] @ x[j]), j) for j in cands), reverse=True)[:k]
        votes, sums = Counter(), Counter()
        for s, j in sims:
            votes[landmark[j]] += 1
            sums[landmark[j]] += s
        pred = max(votes, key=lambda lab: (votes[lab], sums[lab]))
        right += pred == landmark[i]
    return right / len(x)


# --------------------------------------------------------------------------- metrics


def test_clustered_embeddings_give_perfect_scores(seed):
    landmark, level, image = _design(4, 3, 5)
    g = np.random.default_rng(seed)
    centres = 10 * np.eye(4, 16)
    emb = centres[landmark] + 0.3 * g.standard_normal((len(landmark), 16))
    for k in (1, 5):
        assert knn_accuracy_across_levels(emb, landmark, level, k) == 1.0
        assert knn_accuracy_across_levels(emb, landmark, level, k, groups=image) == 1.0
    assert silhouette(emb, landmark) > 0.9
    r = same_vs_different(emb, landmark, level)
    assert r["same"] > 0.95 and abs(r["different"]) < 0.05 and r["gap"] > 0.9
    # pairs across levels: 60 patches, 20 per level; same landmark: 4 landmarks x 3 level pairs x 5 x 5
    assert r["n_same"] == 4 * 3 * 25 and r["n_same"] + r["n_different"] == 3 * 20 * 20


def test_embeddings_independent_of_landmark_score_near_chance(seed):
    landmark, level, _ = _design(4, 3, 50)  # 600 patches, chance 1/4
    emb = np.random.default_rng(seed).standard_normal((len(landmark), 32))
    for k in (1, 5):
        assert 0.15 < knn_accuracy_across_levels(emb, landmark, level, k) < 0.35
    assert abs(silhouette(emb, landmark)) < 0.05
    assert abs(same_vs_different(emb, landmark, level)["gap"]) < 0.02


def test_same_vs_different_hand_computed():
    # cross-level pairs: (0,1) same 0.6, (2,3) same 0.0, (0,3) different -1.0, (1,2) different 0.8;
    # (0,2) and (1,3) share a level and do not count. Scale does not matter (cosine).
    emb = torch.tensor([[2.0, 0.0], [0.6, 0.8], [0.0, 3.0], [-1.0, 0.0]])
    r = same_vs_different(emb, ["a", "a", "b", "b"], [0, 1, 0, 1])
    assert r["same"] == pytest.approx(0.3)
    assert r["different"] == pytest.approx(-0.1)
    assert r["gap"] == pytest.approx(0.4)
    assert (r["n_same"], r["n_different"]) == (2, 2)


def test_same_vs_different_matches_pairwise_loop(seed):
    g = np.random.default_rng(seed)
    landmark, level = g.integers(0, 3, 30), g.integers(0, 3, 30)
    emb = g.standard_normal((30, 5))
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    same, diff = [], []
    for i in range(30):
        for j in range(i + 1, 30):
            if level[i] != level[j]:
                (same if landmark[i] == landmark[j] else diff).append(u[i] @ u[j])
    r = same_vs_different(emb, landmark, level)
    assert r["same"] == pytest.approx(np.mean(same)) and r["different"] == pytest.approx(np.mean(diff))
    assert (r["n_same"], r["n_different"]) == (len(same), len(diff))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_knn_matches_reference_loop(seed, k):
    g = np.random.default_rng(seed)
    landmark, level, image = _design(3, 3, 4)
    emb = g.standard_normal((len(landmark), 4)) + np.eye(3, 4)[landmark]
    assert knn_accuracy_across_levels(emb, landmark, level, k) == pytest.approx(
        _reference_knn(emb, landmark, level, k)
    )
    assert knn_accuracy_across_levels(emb, landmark, level, k, groups=image, chunk=7) == pytest.approx(
        _reference_knn(emb, landmark, level, k, groups=image)
    )


def test_knn_hand_computed_with_and_without_own_image():
    # level 0: p0 (A, image 0), p4 (B, image 1); level 1: p1 (A, image 0), p2 (A, image 1), p3 (B, image 1)
    emb = np.array([[1, 0], [1, 0.1], [0, 1], [1, 0.2], [0.2, 1]])
    landmark, level, image = ["A", "A", "A", "B", "B"], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1]
    # nearest across levels: p0->p1 A ok, p1->p0 A ok, p2->p4 B x, p3->p0 A x, p4->p2 A x
    assert knn_accuracy_across_levels(emb, landmark, level, 1) == pytest.approx(2 / 5)
    # other images too: p0->p3 B x, p1->p4 B x, p2->p0 A ok, p3->p0 A x, p4->p1 A x
    assert knn_accuracy_across_levels(emb, landmark, level, 1, groups=image) == pytest.approx(1 / 5)


# --------------------------------------------------------------------------- patches


def test_extract_patch_centred_odd_and_even():
    image = torch.arange(10 * 12, dtype=torch.int32).view(1, 10, 12).to(torch.uint8)
    assert torch.equal(extract_patch(image, (5.0, 4.0), 3), image[:, 3:6, 4:7])
    # even side: x0 = floor(5 - 1.5 + 0.5) = 4, the patch centre (5.5, 4.5) is within half a pixel
    assert torch.equal(extract_patch(image, (5.0, 4.0), 4), image[:, 3:7, 4:8])
    assert torch.equal(extract_patch(image, (5.4, 3.6), 3), image[:, 3:6, 4:7])  # rounds to the nearest pixel


def test_extract_patch_pads_with_zeros_at_the_border():
    image = torch.full((3, 8, 8), 7, dtype=torch.uint8)
    patch = extract_patch(image, (0.0, 7.0), 5)  # columns -2..2, rows 5..9
    assert patch.shape == (3, 5, 5)
    assert torch.all(patch[:, :3, 2:] == 7)
    assert torch.all(patch[:, :, :2] == 0) and torch.all(patch[:, 3:, :] == 0)
    assert torch.all(extract_patch(image, (-20.0, 3.0), 4) == 0)
    assert extract_patch(image, (3.0, 3.0), 20).sum() == 7 * 3 * 64  # larger than the image: all of it


class _Marked(torch.utils.data.Dataset):
    landmark_names = ("apex", "hilum", "dome")

    def __init__(self, n=3, side=32, missing=None):
        g = torch.Generator().manual_seed(0)
        self.images = [
            torch.randint(0, 256, (1, side, side), dtype=torch.uint8, generator=g) for _ in range(n)
        ]
        self.points = [torch.tensor([[4.0, 5.0], [16.0, 16.0], [30.0, 2.0]]) for _ in range(n)]
        if missing is not None:
            self.points[missing[0]][missing[1]] = math.nan

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "landmarks": self.points[i]}


def test_landmark_patches_order_sides_and_missing_landmarks():
    data = _Marked(n=3, side=32, missing=(1, 2))
    lp = landmark_patches(data, levels=(0.125, 0.5), landmarks=["dome", "hilum"])
    assert lp.landmark_names == ("dome", "hilum")
    assert len(lp.patches) == 2 * 3 * 2 - 2  # image 1 has no dome
    assert [tuple(p.shape[1:]) for p in lp.patches[:2]] == [(4, 4), (16, 16)]
    assert lp.landmark.tolist()[:4] == [0, 0, 1, 1] and lp.level.tolist()[:4] == [0, 1, 0, 1]
    assert torch.equal(lp.patches[3], extract_patch(data.images[0], (16.0, 16.0), 16))
    assert level_sides((0.125, 0.25, 0.5), 64, 80) == [8, 16, 32]
    sub = landmark_patches(data, levels=(0.25, 0.5), images=2, seed=1)
    assert len(set(sub.image.tolist())) == 2 and sub.images_used == sorted(sub.images_used)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda e, lm, lv: knn_accuracy_across_levels(e, lm, lv, 0), "k"),
        (lambda e, lm, lv: knn_accuracy_across_levels(e, lm, lv, 9), "k=9"),
        (lambda e, lm, lv: knn_accuracy_across_levels(e, lm, np.zeros(12), 1), "level"),
        (lambda e, lm, lv: knn_accuracy_across_levels(e[:, 0], lm, lv, 1), "emb"),
        (lambda e, lm, lv: knn_accuracy_across_levels(e, lm[:-1], lv, 1), "landmark"),
        (lambda e, lm, lv: knn_accuracy_across_levels(e * math.nan, lm, lv, 1), "emb"),
        (lambda e, lm, lv: silhouette(e, np.zeros(12)), "landmark"),
        (lambda e, lm, lv: same_vs_different(e, np.zeros(12), lv), "landmark"),
        (lambda e, lm, lv: extract_patch(e, (1, 1), 2), "image"),
        (lambda e, lm, lv: extract_patch(torch.zeros(1, 4, 4), (1, math.nan), 2), "center"),
        (lambda e, lm, lv: extract_patch(torch.zeros(1, 4, 4), (1, 1), 0), "side"),
        (lambda e, lm, lv: landmark_patches([{"image": torch.zeros(1, 4, 4)}]), "dataset"),
        (lambda e, lm, lv: landmark_patches(_Marked(), landmarks=["knee"]), "landmarks"),
        (lambda e, lm, lv: LocalityConfig(levels=(0.5,)), "levels"),
        (lambda e, lm, lv: LocalityConfig(levels=(0.0, 0.5)), "levels"),
        (lambda e, lm, lv: LocalityConfig(k=(0,)), "k"),
        (lambda e, lm, lv: LocalityConfig(images=0), "images"),
        (lambda e, lm, lv: LocalityConfig(size=16), "size"),
        (lambda e, lm, lv: parse_fractions("1/8,x", "levels"), "levels"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, name):
    landmark, level, _ = _design(2, 2, 3)
    emb = np.random.default_rng(0).standard_normal((12, 4))
    with pytest.raises(ValueError, match=name):
        call(emb, landmark, level)


def test_item_without_landmarks_is_refused():
    class NoPoints(_Marked):
        def __getitem__(self, i):
            return {"image": self.images[i]}

    with pytest.raises(ValueError, match="landmarks"):
        landmark_patches(NoPoints())


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def synthetic(eve_data):
    return eve_data


def test_cli_end_to_end(synthetic, tmp_path, capsys):
    from adam_ext.cli import main

    data, weights = synthetic
    out = tmp_path / "locality"
    rc = main(
        [
            "eve",
            "locality",
            "--ckpt",
            "a=random",
            "--ckpt",
            f"b={weights}",
            "--arch",
            "resnet18",
            "--size",
            "64",
            "--data",
            str(data),
            "--split",
            "all",
            "--images",
            "6",
            "--landmarks",
            "carina,heart_apex,right_costophrenic_angle,left_lung_apex",
            "--levels",
            "1/8,1/4,1/2",
            "--k",
            "1,3",
            "--batch-size",
            "32",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {"locality.md", "locality.json", "tsne.png"}
    result = json.loads((out / "locality.json").read_text())
    assert result["n_patches"] == 6 * 4 * 3 and len(result["images"]) == 6
    assert result["levels"] == ["1/8", "1/4", "1/2"] and result["chance"] == pytest.approx(0.25)
    assert set(result["encoders"]) == {"a", "b"}
    for r in result["encoders"].values():
        assert r["arch"] == "resnet18" and r["dim"] == 512
        assert all(0.0 <= v <= 1.0 for v in [*r["knn"].values(), *r["knn_other_images"].values()])
        assert -1.0 <= r["silhouette"] <= 1.0 and r["gap"] == pytest.approx(r["same"] - r["different"])
    table = (out / "locality.md").read_text()
    assert "| a | random |" in table and "3-NN acc" in table
    assert "silhouette" in capsys.readouterr().out


def test_cli_errors_name_the_argument(synthetic, tmp_path, capsys):
    from adam_ext.cli import main

    data, _ = synthetic
    common = [
        "eve",
        "locality",
        "--ckpt",
        "random",
        "--arch",
        "resnet18",
        "--size",
        "64",
        "--data",
        str(data),
        "--split",
        "all",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    assert main(common + ["--levels", "1/2"]) == 2
    assert "levels" in capsys.readouterr().err
    assert main(common + ["--landmarks", "knee"]) == 2
    assert "landmarks" in capsys.readouterr().err
    assert main(common[:-5] + ["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert "data" in capsys.readouterr().err
