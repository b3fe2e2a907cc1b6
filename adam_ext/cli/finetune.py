"""``adam finetune cls|seg`` and ``adam compare cls|seg``: fine-tuning and comparing initialisations.

Configuration as for ``adam pretrain``: :class:`~.protocol.FinetuneConfig` defaults (the
paper's recipe), then ``--config`` YAML, then the flags, then ``KEY=VALUE`` overrides
(values in YAML, e.g. ``lr=1e-3 options.cache=/data/cache``).

Examples (on ``adam synth --out data/synth`` output)::

    adam finetune cls --dataset synthetic --data data/synth --arch resnet18 --size 64 --epochs 5
    adam finetune seg --data data/synth/scr --masks "heart,left clavicle,right clavicle" \\
        --init runs/adam/best.pt --arch resnet18 --size 64 --shots 8 --runs 3
    adam compare seg --data data/synth/scr --init random --init runs/adam/best.pt --runs 3 \\
        --arch resnet18 --size 64 --shots 8 --out runs/compare
"""

from __future__ import annotations

import argparse
import os
import sys

from .._util.escape import terminal
from .pretrain import check_seeds, input_file, seed_arg

__all__ = ["PARSERS", "add_recipe_arguments", "recipe_values"]

# flag dest -> config field (None values are not passed)
_FLAGS = {
    "dataset": "dataset",
    "root": "root",
    "arch": "arch",
    "size": "size",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "optimizer": "optimizer",
    "patience": "patience",
    "shots": "shots",
    "runs": "runs",
    "seed": "seed",
    "out": "out",
    "workers": "workers",
    "device": "device",
    "seg_mode": "seg_mode",
    "train_split": "train_split",
    "test_split": "test_split",
    "freeze_encoder": "freeze_encoder",
    "frozen_epochs": "frozen_epochs",
    "encoder_lr_scale": "encoder_lr_scale",
}


def add_recipe_arguments(parser, task: str | None) -> None:
    """The flags of the fine-tuning recipe: data set, encoder, schedule, few-shot and runs.

    Shared by ``adam finetune`` / ``adam compare`` and programs built on them
    (``python/experiments/gamma_ablation.py``); :func:`recipe_values` reads them back.

    Args:
        parser: an ``argparse`` parser or argument group.
        task: ``cls``, ``seg`` (adds ``--masks`` and ``--seg-mode``), or None for a program that
            takes the task as a flag of its own (adds them too).
    """
    default_dataset = {"cls": "chestxray14", "seg": "scr"}.get(task, "scr for seg, chestxray14 for cls")
    parser.add_argument("--dataset", help=f"data set name (default {default_dataset})")
    parser.add_argument("--data", dest="root", help="the data set's folder")
    parser.add_argument("--arch", help="ResNet of the encoder (default resnet50)")
    parser.add_argument("--size", type=int, help="input side in px (default 224; 512 for fundus)")
    parser.add_argument("--epochs", type=int, help="maximum epochs (default 100)")
    parser.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 10; 0: off)")
    parser.add_argument("--batch-size", type=int, help="global batch (default 32)")
    parser.add_argument(
        "--lr", type=float, help="learning rate (default 2.5e-4 cls, 2e-4 seg, 1e-3 with adam)"
    )
    parser.add_argument("--optimizer", choices=("adamw", "adam"), help="default adamw")
    parser.add_argument("--shots", type=int, help="few-shot: number of training images, drawn per seed")
    parser.add_argument("--runs", type=int, help="runs with seeds seed .. seed+runs-1 (default 1)")
    parser.add_argument("--seed", type=seed_arg, help="first seed (default 0; at most 2**63 - 1)")
    parser.add_argument("--train-split", help="override the data set's training split")
    parser.add_argument("--test-split", help="override the data set's test split")
    parser.add_argument("--workers", type=int, help="DataLoader workers per process (default 4)")
    parser.add_argument(
        "--freeze-encoder",
        action="store_true",
        default=None,
        help="frozen-encoder evaluation: the encoder stays as loaded (eval-mode BN, no gradient), "
        "only the head trains (cls: linear probe; seg: U-Net decoder)",
    )
    parser.add_argument(
        "--frozen-epochs",
        type=int,
        metavar="N",
        help="LP-FT: the encoder frozen as with --freeze-encoder for the first N epochs, "
        "then fine-tuned (default 0)",
    )
    parser.add_argument(
        "--encoder-lr-scale",
        type=float,
        metavar="S",
        help="the encoder's learning rate as a fraction of --lr (default 1)",
    )
    if task != "cls":
        parser.add_argument(
            "--masks", help="seg: comma-separated mask names (default: all of the data set's)"
        )
        parser.add_argument(
            "--seg-mode", choices=("multilabel", "multiclass"), help="seg: default multilabel"
        )


def recipe_values(args) -> dict:
    """The :class:`~.protocol.FinetuneConfig` fields given on the command line (flags left out are
    not included): those of :func:`add_recipe_arguments` and ``--out`` / ``--device`` where present."""
    values = {
        key: getattr(args, dest) for dest, key in _FLAGS.items() if getattr(args, dest, None) is not None
    }
    if getattr(args, "masks", None):
        values["masks"] = [m.strip() for m in args.masks.split(",") if m.strip()]
    return values


def _common(parser: argparse.ArgumentParser, task: str, multi_init: bool) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, values in YAML")
    parser.add_argument("--config", help="YAML file of FinetuneConfig fields")
    if multi_init:
        parser.add_argument(
            "--init",
            action="append",
            required=True,
            metavar="INIT",
            help="an initialisation, given twice or more; the first is the baseline of the t-tests",
        )
    else:
        parser.add_argument("--init", help="random (default), imagenet:PATH or a pretraining checkpoint PATH")
    add_recipe_arguments(parser, task)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    parser.add_argument("--out", help="output folder (default runs/finetune)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args, task: str):
    from ..downstream import load_finetune_config

    input_file(args.config, "--config", " (YAML)")
    base = {"task": task, **recipe_values(args)}
    if isinstance(getattr(args, "init", None), str):
        base["init"] = args.init
    cfg = load_finetune_config(args.config, args.overrides, base=base)
    check_seeds(cfg.seed, cfg.runs if isinstance(cfg.runs, int) and cfg.runs > 0 else 1)
    _check_options(cfg)
    return cfg


def _check_options(cfg) -> None:
    """Raises ValueError naming a key of ``options`` that the data set's reader does not take (a
    usage error, exit 2, rather than the reader's TypeError)."""
    from ..data.registry import check_options

    check_options(cfg.resolved().dataset, cfg.options)


def _main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _run_finetune(args) -> int:
    from ..downstream import finetune

    cfg = _config(args, args.task)
    result = finetune(cfg, progress=not args.no_progress)
    if _main():
        primary = result["primary"]
        s = result["summary"][primary]
        print(
            f"adam finetune {args.task}: test {primary} {s['mean']:.4f} ± {s['std']:.4f} over {s['n']} run(s)"
        )
        print(
            terminal(
                f"  results: {result['results_md']}  {result['results_json']}  curves: {result['curves']}"
            )
        )
    return 0


def _run_compare(args) -> int:
    from ..downstream import compare

    cfg = _config(args, args.task)
    result = compare(cfg, args.init, progress=not args.no_progress)
    if _main():
        with open(result["compare_md"]) as f:
            sys.stdout.write(terminal(f.read()))
        print(terminal(f"  files: {result['compare_json']}  {result['compare_md']}  {result['curves']}"))
    return 0


def finetune_parser(parser: argparse.ArgumentParser) -> None:
    """``adam finetune {cls,seg} ...``."""
    parser.description = (
        "Fine-tune an encoder (random, ImageNet file or pretraining checkpoint) on a downstream "
        "task with the paper's protocol: early stopping on 10%% of the training set, test metrics "
        "of the best epoch, --runs seeds with mean ± std, --shots few-shot subsets."
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True
    for task, text in (
        ("cls", "classification: encoder + linear head, AUC"),
        ("seg", "segmentation: U-Net, Dice and IoU"),
    ):
        sub = tasks.add_parser(task, help=text, description=f"adam finetune {task}: {text}")
        _common(sub, task, multi_init=False)
        sub.set_defaults(func=_run_finetune)


def compare_parser(parser: argparse.ArgumentParser) -> None:
    """``adam compare {cls,seg} --init A --init B ...``."""
    parser.description = (
        "Fine-tune each --init under the same seeds and report mean ± std per test metric and an "
        "independent two-sample t-test (scipy) of each against the first."
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True
    for task in ("cls", "seg"):
        sub = tasks.add_parser(
            task, help=f"compare on a {'classification' if task == 'cls' else 'segmentation'} task"
        )
        _common(sub, task, multi_init=True)
        sub.set_defaults(func=_run_compare)


PARSERS = {"finetune": finetune_parser, "compare": compare_parser}
