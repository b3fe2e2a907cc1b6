"""One YAML number rule for every configuration: ``1e-3`` is a float in pretraining and fine-tuning
files and in ``key=value`` overrides (YAML 1.1 alone reads it as a string); strings stay strings."""

from __future__ import annotations

import pytest

from adam_ext.downstream import load_finetune_config
from adam_ext.pretrain.config import load_config, load_yaml, parse_override


@pytest.mark.parametrize(
    "text, value",
    [
        ("1e-3", 0.001),
        ("1E-3", 0.001),
        ("5e4", 50000.0),
        ("+2.5e-4", 2.5e-4),
        ("-1e3", -1000.0),
        ("1.0e-3", 0.001),
        ("1.e2", 100.0),
        (".5e1", 5.0),
        ("1_0e2", 1000.0),
        ("0.06", 0.06),
        ("3", 3),
        ("1.0e+3", 1000.0),
    ],
)
def test_exponent_forms_are_numbers(text, value):
    loaded = load_yaml(text, "test")
    assert loaded == value and type(loaded) is type(value)


@pytest.mark.parametrize(
    "text", ["'1e-3'", '"1e-3"', "e3", "1e", "1e-3x", "data/1e3", "runs/1e-3", "nan", "1e3.5"]
)
def test_strings_stay_strings(text):
    assert load_yaml(text, "test") == text.strip("'\"")


def test_pretraining_file_and_override(tmp_path):
    path = tmp_path / "pretrain.yaml"
    path.write_text("data:\n  root: runs/1e3\noptim:\n  lr: 1e-3\n  weight_decay: 5e-5\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == 5e-5
    assert cfg.data.root == "runs/1e3"  # a genuine string field stays a string
    cfg = load_config(None, ["optim.lr=2e-3", "out=1e-3-run"])
    assert cfg.optim.lr == 0.002 and cfg.out == "1e-3-run"
    assert parse_override("optim.lr=1e-3") == {"optim": {"lr": 0.001}}


def test_finetuning_file_and_override(tmp_path):
    path = tmp_path / "finetune.yaml"
    path.write_text("root: data/1e3\nlr: 1e-3\nweight_decay: 1e-4\ndist_timeout: 1e3\ninit: random\n")
    cfg = load_finetune_config(path)
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)
    assert cfg.weight_decay == 1e-4 and cfg.dist_timeout == 1000.0
    assert cfg.root == "data/1e3" and cfg.init == "random"
    cfg = load_finetune_config(None, ["root=x", "lr=2e-3", "val_fraction=2e-1"])
    assert (cfg.lr, cfg.val_fraction) == (0.002, 0.2)


def test_both_loaders_agree(tmp_path):
    """The same ``lr: 1e-3`` gives the same float in a pretraining and a fine-tuning file."""
    pre, fin = tmp_path / "pre.yaml", tmp_path / "fin.yaml"
    pre.write_text("optim:\n  lr: 1e-3\n")
    fin.write_text("root: x\nlr: 1e-3\n")
    assert load_config(pre).optim.lr == load_finetune_config(fin).lr == 0.001


def test_a_quoted_number_is_a_string_and_validation_names_the_field(tmp_path):
    path = tmp_path / "pretrain.yaml"
    path.write_text("optim:\n  lr: '1e-3'\n")
    with pytest.raises(ValueError, match=r"^optim.lr must be > 0, got '1e-3'"):
        load_config(path)
    with pytest.raises(ValueError, match=r"^lr must be > 0 or null, got '1e-3'"):
        load_finetune_config(None, ["root=x", "lr='1e-3'"])


def test_unsafe_tags_are_still_refused():
    with pytest.raises(ValueError, match="tags such as !!python are refused"):
        load_yaml("!!python/object/apply:os.system ['true']", "override 'x'")
