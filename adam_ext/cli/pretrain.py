"""``adam pretrain`` and ``adam report``: Adam pretraining and its run report."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

#: Exit status of ``adam pretrain`` stopped by a signal (128 + its number, the shell's convention):
#: 143 for SIGTERM (a scheduler's pre-emption), 130 for SIGINT (Ctrl-C). A finished run, and one
#: that reached ``max_steps``, exits 0; errors exit 1 (failures) or 2 (usage).
STOPPED_EXIT = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}

#: The seeds every ``--seed`` takes: 63-bit, what the seed mixer (``adam_ext._util.seeds``) and torch use.
SEED_LIMIT = 2**63


def seed_arg(text: str) -> int:
    """The argparse ``type`` of every ``--seed``: an int in [0, 2**63 - 1], else a usage error that
    says the range (not "Overflow when unpacking long long")."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < SEED_LIMIT:
        shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
        raise argparse.ArgumentTypeError(
            f"must be an integer in [0, 2**63 - 1] = [0, {SEED_LIMIT - 1}], got {shown}"
        )
    return value


def check_seeds(first: int, count: int = 1, name: str = "seed") -> None:
    """Raises ValueError unless seeds ``first .. first + count - 1`` all lie in [0, 2**63 - 1]."""
    if isinstance(first, int) and isinstance(count, int) and not 0 <= first <= SEED_LIMIT - max(1, count):
        what = f"{name} + runs - 1 = {first + count - 1}" if count > 1 else f"{name} = {first}"
        raise ValueError(f"seeds must be integers in [0, 2**63 - 1] = [0, {SEED_LIMIT - 1}], got {what}")


def input_file(path, flag: str, hint: str = "") -> None:
    """Raises ValueError when the file argument ``path`` of ``flag`` is a folder (say so, rather than
    "does not exist"); a missing file is left to the reader, whose message names it."""
    if path is not None and os.path.isdir(path):
        raise ValueError(f"{flag} {os.fspath(path)!r} is a folder, expected a file{hint}")


# flag dest -> configuration key
_FLAGS = {
    "root": "data.root",
    "dataset": "data.dataset",
    "out": "out",
    "epochs": "optim.epochs",
    "batch_size": "optim.batch_size",
    "backbone": "model.backbone",
    "monitor_every": "monitor.every",
}


def user_folder_instead_of_synthetic(args, cfg) -> bool:
    """True when ``--data DIR`` names the user's own images under a configuration (a preset's) that
    would generate synthetic films into it: DIR exists, no `adam synth` made it, and neither --dataset
    nor an override chose the data set."""
    if args.root is None or args.dataset is not None or cfg.data.dataset != "synthetic":
        return False
    if any(o.split("=", 1)[0].strip() in ("data.dataset", "data") for o in args.overrides):
        return False
    root = Path(args.root)
    return root.is_dir() and not (root / "synthetic.json").is_file() and any(root.iterdir())


def pretrain_parser(p: argparse.ArgumentParser) -> None:
    """``adam pretrain [KEY=VALUE ...] [--config YAML] [--preset demo] [--resume [LAST.pt]] ...``."""
    p.description = (
        "Adam pretraining. Configuration: defaults (the paper's protocol), then --preset, then "
        "--config YAML, then the flags below, then KEY=VALUE overrides (e.g. optim.epochs=50)."
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, values in YAML"
    )
    p.add_argument("--config", help="YAML file of settings")
    p.add_argument(
        "--preset", help="named starting point: demo (a 2-core CPU) or paper (the official code's behaviour)"
    )
    p.add_argument(
        "--data",
        dest="root",
        help="data.root: folder of images (an existing folder that no "
        "`adam synth` made is read as data.dataset=folder unless "
        "--dataset says otherwise)",
    )
    p.add_argument("--dataset", help="data.dataset (default folder)")
    p.add_argument("--out", help="run folder")
    p.add_argument("--stages", help="comma-separated decomposer grids, e.g. 0,2,4")
    p.add_argument("--epochs", type=int, help="optim.epochs of each stage")
    p.add_argument("--batch-size", type=int, help="optim.batch_size (global)")
    p.add_argument("--backbone", help="model.backbone")
    p.add_argument(
        "--monitor-every",
        type=int,
        metavar="STEPS",
        help="monitor.every: also run the representation monitors every STEPS steps (they always "
        "run at the end of each epoch)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="continue from LAST.pt (default: OUT/last.pt). Exit status: 0 finished (or max_steps "
        "reached), 143 stopped by SIGTERM and 130 by SIGINT (checkpoint saved: resume), "
        "1 failure, 2 usage error",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_pretrain)


def run_pretrain(args) -> int:
    from ..pretrain import NonFiniteLossError, ResumeError, pretrain
    from ..pretrain.config import load_config

    if args.resume not in (None, "auto") and "=" in args.resume and not Path(args.resume).exists():
        # `--resume optim.lr=0.5`: the optional value of --resume swallowed an override
        args.overrides = [args.resume, *args.overrides]
        args.resume = "auto"
    input_file(args.config, "--config", " (YAML)")
    if args.resume not in (None, "auto"):
        input_file(args.resume, "--resume", f" (a checkpoint: {os.path.join(args.resume, 'last.pt')}?)")
    overrides = [
        f"{key}={getattr(args, dest)}" for dest, key in _FLAGS.items() if getattr(args, dest) is not None
    ]
    if args.stages is not None:
        overrides.append(f"stages=[{args.stages}]")
    cfg = load_config(args.config, overrides + list(args.overrides), preset=args.preset)
    if user_folder_instead_of_synthetic(args, cfg):
        overrides.append("data.dataset=folder")
        cfg = load_config(args.config, overrides + list(args.overrides), preset=args.preset)
        print(
            f"adam pretrain: --data {args.root}: reading its images (data.dataset=folder); the preset's "
            f"synthetic data are generated only into a new folder or an `adam synth` output",
            flush=True,
        )
    try:
        summary = pretrain(cfg, resume=args.resume, progress=not args.no_progress)
    except (NonFiniteLossError, ResumeError, RuntimeError) as exc:
        from . import error_message

        print(f"adam pretrain: error: {error_message(exc)}", file=sys.stderr, flush=True)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        _print_summary(summary)
    if summary["interrupted"] and summary.get("stopped_by") != "max_steps":
        return STOPPED_EXIT.get(
            summary.get("stopped_by"), STOPPED_EXIT["SIGTERM"]
        )  # a peer rank's signal too
    return 0


def _print_summary(summary: dict) -> None:
    if summary["interrupted"]:
        return
    print("adam pretrain: done")
    for s in summary["stages"]:
        mon = s.get("monitor") or {}
        shown = "".join(
            f", {k} {mon[k]:.3g}" for k in ("knn_landmark", "knn_auc", "knn_accuracy", "rankme") if k in mon
        )
        print(
            f"  stage {s['stage']} n={s['n']} gamma={s['gamma']}: best val loss {s['best_val_loss']:.4f}, "
            f"{s['seconds']:.0f} s, {s['images_per_s']} images/s{shown}"
        )
    print(
        f"  weights: {summary['best']}  (export: adam export {summary['best']} --format torchvision OUT.pth)"
    )
    print(f"  report:  {summary['report']}")


def report_parser(p: argparse.ArgumentParser) -> None:
    """``adam report RUN``."""
    p.add_argument("run", help="a pretraining run folder")
    p.set_defaults(func=run_report)


def run_report(args) -> int:
    from ..pretrain import report

    print(report.write_report(args.run))
    return 0


PARSERS = {"pretrain": pretrain_parser, "report": report_parser}
