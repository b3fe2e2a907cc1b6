"""Tiny pretraining runs shared by the engine's tests (test_train, test_reliability_run, test_faults):
resnet18 at 32 px, batch 4, K = 16, two stages of two epochs on 32 synthetic 64-px films."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from adam_ext.data.synthetic import generate
from adam_ext.pretrain.config import PretrainConfig

REPO = Path(__file__).resolve().parent.parent


def make_data(folder: Path) -> Path:
    return generate(
        folder, 32, size=64, seed=0, workers=1, progress=False
    )  # 23 training films: 5 steps an epoch


def tiny(data, out, **overrides) -> PretrainConfig:
    """The tiny configuration; ``section__field=value`` overrides one field of a section."""
    values = {
        "data": {"dataset": "synthetic", "root": str(data), "view_size": 32, "workers": 0},
        "model": {"backbone": "resnet18", "K": 16, "dim": 8, "mlp_hidden": 16},
        "optim": {"batch_size": 4, "epochs": 2},
        "stages": [0, 2],
        "out": str(out),
        "log_every": 2,
        "tensorboard": False,
        "checkpoint_every": 0,
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            values[section] = dict(values.get(section, {}), **{field: value})
        else:
            values[key] = value
    return PretrainConfig.from_dict(values)


def steps_per_epoch(data, batch=4):
    from adam_ext.data import open_dataset

    return len(open_dataset("synthetic", data, split="train")) // batch


def model_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def train_rows(out):
    return [r for r in rows(out) if "loss" in r]


def signal_after_rows(cfg: PretrainConfig, rows_: int, sig) -> tuple[int, str]:
    """Runs ``cfg`` as ``python -m adam_ext.cli pretrain`` (one thread, like reference_run), sends
    ``sig`` once ``rows_`` training rows are logged; returns (exit status, output)."""
    out = Path(cfg.out)
    config = out.parent / f"{out.name}.signal.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    command = [sys.executable, "-m", "adam_ext.cli", "pretrain", "--config", str(config), "--no-progress"]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and (
            not (out / "metrics.jsonl").is_file() or len(train_rows(out)) < rows_
        ):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        proc.send_signal(sig)
        output = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    return proc.returncode, output


def strip_timing(rows_):
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in rows_]
