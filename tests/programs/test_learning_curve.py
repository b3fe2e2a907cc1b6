"""python/experiments/learning_curve.py: budgets, argument errors, and a tiny curve on CPU that is interrupted
and resumed (resnet18 at 32 px, K = 8, stages n = 0, 2 of 2 epochs; 4-shot segmentation at 64 px,
2 seeds of 1 epoch)."""

from __future__ import annotations

import json

import pytest
from _programs import load  # the scripts are loaded by path, as there

from adam_ext.pretrain.config import load_config


@pytest.fixture(scope="module")
def curve():
    return load("python/experiments/learning_curve.py")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth(driver_data):
    return driver_data


def tiny_args(synth, out, *extra):
    pretraining = [
        "data.view_size=32",
        "data.workers=0",
        "model.K=8",
        "model.dim=8",
        "model.mlp_hidden=16",
        "optim.batch_size=4",
        "optim.epochs=2",
        "optim.warmup_epochs=0",
        "stages=[0,2]",
        "tensorboard=false",
        "log_every=1",
        f"data.root={synth}",
        "monitor.knn_images=2",
    ]
    return [
        "--out",
        str(out),
        "--budgets",
        "0.5,1",
        *[a for o in pretraining for a in ("--set", o)],
        "--data",
        str(synth / "scr"),
        "--masks",
        "heart,left clavicle",
        "--size",
        "64",
        "--shots",
        "4",
        "--runs",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def test_budgets_map_to_snapshots_of_both_methods(curve):
    cfg = load_config(None, ["stages=[0,2,4]", "optim.epochs=8", "out=/x/adam"])
    points = curve.budget_points(cfg, [0.125, 0.25, 0.5, 1.0])
    assert [(p["stage"], p["epoch"], p["global_epoch"]) for p in points] == [
        (0, 3, 3),
        (0, 6, 6),
        (1, 4, 12),
        (2, 8, 24),
    ]
    assert points[2]["path"] == "/x/adam/snapshots/stage1_n2_epoch4.pt"
    moco = load_config(None, ["stages=[0]", "optim.epochs=24", "out=/x/mocov2"])
    assert [p["global_epoch"] for p in curve.budget_points(moco, [0.125, 1.0])] == [3, 24]


@pytest.mark.parametrize("text", ["", "0,1", "1.5", "0.5,0.25", "0.5,0.5", "a"])
def test_bad_budgets_name_the_option(curve, text):
    with pytest.raises(ValueError, match="--budgets"):
        curve.parse_budgets(text)


def test_bad_arguments_exit_2(curve, synth, tmp_path, capsys):
    assert curve.main(tiny_args(synth, tmp_path / "a", "--methods", "adam,simclr")) == 2
    assert "--methods must be a subset" in capsys.readouterr().err
    assert curve.main(tiny_args(synth, tmp_path / "b", "--set", "snapshots=false")) == 2
    assert "--set snapshots=... is not allowed" in capsys.readouterr().err


class Interrupted(Exception):
    """Stands for a kill in the middle of the evaluations."""


def test_tiny_curve_end_to_end_then_resumed(curve, synth, tmp_path, monkeypatch):
    out = tmp_path / "curve"
    calls, interrupt = [], [True]
    original = curve.finetune

    def counting(cfg, **kwargs):
        calls.append(cfg.out)
        if len(calls) == 3 and interrupt and interrupt.pop():  # once, in the middle of the evaluations
            raise Interrupted
        return original(cfg, **kwargs)

    monkeypatch.setattr(curve, "finetune", counting)
    with pytest.raises(Interrupted):
        curve.main(tiny_args(synth, out))
    assert (out / "adam" / "best.pt").is_file() and (out / "mocov2" / "best.pt").is_file()
    calls.clear()
    assert curve.main(tiny_args(synth, out)) == 0
    # the two random evaluations finished before the interruption are reused
    assert len(calls) == 2 * 2 * 2 and not any(c.endswith(("random", "random_frozen")) for c in calls)
    result = json.loads((out / "curve.json").read_text())
    assert [(p["method"], p["budget"]) for p in result["points"]] == [
        ("adam", 0.5),
        ("adam", 1.0),
        ("mocov2", 0.5),
        ("mocov2", 1.0),
    ]
    adam_half = result["points"][0]
    assert (adam_half["stage"], adam_half["epoch"]) == (0, 2)  # half of 2 stages x 2 epochs
    assert all(len(p["finetuned"]) == 2 and len(p["frozen"]) == 2 for p in result["points"])
    assert "knn_landmark" in adam_half["monitors"] and "rankme" in adam_half["monitors"]
    # the random reference at each stage's scale; at n = 0 it is what the run itself logged before step 1
    reference = result["random"]["knn_landmark"]
    assert set(reference) == {"0", "2"}
    assert reference["0"] == curve.monitors_at(out / "adam", 0, 0)["knn_landmark"]
    # MoCo v2: one stage (n = 0, no pruner) with the same number of epochs in all
    moco = result["pretraining"]["mocov2"]
    assert moco["stages"] == [0] and moco["gamma"] is None and moco["optim"]["epochs"] == 4
    for p in result["points"]:  # every evaluated snapshot stays in the output folder
        assert (out / p["method"] / "snapshots").is_dir() and __import__("pathlib").Path(p["path"]).is_file()
    text = (out / "curve.md").read_text()
    assert "| random | — | 0 |" in text and "| adam | 0.5 (stage 0 n=0 epoch 2) |" in text
    assert f"n=0: {reference['0']:.3f}, n=2: {reference['2']:.3f}" in text
    assert f"(random {reference['2']:.3f})" in text  # the n = 2 points beside the n = 2 reference
    assert (out / "curve.png").stat().st_size > 0
    calls.clear()
    assert curve.main(tiny_args(synth, out)) == 0 and calls == []  # all reused


def test_the_frozen_evaluation_drops_the_encoder_recipe(curve, synth, tmp_path, monkeypatch):
    """--encoder-lr-scale / --frozen-epochs shape the fine-tuned evaluation; the frozen one keeps the
    encoder frozen throughout (and so must not inherit them: the config would refuse the mix)."""
    seen = []

    def recording(cfg, init, label, progress):
        seen.append(cfg)
        if len(seen) == 2:
            raise Interrupted
        return []

    monkeypatch.setattr(curve, "run_pretraining", lambda cfg, progress: None)
    monkeypatch.setattr(curve, "evaluate", recording)
    with pytest.raises(Interrupted):
        curve.main(
            tiny_args(
                synth, tmp_path / "c", "--epochs", "3", "--frozen-epochs", "1", "--encoder-lr-scale", "0.5"
            )
        )
    finetuned, frozen = seen
    assert (finetuned.freeze_encoder, finetuned.frozen_epochs, finetuned.encoder_lr_scale) == (False, 1, 0.5)
    assert (frozen.freeze_encoder, frozen.frozen_epochs, frozen.encoder_lr_scale) == (True, 0, 1.0)


def test_initial_knn_is_repeatable_and_leaves_the_global_generator_alone(curve, synth, tmp_path):
    import torch

    from adam_ext.pretrain import initial_knn

    cfg = curve.pretrain_configs(curve.build_parser().parse_args(tiny_args(synth, tmp_path / "c")))["adam"]
    before = torch.random.get_rng_state()
    first = initial_knn(cfg)
    assert torch.equal(before, torch.random.get_rng_state())
    assert set(first) == {0, 2} and all(0 <= v["knn_landmark"] <= 1 for v in first.values())
    assert initial_knn(cfg) == first
