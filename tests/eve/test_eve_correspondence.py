"""adam eve correspondence: view geometry, nearest-neighbour matching with known answers, bad
inputs naming the argument, and the command end to end on tiny synthetic films."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from adam_ext.cli import main
from adam_ext.data import open_dataset
from adam_ext.eve import Embedder
from adam_ext.eve.correspondence import (
    CorrespondenceConfig,
    correspondence_analysis,
    make_view,
    mutual_matches,
    nearest_match,
    rescale_points,
    sample_vectors,
    transfer_error,
    transform_points,
    view_affine,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _dot(height: int, width: int, x: float, y: float, sigma: float = 1.5) -> torch.Tensor:
    """uint8 Tensor[1, H, W]: a Gaussian dot centred at (x, y) (pixel centres at integers)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    blob = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return (255 * blob).round().to(torch.uint8)[None]


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    weight = image[0].double()
    ys, xs = torch.meshgrid(
        torch.arange(weight.shape[0], dtype=torch.float64),
        torch.arange(weight.shape[1], dtype=torch.float64),
        indexing="ij",
    )
    return (weight * xs).sum().item() / weight.sum().item(), (weight * ys).sum().item() / weight.sum().item()


@pytest.fixture(scope="module")
def synth(eve_data):
    """The shared 8 synthetic 64-px films with landmarks (several patients) and a resnet18 file."""
    data, weights = eve_data
    return data, weights


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "degrees, box", [(10.0, (6, 9, 64, 56)), (-10.0, (0, 0, 72, 80)), (25.0, (12, 4, 50, 61))]
)
@pytest.mark.parametrize("x, y", [(40.0, 36.0), (31.3, 42.7), (47.6, 30.2)])
def test_view_affine_moves_points_like_make_view(degrees, box, x, y):
    height, width = 72, 80
    view = make_view(_dot(height, width, x, y), degrees, box)
    assert view.shape == (1, height, width) and view.dtype == torch.uint8
    expected = transform_points(torch.tensor([[x, y]]), view_affine(height, width, degrees, box))[0]
    assert _centroid(view) == pytest.approx(expected.tolist(), abs=0.2)


def test_rescale_points_follows_resize_and_round_trips():
    points = torch.tensor([[10.0, 20.0], [31.25, 5.5], [math.nan, 3.0]])
    there = rescale_points(points, (48, 40), (96, 120))
    assert torch.allclose(rescale_points(there, (96, 120), (48, 40)), points, equal_nan=True)
    resized = TF.resize(_dot(48, 40, 21.3, 17.8, sigma=2.0), [96, 120], antialias=True)
    assert _centroid(resized) == pytest.approx(
        rescale_points([[21.3, 17.8]], (48, 40), (96, 120))[0].tolist(), abs=0.1
    )


def test_transform_points_keeps_nan_and_identity():
    points = torch.tensor([[3.0, 4.0], [math.nan, math.nan]])
    identity = view_affine(50, 50, 0.0, (0, 0, 50, 50))
    assert torch.allclose(transform_points(points, identity), points, equal_nan=True)


# --------------------------------------------------------------------------- matching with known answers


def test_identity_on_a_constructed_map_is_exact(seed):
    dense = torch.randn(8, 20, 24, generator=torch.Generator().manual_seed(seed))
    points = torch.tensor([[0.0, 0.0], [23.0, 19.0], [7.0, 11.0], [15.0, 2.0]])
    found, similarity = nearest_match(sample_vectors(dense, points), dense)
    assert torch.equal(found, points)
    assert torch.allclose(similarity, torch.ones(4))
    assert torch.equal(transfer_error(found, points), torch.zeros(4))


def test_identity_with_the_real_embedder_is_exact(synth):
    item = open_dataset("synthetic", synth[0], "all")[0]
    embedder = Embedder("random", arch="resnet18", size=64, device="cpu")
    dense = embedder.dense_embeddings([item["image"]], out_size=32)[0]
    assert torch.equal(dense, embedder.dense_embeddings([item["image"]], out_size=32)[0])
    points = rescale_points(item["landmarks"], (64, 64), (32, 32)).round()
    found, _ = nearest_match(sample_vectors(dense, points), dense)
    assert torch.equal(transfer_error(found, points), torch.zeros(len(points)))


def test_an_integer_shift_is_recovered_exactly(seed):
    dx, dy = 3, -2
    scene = torch.randn(6, 30, 30, generator=torch.Generator().manual_seed(seed))
    src, dst = scene[:, 5:25, 5:25], scene[:, 5 + dy : 25 + dy, 5 + dx : 25 + dx]
    points = torch.tensor([[4.0, 6.0], [10.0, 10.0], [15.0, 3.0]])
    found, _ = nearest_match(sample_vectors(src, points), dst)
    assert torch.equal(points - found, torch.tensor([[dx, dy]] * 3, dtype=torch.float32))
    assert torch.equal(transfer_error(found + torch.tensor([dx, dy]), points), torch.zeros(3))
    src_xy, dst_xy, similarity = mutual_matches(src, dst, k=50)
    assert len(similarity) == 50 and torch.all(similarity[:-1] >= similarity[1:])
    assert torch.equal(src_xy - dst_xy, torch.tensor([[dx, dy]] * 50, dtype=torch.float32))


def test_subpixel_points_on_a_smooth_map_land_on_a_neighbouring_pixel():
    """Radial-basis features of position: the map is a smooth function of (x, y), shifted by (2, 3)."""
    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    centres = torch.stack(
        torch.meshgrid(torch.arange(0.0, 40, 5), torch.arange(0.0, 40, 5), indexing="ij"), -1
    )
    scene = torch.exp(
        -((xs - centres[..., 1, None, None]) ** 2 + (ys - centres[..., 0, None, None]) ** 2) / (2 * 4.0**2)
    ).reshape(-1, 40, 40)
    src, dst = scene[:, 8:32, 8:32], scene[:, 11:35, 10:34]
    points = torch.tensor([[6.3, 9.8], [12.5, 12.5], [17.9, 8.2]])
    found, _ = nearest_match(sample_vectors(src, points), dst)
    assert torch.all(transfer_error(found + torch.tensor([2.0, 3.0]), points) <= 0.75)


def test_an_unchanged_view_lands_every_landmark_on_its_nearest_map_pixel(synth, tmp_path):
    """degrees 0, crop 1: the view is the image, so the frames (image, input, map) must agree; the
    maps have 2 pixels per 64 px image pixel, the nearest lies within sqrt(2)/4 of the truth."""
    dataset = open_dataset("synthetic", synth[0], "all")
    result = correspondence_analysis(
        [("a", "random")],
        dataset,
        tmp_path,
        arch="resnet18",
        size=128,
        dense_size=128,
        degrees=0.0,
        crop=1.0,
        pairs=2,
        lines=5,
        grid=8,
        progress=False,
    )
    view = result["encoders"]["a"]["view"]
    assert view["n"] == 2 * len(dataset.landmark_names)
    assert max(view["errors_px"]) <= math.sqrt(2) / 4 + 1e-4
    assert view["mnn_precision"] == 1.0 and result["baseline"]["view"]["mean_px"] == 0.0


def test_nan_points_give_nan_errors():
    dense = torch.randn(4, 8, 8)
    found, similarity = nearest_match(
        sample_vectors(dense, torch.tensor([[1.0, 1.0], [math.nan, 2.0]])), dense
    )
    assert torch.isnan(found[1]).all() and torch.isnan(similarity[1]) and torch.isfinite(found[0]).all()
    assert torch.isnan(transfer_error(found, torch.tensor([[1.0, 1.0], [2.0, 2.0]]))[1])


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "setting, name",
    [
        ({"degrees": 90.0}, "degrees"),
        ({"crop": 0.0}, "crop"),
        ({"crop": 1.5}, "crop"),
        ({"pairs": 0}, "pairs"),
        ({"lines": 0}, "lines"),
        ({"dense_size": 1}, "dense_size"),
        ({"tolerance": -0.1}, "tolerance"),
    ],
)
def test_bad_settings_name_the_argument(setting, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        CorrespondenceConfig(**setting)


def test_bad_tensors_name_the_argument():
    dense = torch.randn(4, 8, 8)
    with pytest.raises(ValueError, match="^dense_map "):
        sample_vectors(torch.randn(8, 8), [[1.0, 1.0]])
    with pytest.raises(ValueError, match="^points "):
        sample_vectors(dense, torch.zeros(3))
    with pytest.raises(ValueError, match="^vectors "):
        nearest_match(torch.randn(2, 5), dense)
    with pytest.raises(ValueError, match="^affine "):
        transform_points([[1.0, 2.0]], torch.eye(3))
    with pytest.raises(ValueError, match="^box "):
        make_view(torch.zeros(1, 8, 8, dtype=torch.uint8), 10.0, (2, 2, 8, 8))
    with pytest.raises(ValueError, match="^predicted and truth"):
        transfer_error(torch.zeros(2, 2), torch.zeros(3, 2))


class _Fake:
    """Three blank 64 px films, all of one patient, with or without landmarks."""

    def __init__(self, landmarks: bool):
        self.landmarks = landmarks

    def __len__(self):
        return 3

    def __getitem__(self, i):
        item = {"image": torch.zeros(1, 64, 64, dtype=torch.uint8), "path": f"images/00000001_{i:03d}.png"}
        return {**item, "landmarks": torch.full((2, 2), 30.0)} if self.landmarks else item


@pytest.mark.parametrize("landmarks, message", [(False, "gives no landmarks"), (True, "at least 2 subjects")])
def test_unusable_data_names_the_argument(tmp_path, landmarks, message):
    with pytest.raises(ValueError, match=f"^data: .*{message}"):
        correspondence_analysis([("a", "random")], _Fake(landmarks), tmp_path, arch="resnet18", size=64)


# --------------------------------------------------------------------------- end to end


def test_command_end_to_end_compares_two_encoders(synth, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "eve",
        "correspondence",
        "--ckpt",
        "a=random",
        "--ckpt",
        f"b={synth[1]}",
        "--arch",
        "resnet18",
        "--data",
        str(synth[0]),
        "--split",
        "all",
        "--size",
        "64",
        "--pairs",
        "2",
        "--lines",
        "5",
        "--grid",
        "8",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    for name in (
        "correspondence.md",
        "correspondence.json",
        "correspondence_error.png",
        "matches_view.png",
        "matches_subject.png",
    ):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "correspondence.json").read_text())
    assert list(result["encoders"]) == ["a", "b"]
    assert len(result["pairs"]["view"]) == len(result["pairs"]["subject"]) == 2
    for entry in [*result["encoders"].values(), result["baseline"]]:
        for kind in ("view", "subject"):
            assert entry[kind]["n"] > 0 and 0 <= entry[kind]["median_px"] < 64
            assert set(entry[kind]["per_landmark_px"]) >= {"carina", "heart_apex"}
    assert 0 <= result["encoders"]["a"]["view"]["mnn_precision"] <= 1
    table = (out / "correspondence.md").read_text()
    assert "| a |" in table and "| b |" in table and "(same position)" in table
    assert "| a |" in capsys.readouterr().out

    assert main([*argv[:-3], "--degrees", "90", "--out", str(tmp_path / "bad")]) == 2
    assert "degrees must be" in capsys.readouterr().err
