"""Digests of a fixed tiny pretraining + fine-tuning run: the yardstick of a restructuring.

Runs, on one CPU thread, a two-stage Adam pretraining (resnet18, 32-px views, 32 synthetic films)
and a 3-epoch segmentation fine-tuning from its best weights, and prints (or writes with --out)
the SHA-256 of every resulting state dict (tensors in key order, bytes and dtype and shape). The
same digests before and after a change of the code's layout show that behaviour did not change.

    python python/tools/run_digests.py --out benchmarks/results/restructure_digests.json
    python python/tools/run_digests.py --check benchmarks/results/restructure_digests.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch


def state_digest(state: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            h.update(f"{value.dtype}{tuple(value.shape)}".encode())
            h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def run(work: Path) -> dict:
    from adam_ext.data.synthetic import generate
    from adam_ext.downstream import FinetuneConfig, finetune
    from adam_ext.pretrain import pretrain
    from adam_ext.pretrain.config import PretrainConfig

    torch.set_num_threads(1)
    data = generate(work / "data", 32, size=64, seed=3, workers=1, progress=False)
    cfg = PretrainConfig.from_dict(
        {
            "data": {"dataset": "synthetic", "root": str(data), "view_size": 32, "workers": 0},
            "model": {"backbone": "resnet18", "K": 16, "dim": 8, "mlp_hidden": 16},
            "optim": {"batch_size": 4, "epochs": 1},
            "stages": [0, 2],
            "out": str(work / "pretrain"),
            "log_every": 2,
            "tensorboard": False,
            "checkpoint_every": 0,
        }
    )
    pretrain(cfg, progress=False)
    ft = FinetuneConfig(
        task="seg",
        dataset="scr",
        root=str(data / "scr"),
        arch="resnet18",
        size=32,
        epochs=3,
        batch_size=4,
        workers=0,
        lr=1e-3,
        runs=1,
        seed=0,
        init=str(work / "pretrain" / "best.pt"),
        out=str(work / "finetune"),
        save_weights=True,
        device="cpu",
    )
    result = finetune(ft, progress=False)
    load = lambda p: torch.load(p, map_location="cpu", weights_only=True)  # noqa: E731
    digests = {
        "pretrain/stage0_n0/best.pt": state_digest(load(work / "pretrain/stage0_n0/best.pt")["model"]),
        "pretrain/best.pt": state_digest(load(work / "pretrain/best.pt")["model"]),
        "pretrain/last.pt": state_digest(load(work / "pretrain/last.pt")["model"]),
        "finetune/seed0/best.pt": state_digest(load(work / "finetune/seed0/best.pt")["model"]),
    }
    digests["finetune test mean_dice"] = repr(result["runs"][0]["test"]["mean_dice"])
    return digests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the digests to this JSON file")
    parser.add_argument("--check", help="compare with the digests in this JSON file (exit 1 if any differs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        digests = run(Path(work))
    print(json.dumps(digests, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(digests, indent=2) + "\n")
    if args.check:
        expected = json.loads(Path(args.check).read_text())
        differ = [k for k in expected if expected[k] != digests.get(k)]
        print("identical" if not differ else f"DIFFERENT: {differ}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
