"""The Adam pretraining engine: ``adam pretrain`` and :func:`pretrain`.

One code path from one CPU process to many GPU nodes. Launch it plainly for one process, or with
``torchrun`` for many (NCCL on GPUs, gloo on CPUs)::

    adam pretrain --config my.yaml data.root=/data/cxr optim.epochs=100
    torchrun --nproc_per_node 8 -m adam_ext.cli pretrain --config my.yaml

Stages (default n = 0, 2, 4) run one after the other; each starts from the previous stage's best
weights and queue, with a fresh optimiser and schedule. A run folder holds::

    config.yaml            the resolved configuration
    metrics.jsonl          one row per training step and per validation
    tensorboard/           the same curves for TensorBoard
    last.pt                the latest checkpoint (resume point), written atomically
    stage<i>_n<n>/best.pt  the lowest-validation-loss weights of stage i
    best.pt                the last stage's best weights (what ``adam export`` reads)
    summary.json           per-stage results
    report.md              loss and pruned-fraction curves (PNG beside it)

Reproducibility: data order, anchors and views are functions of (seed, stage, epoch, sample), not
of worker scheduling, and all other randomness is torch's generator, saved in checkpoints; a run
killed and resumed with ``--resume`` ends with the same weights as one never stopped (bit-exact
on CPU; on GPU with ``deterministic: true``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from . import __version__, runfolder
from .checkpoints import PRETRAIN_KIND, PRETRAIN_VERSION, atomic_save, atomic_write_text
from .config import PretrainConfig, config_differences, dump_config
from .distributed import ProcessContext
from .models import MoCo, check_queue_size

__all__ = ["pretrain", "NonFiniteLossError", "ResumeError", "sample_seed", "EpochBatches", "PretrainViews"]

# Mean fraction of the queue pruned over a logging window above which the run warns of a collapse.
COLLAPSE_PRUNED = 0.95
# Fields that may differ between a checkpoint's config and the resuming run's.
_RESUMABLE_CHANGES = {"out", "log_every", "checkpoint_every", "tensorboard", "dist_timeout", "max_steps", "snapshots",
                      "data.workers", "data.root", "data.cache", "monitor.enabled", "monitor.every",
                      "monitor.images", "monitor.knn_images", "monitor.k", "monitor.temperature"}
# A monitor whose collapse indicator falls below this fraction of its healthy value (1/sqrt(dim)),
# or whose RankMe falls below MONITOR_MIN_RANK, makes the run warn of a collapse.
MONITOR_COLLAPSE_STD = 0.2
MONITOR_MIN_RANK = 2.0


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before saving the bad weights."""


class ResumeError(ValueError):
    """A resume file that is missing, not ours, or from a different configuration."""


def sample_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed mixing ``seed`` with ``parts`` (stage, epoch, sample...): splitmix64 steps."""
    x = seed & 0xFFFFFFFFFFFFFFFF
    for part in parts:
        x = (x + 0x9E3779B97F4A7C15 + (part & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x >> 1


class PretrainViews(Dataset):
    """Two views of an image, reproducibly: item ``(i, seed)`` is ``views(image_i)`` drawn from a
    generator seeded with ``seed``.

    Args:
        reader: a data set reader of :mod:`adam_ext.data` (its ``image(i)``: uint8 Tensor[C, H, W]).
        indices: which of the reader's samples form this data set.
        views: an :class:`adam_ext.data.views.TwoViews`.

    Items are ``(q, k)``, two float32 Tensor[3, S, S].
    """

    def __init__(self, reader, indices, views):
        self.reader, self.indices, self.views = reader, list(indices), views

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        index, seed = key
        image = self.reader.image(self.indices[index])
        return self.views(image, generator=torch.Generator().manual_seed(seed))


class EpochBatches(Sampler):
    """Batches of ``(index, view seed)`` for one rank and one epoch, from ``start`` on.

    The epoch's order is a permutation seeded by (seed, stage, epoch); global batch ``g`` takes
    positions ``[g * B, (g + 1) * B)`` of it and rank r its r-th slice of B / world (the last
    incomplete global batch is dropped, so every rank takes the same number of equal batches).

    Args:
        n (int): samples in the data set.
        global_batch (int): images per step over all ranks.
        world, rank (int): the process group's size and this rank.
        seed, stage, epoch (int): what the order and the views depend on.
        start (int): first global batch (a resumed epoch skips the ones done, reading nothing).
        shuffle (bool): False for validation: a fixed order, views independent of the epoch, and
            the tail kept (rank r takes positions r, r + world, ...).
    """

    def __init__(self, n, global_batch, world, rank, seed, stage, epoch, start=0, shuffle=True):
        self.n, self.global_batch, self.world, self.rank = n, global_batch, world, rank
        self.seed, self.stage, self.epoch, self.start, self.shuffle = seed, stage, epoch, start, shuffle
        self.local = global_batch // world

    def __len__(self) -> int:
        if not self.shuffle:
            return math.ceil(len(range(self.rank, self.n, self.world)) / self.local)
        return max(0, self.n // self.global_batch - self.start)

    def __iter__(self):
        if not self.shuffle:
            mine = list(range(self.rank, self.n, self.world))
            for at in range(0, len(mine), self.local):
                yield [(i, sample_seed(self.seed, 1 << 20, i)) for i in mine[at : at + self.local]]
            return
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.stage, self.epoch))
        order = torch.randperm(self.n, generator=generator).tolist()
        for step in range(self.start, self.n // self.global_batch):
            at = step * self.global_batch + self.rank * self.local
            yield [(i, sample_seed(self.seed, self.stage, self.epoch, i)) for i in order[at : at + self.local]]


# ----------------------------------------------------------------------------------------------
# Checkpoints


def load_checkpoint(path) -> dict:
    """Loads one of our pretraining checkpoints with ``weights_only=True``.

    Raises:
        ResumeError: no such file, or not an adam_ext pretraining checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"resume file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ResumeError(f"resume file {str(path)!r} is empty (0 bytes), not a checkpoint; a run's own "
                          f"checkpoints are written atomically and are never empty")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ResumeError(f"resume file {str(path)!r} cannot be read as a checkpoint: {reason}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != PRETRAIN_KIND:
        raise ResumeError(f"resume file {str(path)!r} is not an adam_ext pretraining checkpoint "
                          f"(expected kind {PRETRAIN_KIND!r}); to start from other weights use model.weights")
    if ckpt.get("version") != PRETRAIN_VERSION:
        raise ResumeError(f"resume file {str(path)!r} has checkpoint version {ckpt.get('version')}, "
                          f"this adam_ext reads version {PRETRAIN_VERSION}")
    return ckpt


def _check_resumable(ckpt: dict, cfg: PretrainConfig, path) -> None:
    differ = config_differences(ckpt["config"], cfg.to_dict(), _RESUMABLE_CHANGES)
    if differ:
        details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in list(differ.items())[:6])
        raise ResumeError(f"resume file {str(path)!r} was written by a different configuration ({details}); "
                          f"resume with the run's own config.yaml or start a new run folder")


def _versions() -> dict:
    return {"adam_ext": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Data


def _ensure_synthetic(cfg: PretrainConfig, ctx: ProcessContext) -> None:
    """Generates the synthetic data set when missing, or when ``synthetic.json`` says an older
    generator made it (its phantoms differ; settings such as n and size are the folder's own)."""
    from .data.synthetic import GENERATOR_VERSION

    root = Path(cfg.data.root)
    if cfg.data.dataset != "synthetic":
        return
    made = None
    if (root / "synthetic.json").is_file():
        made = json.loads((root / "synthetic.json").read_text()).get("version")
    if (root / "Data_Entry_2017.csv").is_file() and made in (None, GENERATOR_VERSION):
        return  # current, or a data set in this layout that we did not make: used as it is
    if ctx.main:
        from .data.synthetic import generate

        why = f" (it held version {made} of the phantoms, now {GENERATOR_VERSION})" if made else " (once)"
        print(f"adam pretrain: generating {cfg.data.synthetic_n} synthetic radiographs of "
              f"{cfg.data.synthetic_size} px in {root}{why}", flush=True)
        generate(root, cfg.data.synthetic_n, size=cfg.data.synthetic_size, seed=cfg.seed, workers=None)
    ctx.barrier()


def _open_splits(cfg: PretrainConfig):
    """(train reader, train indices, val reader, val indices)."""
    from .data.registry import dataset_class, open_dataset

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
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(sample_seed(cfg.seed, 7))).tolist()
    n_val = max(1, round(d.val_fraction * len(train)))
    return train, sorted(order[n_val:]), train, sorted(order[:n_val])


# ----------------------------------------------------------------------------------------------
# Logging


class _Metrics:
    """metrics.jsonl and TensorBoard, written by rank 0 only."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))

    def truncate_after(self, stage: int, step: int) -> None:
        """Keeps what the checkpoint at (stage, ``step`` steps done) had seen: training rows of
        steps before ``step`` (a row's ``step`` is the step's index) and validation / monitor rows
        up to ``step`` (theirs is the number of steps done); a resumed run logs the rest again.
        A torn last line is dropped with a warning (:func:`adam_ext.runfolder.read_jsonl`)."""
        if not self.enabled or not self.path.is_file():
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = runfolder.read_jsonl(self.path)
        for w in caught:
            print(f"adam pretrain: warning: {w.message}", file=sys.stderr, flush=True)

        def seen(r):
            return r["stage"] < stage or (r["stage"] == stage and (r["step"] < step if "loss" in r else r["step"] <= step))

        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows if seen(r)))

    def log(self, row: dict, scalars: dict, global_step: int) -> None:
        if not self.enabled:
            return
        runfolder.append_line(self.path, json.dumps(row))
        if self.writer is not None:
            for name, value in scalars.items():
                if value is not None:
                    self.writer.add_scalar(name, value, global_step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ----------------------------------------------------------------------------------------------
# The engine


def _lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class _Stopper:
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


class _Trainer:
    def __init__(self, cfg: PretrainConfig, ctx: ProcessContext, progress: bool):
        self.cfg, self.ctx, self.progress = cfg, ctx, progress and ctx.main
        self.out = Path(cfg.out)
        self.device = ctx.device
        self.gpu = self.device.type == "cuda"
        self.global_batch = cfg.optim.batch_size
        if self.global_batch % ctx.world:
            raise ValueError(f"optim.batch_size must be divisible by the world size {ctx.world}, "
                             f"got {self.global_batch}")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if self.gpu else None
        if cfg.amp != "none" and not self.gpu:
            warnings.warn(f"amp={cfg.amp!r} applies on GPU only; training in float32 on {self.device}", stacklevel=2)

        self.train_reader, self.train_idx, self.val_reader, self.val_idx = _open_splits(cfg)
        self.steps_per_epoch = len(self.train_idx) // self.global_batch
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
        m = cfg.model
        self.model = MoCo(m.backbone, dim=m.dim, K=m.K, m=m.m, T=m.T, weights=m.weights, mlp_hidden=m.mlp_hidden,
                          shuffle_bn_groups=m.shuffle_bn_groups, sync_bn=m.sync_bn and ctx.distributed)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.metrics = _Metrics(self.out, ctx.main, cfg.tensorboard)
        self.summary: list[dict] = []
        self.collapsed: set[int] = set()  # stages whose pruner removed (nearly) the whole queue
        self.monitor_collapsed: set[int] = set()  # stages whose monitors signalled a collapse
        self.monitor = None  # the stage's RepresentationMonitor (rank 0 only)
        self.monitor_value: str | None = None  # the latest headline monitor, for the progress bar
        self.stopped_by: str | None = None  # what interrupted the run: a signal's name or "max_steps"

    # -- per stage ------------------------------------------------------------------------------

    def _stage_dir(self, index: int) -> Path:
        return self.out / f"stage{index}_n{self.cfg.stages[index]}"

    def _new_optimizer(self):
        o = self.cfg.optim
        lr = o.lr * self.global_batch / 256
        if o.optimizer == "adamw":
            optimizer = torch.optim.AdamW(self.model.encoder_q.parameters(), lr=lr, weight_decay=o.weight_decay)
        else:
            optimizer = torch.optim.SGD(self.model.encoder_q.parameters(), lr=lr, momentum=o.momentum,
                                        weight_decay=o.weight_decay)
        total = o.epochs * self.steps_per_epoch
        warmup = round(o.warmup_epochs * self.steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, warmup))
        return optimizer, scheduler

    def _loader(self, stage: int, epoch: int, start: int, train: bool) -> DataLoader:
        from .data.views import TwoViews, worker_init

        n = self.cfg.stages[stage]
        views = TwoViews(self.cfg.data.view_size, n, **self.cfg.data.view_options())
        reader, indices = (self.train_reader, self.train_idx) if train else (self.val_reader, self.val_idx)
        sampler = EpochBatches(len(indices), self.global_batch, self.ctx.world, self.ctx.rank, self.cfg.seed,
                               stage, epoch, start, shuffle=train)
        workers = self.cfg.data.workers
        return DataLoader(PretrainViews(reader, indices, views), batch_sampler=sampler, num_workers=workers,
                          worker_init_fn=worker_init if workers else None, pin_memory=self.gpu,
                          generator=torch.Generator().manual_seed(self.cfg.seed),  # leaves the global RNG alone
                          persistent_workers=False)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _checkpoint(self, state: dict) -> dict:
        return {"kind": PRETRAIN_KIND, "version": PRETRAIN_VERSION, "config": self.cfg.to_dict(),
                "versions": _versions(), "world_size": self.ctx.world, **state}

    def _save(self, path: Path, state: dict) -> None:
        if self.ctx.main:
            atomic_save(self._checkpoint(state), path)
        self.ctx.barrier()

    def _new_monitor(self, stage: int):
        from .data.views import TwoViews
        from .monitors import RepresentationMonitor

        cfg, n = self.cfg, self.cfg.stages[stage]
        mon = cfg.monitor
        if not (mon.enabled and self.ctx.main):
            return None
        views = TwoViews(cfg.data.view_size, n, **cfg.data.view_options())
        return RepresentationMonitor(views.config.size, views.normalize, self.train_reader, self.train_idx,
                                     self.val_reader, self.val_idx, n=n, seed=cfg.seed, images=mon.images,
                                     knn_images=mon.knn_images, k=mon.k, temperature=mon.temperature)

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
        """Trains one stage; returns False when stopped by a signal."""
        cfg, ctx = self.cfg, self.ctx
        n = cfg.stages[stage]
        gamma = cfg.gamma_for(n)
        net = self.model
        ddp = nn.parallel.DistributedDataParallel(
            net, device_ids=[self.device.index] if self.gpu else None, broadcast_buffers=False
        ) if ctx.distributed else net
        optimizer, scheduler = self._new_optimizer()
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        epoch, start, best_val = 0, 0, None
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if resume.get("scaler"):
                scaler.load_state_dict(resume["scaler"])
            epoch, start, best_val = resume["epoch"], resume["step_in_epoch"], resume["best_val"]
            _set_rng_state(resume["rng"])
        stage_dir = self._stage_dir(stage)
        if ctx.main:
            stage_dir.mkdir(parents=True, exist_ok=True)
            print(f"adam pretrain: stage {stage + 1}/{len(cfg.stages)}: n={n}, gamma={gamma}, "
                  f"{cfg.optim.epochs} epochs x {self.steps_per_epoch} steps of {self.global_batch} images "
                  f"({ctx.world} rank(s) on {self.device.type}); queue K={cfg.model.K} holds at most "
                  f"{self.effective_queue} distinct training images", flush=True)
        spe = self.steps_per_epoch
        self.monitor = self._new_monitor(stage)
        val_gamma = gamma if cfg.val_pruning else None
        if epoch == 0 and start == 0 and cfg.monitor.enabled:  # where the stage starts (stage 0: random init)
            val, _ = self._measure(stage, 0, 0, val_gamma, warn=False)
            self.metrics.log({"stage": stage, "n": n, "epoch": 0, "step": 0, "val_loss": val, "best": False},
                             {"val/loss": val}, self._global_step(stage, 0))
        stage_t0 = time.perf_counter()
        images_seen = 0

        def state(epoch_, step_in_epoch):
            return {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None, "rng": _rng_state(),
                    "stage": {"index": stage, "n": n}, "epoch": epoch_, "step_in_epoch": step_in_epoch,
                    "step": epoch_ * spe + step_in_epoch, "best_val": best_val, "summary": list(self.summary),
                    "collapsed": sorted(self.collapsed), "monitor_collapsed": sorted(self.monitor_collapsed)}

        last_monitor = None
        with _Stopper() as stopper:
            while epoch < cfg.optim.epochs:
                net.train()
                bar = None
                if self.progress:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=spe, initial=start, desc=f"stage {stage} n={n} epoch {epoch + 1}/{cfg.optim.epochs}",
                               leave=False, dynamic_ncols=True, file=sys.stderr)
                window_loss, window_pruned, window_steps = [], [], []
                t_window = time.perf_counter()
                step_in_epoch = start
                stopped = False
                for im_q, im_k in self._loader(stage, epoch, start, train=True):
                    step = epoch * spe + step_in_epoch
                    im_q, im_k = self._to_device(im_q), self._to_device(im_k)
                    with self._autocast():
                        out = ddp(im_q, im_k, gamma=gamma)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(out["loss"]).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    lr = scheduler.get_last_lr()[0]
                    scheduler.step()
                    window_loss.append(out["loss"].detach().float())
                    window_pruned.append(out["pruned"].float().mean() / cfg.model.K)
                    window_steps.append((step, lr))
                    step_in_epoch += 1
                    images_seen += self.global_batch
                    if bar is not None:
                        bar.update(1)
                    if cfg.monitor.every and (step + 1) % cfg.monitor.every == 0 and step_in_epoch < spe:
                        self._measure(stage, epoch + 1, step + 1, val_gamma)
                        net.train()
                    limit_hit = cfg.max_steps and step + 1 >= cfg.max_steps
                    due_ckpt = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0
                    flush = (len(window_loss) >= cfg.log_every or due_ckpt or step_in_epoch == spe or limit_hit
                             or (stopper.signal is not None and not ctx.distributed))
                    if flush:
                        stop = self._flush(stage, n, epoch, window_loss, window_pruned, window_steps, t_window, bar,
                                           stopper)
                        window_loss, window_pruned, window_steps = [], [], []
                        t_window = time.perf_counter()
                        if stop or limit_hit:
                            stopped = True
                            break
                        if due_ckpt and step_in_epoch < spe:
                            self._save(self.out / "last.pt", state(epoch, step_in_epoch))
                if bar is not None:
                    bar.close()
                if stopped and step_in_epoch < spe:
                    self._save(self.out / "last.pt", state(epoch, step_in_epoch))
                    why = stopper.signal or f"max_steps={cfg.max_steps}"
                    self.stopped_by = stopper.signal or "max_steps"
                    if ctx.main:
                        print(f"adam pretrain: stopped by {why} at stage {stage} step {epoch * spe + step_in_epoch}; "
                              f"checkpoint {self.out / 'last.pt'}; continue with --resume", flush=True)
                    return False
                val, values = self._measure(stage, epoch + 1, (epoch + 1) * spe, val_gamma)
                is_best = math.isfinite(val) and (best_val is None or val < best_val)
                if is_best:
                    best_val = val
                    self._save(stage_dir / "best.pt", {"model": net.state_dict(), "stage": {"index": stage, "n": n},
                                                       "epoch": epoch + 1, "step": (epoch + 1) * spe, "val_loss": val})
                if cfg.snapshots:
                    self._save(self.out / "snapshots" / f"{stage_dir.name}_epoch{epoch + 1}.pt",
                               {"model": net.state_dict(), "stage": {"index": stage, "n": n}, "epoch": epoch + 1,
                                "step": (epoch + 1) * spe, "val_loss": val})
                row = {"stage": stage, "n": n, "epoch": epoch + 1, "step": (epoch + 1) * spe, "val_loss": val,
                       "best": is_best}
                self.metrics.log(row, {"val/loss": val}, self._global_step(stage, (epoch + 1) * spe))
                if values is not None:
                    last_monitor = values
                if ctx.main:
                    shown = "".join(f", {k} {values[k]:.3g}" for k in ("knn_landmark", "knn_auc", "knn_accuracy",
                                                                      "rankme", "alignment", "uniformity")
                                    if values and k in values)
                    print(f"adam pretrain: stage {stage} n={n} epoch {epoch + 1}/{cfg.optim.epochs}: "
                          f"val loss {val:.4f}{' (best)' if is_best else ''}{shown}", flush=True)
                epoch, start = epoch + 1, 0
                if epoch == cfg.optim.epochs:  # recorded before the last save, so a resume keeps it
                    seconds = time.perf_counter() - stage_t0
                    self.summary.append({"stage": stage, "n": n, "gamma": gamma, "epochs": cfg.optim.epochs,
                                         "best_val_loss": best_val, "best": str(stage_dir / "best.pt"),
                                         "collapse_warning": stage in self.collapsed,
                                         "monitor_collapse_warning": stage in self.monitor_collapsed,
                                         "monitor": last_monitor,
                                         "seconds": round(seconds, 1),
                                         "images_per_s": round(images_seen / seconds, 1) if images_seen else None})
                self._save(self.out / "last.pt", state(epoch, 0))
                if stopped:  # the signal came at the epoch's last step
                    self.stopped_by = stopper.signal or "max_steps"
                    if ctx.main:
                        print(f"adam pretrain: stopped by {stopper.signal or 'max_steps'} after stage {stage} "
                              f"epoch {epoch}; continue with --resume", flush=True)
                    return False
        return True

    def _global_step(self, stage: int, step: int) -> int:
        return stage * self.cfg.optim.epochs * self.steps_per_epoch + step

    def _flush(self, stage, n, epoch, losses, pruned, steps, t0, bar, stopper) -> bool:
        """Reduces a window of steps across ranks, checks the losses, logs; True to stop (signal)."""
        ctx = self.ctx
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
                raise NonFiniteLossError(f"loss is {loss} at stage {stage} (n={n}) epoch {epoch + 1} step {step}; "
                                         f"training stopped; {kept}")
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
        already checked by :func:`_check_resumable`)."""
        cfg, ctx = self.cfg, self.ctx
        stage, resume = 0, None
        if resume_path is not None:
            self.model.load_state_dict(ckpt["model"])
            self.summary = list(ckpt.get("summary", []))
            self.collapsed = set(ckpt.get("collapsed", []))
            self.monitor_collapsed = set(ckpt.get("monitor_collapsed", []))
            stage = ckpt["stage"]["index"]
            if ckpt["epoch"] >= cfg.optim.epochs:  # that stage had finished
                _set_rng_state(ckpt["rng"])
                stage, resume = stage + 1, None
                if stage < len(cfg.stages):
                    self._load_best(stage - 1)
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
                self._load_best(stage - 1)
        self.metrics.close()
        return self._finish(interrupted)

    def _load_best(self, stage: int) -> None:
        """The next stage starts from this stage's best weights and queue."""
        best = torch.load(self._stage_dir(stage) / "best.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(best["model"])

    def _finish(self, interrupted: bool) -> dict:
        summary = {"interrupted": interrupted, "stopped_by": self.stopped_by if interrupted else None,
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


def _prepare_run_folder(out: Path, cfg: PretrainConfig, fresh: bool) -> None:
    """Checks the (locked) run folder and writes its configuration; a fresh run starts its metrics."""
    runfolder.refuse_symlinks(out)
    if fresh and (out / "last.pt").is_file():
        raise ValueError(f"out folder {str(out)!r} already holds a run (last.pt); pass --resume to "
                         f"continue it or choose another out")
    removed = runfolder.remove_stale_temps(out)
    if removed:
        print(f"adam pretrain: removed {len(removed)} temporary file(s) left by an interrupted run "
              f"({', '.join(p.name for p in removed[:3])}{', ...' if len(removed) > 3 else ''})", flush=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    if fresh:
        atomic_write_text(out / "metrics.jsonl", "")


def pretrain(cfg: PretrainConfig, resume=None, progress: bool = True) -> dict:
    """Runs Adam pretraining as configured (all stages), in this process or as one torchrun rank.

    Args:
        cfg: the configuration (see :mod:`adam_ext.config`).
        resume: a ``last.pt`` to continue from, ``"auto"`` (the run folder's ``last.pt`` if it
            exists), or None to start afresh.
        progress: show a tqdm bar per epoch on rank 0.

    Returns:
        dict: ``interrupted`` (stopped by a signal or ``max_steps``), ``stages`` (per stage: n,
        gamma, best validation loss, seconds, images/s), ``best`` (the final weights' path),
        ``report``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (names the step; no checkpoint holds it).
        ResumeError: the resume file is missing, foreign or from another configuration (nothing in
            the run folder has changed).
        ValueError: a configuration that cannot run (e.g. a batch larger than the data set).
        adam_ext.runfolder.RunFolderError: another live process holds the run folder, or it holds a
            symbolic link.
        OSError: a file could not be written (read-only folder, full disk); the message names it.
    """
    if not cfg.data.root:
        raise ValueError("data.root must name the folder of training images, got ''")
    ctx = ProcessContext(cfg.device, cfg.dist_timeout)
    failed = True
    try:
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        elif ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed view size: let cuDNN pick its fastest kernels
        out = Path(cfg.out)
        if resume == "auto":
            resume = out / "last.pt" if (out / "last.pt").is_file() else None
        ckpt = None
        if resume is not None:  # accepted before anything in the run folder changes
            ckpt = load_checkpoint(resume)
            _check_resumable(ckpt, cfg, resume)
        with contextlib.ExitStack() as held:
            if ctx.main:
                held.enter_context(runfolder.lock(out))  # one writer per folder, until the run ends
                _prepare_run_folder(out, cfg, fresh=resume is None)
            _ensure_synthetic(cfg, ctx)
            summary = _Trainer(cfg, ctx, progress).run(resume, ckpt)
        failed = False
        return summary
    except Exception as exc:
        if ctx.distributed and not isinstance(exc, (NonFiniteLossError, ResumeError)):
            raise RuntimeError(f"rank {ctx.rank}/{ctx.world} stopped: {type(exc).__name__}: {exc}. If another "
                               f"rank crashed, its own error explains why; ranks give up waiting after "
                               f"dist_timeout={cfg.dist_timeout:g} s") from exc
        raise
    finally:
        if not failed:  # after a failure, peers may be gone: tearing the group down could block
            ctx.close()
