"""Resuming a pretraining run: reading its checkpoint, checking it fits the configuration, the RNG state."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from .. import __version__
from .._util.provenance import git_commit
from .._util.seeds import SPLIT_VERSION
from ..checkpoints import PRETRAIN_KIND, PRETRAIN_VERSION
from .config import PretrainConfig, config_differences

__all__ = [
    "RESUMABLE_CHANGES",
    "ResumeError",
    "check_resumable",
    "checkpoint_wrapper",
    "load_checkpoint",
    "restore_run",
    "rng_state",
    "set_rng_state",
    "versions",
]

#: Fields that may differ between a checkpoint's config and the resuming run's.
RESUMABLE_CHANGES = {
    "out",
    "log_every",
    "checkpoint_every",
    "tensorboard",
    "dist_timeout",
    "max_steps",
    "snapshots",
    "data.workers",
    "data.root",
    "data.cache",
    "monitor.enabled",
    "monitor.every",
    "monitor.images",
    "monitor.knn_images",
    "monitor.k",
    "monitor.temperature",
}


class ResumeError(ValueError):
    """A resume file that is missing, not ours, or from a different configuration."""


def load_checkpoint(path) -> dict:
    """Loads one of our pretraining checkpoints with ``weights_only=True``.

    Raises:
        ResumeError: no such file, or not an adam_ext pretraining checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"resume file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ResumeError(
            f"resume file {str(path)!r} is empty (0 bytes), not a checkpoint; a run's own "
            f"checkpoints are written atomically and are never empty"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ResumeError(f"resume file {str(path)!r} cannot be read as a checkpoint: {reason}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != PRETRAIN_KIND:
        raise ResumeError(
            f"resume file {str(path)!r} is not an adam_ext pretraining checkpoint "
            f"(expected kind {PRETRAIN_KIND!r}); to start from other weights use model.weights"
        )
    if ckpt.get("version") != PRETRAIN_VERSION:
        raise ResumeError(
            f"resume file {str(path)!r} has checkpoint version {ckpt.get('version')}, "
            f"this adam_ext reads version {PRETRAIN_VERSION}"
        )
    return ckpt


def check_resumable(ckpt: dict, cfg: PretrainConfig, path) -> None:
    """Raises :class:`ResumeError` when the checkpoint was written under another split version
    (:data:`adam_ext._util.seeds.SPLIT_VERSION`: its validation images and views differ), or naming
    the fields where ``cfg`` differs from the checkpoint's configuration, beyond those a resume may
    change (:data:`RESUMABLE_CHANGES`)."""
    made = ckpt.get("split_version", 1)  # checkpoints before split version 2 did not record theirs
    if made != SPLIT_VERSION:
        raise ResumeError(
            f"resume file {str(path)!r} was written under split version {made}, this adam_ext uses "
            f"split version {SPLIT_VERSION} (other validation images, data order and views): "
            f"the run cannot continue exactly; start a new run folder (see CHANGELOG.md)"
        )
    differ = config_differences(ckpt["config"], cfg.to_dict(), RESUMABLE_CHANGES)
    if differ:
        details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in list(differ.items())[:6])
        raise ResumeError(
            f"resume file {str(path)!r} was written by a different configuration ({details}); "
            f"resume with the run's own config.yaml or start a new run folder"
        )


def versions() -> dict:
    """The versions a checkpoint records: adam_ext, torch, Python and the git commit of the code
    (:func:`adam_ext.provenance.git_commit`: ``unknown`` outside a checkout). Runs git: call it once
    per run, not per checkpoint."""
    return {
        "adam_ext": __version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }


def checkpoint_wrapper(cfg: PretrainConfig, world: int, data_sizes: dict):
    """What every checkpoint file of a run holds around its state (a ``Checkpointer``'s ``wrap``): kind,
    format version, configuration, :func:`versions` (looked up now, once), world size, data sizes and the
    split version."""
    header = {
        "kind": PRETRAIN_KIND,
        "version": PRETRAIN_VERSION,
        "config": cfg.to_dict(),
        "versions": versions(),
        "world_size": world,
        "data": data_sizes,
        "split_version": SPLIT_VERSION,
    }
    return lambda state: {**header, **state}


def rng_state() -> dict:
    """torch's generator states (CPU, and every GPU's), as a checkpoint keeps them."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_run(trainer, ckpt: dict, path) -> tuple[int, dict | None]:
    """Puts ``trainer`` (a :class:`~adam_ext.pretrain.loop.Trainer`) back where ``ckpt`` left its run:
    weights, queue, summary and warnings so far, the metric log cut after the checkpoint's step.

    Returns:
        (stage to run, its resume state; None when the checkpoint's stage had finished: the next stage
        then starts afresh, from the finished one's state as ``stage_init`` says).
    """
    trainer.model.load_state_dict(ckpt["model"])
    trainer.summary = list(ckpt.get("summary", []))
    trainer.steplog.collapsed = set(ckpt.get("collapsed", []))
    trainer.validator.collapsed = set(ckpt.get("monitor_collapsed", []))
    stage, finished = ckpt["stage"]["index"], ckpt["epoch"] >= trainer.cfg.optim.epochs
    if trainer.ctx.main:
        print(f"adam pretrain: resuming from {path} (stage {stage}, step {ckpt['step']})", flush=True)
    trainer.metrics.truncate_after(stage, ckpt["step"])
    if not finished:
        return stage, ckpt
    set_rng_state(ckpt["rng"])
    if stage + 1 < len(trainer.cfg.stages):
        trainer.init_next_stage(stage)
    return stage + 1, None
