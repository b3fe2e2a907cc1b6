"""Representation monitors: known answers on constructed embeddings, parity of the weighted k-NN
with a brute-force oracle, clear errors, and a pretraining run left bit-identical by them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adam_ext.data.synthetic import generate
from adam_ext.engine.monitors import (
    alignment,
    collapse_std,
    knn_accuracy,
    knn_mean_auc,
    rankme,
    uniformity,
    weighted_knn_scores,
)
from adam_ext.pretrain import pretrain
from adam_ext.pretrain.config import PretrainConfig


def orthonormal(n, r, generator):
    return torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=torch.float64))[0]


@pytest.mark.parametrize("r", [1, 3, 10])
def test_rankme_of_a_rank_r_matrix_with_equal_singular_values_is_r(r, seed):
    g = torch.Generator().manual_seed(seed)
    x = orthonormal(200, r, g) @ orthonormal(64, r, g).T * 5.0
    assert rankme(x) == pytest.approx(r, rel=1e-3)  # eps = 1e-7 per singular value adds ~1e-4


def test_rankme_is_lower_for_a_dominant_direction(seed):
    g = torch.Generator().manual_seed(seed)
    spread = torch.randn(500, 32, generator=g)
    dominated = spread * 0.01 + torch.randn(1, 32, generator=g)
    assert rankme(dominated) < 2.0 < 25.0 < rankme(spread) <= 32.0
    assert rankme(torch.zeros(4, 8)) == 0.0


def test_collapse_std_is_zero_for_identical_and_near_one_over_sqrt_d_for_spread(seed):
    g = torch.Generator().manual_seed(seed)
    assert collapse_std(torch.randn(1, 16, generator=g).repeat(50, 1) * 3) == pytest.approx(0.0, abs=1e-7)
    assert collapse_std(torch.randn(20000, 64, generator=g)) == pytest.approx(1 / 8, rel=0.02)


def test_alignment_and_uniformity_known_values(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 128, generator=g)
    assert alignment(x, 2 * x) == pytest.approx(0.0, abs=1e-12)  # scale does not matter
    assert alignment(x, -x) == pytest.approx(4.0)
    assert uniformity(x[:1].repeat(10, 1)) == pytest.approx(0.0, abs=1e-12)
    # random directions in 128 dimensions: squared distances concentrate at 2, so log E exp(-2 d²) ≈ -4
    assert -4.2 < uniformity(x) < -3.7
    a = F.normalize(x.double(), dim=1)
    d2 = torch.cdist(a, a).pow(2)
    off = ~torch.eye(300, dtype=torch.bool)
    assert uniformity(x) == pytest.approx(math.log(torch.exp(-2 * d2[off]).mean().item()), rel=1e-9)


def brute_force_knn(train, labels, test, k, temperature, classes):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    out = np.zeros((len(test), classes))
    for i, z in enumerate(test):
        sims = train @ z
        order = np.argsort(-sims, kind="stable")[:k]
        for j in order:
            out[i, labels[j]] += math.exp(sims[j] / temperature)
        out[i] /= out[i].sum()
    return out


def test_weighted_knn_matches_a_brute_force_oracle(seed):
    rng = np.random.default_rng(seed % 2**32)
    train, test = rng.normal(size=(120, 16)), rng.normal(size=(30, 16))
    labels = rng.integers(0, 5, 120)
    ours = weighted_knn_scores(
        torch.from_numpy(train),
        torch.from_numpy(labels),
        torch.from_numpy(test),
        k=20,
        temperature=0.07,
        chunk=7,
    )
    np.testing.assert_allclose(ours.numpy(), brute_force_knn(train, labels, test, 20, 0.07, 5), rtol=1e-10)


def test_knn_is_perfect_on_separable_clusters_and_near_chance_on_shuffled_labels(seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 32, generator=g) * 10
    labels = torch.arange(400) % 4
    x = centres[labels] + torch.randn(400, 32, generator=g)
    fit, score = slice(0, 300), slice(300, 400)
    assert knn_accuracy(x[fit], labels[fit], x[score], labels[score]) == 1.0
    shuffled = labels[torch.randperm(400, generator=g)]
    assert knn_accuracy(x[fit], shuffled[fit], x[score], shuffled[score]) < 0.45
    multi = F.one_hot(labels, 4)
    assert knn_mean_auc(x[fit], multi[fit], x[score], multi[score]) == 1.0
    self_scores = weighted_knn_scores(x, labels, x, k=5, exclude_self=True)
    assert (self_scores.argmax(1) == labels).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: rankme(torch.zeros(5)), "embeddings must be a Tensor"),
        (lambda: collapse_std(torch.zeros(1, 4)), "N >= 2"),
        (lambda: alignment(torch.zeros(3, 4), torch.zeros(3, 5)), "same shape"),
        (lambda: uniformity(torch.tensor([[math.nan, 1.0], [0.0, 1.0]])), "NaN"),
        (
            lambda: weighted_knn_scores(
                torch.randn(4, 3), torch.zeros(5, dtype=torch.long), torch.randn(2, 3)
            ),
            "train_labels",
        ),
        (
            lambda: weighted_knn_scores(
                torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 5)
            ),
            "same dimension",
        ),
        (
            lambda: weighted_knn_scores(
                torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 3), k=0
            ),
            "k must be",
        ),
        (
            lambda: weighted_knn_scores(
                torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 3), temperature=0
            ),
            "temperature",
        ),
        (
            lambda: knn_accuracy(
                torch.randn(4, 3),
                torch.zeros(4, dtype=torch.long),
                torch.randn(2, 3),
                torch.zeros(3, dtype=torch.long),
            ),
            "test_labels",
        ),
    ],
)
def test_bad_inputs_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "data", 48, size=64, seed=5, workers=1, progress=False)


def tiny(data, out, **monitor) -> PretrainConfig:
    return PretrainConfig.from_dict(
        {
            "data": {"dataset": "synthetic", "root": str(data), "view_size": 32, "workers": 0},
            "model": {"backbone": "resnet18", "K": 16, "dim": 8, "mlp_hidden": 16},
            "optim": {"batch_size": 4, "epochs": 2},
            "monitor": monitor,
            "stages": [0, 2],
            "out": str(out),
            "log_every": 2,
            "tensorboard": False,
            "checkpoint_every": 0,
        }
    )


def test_monitors_leave_the_run_bit_identical_and_are_logged(data, tmp_path):
    torch.manual_seed(0)
    pretrain(tiny(data, tmp_path / "off", enabled=False), progress=False)
    rng_off = torch.get_rng_state()
    torch.manual_seed(0)
    summary = pretrain(tiny(data, tmp_path / "on", every=1, images=8, knn_images=4), progress=False)
    assert torch.equal(torch.get_rng_state(), rng_off)
    for name in ("last.pt", "best.pt"):
        a = torch.load(tmp_path / "off" / name, weights_only=True)
        b = torch.load(tmp_path / "on" / name, weights_only=True)
        assert a["model"].keys() == b["model"].keys()  # weights, BN statistics, queue and its pointer
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
        if "rng" in a:
            assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    rows = [json.loads(x) for x in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    monitors = [r for r in rows if "monitor" in r]
    # every step of both stages, plus each stage's start
    assert len(monitors) == sum(1 for r in rows if "loss" in r) + 2 or len(monitors) >= 2 * 2
    assert {(r["stage"], r["step"]) for r in monitors} >= {(0, 0), (1, 0)}
    first = monitors[0]["monitor"]
    assert {"rankme", "collapse_std", "alignment", "uniformity", "knn_landmark"} <= set(first)
    assert 0.0 <= first["knn_landmark"] <= 1.0 and 1.0 <= first["rankme"] <= 8
    assert all(s["monitor"] is not None and "knn_landmark" in s["monitor"] for s in summary["stages"])
    off_rows = [json.loads(x) for x in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()]
    assert not any("monitor" in r for r in off_rows)
    assert "Representation monitors" in (tmp_path / "on" / "report.md").read_text()
    assert (tmp_path / "on" / "monitors.png").is_file()


@pytest.mark.parametrize(
    "override, name",
    [
        ({"images": 1}, "monitor.images"),
        ({"k": 0}, "monitor.k"),
        ({"every": -1}, "monitor.every"),
        ({"temperature": 0}, "monitor.temperature"),
        ({"enabled": "yes"}, "monitor.enabled"),
    ],
)
def test_bad_monitor_settings_name_the_field(data, tmp_path, override, name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        tiny(data, tmp_path, **override)


def test_a_collapse_seen_by_the_monitors_is_warned_and_reported(data, tmp_path, monkeypatch, capsys):
    from adam_ext.engine.monitors import RepresentationMonitor

    collapsed = {
        "rankme": 1.0,
        "collapse_std": 0.0,
        "collapse_std_healthy": 0.35,
        "alignment": 0.0,
        "uniformity": 0.0,
    }
    monkeypatch.setattr(RepresentationMonitor, "label_free", lambda self, collected: dict(collapsed))
    cfg = tiny(data, tmp_path / "run", knn_images=2)
    cfg.stages = [0]
    summary = pretrain(cfg, progress=False)
    err = capsys.readouterr().err
    assert err.count("the representation collapsed") == 1  # once a stage, not at its start (step 0)
    assert "at stage 0 (n=0) step 0" not in err
    assert summary["stages"][0]["monitor_collapse_warning"] is True
    assert "(monitors: representation collapsed)" in (tmp_path / "run" / "report.md").read_text()
