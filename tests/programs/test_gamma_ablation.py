"""python/experiments/gamma_ablation.py: argument errors, and a tiny two-γ ablation on CPU that is interrupted,
resumed and re-run (pretraining resnet18 at 32 px, K = 8, one stage of one epoch; 4-shot
segmentation at 64 px, 2 runs of 1 epoch)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _programs import load  # the scripts are loaded by path, as there


@pytest.fixture(scope="module")
def ablation():
    return load("python/experiments/gamma_ablation.py")


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
        "optim.epochs=1",
        "optim.warmup_epochs=0",
        "stages=[2]",
        "tensorboard=false",
        "log_every=1",
        f"data.root={synth}",
    ]
    return [
        "--out",
        str(out),
        "--gammas",
        "0.9,none",
        "--preset",
        "demo",
        *[a for o in pretraining for a in ("--set", o)],
        "--task",
        "seg",
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
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def test_parse_gammas(ablation):
    assert ablation.parse_gammas("0.7, 0.8,0.9,none") == [0.7, 0.8, 0.9, None]
    assert ablation.parse_gammas("1,NULL,-0.5") == [1.0, None, -0.5]
    assert [ablation.gamma_label(g) for g in (0.8, None, 1.0)] == ["gamma_0.8", "gamma_none", "gamma_1"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("0.8,abc", "numbers or 'none', got 'abc'"),
        ("", "numbers or 'none', got ''"),
        ("1.5", r"\(-1, 1\].*got 1.5"),
        ("-1", r"\(-1, 1\].*got -1"),
        ("0.8,none,0.80", "must not repeat"),
        ("none,null", "must not repeat"),
    ],
)
def test_parse_gammas_errors_name_the_option(ablation, text, message):
    with pytest.raises(ValueError, match="--gammas.*" + message):
        ablation.parse_gammas(text)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gammas", "0.8,2"], "argument --gammas: entries must lie in (-1, 1]"),
        (["--set", "gamma=0.5"], "--set gamma=... is not allowed"),
        (["--set", "optim.lr=-1"], "optim.lr must be > 0"),
        (["--set", "stages=[0]"], "stages must include a stage with n > 0"),
        (["--arch", "resnet50"], "--arch must match the pretraining backbone"),
        (["--baseline", "imagenet:missing.pth"], "--baseline file 'missing.pth' does not exist"),
        (["--task", "cls", "--dataset", "synthetic"], "--masks and --seg-mode apply to --task seg only"),
    ],
)
def test_argument_errors(ablation, synth, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        ablation.main(tiny_args(synth, tmp_path / "out", *extra))
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing runs before every option is valid


def test_missing_data_folder(ablation, tmp_path, capsys):
    with pytest.raises(SystemExit):
        ablation.main(
            [
                "--out",
                str(tmp_path / "out"),
                "--preset",
                "demo",
                "--task",
                "seg",
                "--data",
                str(tmp_path / "nowhere"),
            ]
        )
    assert "--data must be an existing folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablation.main(["--out", str(tmp_path / "out"), "--task", "seg", "--data", str(tmp_path)])
    assert "pretraining data.root must name the training images" in capsys.readouterr().err


def test_weights_digest(ablation):
    state = {
        "a": torch.arange(6, dtype=torch.float32).view(2, 3),
        "b": torch.tensor(3),
        "c": torch.ones(2).bfloat16(),
    }
    digest = ablation.weights_digest(state)
    assert digest == ablation.weights_digest({k: v.clone() for k, v in reversed(state.items())})
    changed = dict(
        state, a=state["a"].clone().index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(1e-7))
    )
    assert ablation.weights_digest(changed) != digest
    assert ablation.weights_digest({"x": state["a"]}) != digest


def test_interrupted_resumed_and_rerun(ablation, synth, tmp_path, capsys, monkeypatch):
    out = tmp_path / "abl"
    # An interrupted pretraining is reported (exit 1) and leaves last.pt behind.
    assert ablation.main(tiny_args(synth, out, "--set", "max_steps=2")) == 1
    assert "stopped before its end" in capsys.readouterr().err
    assert (out / "gamma_0.9" / "last.pt").is_file() and not (out / "gamma_0.9" / "best.pt").exists()

    assert ablation.main(tiny_args(synth, out, "--baseline", "random")) == 0
    result = json.loads((out / "ablation.json").read_text())
    entries = {e["label"]: e for e in result["entries"]}
    assert list(entries) == ["gamma_0.9", "gamma_none", "baseline_random"]
    assert (
        result["primary"] == "mean_dice" and result["reference"] == "gamma_none" and result["seeds"] == [0, 1]
    )
    assert [entries[k]["pretrain"]["status"] for k in ("gamma_0.9", "gamma_none")] == ["resumed", "trained"]
    assert entries["gamma_0.9"]["gamma"] == 0.9 and entries["gamma_none"]["gamma"] is None
    for entry in entries.values():
        down = entry["downstream"]
        assert down["seeds"] == [0, 1] and len(down["test"]) == 2  # paired: the same seeds everywhere
        assert all(math.isfinite(t["mean_dice"]) for t in down["test"])
        assert down["summary"]["mean_dice"]["n"] == 2 and math.isfinite(down["summary"]["mean_dice"]["std"])
    assert entries["gamma_none"]["tests"] == {}
    assert 0 <= entries["gamma_0.9"]["tests"]["mean_dice"]["p"] <= 1
    assert entries["gamma_none"]["pretrain"]["pruned_fraction"] == 0
    assert 0 <= entries["gamma_0.9"]["pretrain"]["pruned_fraction"] <= 1
    for key in ("gamma_0.9", "gamma_none"):
        best = entries[key]["pretrain"]["best"]
        assert best["n"] == 2 and best["epoch"] == 1 and len(best["digest"]) == 16
    md = (out / "ablation.md").read_text()
    assert "| γ | mean_dice | runs | p vs no pruning | pruned at the end | best weights (pruned then) |" in md
    identical = (
        entries["gamma_0.9"]["pretrain"]["best"]["digest"]
        == entries["gamma_none"]["pretrain"]["best"]["digest"]
    )
    assert ("γ = 0.9, no pruning: bit-identical best weights" in md) == identical
    assert "| 0.9 | " in md and "| no pruning | " in md and "| random init | " in md
    assert (out / "ablation.png").stat().st_size > 0

    # Run again: nothing is pretrained or fine-tuned again, and the tables are the same.
    def refuse(*args, **kwargs):
        raise AssertionError("should have been reused")

    monkeypatch.setattr(ablation, "pretrain", refuse)
    monkeypatch.setattr(ablation, "finetune", refuse)
    assert ablation.main(tiny_args(synth, out, "--baseline", "random")) == 0
    again = json.loads((out / "ablation.json").read_text())
    assert [e["pretrain"]["status"] for e in again["entries"][:2]] == ["reused", "reused"]
    assert all(e["downstream"]["reused"] for e in again["entries"])
    assert [e["downstream"]["test"] for e in again["entries"]] == [
        e["downstream"]["test"] for e in entries.values()
    ]

    # A finished run of another pretraining configuration is never reused silently.
    assert ablation.main(tiny_args(synth, out, "--set", "optim.lr=0.1")) == 1
    assert "another configuration (differs in optim.lr)" in capsys.readouterr().err
