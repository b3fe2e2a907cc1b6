"""The pretraining loop: stages of epochs of steps, validation, monitors, checkpoints, stops.

:class:`Trainer` wires the layers below: data (reader -> decomposer -> views, :mod:`adam_ext.data`),
the MoCo model and its fused loss (:mod:`adam_ext.models`), the metric log and the checkpoints.
A stage runs as small steps: :meth:`Trainer._begin_stage`, then per epoch
:meth:`Trainer._train_epoch` (steps, logging windows, due checkpoints) and
:meth:`Trainer._end_epoch` (validation, best weights, ``last.pt``), until the stage ends or a
signal or ``max_steps`` stops it (:meth:`Trainer._stopped`).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoints import PRETRAIN_KIND, PRETRAIN_VERSION, atomic_save, atomic_write_text
from .config import PretrainConfig
from .._util.seeds import SPLIT_VERSION, holdout
from ..data.sampling import EpochBatches, PretrainViews
from ..engine.distributed import ProcessContext, resolve_workers
from ..engine import MetricsLog, amp_dtype, autocast, check_finite, cosine_schedule
from ..models import MoCo, check_queue_size
from .resume import rng_state, set_rng_state, versions

__all__ = ["StageRun", "Stopper", "Trainer", "Window", "build_model", "initial_knn", "initial_model", "knn_at_scales",
           "open_splits", "stage_monitor"]

#: Mean fraction of the queue pruned over a logging window above which the run warns of a collapse.
COLLAPSE_PRUNED = 0.95
#: A monitor whose collapse indicator falls below this fraction of its healthy value (1/sqrt(dim)),
#: or whose RankMe falls below MONITOR_MIN_RANK, makes the run warn of a collapse.
MONITOR_COLLAPSE_STD = 0.2
MONITOR_MIN_RANK = 2.0


@dataclass
class StageRun:
    """Where one stage stands: its optimiser, schedule, scaler, position and results so far."""

    stage: int
    n: int
    gamma: float | None
    val_gamma: float | None
    ddp: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    stage_dir: Path
    epoch: int = 0
    start: int = 0  # first step of the current epoch (a resumed epoch starts mid-way)
    best_val: float | None = None
    t0: float = 0.0
    images_seen: int = 0
    last_monitor: dict | None = None


@dataclass
class Window:
    """The steps since the last log row: their losses and pruned fractions (on the device), their
    (step, lr), and when the window began."""

    losses: list = field(default_factory=list)
    pruned: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    def add(self, loss, pruned, step: int, lr: float) -> None:
        self.losses.append(loss)
        self.pruned.append(pruned)
        self.steps.append((step, lr))


def open_splits(cfg: PretrainConfig):
    """(train reader, train indices, val reader, val indices): the reader's validation split, or a
    seeded ``val_fraction`` of the training split's patients (:func:`adam_ext._util.seeds.holdout`)."""
    from ..data.registry import dataset_class, open_dataset

    d = cfg.data
    options = dict(d.options)
    if d.cache:
        options["cache"] = d.cache
    train = open_dataset(d.dataset, d.root, split=d.train_split, **options)
    cls = dataset_class(d.dataset)
    splits = set(getattr(cls, "splits", ())) | set(getattr(cls, "split_aliases", {}))
    if d.val_split and d.val_split in splits and d.val_split != d.train_split:
        val = open_dataset(d.dataset, d.root, split=d.val_split, **options)
        return train, list(range(len(train))), val, list(range(len(val)))
    held = holdout(train.groups(), d.val_fraction, cfg.seed, stream="pretrain_val")
    return train, np.flatnonzero(~held).tolist(), train, np.flatnonzero(held).tolist()


def build_model(cfg: PretrainConfig, distributed: bool = False) -> MoCo:
    """The run's MoCo model as ``cfg.model`` says, drawn from torch's global generator (the
    Trainer seeds it with ``cfg.seed`` first)."""
    return cfg.model.build(distributed)


def stage_monitor(cfg: PretrainConfig, stage: int, splits):
    """The :class:`~adam_ext.monitors.RepresentationMonitor` of stage ``stage`` (its grid ``n`` sets
    the landmark patches' scale). ``splits``: :func:`open_splits`'s result."""
    from ..data.views import TwoViews
    from ..engine.monitors import RepresentationMonitor

    n, mon = cfg.stages[stage], cfg.monitor
    views = TwoViews(cfg.data.view_size, n, **cfg.data.view_options())
    train_reader, train_idx, val_reader, val_idx = splits
    return RepresentationMonitor(views.config.size, views.normalize, train_reader, train_idx, val_reader, val_idx,
                                 n=n, seed=cfg.seed, images=mon.images, knn_images=mon.knn_images, k=mon.k,
                                 temperature=mon.temperature)


@torch.no_grad()
def knn_at_scales(cfg: PretrainConfig, encoder: nn.Module) -> dict[int, dict]:
    """The k-NN monitor of ``encoder`` (a MoCo query encoder, on the CPU) at every stage's scale of
    ``cfg``: ``{n: {"knn_landmark": ...}}`` ({} inner dicts when the data set has neither landmarks nor
    labels). Values of one n compare across encoders (the same patches: ``cfg.seed`` picks them)."""
    splits = open_splits(cfg)
    return {cfg.stages[i]: stage_monitor(cfg, i, splits).knn_monitor(encoder, torch.device("cpu"))
            for i in range(len(cfg.stages))}


@torch.no_grad()
def initial_knn(cfg: PretrainConfig) -> dict[int, dict]:
    """The k-NN monitor of the run's *initial* encoder (torch seeded with ``cfg.seed``, built as the
    Trainer builds it) at every stage's scale: ``{n: {"knn_landmark": ...}}`` ({} inner dicts when the
    data set has neither landmarks nor labels). The random-initialisation reference for a stage's
    k-NN: the landmark patches' side is the image's / max(n, 2), so values of different stages are
    measured on different patches and compare only with the reference at the same n."""
    return knn_at_scales(cfg, initial_model(cfg).encoder_q)


def initial_model(cfg: PretrainConfig) -> MoCo:
    """The MoCo model a run of ``cfg`` starts from (torch seeded with ``cfg.seed``, built as the
    Trainer builds it); torch's global generator is left as it was."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(cfg.seed)
        return build_model(cfg)
    finally:
        torch.random.set_rng_state(state)


class Stopper:
    """Turns SIGTERM/SIGINT into a flag checked between steps (the step in flight finishes)."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class Trainer:
    """Runs the stages of one pretraining run (see the module's docstring).

    Args:
        cfg: the configuration.
        ctx: this process's rank, world and device.
        progress: show a tqdm bar per epoch (rank 0).
        phase_timer: None (default), or a :class:`~adam_ext.engine.PhaseTimer` told the phases of
            every training step (:data:`~adam_ext.engine.STEP_PHASES`: data wait, H2D copy, the
            model's forward parts, backward, optimiser, logging/other) and, as ``epoch end``, the
            time between an epoch's last step and the next epoch's first (validation, checkpoints).
    """

    def __init__(self, cfg: PretrainConfig, ctx: ProcessContext, progress: bool, phase_timer=None):
        self.cfg, self.ctx, self.progress = cfg, ctx, progress and ctx.main
        self.phase_timer = phase_timer
        self.out = Path(cfg.out)
        self.device = ctx.device
        self.gpu = self.device.type == "cuda"
        self.global_batch = cfg.optim.batch_size
        if self.global_batch % ctx.world:
            raise ValueError(f"optim.batch_size must be divisible by the world size {ctx.world}, "
                             f"got {self.global_batch}")
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        if cfg.amp != "none" and not self.gpu:
            warnings.warn(f"amp={cfg.amp!r} applies on GPU only; training in float32 on {self.device}", stacklevel=2)

        self.train_reader, self.train_idx, self.val_reader, self.val_idx = open_splits(cfg)
        self.workers = resolve_workers(cfg.data.workers)
        if cfg.data.workers == "auto" and ctx.main:
            print(f"adam pretrain: data.workers=auto: {self.workers} loader worker(s) per rank", flush=True)
        self.steps_per_epoch = len(self.train_idx) // self.global_batch
        self.versions = versions()  # the code that runs is the code loaded now: one git look-up per run
        if self.steps_per_epoch == 0:
            raise ValueError(f"optim.batch_size={self.global_batch} exceeds the {len(self.train_idx)} training "
                             f"images: no full batch per epoch")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.effective_queue = check_queue_size(cfg.model.K, len(self.train_idx))
        if ctx.main:
            for w in caught:
                print(f"adam pretrain: warning: {w.message}", file=sys.stderr, flush=True)

        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, ctx.distributed)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model.phase_timer = phase_timer  # marks the parts of MoCo.forward
        self.metrics = MetricsLog(self.out, ctx.main, cfg.tensorboard)
        self.summary: list[dict] = []
        self.collapsed: set[int] = set()  # stages whose pruner removed (nearly) the whole queue
        self.monitor_collapsed: set[int] = set()  # stages whose monitors signalled a collapse
        self.monitor = None  # the stage's RepresentationMonitor (rank 0 only)
        self.monitor_value: str | None = None  # the latest headline monitor, for the progress bar
        self.stopped_by: str | None = None  # what interrupted the run: a signal's name or "max_steps"
        self._loaders: dict[tuple[int, bool], DataLoader] = {}  # (stage, train) -> loader, see _loader

    # -- per stage ------------------------------------------------------------------------------

    def _stage_dir(self, index: int) -> Path:
        return self.out / f"stage{index}_n{self.cfg.stages[index]}"

    def _new_optimizer(self):
        o = self.cfg.optim
        lr = o.lr * self.global_batch / 256
        params = [p for p in self.model.encoder_q.parameters() if p.requires_grad]  # model.frozen's stay out
        if o.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay)
        else:
            optimizer = torch.optim.SGD(params, lr=lr, momentum=o.momentum,
                                        weight_decay=o.weight_decay)
        total = o.epochs * self.steps_per_epoch
        warmup = round(o.warmup_epochs * self.steps_per_epoch)
        return optimizer, cosine_schedule(optimizer, total, warmup)

    def _loader(self, stage: int, epoch: int, start: int, train: bool) -> DataLoader:
        """The stage's training (or validation) loader, positioned at (``epoch``, ``start``).

        One loader per stage and kind, kept across epochs: with ``data.workers`` its worker
        processes persist (they restarted every epoch, twice: training and validation) and only its
        batch sampler is moved on, in this process. Views depend on (seed, stage, epoch, sample)
        alone, never on a worker's state, so the batches are those of a fresh loader."""
        loader = self._loaders.get((stage, train))
        if loader is None:
            from ..data.views import TwoViews, worker_init

            if any(key[0] != stage for key in self._loaders):
                self.close_loaders()  # a new stage: the previous one's workers stop
            views = TwoViews(self.cfg.data.view_size, self.cfg.stages[stage], **self.cfg.data.view_options())
            reader, indices = (self.train_reader, self.train_idx) if train else (self.val_reader, self.val_idx)
            sampler = EpochBatches(len(indices), self.global_batch, self.ctx.world, self.ctx.rank, self.cfg.seed,
                                   stage, epoch, start, shuffle=train)
            workers = self.workers
            loader = DataLoader(PretrainViews(reader, indices, views), batch_sampler=sampler, num_workers=workers,
                                worker_init_fn=worker_init if workers else None, pin_memory=self.gpu,
                                generator=torch.Generator().manual_seed(self.cfg.seed),  # leaves the global RNG alone
                                persistent_workers=workers > 0)
            self._loaders[(stage, train)] = loader
        loader.batch_sampler.epoch, loader.batch_sampler.start = epoch, start
        return loader

    def close_loaders(self) -> None:
        """Stops the loaders' worker processes (at a stage's end and the run's)."""
        self._loaders.clear()  # their iterators shut the workers down when collected

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _checkpoint(self, state: dict) -> dict:
        # "data": the sizes a model card reports (the config names the data set, not how many images it held)
        data = {"train_images": len(self.train_idx), "val_images": len(self.val_idx),
                "steps_per_epoch": self.steps_per_epoch}
        return {"kind": PRETRAIN_KIND, "version": PRETRAIN_VERSION, "config": self.cfg.to_dict(),
                "versions": self.versions, "world_size": self.ctx.world, "data": data,
                "split_version": SPLIT_VERSION, **state}

    def _save(self, path: Path, state: dict) -> None:
        if self.ctx.main:
            atomic_save(self._checkpoint(state), path)
        self.ctx.barrier()

    def _new_monitor(self, stage: int):
        if not (self.cfg.monitor.enabled and self.ctx.main):
            return None
        return stage_monitor(self.cfg, stage, (self.train_reader, self.train_idx, self.val_reader, self.val_idx))

    def _measure(self, stage: int, epoch: int, step: int, gamma, warn: bool = True) -> tuple[float, dict | None]:
        """The validation loss and, on rank 0, the monitors (logged); changes nothing of the training
        state. ``warn``: warn of a collapse (not at a stage's start: a random ResNet's head outputs
        are themselves nearly collinear, per-dimension std about 0.02 against a healthy 1/sqrt(dim))."""
        if self.monitor is None:
            return self._validate(stage, gamma), None
        n = self.cfg.stages[stage]
        with self.monitor.collector(self.model.encoder_q) as collected:
            val = self._validate(stage, gamma, collected)
        t0 = time.perf_counter()
        values = {**self.monitor.label_free(collected),
                  **self.monitor.knn_monitor(self.model.encoder_q, self.device, self.cfg.channels_last)}
        values["seconds"] = round(time.perf_counter() - t0, 3)
        self.metrics.log({"stage": stage, "n": n, "epoch": epoch, "step": step, "monitor": values},
                         {f"monitor/{k}": v for k, v in values.items() if k != "seconds"},
                         self._global_step(stage, step))
        head = next((k for k in ("knn_landmark", "knn_auc", "knn_accuracy") if k in values), "rankme")
        self.monitor_value = f"{head}={values[head]:.3g}"
        healthy = values["collapse_std_healthy"]
        if warn and (values["collapse_std"] < MONITOR_COLLAPSE_STD * healthy or values["rankme"] < MONITOR_MIN_RANK) \
                and stage not in self.monitor_collapsed:  # NaN (one validation image) never warns
            self.monitor_collapsed.add(stage)
            print(f"adam pretrain: warning: at stage {stage} (n={n}) step {step} the representation collapsed: "
                  f"per-dimension std of the normalised embeddings {values['collapse_std']:.4f} (healthy about "
                  f"{healthy:.4f}), RankMe {values['rankme']:.2f}. The loss will sit at log(K + 1); check the "
                  f"views (do two views of an image share more than two images do?), lower optim.lr or raise "
                  f"model.m.", file=sys.stderr, flush=True)
        return val, values

    def run_stage(self, stage: int, resume: dict | None) -> bool:
        """Trains one stage; returns False when stopped by a signal or ``max_steps``."""
        s = self._begin_stage(stage, resume)
        with Stopper() as stopper:
            while s.epoch < self.cfg.optim.epochs:
                stopped, step_in_epoch = self._train_epoch(s, stopper)
                if stopped and step_in_epoch < self.steps_per_epoch:
                    self._save(self.out / "last.pt", self._state(s, s.epoch, step_in_epoch))
                    return self._stopped(s, stopper, f"at stage {stage} step {s.epoch * self.steps_per_epoch + step_in_epoch}; "
                                                     f"checkpoint {self.out / 'last.pt'}")
                self._end_epoch(s)
                if stopped:  # the signal came at the epoch's last step
                    return self._stopped(s, stopper, f"after stage {stage} epoch {s.epoch}")
        return True

    def _begin_stage(self, stage: int, resume: dict | None) -> StageRun:
        """A stage's optimiser, schedule and position (from ``resume`` when given); logs where it starts."""
        cfg, ctx = self.cfg, self.ctx
        n = cfg.stages[stage]
        gamma = cfg.gamma_for(n)
        net = self.model
        ddp = nn.parallel.DistributedDataParallel(
            net, device_ids=[self.device.index] if self.gpu else None, broadcast_buffers=False
        ) if ctx.distributed else net
        optimizer, scheduler = self._new_optimizer()
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        s = StageRun(stage=stage, n=n, gamma=gamma, val_gamma=gamma if cfg.val_pruning else None, ddp=ddp,
                     optimizer=optimizer, scheduler=scheduler, scaler=scaler, stage_dir=self._stage_dir(stage))
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if resume.get("scaler"):
                scaler.load_state_dict(resume["scaler"])
            s.epoch, s.start, s.best_val = resume["epoch"], resume["step_in_epoch"], resume["best_val"]
            set_rng_state(resume["rng"])
        if ctx.main:
            s.stage_dir.mkdir(parents=True, exist_ok=True)
            print(f"adam pretrain: stage {stage + 1}/{len(cfg.stages)}: n={n}, gamma={gamma}, "
                  f"{cfg.optim.epochs} epochs x {self.steps_per_epoch} steps of {self.global_batch} images "
                  f"({ctx.world} rank(s) on {self.device.type}); queue K={cfg.model.K} holds at most "
                  f"{self.effective_queue} distinct training images", flush=True)
        self.monitor = self._new_monitor(stage)
        if s.epoch == 0 and s.start == 0 and cfg.monitor.enabled:  # where the stage starts (stage 0: random init)
            val, _ = self._measure(stage, 0, 0, s.val_gamma, warn=False)
            self.metrics.log({"stage": stage, "n": n, "epoch": 0, "step": 0, "val_loss": val, "best": False},
                             {"val/loss": val}, self._global_step(stage, 0))
        s.t0 = time.perf_counter()
        return s

    def _state(self, s: StageRun, epoch: int, step_in_epoch: int) -> dict:
        """What ``last.pt`` holds to resume at (epoch, step_in_epoch) of stage ``s``."""
        spe = self.steps_per_epoch
        return {"model": self.model.state_dict(), "optimizer": s.optimizer.state_dict(),
                "scheduler": s.scheduler.state_dict(), "scaler": s.scaler.state_dict() if s.scaler.is_enabled() else None,
                "rng": rng_state(), "stage": {"index": s.stage, "n": s.n}, "epoch": epoch,
                "step_in_epoch": step_in_epoch, "step": epoch * spe + step_in_epoch, "best_val": s.best_val,
                "summary": list(self.summary), "collapsed": sorted(self.collapsed),
                "monitor_collapsed": sorted(self.monitor_collapsed)}

    def _mark(self, phase: str) -> None:
        if self.phase_timer is not None:
            self.phase_timer.mark(phase)

    def _train_step(self, s: StageRun, im_q, im_k):
        """One optimiser step; returns (loss, pruned fraction, lr), the first two still on the device."""
        im_q, im_k = self._to_device(im_q), self._to_device(im_k)
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

    def _train_epoch(self, s: StageRun, stopper: Stopper) -> tuple[bool, int]:
        """Trains epoch ``s.epoch`` from step ``s.start``; logs every window and checkpoints as due.
        Returns (stopped by a signal or max_steps, steps of the epoch done)."""
        cfg, spe = self.cfg, self.steps_per_epoch
        self.model.train()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=spe, initial=s.start, desc=f"stage {s.stage} n={s.n} epoch {s.epoch + 1}/{cfg.optim.epochs}",
                       leave=False, dynamic_ncols=True, file=sys.stderr)
        window = Window()
        step_in_epoch, stopped, timer = s.start, False, self.phase_timer
        if timer is not None:
            timer.mark_between("epoch end")  # since the previous epoch's last step (0 s at a run's start)
        for im_q, im_k in self._loader(s.stage, s.epoch, s.start, train=True):
            self._mark("data wait")
            step = s.epoch * spe + step_in_epoch
            loss, pruned, lr = self._train_step(s, im_q, im_k)
            window.add(loss, pruned, step, lr)
            step_in_epoch += 1
            s.images_seen += self.global_batch
            if bar is not None:
                bar.update(1)
            if cfg.monitor.every and (step + 1) % cfg.monitor.every == 0 and step_in_epoch < spe:
                self._measure(s.stage, s.epoch + 1, step + 1, s.val_gamma)
                self.model.train()
            limit_hit = cfg.max_steps and step + 1 >= cfg.max_steps
            due_ckpt = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0
            if (len(window.losses) >= cfg.log_every or due_ckpt or step_in_epoch == spe or limit_hit
                    or (stopper.signal is not None and not self.ctx.distributed)):
                stopped = self._flush(s.stage, s.n, s.epoch, window, bar, stopper) or bool(limit_hit)
                window = Window()
                if not stopped and due_ckpt and step_in_epoch < spe:
                    self._save(self.out / "last.pt", self._state(s, s.epoch, step_in_epoch))
            if timer is not None:
                timer.end_step("logging/other")
            if stopped:
                break
        if bar is not None:
            bar.close()
        return stopped, step_in_epoch

    def _end_epoch(self, s: StageRun) -> None:
        """Validates, keeps the best and the snapshot, logs, moves ``s`` to the next epoch (recording
        the stage's summary after its last one) and saves ``last.pt``."""
        cfg, spe = self.cfg, self.steps_per_epoch
        epoch, step = s.epoch + 1, (s.epoch + 1) * spe
        val, values = self._measure(s.stage, epoch, step, s.val_gamma)
        is_best = math.isfinite(val) and (s.best_val is None or val < s.best_val)
        weights = {"model": self.model.state_dict(), "stage": {"index": s.stage, "n": s.n}, "epoch": epoch,
                   "step": step, "val_loss": val}
        if is_best:
            s.best_val = val
            self._save(s.stage_dir / "best.pt", weights)
        if cfg.snapshots:
            self._save(self.out / "snapshots" / f"{s.stage_dir.name}_epoch{epoch}.pt", weights)
        self.metrics.log({"stage": s.stage, "n": s.n, "epoch": epoch, "step": step, "val_loss": val, "best": is_best},
                         {"val/loss": val}, self._global_step(s.stage, step))
        if values is not None:
            s.last_monitor = values
        if self.ctx.main:
            shown = "".join(f", {k} {values[k]:.3g}" for k in ("knn_landmark", "knn_auc", "knn_accuracy", "rankme",
                                                              "alignment", "uniformity") if values and k in values)
            print(f"adam pretrain: stage {s.stage} n={s.n} epoch {epoch}/{cfg.optim.epochs}: "
                  f"val loss {val:.4f}{' (best)' if is_best else ''}{shown}", flush=True)
        s.epoch, s.start = epoch, 0
        if s.epoch == cfg.optim.epochs:  # recorded before the last save, so a resume keeps it
            seconds = time.perf_counter() - s.t0
            self.summary.append({"stage": s.stage, "n": s.n, "gamma": s.gamma, "epochs": cfg.optim.epochs,
                                 "best_val_loss": s.best_val, "best": str(s.stage_dir / "best.pt"),
                                 "collapse_warning": s.stage in self.collapsed,
                                 "monitor_collapse_warning": s.stage in self.monitor_collapsed,
                                 "monitor": s.last_monitor, "seconds": round(seconds, 1),
                                 "images_per_s": round(s.images_seen / seconds, 1) if s.images_seen else None})
        self._save(self.out / "last.pt", self._state(s, s.epoch, 0))

    def _stopped(self, s: StageRun, stopper: Stopper, where: str) -> bool:
        """Records and reports a stop (the checkpoint is saved); returns False (the run stops)."""
        self.stopped_by = stopper.signal or "max_steps"
        if self.ctx.main:
            why = stopper.signal or f"max_steps={self.cfg.max_steps}"
            print(f"adam pretrain: stopped by {why} {where}; continue with --resume", flush=True)
        return False

    def _global_step(self, stage: int, step: int) -> int:
        return stage * self.cfg.optim.epochs * self.steps_per_epoch + step

    def _flush(self, stage, n, epoch, window: Window, bar, stopper: Stopper) -> bool:
        """Reduces a window of steps across ranks, checks the losses, logs; True to stop (signal)."""
        ctx = self.ctx
        losses, pruned, steps, t0 = window.losses, window.pruned, window.steps, window.t0
        flag = 1.0 if stopper.signal is not None else 0.0
        packed = torch.cat([torch.stack(losses), torch.stack(pruned), torch.tensor([flag], device=losses[0].device)])
        if ctx.distributed:
            dist.all_reduce(packed)
            packed[:-1] /= ctx.world
        packed = packed.cpu().tolist()
        k = len(losses)
        seconds = time.perf_counter() - t0
        rate = k * self.global_batch / seconds if seconds > 0 else float("nan")
        for (step, lr), loss, frac in zip(steps, packed[:k], packed[k : 2 * k]):
            if not math.isfinite(loss):
                last = self.out / "last.pt"
                kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
                check_finite(loss, f"stage {stage} (n={n}) epoch {epoch + 1} step {step}", f"training stopped; {kept}")
            row = {"stage": stage, "n": n, "epoch": epoch + 1, "step": step, "loss": loss, "lr": lr,
                   "pruned_fraction": frac, "images_per_s": rate}
            self.metrics.log(row, {"train/loss": loss, "train/lr": lr, "train/pruned_fraction": frac,
                                   "train/images_per_s": rate}, self._global_step(stage, step))
        mean_pruned = sum(packed[k : 2 * k]) / k
        if mean_pruned > COLLAPSE_PRUNED and stage not in self.collapsed:
            self.collapsed.add(stage)
            if ctx.main:
                print(f"adam pretrain: warning: at stage {stage} (n={n}) step {steps[-1][0]} the pruner removed "
                      f"{100 * mean_pruned:.1f}% of the queue: (nearly) every key is at least gamma similar to every "
                      f"query, the loss tends to 0 and its gradient vanishes (representation collapse). Lower gamma, "
                      f"or train the previous stage longer; the best checkpoint is chosen by the unpruned validation "
                      f"loss unless val_pruning is set.", file=sys.stderr, flush=True)
        if bar is not None:
            bar.set_postfix(loss=f"{packed[k - 1]:.4f}", lr=f"{steps[-1][1]:.3g}", pruned=f"{packed[2 * k - 1]:.3f}",
                            img_s=f"{rate:.1f}", **({"monitor": self.monitor_value} if self.monitor_value else {}))
        if packed[-1] > 0 and stopper.signal is None:
            stopper.signal = "a signal on another rank"
        return packed[-1] > 0

    @torch.no_grad()
    def _validate(self, stage: int, gamma, collected=None) -> float:
        """The validation loss (all ranks); ``collected``: a monitor collector recording the outputs."""
        net = self.model
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for im_q, im_k in self._loader(stage, 0, 0, train=False):
            im_k = self._to_device(im_k)
            with self._autocast():
                out = net.validation_loss(self._to_device(im_q), im_k, gamma=gamma)
                if collected is not None:  # inside the collector the query encoder is in eval mode
                    collected.add(out, lambda: net.encoder_q(im_k))
            total[0] += out["loss"].double() * im_q.shape[0]
            total[1] += im_q.shape[0]
        if self.ctx.distributed:
            dist.all_reduce(total)
        return (total[0] / total[1].clamp_min(1)).item()

    # -- the whole run -----------------------------------------------------------------------------

    def run(self, resume_path=None, ckpt=None) -> dict:
        """Runs the stages, from the start or from ``ckpt`` (the checkpoint at ``resume_path``,
        already checked by :func:`~adam_ext.pretrain.resume.check_resumable`)."""
        cfg, ctx = self.cfg, self.ctx
        stage, resume = 0, None
        if resume_path is not None:
            self.model.load_state_dict(ckpt["model"])
            self.summary = list(ckpt.get("summary", []))
            self.collapsed = set(ckpt.get("collapsed", []))
            self.monitor_collapsed = set(ckpt.get("monitor_collapsed", []))
            stage = ckpt["stage"]["index"]
            if ckpt["epoch"] >= cfg.optim.epochs:  # that stage had finished
                set_rng_state(ckpt["rng"])
                stage, resume = stage + 1, None
                if stage < len(cfg.stages):
                    self._init_next_stage(stage - 1)
                self.metrics.truncate_after(stage - 1, ckpt["step"])
            else:
                resume = ckpt
                self.metrics.truncate_after(stage, ckpt["step"])
            if ctx.main:
                print(f"adam pretrain: resuming from {resume_path} (stage {ckpt['stage']['index']}, "
                      f"step {ckpt['step']})", flush=True)
        interrupted = False
        while stage < len(cfg.stages):
            if not self.run_stage(stage, resume):
                interrupted = True
                break
            resume = None
            stage += 1
            if stage < len(cfg.stages):
                self._init_next_stage(stage - 1)
        self.close_loaders()
        self.metrics.close()
        return self._finish(interrupted)

    def _init_next_stage(self, stage: int) -> None:
        """The stage after ``stage`` starts from its state (both encoders, BN statistics, queue and
        pointer) at the end of its last epoch (``stage_init: last``, the official code's chaining: the
        model as it is now) or from its best weights by validation (``best``)."""
        if self.cfg.stage_init == "best":
            best = torch.load(self._stage_dir(stage) / "best.pt", map_location="cpu", weights_only=True)
            self.model.load_state_dict(best["model"])

    def _finish(self, interrupted: bool) -> dict:
        summary = {"interrupted": interrupted, "stopped_by": self.stopped_by if interrupted else None,
                   "split_version": SPLIT_VERSION,
                   "stages": self.summary, "out": str(self.out), "config": str(self.out / "config.yaml")}
        if self.ctx.main and not interrupted:
            last_best = self._stage_dir(len(self.cfg.stages) - 1) / "best.pt"
            best = torch.load(last_best, map_location="cpu", weights_only=True)
            atomic_save(self._checkpoint(best), self.out / "best.pt")
            summary["best"] = str(self.out / "best.pt")
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
            from .report import write_report

            summary["report"] = str(write_report(self.out))
        self.ctx.barrier()
        return summary
