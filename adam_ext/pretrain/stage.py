"""One stage of a pretraining run: its optimiser, schedule, scaler, position and results so far."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..engine import cosine_schedule
from ..engine.checkpointer import Checkpointer
from .config import PretrainConfig
from .resume import rng_state, set_rng_state

__all__ = ["StageRun", "new_optimizer"]


def new_optimizer(cfg: PretrainConfig, model, steps_per_epoch: int):
    """(optimiser, schedule) of a stage: SGD (the paper's) or AdamW at ``lr * batch / 256``
    (``optim.lr_scaling: none``: ``lr``) over the query encoder's trainable parameters
    (``model.frozen``'s stay out), warm-up then cosine decay, every step or once an epoch."""
    o = cfg.optim
    lr = o.lr * o.batch_size / 256 if o.lr_scaling == "linear" else o.lr
    params = [p for p in model.encoder_q.parameters() if p.requires_grad]
    if o.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    warmup = round(o.warmup_epochs * steps_per_epoch)
    unit = steps_per_epoch if o.schedule_unit == "epoch" else 1
    return optimizer, cosine_schedule(optimizer, o.epochs * steps_per_epoch, warmup, unit)


@dataclass
class StageRun:
    """Where one stage stands: its optimiser, schedule, scaler, position and results so far.

    ``best`` keeps the stage's lowest validation loss (a :class:`~adam_ext.engine.checkpointer.Checkpointer`'s
    policy); ``ddp`` is the model, wrapped in DistributedDataParallel under torchrun.
    """

    stage: int
    n: int
    gamma: float | None
    val_gamma: float | None
    ddp: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    stage_dir: Path
    best: Checkpointer
    epoch: int = 0
    start: int = 0  # first step of the current epoch (a resumed epoch starts mid-way)
    t0: float = 0.0
    images_seen: int = 0
    last_monitor: dict | None = None

    @classmethod
    def create(
        cls,
        cfg: PretrainConfig,
        stage: int,
        model,
        ctx,
        steps_per_epoch: int,
        amp_dtype,
        out: Path,
        resume: dict | None = None,
    ) -> StageRun:
        """A new stage ``stage`` of ``model``, or the one ``resume`` (a ``last.pt``) stopped in."""
        device = ctx.device
        n = cfg.stages[stage]
        gamma = cfg.gamma_for(n)
        ddp = (
            nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )
            if ctx.distributed
            else model
        )
        optimizer, scheduler = new_optimizer(cfg, model, steps_per_epoch)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
        s = cls(
            stage=stage,
            n=n,
            gamma=gamma,
            val_gamma=gamma if cfg.val_pruning else None,
            ddp=ddp,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            stage_dir=out / f"stage{stage}_n{n}",
            best=Checkpointer(main=ctx.main),
        )
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if resume.get("scaler"):
                scaler.load_state_dict(resume["scaler"])
            s.epoch, s.start, s.best.best = resume["epoch"], resume["step_in_epoch"], resume["best_val"]
            set_rng_state(resume["rng"])
        return s

    def state(
        self,
        model,
        step_in_epoch: int,
        steps_per_epoch: int,
        summary: list,
        collapsed: set,
        monitor_collapsed: set,
    ) -> dict:
        """What ``last.pt`` holds to resume at step ``step_in_epoch`` of epoch ``self.epoch``."""
        return {
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng_state(),
            "stage": {"index": self.stage, "n": self.n},
            "epoch": self.epoch,
            "step_in_epoch": step_in_epoch,
            "step": self.epoch * steps_per_epoch + step_in_epoch,
            "best_val": self.best.best,
            "summary": list(summary),
            "collapsed": sorted(collapsed),
            "monitor_collapsed": sorted(monitor_collapsed),
        }

    def announce(
        self, cfg: PretrainConfig, steps_per_epoch: int, world: int, device, queue_images: int
    ) -> None:
        """Prints where the stage starts and what it will do."""
        print(
            f"adam pretrain: stage {self.stage + 1}/{len(cfg.stages)}: n={self.n}, gamma={self.gamma}, "
            f"{cfg.optim.epochs} epochs x {steps_per_epoch} steps of {cfg.optim.batch_size} images ({world} "
            f"rank(s) on {device.type}); queue K={cfg.model.K} holds at most {queue_images} distinct training images",
            flush=True,
        )

    def keep(self, checkpoints, model, epoch: int, step: int, val: float, snapshot: Path | None) -> bool:
        """Saves the model's weights as the stage's ``best.pt`` when ``val`` improves on its best, and as
        ``snapshot`` when given; returns whether ``val`` improved."""
        is_best = self.best.improves(val)
        weights = {
            "model": model.state_dict(),
            "stage": {"index": self.stage, "n": self.n},
            "epoch": epoch,
            "step": step,
            "val_loss": val,
        }
        if is_best:
            checkpoints.save(self.stage_dir / "best.pt", weights)
        if snapshot is not None:
            checkpoints.save(snapshot, weights)
        return is_best

    def summary(self, epochs: int, collapse_warning: bool, monitor_collapse_warning: bool) -> dict:
        """The stage's line of ``summary.json``."""
        seconds = time.perf_counter() - self.t0
        return {
            "stage": self.stage,
            "n": self.n,
            "gamma": self.gamma,
            "epochs": epochs,
            "best_val_loss": self.best.best,
            "best": str(self.stage_dir / "best.pt"),
            "collapse_warning": collapse_warning,
            "monitor_collapse_warning": monitor_collapse_warning,
            "monitor": self.last_monitor,
            "seconds": round(seconds, 1),
            "images_per_s": round(self.images_seen / seconds, 1) if self.images_seen else None,
        }
