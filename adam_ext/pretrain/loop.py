"""The pretraining loop: stages of epochs of steps. :class:`Trainer` only wires its components.

* data: :class:`~adam_ext.pretrain.parts.RunData` (splits, loaders of two views at any position);
* the model: MoCo with its fused loss (:mod:`adam_ext.models`), one optimiser and schedule a stage;
* checkpoints: an :class:`~adam_ext.engine.checkpointer.Checkpointer` (``last.pt``, each stage's
  ``best.pt``, snapshots), shared with fine-tuning;
* validation and monitors: :class:`~adam_ext.pretrain.validator.Validator`;
* the step log: :class:`~adam_ext.pretrain.steplog.StepLog` (windows, non-finite stop, pruner warning).
* the end of a run (``best.pt``, summary.json, the report): :func:`~adam_ext.pretrain.finish.finish_run`.

A stage runs as :meth:`Trainer.begin_stage`, then per epoch :meth:`Trainer.train_epoch` (steps, logging
windows, due checkpoints) and :meth:`Trainer.end_epoch` (validation, best weights, ``last.pt``), until
the stage ends or a signal or ``max_steps`` stops it. :meth:`Trainer.train_step` is one optimiser step
(what a benchmark times).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch

from ..engine import MetricsLog, amp_dtype, autocast
from ..engine.checkpointer import Checkpointer
from ..engine.distributed import ProcessContext, resolve_workers
from .config import PretrainConfig
from .finish import finish_run
from .parts import (  # noqa: F401  (the parts' earlier home: still importable from here)
    RunData,
    Stopper,
    build_model,
    initial_knn,
    initial_model,
    knn_at_scales,
    open_splits,
    stage_monitor,
)
from .resume import checkpoint_wrapper, restore_run
from .stage import StageRun
from .steplog import StepLog, Window, epoch_bar
from .validator import Validator

__all__ = ["StageRun", "Trainer"]


class Trainer:
    """Runs the stages of one pretraining run (see the module's docstring).

    Args:
        cfg: the configuration.
        ctx: this process's rank, world and device.
        progress: show a tqdm bar per epoch (rank 0).
        phase_timer: None (default), or a :class:`~adam_ext.engine.PhaseTimer` told the phases of
            every training step (:data:`~adam_ext.engine.STEP_PHASES`) and, as ``epoch end``, the time
            between an epoch's last step and the next epoch's first (validation, checkpoints).
    """

    def __init__(self, cfg: PretrainConfig, ctx: ProcessContext, progress: bool, phase_timer=None):
        self.cfg, self.ctx, self.progress, self.phase_timer = cfg, ctx, progress and ctx.main, phase_timer
        self.out, self.device = Path(cfg.out), ctx.device
        self.global_batch = cfg.optim.batch_size
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        if cfg.amp in ("bf16", "fp16") and self.device.type != "cuda":
            warnings.warn(
                f"amp={cfg.amp!r} applies on GPU only; training in float32 on {self.device}", stacklevel=2
            )
        workers = resolve_workers(cfg.data.workers)
        if cfg.data.workers == "auto" and ctx.main:
            print(f"adam pretrain: data.workers=auto: {workers} loader worker(s) per rank", flush=True)
        self.data = RunData(cfg, ctx.world, ctx.rank, workers, pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = self.data.steps_per_epoch
        self.effective_queue = self.data.queue_capacity(cfg.model.K, say=ctx.main)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, ctx.distributed).to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model.phase_timer = phase_timer  # marks the parts of MoCo.forward
        self.metrics = MetricsLog(self.out, ctx.main, cfg.tensorboard)
        # git is looked up once: the code that runs is the code loaded now
        wrap = checkpoint_wrapper(cfg, ctx.world, self.data.sizes())
        self.checkpoints = Checkpointer(main=ctx.main, barrier=ctx.barrier, wrap=wrap)
        self.validator = Validator(
            cfg, ctx, self.model, self.data, self.metrics, self._to_device, self._autocast, self._global_step
        )
        self.steplog = StepLog(
            ctx,
            self.metrics,
            self.out,
            self.global_batch,
            self._global_step,
            lambda: self.validator.headline,
            len(cfg.stages) * cfg.optim.epochs * self.steps_per_epoch,
        )
        self.summary: list[dict] = []
        self.stopped_by: str | None = None  # what interrupted the run: a signal's name or "max_steps"
        self.stage_run: StageRun | None = None  # the stage in progress (begin_stage)

    # -- plumbing ---------------------------------------------------------------------------------

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _state(self, s: StageRun, step_in_epoch: int) -> dict:
        """What ``last.pt`` holds to resume at step ``step_in_epoch`` of the epoch ``s`` is in."""
        return s.state(
            self.model,
            step_in_epoch,
            self.steps_per_epoch,
            self.summary,
            self.steplog.collapsed,
            self.validator.collapsed,
        )

    def _global_step(self, stage: int, step: int) -> int:
        return stage * self.cfg.optim.epochs * self.steps_per_epoch + step

    def _mark(self, phase: str) -> None:
        if self.phase_timer is not None:
            self.phase_timer.mark(phase)

    # -- a stage ----------------------------------------------------------------------------------

    def begin_stage(self, stage: int, resume: dict | None = None) -> StageRun:
        """A stage's optimiser, schedule and position (from ``resume`` when given); logs where it starts."""
        cfg, ctx = self.cfg, self.ctx
        s = StageRun.create(
            cfg, stage, self.model, ctx, self.steps_per_epoch, self.amp_dtype, self.out, resume
        )
        if ctx.main:
            s.stage_dir.mkdir(parents=True, exist_ok=True)
            s.announce(cfg, self.steps_per_epoch, ctx.world, self.device, self.effective_queue)
        self.validator.begin_stage(stage)
        if s.epoch == 0 and s.start == 0 and cfg.monitor.enabled:
            self.validator.measure_start(stage, s.val_gamma)
        s.t0 = time.perf_counter()
        self.stage_run = s
        return s

    def train_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimiser step of the stage in progress on ``batch`` = (query views, key views), each
        Tensor[B, 3, S, S] on any device; returns (loss, pruned fraction, lr), the first two on the device."""
        s = self.stage_run
        im_q, im_k = (self._to_device(x) for x in batch)
        self._mark("H2D copy")
        with self._autocast():
            out = s.ddp(im_q, im_k, gamma=s.gamma)
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(out["loss"]).backward()
        self._mark("backward")
        s.scaler.step(s.optimizer)
        s.scaler.update()
        lr = s.scheduler.get_last_lr()[0]
        s.scheduler.step()
        self._mark("optimiser")
        return out["loss"].detach().float(), out["pruned"].float().mean() / self.cfg.model.K, lr

    def train_epoch(self, s: StageRun, stopper: Stopper) -> tuple[bool, int]:
        """Trains epoch ``s.epoch`` from step ``s.start``; logs every window and checkpoints as due.
        Returns (stopped by a signal or max_steps, steps of the epoch done)."""
        cfg, spe, timer = self.cfg, self.steps_per_epoch, self.phase_timer
        self.model.train()
        bar = (
            epoch_bar(spe, s.start, f"stage {s.stage} n={s.n} epoch {s.epoch + 1}/{cfg.optim.epochs}")
            if self.progress
            else None
        )
        window, step_in_epoch, stopped = Window(), s.start, False
        if timer is not None:
            timer.mark_between("epoch end")  # since the previous epoch's last step (0 s at a run's start)
        for batch in self.data.loader(s.stage, s.epoch, s.start, train=True):
            self._mark("data wait")
            step = s.epoch * spe + step_in_epoch
            loss, pruned, lr = self.train_step(batch)
            window.add(loss, pruned, step, lr)
            step_in_epoch += 1
            s.images_seen += self.global_batch
            if bar is not None:
                bar.update(1)
            if cfg.monitor.every and (step + 1) % cfg.monitor.every == 0 and step_in_epoch < spe:
                self.validator.measure(s.stage, s.epoch + 1, step + 1, s.val_gamma)
                self.model.train()
            limit_hit = cfg.max_steps and step + 1 >= cfg.max_steps
            due_ckpt = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0
            if (
                len(window.losses) >= cfg.log_every
                or due_ckpt
                or step_in_epoch == spe
                or limit_hit
                or (stopper.signal is not None and not self.ctx.distributed)
            ):
                stopped = self.steplog.flush(s.stage, s.n, s.epoch, window, bar, stopper) or bool(limit_hit)
                window = Window()
                if not stopped and due_ckpt and step_in_epoch < spe:
                    self.checkpoints.save(self.out / "last.pt", self._state(s, step_in_epoch))
            if timer is not None:
                timer.end_step("logging/other")
            if stopped:
                break
        if bar is not None:
            bar.close()
        return stopped, step_in_epoch

    def end_epoch(self, s: StageRun) -> None:
        """Validates, keeps the best and the snapshot, logs, moves ``s`` to the next epoch (recording
        the stage's summary after its last one) and saves ``last.pt``."""
        cfg = self.cfg
        epoch, step = s.epoch + 1, (s.epoch + 1) * self.steps_per_epoch
        val, values = self.validator.measure(s.stage, epoch, step, s.val_gamma)
        snapshot = self.out / "snapshots" / f"{s.stage_dir.name}_epoch{epoch}.pt" if cfg.snapshots else None
        is_best = s.keep(self.checkpoints, self.model, epoch, step, val, snapshot)
        self.validator.log_loss(s.stage, epoch, step, val, is_best)
        if values is not None:
            s.last_monitor = values
        self.validator.report(
            f"stage {s.stage} n={s.n} epoch {epoch}/{cfg.optim.epochs}", val, is_best, values
        )
        s.epoch, s.start = epoch, 0
        if s.epoch == cfg.optim.epochs:  # recorded before the last save, so a resume keeps it
            self.summary.append(
                s.summary(
                    cfg.optim.epochs, s.stage in self.steplog.collapsed, s.stage in self.validator.collapsed
                )
            )
        self.checkpoints.save(self.out / "last.pt", self._state(s, 0))

    def run_stage(self, stage: int, resume: dict | None) -> bool:
        """Trains one stage; returns False when stopped by a signal or ``max_steps``."""
        s = self.begin_stage(stage, resume)
        with Stopper() as stopper:
            while s.epoch < self.cfg.optim.epochs:
                stopped, step_in_epoch = self.train_epoch(s, stopper)
                if stopped and step_in_epoch < self.steps_per_epoch:
                    self.checkpoints.save(self.out / "last.pt", self._state(s, step_in_epoch))
                    step = s.epoch * self.steps_per_epoch + step_in_epoch
                    where = f"at stage {stage} step {step}; checkpoint {self.out / 'last.pt'}"
                else:
                    self.end_epoch(s)
                    if not stopped:
                        continue
                    where = f"after stage {stage} epoch {s.epoch}"  # the stop came at the epoch's last step
                self.stopped_by = stopper.report(where, self.cfg.max_steps, self.ctx.main)
                return False
        return True

    # -- the whole run -----------------------------------------------------------------------------

    def run(self, resume_path=None, ckpt=None) -> dict:
        """Runs the stages, from the start or from ``ckpt`` (the checkpoint at ``resume_path``,
        already checked by :func:`~adam_ext.pretrain.resume.check_resumable`)."""
        cfg, stage, resume = self.cfg, 0, None
        if resume_path is not None:
            stage, resume = restore_run(self, ckpt, resume_path)
        interrupted = False
        while stage < len(cfg.stages):
            if not self.run_stage(stage, resume):
                interrupted = True
                break
            resume, stage = None, stage + 1
            if stage < len(cfg.stages):
                self.init_next_stage(stage - 1)
        self.data.close()
        self.metrics.close()
        return self._finish(interrupted)

    def init_next_stage(self, stage: int) -> None:
        """The stage after ``stage`` starts from its state (both encoders, BN statistics, queue and
        pointer) at the end of its last epoch (``stage_init: last``, the official code's chaining: the
        model as it is now) or from its best weights by validation (``best``)."""
        if self.cfg.stage_init == "best":
            path = self.out / f"stage{stage}_n{self.cfg.stages[stage]}" / "best.pt"
            self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])

    def _finish(self, interrupted: bool) -> dict:
        """The run's summary; after the last stage, ``best.pt``, summary.json and the report."""
        return finish_run(
            self.cfg,
            self.ctx,
            self.checkpoints,
            self.summary,
            self.steplog.estimate,
            interrupted,
            self.stopped_by,
        )
