"""``pretrain()``: one Adam pretraining run, from its run folder to its report."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .._util import runfolder
from ..checkpoints import atomic_write_text
from ..data.synthetic import ensure_synthetic
from ..engine import NonFiniteLossError
from ..engine.distributed import ProcessContext
from .config import PretrainConfig, dump_config
from .loop import Trainer
from .resume import ResumeError, check_resumable, load_checkpoint

__all__ = ["prepare_run_folder", "pretrain", "set_backends"]


def _inputs(cfg: PretrainConfig) -> tuple:
    """What a run reads: its run folder must not be, or contain, one of them."""
    return cfg.data.root, cfg.data.cache


def prepare_run_folder(out: Path, cfg: PretrainConfig, fresh: bool) -> None:
    """Checks the (locked) run folder, claims it as a pretraining run (its marker, see
    :mod:`adam_ext._util.runfolder`) and writes its configuration; a fresh run starts its metrics."""
    runfolder.refuse_symlinks(out)
    runfolder.claim(out, "pretrain", inputs=_inputs(cfg))
    if fresh and (out / "last.pt").is_file():
        raise ValueError(
            f"out folder {str(out)!r} already holds a run (last.pt); pass --resume to "
            f"continue it or choose another out"
        )
    removed = runfolder.remove_stale_temps(out)
    if removed:
        print(
            f"adam pretrain: removed {len(removed)} temporary file(s) left by an interrupted run "
            f"({', '.join(p.name for p in removed[:3])}{', ...' if len(removed) > 3 else ''})",
            flush=True,
        )
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    if fresh:
        atomic_write_text(out / "metrics.jsonl", "")


def set_backends(cfg: PretrainConfig, device: torch.device) -> None:
    """The process-wide backend settings a run trains under: deterministic algorithms when
    ``cfg.deterministic``, else cuDNN's autotuner on a GPU (the view size is fixed). A benchmark that
    times the training step outside :func:`pretrain` sets the same."""
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed view size: let cuDNN pick its fastest kernels


def pretrain(cfg: PretrainConfig, resume=None, progress: bool = True, phase_timer=None) -> dict:
    """Runs Adam pretraining as configured (all stages), in this process or as one torchrun rank.

    Args:
        cfg: the configuration (see :mod:`adam_ext.config`).
        resume: a ``last.pt`` to continue from, ``"auto"`` (the run folder's ``last.pt`` if it
            exists), or None to start afresh.
        progress: show a tqdm bar per epoch on rank 0.
        phase_timer: None (default), or a :class:`~adam_ext.engine.PhaseTimer` that the loop tells
            where each training step's time goes (``benchmarks/bench_pretrain.py --e2e``).

    Returns:
        dict: ``interrupted`` (stopped by a signal or ``max_steps``), ``stages`` (per stage: n,
        gamma, best validation loss, seconds, images/s), ``best`` (the final weights' path),
        ``report``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (names the step; no checkpoint holds it).
        ResumeError: the resume file is missing, foreign or from another configuration (nothing in
            the run folder has changed).
        ValueError: a configuration that cannot run (e.g. a batch larger than the data set).
        adam_ext._util.runfolder.RunFolderError: another live process holds the run folder, or it holds a
            symbolic link; FolderKindError (a ValueError too): the folder is another command's (a
            fine-tuning folder...), or is or contains the data.
        OSError: a file could not be written (read-only folder, full disk); the message names it.
    """
    if not cfg.data.root:
        raise ValueError("data.root must name the folder of training images, got ''")
    ctx = ProcessContext(cfg.device, cfg.dist_timeout)
    failed = True
    try:
        set_backends(cfg, ctx.device)
        out = Path(cfg.out)
        if resume == "auto":
            resume = out / "last.pt" if (out / "last.pt").is_file() else None
        ckpt = None
        if resume is not None:  # accepted before anything in the run folder changes
            ckpt = load_checkpoint(resume)
            check_resumable(ckpt, cfg, resume)
        with contextlib.ExitStack() as held:
            if ctx.main:
                runfolder.check_folder(out, "pretrain", inputs=_inputs(cfg))  # before the lock file is made
                held.enter_context(runfolder.lock(out))  # one writer per folder, until the run ends
                prepare_run_folder(out, cfg, fresh=resume is None)
            if cfg.data.dataset == "synthetic":  # generated once (or again for an older generator's)
                if ctx.main:
                    ensure_synthetic(
                        cfg.data.root,
                        cfg.data.synthetic_n,
                        cfg.data.synthetic_size,
                        seed=cfg.seed,
                        log=lambda message: print(f"adam pretrain: {message}", flush=True),
                        features=cfg.data.film_features,
                    )
                ctx.barrier()
            summary = Trainer(cfg, ctx, progress, phase_timer).run(resume, ckpt)
        failed = False
        return summary
    except Exception as exc:
        if ctx.distributed and not isinstance(exc, (NonFiniteLossError, ResumeError)):
            raise RuntimeError(
                f"rank {ctx.rank}/{ctx.world} stopped: {type(exc).__name__}: {exc}. If another "
                f"rank crashed, its own error explains why; ranks give up waiting after "
                f"dist_timeout={cfg.dist_timeout:g} s"
            ) from exc
        raise
    finally:
        if not failed:  # after a failure, peers may be gone: tearing the group down could block
            ctx.close()
