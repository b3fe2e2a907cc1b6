"""``adam eve compositionality``: part/whole similarity with encoders whose answers are known,
grid splitting, patch sampling, bad inputs, and the command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from adam_ext.eve.compositionality import (
    CompositionalityConfig,
    grid_stats,
    part_whole_similarity,
    sample_patches,
    split_grid,
)
from adam_ext.eve.locality import extract_patch

pytestmark = pytest.mark.usefixtures("one_thread")


def mean_encoder(images):
    """An "encoder" linear in the pixel mean: (mean / 255, 1)."""
    return torch.stack([torch.tensor([float(x.double().mean()) / 255, 1.0]) for x in images])


def mean_std_encoder(images):
    """(mean, population std) of the pixels / 255: not linear, so parts need not compose."""
    return torch.stack(
        [
            torch.tensor([float(x.double().mean()), float(x.double().std(unbiased=False))]) / 255
            for x in images
        ]
    )


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------- grid


@pytest.mark.parametrize("h, w, n", [(4, 4, 2), (5, 7, 3), (9, 4, 4), (3, 3, 3), (6, 5, 1)])
def test_split_grid_tiles_the_patch_exactly(h, w, n):
    patch = torch.arange(2 * h * w).view(2, h, w)
    parts = split_grid(patch, n)
    assert len(parts) == n * n
    rows = [torch.cat(parts[r * n : (r + 1) * n], dim=2) for r in range(n)]
    assert torch.equal(torch.cat(rows, dim=1), patch)
    heights = {p.shape[1] for p in parts}
    widths = {p.shape[2] for p in parts}
    assert max(heights) - min(heights) <= 1 and max(widths) - min(widths) <= 1
    assert all(p.untyped_storage().data_ptr() == patch.untyped_storage().data_ptr() for p in parts)  # views


# --------------------------------------------------------------------------- part / whole


def test_linear_encoder_composes_exactly_on_even_grids(seed):
    g = torch.Generator().manual_seed(seed)
    patches = [torch.randint(0, 256, (1, 12, 12), dtype=torch.uint8, generator=g) for _ in range(5)]
    calls = []

    def embed(images):
        calls.append(len(images))
        return mean_encoder(images)

    sims = part_whole_similarity(patches, embed, (1, 2, 3, 4), batch_size=7)
    assert set(sims) == {1, 2, 3, 4}
    for n in (1, 2, 3, 4):
        assert sims[n].shape == (5,) and np.allclose(sims[n], 1.0, atol=1e-6)
    assert sum(calls) == 5 * (1 + 1 + 4 + 9 + 16) and max(calls) == 7


def test_linear_encoder_on_uneven_grid_matches_hand_computation(seed):
    patch = torch.randint(0, 256, (1, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    x = patch[0].double().numpy() / 255
    cells = [x[:2, :2], x[:2, 2:], x[2:, :2], x[2:, 2:]]  # 5 // 2 = 2: sides 2 and 3
    expected = _cos([x.mean(), 1.0], [np.mean([c.mean() for c in cells]), 1.0])
    sim = part_whole_similarity([patch], mean_encoder, (2,))[2][0]
    assert sim == pytest.approx(expected, abs=1e-6)  # embeddings are float32


def test_nonlinear_encoder_on_checkerboard():
    # whole: mean 1/2, std 1/2 -> (1/2, 1/2); the four one-pixel parts: (0, 0), (1, 0), (1, 0), (0, 0)
    # -> mean (1/2, 0); cos = (1/4) / (sqrt(1/2) * 1/2) = 1 / sqrt(2)
    patch = torch.tensor([[[0, 255], [255, 0]]], dtype=torch.uint8)
    sims = part_whole_similarity([patch], mean_std_encoder, (1, 2))
    assert sims[2][0] == pytest.approx(1 / math.sqrt(2))
    assert sims[1][0] == pytest.approx(1.0)


def test_grid_stats():
    s = grid_stats([0.5, 1.0, 0.75, 0.25])
    assert s["n"] == 4 and s["mean"] == pytest.approx(0.625) and s["median"] == pytest.approx(0.625)
    assert s["std"] == pytest.approx(np.std([0.5, 1.0, 0.75, 0.25])) and (s["min"], s["max"]) == (0.25, 1.0)


# --------------------------------------------------------------------------- sampling


class _Marked(torch.utils.data.Dataset):
    landmark_names = ("apex",)

    def __init__(self, n=4, side=40):
        g = torch.Generator().manual_seed(0)
        self.images = [
            torch.randint(0, 256, (1, side, side), dtype=torch.uint8, generator=g) for _ in range(n)
        ]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "landmarks": torch.tensor([[3.0, 30.0 - i]])}


def _inside(patch, image) -> bool:
    s = patch.shape[1]
    windows = image.unfold(1, s, 1).unfold(2, s, 1)  # [C, H-s+1, W-s+1, s, s]
    return bool((windows == patch[:, None, None]).flatten(3).all(3).all(0).any())


def test_random_patches_lie_inside_their_images_and_repeat_with_the_seed():
    data = _Marked()
    patches = sample_patches(data, 6, fraction=0.25, seed=3)
    assert len(patches) == 6 and all(p.shape == (1, 10, 10) for p in patches)
    assert all(any(_inside(p, im) for im in data.images) for p in patches)
    again = sample_patches(data, 6, fraction=0.25, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(patches, again))
    other = sample_patches(data, 6, fraction=0.25, seed=4)
    assert not all(torch.equal(a, b) for a, b in zip(patches, other))


def test_landmark_patches_are_centred_and_padded():
    data = _Marked()
    patches = sample_patches(data, 5, fraction=0.5, source="landmarks", seed=0)
    expected = [extract_patch(im, (3.0, 30.0 - i), 20) for i, im in enumerate(data.images)]
    assert all(any(torch.equal(p, e) for e in expected) for p in patches)
    assert all((p[:, :, :6] == 0).all() for p in patches)  # x = 3, side 20: columns -6..13


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: split_grid(torch.zeros(1, 3, 5), 4), "n must be"),
        (lambda: split_grid(torch.zeros(3, 5), 2), "patch"),
        (lambda: part_whole_similarity([torch.zeros(1, 3, 3)], mean_encoder, (2, 4)), "patches"),
        (lambda: part_whole_similarity([], mean_encoder), "patches"),
        (lambda: part_whole_similarity([torch.zeros(1, 4, 4)], mean_encoder, (0,)), "grids"),
        (lambda: part_whole_similarity([torch.zeros(1, 4, 4)], lambda x: torch.zeros(len(x)), (2,)), "embed"),
        (lambda: sample_patches(_Marked(), 0), "n must"),
        (lambda: sample_patches(_Marked(), 2, source="middle"), "source"),
        (lambda: sample_patches([{"image": torch.zeros(1, 8, 8)}], 2, source="landmarks"), "dataset"),
        (lambda: CompositionalityConfig(grids=(2, 2)), "grids"),
        (lambda: CompositionalityConfig(patches=0), "patches"),
        (lambda: CompositionalityConfig(source="x"), "source"),
        (lambda: CompositionalityConfig(patch_fraction=1.5), "patch_fraction"),
        (lambda: CompositionalityConfig(batch_size=0), "batch_size"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def synthetic(eve_data):
    return eve_data


def test_cli_end_to_end(synthetic, tmp_path, capsys):
    from adam_ext.cli import main

    data, weights = synthetic
    out = tmp_path / "compositionality"
    rc = main(
        [
            "eve",
            "compositionality",
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
            "--patches",
            "6",
            "--grids",
            "2,4",
            "--batch-size",
            "40",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {f"compositionality.{ext}" for ext in ("md", "json", "png")}
    result = json.loads((out / "compositionality.json").read_text())
    assert result["patch_side"] == [32, 32] and result["config"]["grids"] == [2, 4]
    assert set(result["encoders"]) == {"a", "b"}
    for r in result["encoders"].values():
        assert set(r["grids"]) == {"2", "4"}
        for s in r["grids"].values():
            assert s["n"] == 6 and len(s["values"]) == 6
            assert -1.0 <= s["min"] <= s["median"] <= s["max"] <= 1.0
    assert "| b |" in (out / "compositionality.md").read_text()
    assert "4x4" in capsys.readouterr().out


def test_cli_landmark_source_and_errors(synthetic, tmp_path, capsys):
    from adam_ext.cli import main

    data, _ = synthetic
    common = [
        "eve",
        "compositionality",
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
    assert main(common + ["--patches", "2", "--grids", "2", "--source", "landmarks"]) == 0
    capsys.readouterr()
    assert main(common + ["--grids", "2,x"]) == 2
    assert "grids" in capsys.readouterr().err
    assert main(common + ["--patch-fraction", "1/32"]) == 2  # 2-pixel patches cannot be cut 4 x 4
    assert "patch_fraction" in capsys.readouterr().err
