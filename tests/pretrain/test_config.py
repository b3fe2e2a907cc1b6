"""Configurations a user starts from: the files of configs/, the presets, and the switches of the
official code's behaviour (docs/fidelity.md), each reaching what it switches."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import yaml

from adam_ext.pretrain.config import PRESETS, PretrainConfig, load_config
from adam_ext.pretrain.stage import new_optimizer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["demo.yaml", "paper.yaml", "one_gpu_pngs.yaml", "many_nodes.yaml"])
def test_every_shipped_configuration_loads_and_validates(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, PretrainConfig)
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg  # validated, and round-trips


def test_the_shipped_files_are_the_presets():
    assert load_config(CONFIGS / "demo.yaml") == load_config(preset="demo")
    paper = load_config(CONFIGS / "paper.yaml").to_dict()
    preset = load_config(preset="paper").to_dict()

    def flat(d, prefix=""):
        return {
            k2: v2
            for k, v in d.items()
            for k2, v2 in (
                flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) and v else [(prefix + k, v)]
            )
        }

    for key, value in flat(PRESETS["paper"]).items():
        if key != "out":
            assert flat(paper)[key] == flat(preset)[key] == value, key


def test_the_paper_preset_sets_every_switch_of_the_fidelity_table():
    cfg = load_config(preset="paper")
    assert (cfg.stage_init, cfg.val_pruning) == ("last", True)
    assert (cfg.model.shuffle_bn_groups, cfg.model.query_bn_groups) == (4, 4)
    assert (cfg.optim.lr_scaling, cfg.optim.schedule_unit) == ("none", "epoch")
    assert cfg.data.views["grid_remainder"] == "drop" and cfg.data.val_fraction == 0.13
    table = (Path(__file__).resolve().parents[2] / "docs" / "fidelity.md").read_text()
    for switch in (
        "stage_init: last",
        "val_pruning: true",
        "model.query_bn_groups: 4",
        "model.shuffle_bn_groups: 4",
        "optim.lr_scaling: none",
        "optim.schedule_unit: epoch",
        "data.views.grid_remainder: drop",
        "data.val_fraction: 0.13",
    ):
        assert f"`{switch}`" in table, switch
    model = cfg.model.build()
    assert (model.shuffle_bn_groups, model.query_bn_groups) == (4, 4)


@pytest.mark.parametrize("scaling, unit", [("linear", "step"), ("none", "epoch")])
def test_lr_scaling_and_schedule_unit_reach_the_optimiser(scaling, unit):
    import math

    cfg = load_config(
        None,
        [
            f"optim.lr_scaling={scaling}",
            f"optim.schedule_unit={unit}",
            "optim.batch_size=64",
            "optim.epochs=4",
            "model.backbone=resnet18",
        ],
    )
    model = torch.nn.Module()
    model.encoder_q = torch.nn.Linear(2, 2)
    optimizer, schedule = new_optimizer(cfg, model, steps_per_epoch=3)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    base = 0.03 * 64 / 256 if scaling == "linear" else 0.03
    if unit == "step":
        assert lrs == pytest.approx([base * 0.5 * (1 + math.cos(math.pi * s / 12)) for s in range(12)])
    else:  # the official code: set once an epoch, 0.03 * 0.5 (1 + cos(pi e / E))
        assert lrs == pytest.approx([base * 0.5 * (1 + math.cos(math.pi * (s // 3) / 4)) for s in range(12)])


@pytest.mark.parametrize(
    "override, name",
    [
        ("optim.lr_scaling=sqrt", "optim.lr_scaling"),
        ("optim.schedule_unit=hour", "optim.schedule_unit"),
        ("model.query_bn_groups=0", "model.query_bn_groups"),
        ("model.T=1e-6", "model.T"),
        ("amp=int8", "amp"),
        ("data.views={grid_remainder: round}", "data.views"),
    ],
)
def test_bad_switch_values_name_the_field(override, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        load_config(None, [override])


def test_preset_demo_with_the_users_folder_reads_it_instead_of_generating(tmp_path):
    """`adam pretrain --preset demo --data MYDIR` reads MYDIR's images (dataset folder) instead of
    generating 800 synthetic films into it; an `adam synth` output, --dataset, or a new folder keep it."""
    from adam_ext.cli.pretrain import user_folder_instead_of_synthetic

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.png").write_bytes(b"x")
    cfg = load_config(preset="demo")

    def args(root, dataset=None, overrides=()):
        return argparse.Namespace(root=str(root), dataset=dataset, overrides=list(overrides))

    assert user_folder_instead_of_synthetic(args(mine), cfg)
    assert not user_folder_instead_of_synthetic(args(mine, dataset="synthetic"), cfg)
    assert not user_folder_instead_of_synthetic(args(mine, overrides=["data.dataset=synthetic"]), cfg)
    assert not user_folder_instead_of_synthetic(args(tmp_path / "new"), cfg)
    (mine / "synthetic.json").write_text("{}")
    assert not user_folder_instead_of_synthetic(args(mine), cfg)
    assert not user_folder_instead_of_synthetic(args(mine), load_config(None, ["data.dataset=folder"]))


def test_the_demo_yaml_is_the_preset_dumped():
    text = (CONFIGS / "demo.yaml").read_text()
    assert yaml.safe_load(text) == yaml.safe_load(yaml.safe_dump(PRESETS["demo"]))
