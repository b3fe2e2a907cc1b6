"""The downstream protocol: fine-tuning runs, seeds, few-shot subsets, early stopping, statistics.

One **run** (:func:`finetune_run`) with seed ``s``:

1. opens the data set's training and test splits (:data:`SPLITS`; the test split is never
   touched before the end) and holds out a seeded ``val_fraction`` (10%) of the training set for
   validation — ChestX-ray14 and the synthetic set use their readers' patient-wise ``val`` split,
   seeded by ``s``;
2. with ``shots = k``, keeps ``k`` training images drawn with ``s`` from what is left (so a
   few-shot subset never overlaps the validation or the test set);
3. builds the model (:mod:`.classification` or :mod:`.segmentation`), seeds torch with ``s``
   (head / decoder initialisation, data order, augmentations) and loads the encoder from
   ``init`` (:mod:`.init`);
4. trains with AdamW (or Adam) and a per-step cosine schedule; after every epoch evaluates the
   validation set and keeps the weights of the best validation metric (``mean_auc`` /
   ``mean_dice``; the validation loss when the metric is undefined on that set, e.g. no class
   with both label values); stops after ``patience`` epochs without improvement;
5. evaluates the best weights on the test set.

``runs = N`` repeats it with seeds ``seed .. seed + N - 1`` and reports mean ± std per metric
(:func:`finetune`); :func:`compare` runs several initialisations under the same seeds and
tests each against the first with an independent two-sample t-test.

Distributed (``torchrun``): training shards batches with ``DistributedSampler`` under DDP;
evaluation shards the set by index (rank r takes r, r + W, ...; no padding, no duplicates),
gathers the per-sample outputs to every rank and computes the metrics over the whole set, so
every rank takes the same early-stopping decision. Rank 0 writes the files.

Outputs under ``out``::

    config.yaml      the resolved configuration
    metrics.jsonl    one row per epoch and run: train_loss, val_loss, val_<metric>, lr
    results.json     per-run validation and test metrics, the initialisation report, mean ± std
    results.md       the same as a Markdown table
    curves.png       training loss and validation metric per epoch, one line per run
    seed<S>/best.pt  the best weights of each run (written atomically; ``save_weights``)

Default splits per data set (``train_split`` / ``test_split`` override them):

================  ============  ==========  ===========================================
data set          train         test        validation
================  ============  ==========  ===========================================
chestxray14       train         test        the reader's ``val`` (patient-wise, seeded)
synthetic         train         test        the reader's ``val`` (patient-wise, seeded)
scr               fold1         fold2       10% of fold1, seeded
shenzhen          train         test        10% of train, seeded (test: reader's 20%)
vindr_cxr         train         test        10% of train, seeded
siim_acr          train         test        10% of train, seeded
chestx_det        train         test        10% of train, seeded
vindr_rib         train         val         10% of train, seeded
eyepacs           train         test        10% of train, seeded
drive             training      test        10% of training, seeded
================  ============  ==========  ===========================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, Subset

from .. import runfolder
from ..checkpoints import (
    FINETUNE_KIND,
    FINETUNE_VERSION,
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    init_label,
    json_safe,
    load_encoder,
    parse_init,
)
from ..config import check_field, is_int, is_num, layered_values
from ..data.registry import SPLITS
from ..data.views import worker_init
from ..distributed import ProcessContext
from .metrics import format_summary, summarize, ttest

__all__ = [
    "FUNDUS",
    "SPLITS",
    "FinetuneConfig",
    "compare",
    "evaluate_checkpoint",
    "few_shot",
    "finetune",
    "finetune_run",
    "holdout",
    "load_finetune_config",
    "open_splits",
]

#: Colour fundus data sets: default input size 512 px (X-rays: 224).
FUNDUS = ("eyepacs", "drive")
TASKS = ("cls", "seg")


@dataclass
class FinetuneConfig:
    """Settings of ``adam finetune`` / ``adam compare`` (the single home of their defaults).

    ``None`` means "the paper's value for this task", resolved by :meth:`resolved`.

    Attributes:
        task: ``cls`` (encoder + linear head) or ``seg`` (U-Net).
        dataset: a name of :data:`SPLITS` (None: ``chestxray14`` for cls, ``scr`` for seg); root:
            its folder; options: extra reader options.
        train_split, test_split: split names (None: :data:`SPLITS`).
        arch: ResNet of the encoder (the checkpoint's must match).
        init: ``random``, ``imagenet:PATH`` or a checkpoint PATH (see :mod:`.init`).
        freeze_encoder: the standard frozen-encoder protocol of self-supervised learning: the
            encoder's weights and BN statistics stay as loaded (eval mode, no gradient) and only
            the head trains (cls: a linear probe; seg: the U-Net decoder and head).
        size: input side in px (None: 512 for fundus, 224 otherwise).
        masks: seg: mask names to segment (None: all of the reader's); seg_mode: ``multilabel``
            (sigmoid per mask) or ``multiclass`` (softmax).
        optimizer: ``adamw`` or ``adam`` (the paper's rib segmentation: Adam, lr 1e-3).
        lr: None: 2.5e-4 (cls), 2e-4 (seg), 1e-3 (adam). weight_decay: None: 0.05 (adamw), 0 (adam).
        betas: None: (0.9, 0.95) for cls (the paper), torch's (0.9, 0.999) for seg.
        epochs, patience: maximum epochs; epochs without validation improvement before stopping
            (0: never stop early).
        batch_size: global batch (split over ranks); workers: DataLoader workers per rank.
        val_fraction: share of the training set held out for validation.
        shots: None (all) or the number of training images of a few-shot run.
        runs, seed: runs use seeds seed .. seed + runs - 1.
        device: auto / cpu / cuda; amp: none / bf16 (GPU autocast).
        out: output folder; save_weights: write each run's best weights.
        dist_timeout: seconds a collective may wait under torchrun.
    """

    task: str = "cls"
    dataset: str | None = None
    root: str = ""
    options: dict = field(default_factory=dict)
    train_split: str | None = None
    test_split: str | None = None
    arch: str = "resnet50"
    init: str = "random"
    freeze_encoder: bool = False
    size: int | None = None
    masks: list | None = None
    seg_mode: str = "multilabel"
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    betas: list | None = None
    epochs: int = 100
    patience: int = 10
    batch_size: int = 32
    workers: int = 4
    val_fraction: float = 0.1
    shots: int | None = None
    runs: int = 1
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    out: str = "runs/finetune"
    save_weights: bool = True
    dist_timeout: float = 1800.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved(self) -> FinetuneConfig:
        """A validated copy with every ``None`` default replaced by the paper's value."""
        cfg = dataclasses.replace(self)
        validate(cfg)
        if cfg.dataset is None:
            cfg.dataset = "chestxray14" if cfg.task == "cls" else "scr"
        if cfg.size is None:
            cfg.size = 512 if cfg.dataset in FUNDUS else 224
        if cfg.lr is None:
            cfg.lr = 1e-3 if cfg.optimizer == "adam" else (2.5e-4 if cfg.task == "cls" else 2e-4)
        if cfg.weight_decay is None:
            cfg.weight_decay = 0.0 if cfg.optimizer == "adam" else 0.05
        if cfg.betas is None:
            cfg.betas = [0.9, 0.95] if cfg.task == "cls" else [0.9, 0.999]
        default_train, default_test, _ = SPLITS[cfg.dataset]
        cfg.train_split = cfg.train_split or default_train
        cfg.test_split = cfg.test_split or default_test
        validate(cfg)
        return cfg


def validate(cfg: FinetuneConfig) -> None:
    """Raises ValueError naming the first field out of range."""
    from adam_ext.models import BACKBONES

    check_field(cfg.task in TASKS, "task", f"one of {TASKS}", cfg.task)
    check_field(cfg.dataset is None or cfg.dataset in SPLITS, "dataset", f"one of {sorted(SPLITS)} or null",
           cfg.dataset)
    check_field(isinstance(cfg.root, str) and cfg.root != "", "root", "the data set's folder", cfg.root)
    check_field(isinstance(cfg.options, dict), "options", "a mapping of reader options", cfg.options)
    check_field(cfg.arch in BACKBONES, "arch", f"one of {list(BACKBONES)}", cfg.arch)
    parse_init(cfg.init)
    check_field(cfg.size is None or (is_int(cfg.size) and cfg.size >= 32), "size", "an int >= 32 or null", cfg.size)
    check_field(cfg.masks is None or (isinstance(cfg.masks, (list, tuple)) and len(cfg.masks) > 0
                                 and all(isinstance(m, str) for m in cfg.masks)),
           "masks", "null or a non-empty list of mask names", cfg.masks)
    check_field(cfg.seg_mode in ("multilabel", "multiclass"), "seg_mode", "multilabel or multiclass", cfg.seg_mode)
    check_field(cfg.optimizer in ("adamw", "adam"), "optimizer", "adamw or adam", cfg.optimizer)
    check_field(cfg.lr is None or (is_num(cfg.lr) and cfg.lr > 0), "lr", "> 0 or null", cfg.lr)
    check_field(cfg.weight_decay is None or (is_num(cfg.weight_decay) and cfg.weight_decay >= 0), "weight_decay",
           ">= 0 or null", cfg.weight_decay)
    check_field(cfg.betas is None or (isinstance(cfg.betas, (list, tuple)) and len(cfg.betas) == 2
                                 and all(is_num(b) and 0 <= b < 1 for b in cfg.betas)),
           "betas", "null or two numbers in [0, 1)", cfg.betas)
    check_field(is_int(cfg.epochs) and cfg.epochs > 0, "epochs", "a positive int", cfg.epochs)
    check_field(is_int(cfg.patience) and cfg.patience >= 0, "patience", "an int >= 0 (0: no early stopping)", cfg.patience)
    check_field(is_int(cfg.batch_size) and cfg.batch_size >= 2, "batch_size", "an int >= 2", cfg.batch_size)
    check_field(is_int(cfg.workers) and cfg.workers >= 0, "workers", "an int >= 0", cfg.workers)
    check_field(is_num(cfg.val_fraction) and 0 < cfg.val_fraction < 1, "val_fraction", "in (0, 1)", cfg.val_fraction)
    check_field(cfg.shots is None or (is_int(cfg.shots) and cfg.shots >= 2), "shots", "null or an int >= 2", cfg.shots)
    check_field(is_int(cfg.runs) and cfg.runs >= 1, "runs", "an int >= 1", cfg.runs)
    check_field(is_int(cfg.seed) and cfg.seed >= 0, "seed", "an int >= 0", cfg.seed)
    check_field(cfg.device in ("auto", "cpu", "cuda"), "device", "one of auto, cpu, cuda", cfg.device)
    check_field(cfg.amp in ("none", "bf16"), "amp", "none or bf16", cfg.amp)
    check_field(isinstance(cfg.out, str) and cfg.out != "", "out", "a folder path", cfg.out)
    check_field(isinstance(cfg.save_weights, bool), "save_weights", "true or false", cfg.save_weights)
    check_field(isinstance(cfg.freeze_encoder, bool), "freeze_encoder", "true or false", cfg.freeze_encoder)
    check_field(is_num(cfg.dist_timeout) and cfg.dist_timeout > 0, "dist_timeout", "> 0 seconds", cfg.dist_timeout)


_FLOAT_FIELDS = ("lr", "weight_decay", "val_fraction", "dist_timeout")


def load_finetune_config(path=None, overrides=(), base: dict | None = None) -> FinetuneConfig:
    """Defaults, then ``base`` (e.g. from flags), then a YAML file, then ``key=value`` overrides.

    Args:
        path: YAML file of a mapping of :class:`FinetuneConfig` fields, or None.
        overrides: strings ``key=value`` (values parsed as YAML; ``options.cache=/x`` nests).
        base: field values applied before the file.

    Returns:
        FinetuneConfig, validated (``None`` defaults kept; see :meth:`FinetuneConfig.resolved`).
    """
    values = layered_values(base, path, overrides)
    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config key {unknown[0]!r}; expected one of {sorted(names)}")
    for key in _FLOAT_FIELDS:  # YAML 1.1 reads "1e-3" (no dot) as a string
        if isinstance(values.get(key), str):
            try:
                values[key] = float(values[key])
            except ValueError:
                pass  # validate() names the field
    cfg = FinetuneConfig(**values)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------
# Data: splits, validation hold-out, few-shot subsets


def holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``range(n)`` into (kept, held-out) index lists, both sorted.

    ``round(fraction * n)`` samples are held out (at least 1 when n >= 2), drawn with
    ``numpy.random.default_rng([seed, 0])``.
    """
    n_held = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
    order = np.random.default_rng([seed, 0]).permutation(n)
    return sorted(order[n_held:].tolist()), sorted(order[:n_held].tolist())


def few_shot(pool, shots: int, seed: int) -> list[int]:
    """``shots`` indices drawn without replacement from ``pool`` with ``default_rng([seed, 1])``.

    Deterministic per (pool, shots, seed) and independent of the order of ``pool``.

    Raises:
        ValueError: ``shots`` larger than the pool.
    """
    pool = sorted(pool)
    if shots > len(pool):
        raise ValueError(f"shots must be at most the {len(pool)} training images left after validation, got {shots}")
    chosen = np.random.default_rng([seed, 1]).choice(len(pool), size=shots, replace=False)
    return sorted(pool[i] for i in chosen)


@dataclass
class Splits:
    """The readers and sample indices of one run.

    Attributes:
        train, val, test: readers (``val`` may be ``train`` itself).
        train_idx, val_idx, test_idx: indices into them.
    """

    train: Any
    val: Any
    test: Any
    train_idx: list[int]
    val_idx: list[int]
    test_idx: list[int]


def open_splits(cfg: FinetuneConfig, seed: int) -> Splits:
    """Opens the training, validation and test samples of one run (see the module docstring).

    Args:
        cfg: a resolved config.
        seed: the run's seed (validation hold-out and few-shot draw).

    Raises:
        ValueError: the test split shares images with the training split, or too few images.
    """
    from adam_ext.data.registry import open_dataset

    default_train, _, reader_val = SPLITS[cfg.dataset]
    options = dict(cfg.options)
    if reader_val is not None and cfg.train_split == default_train:
        seeded = {**options, "seed": seed}
        if cfg.dataset == "chestxray14":
            seeded["val_fraction"] = cfg.val_fraction
        train = open_dataset(cfg.dataset, cfg.root, split=cfg.train_split, **seeded)
        val = open_dataset(cfg.dataset, cfg.root, split=reader_val, **seeded)
        pool, val_idx = list(range(len(train))), list(range(len(val)))
    else:
        train = val = open_dataset(cfg.dataset, cfg.root, split=cfg.train_split, **options)
        pool, val_idx = holdout(len(train), cfg.val_fraction, seed)
    test = open_dataset(cfg.dataset, cfg.root, split=cfg.test_split, **options)
    shared = set(train.image_keys()) & set(test.image_keys())
    if shared:
        raise ValueError(
            f"test_split {cfg.test_split!r} must not share images with train_split {cfg.train_split!r}, "
            f"got {len(shared)} shared (e.g. {min(shared)})"
        )
    train_idx = few_shot(pool, cfg.shots, seed) if cfg.shots is not None else pool
    if len(train_idx) < 2 or not val_idx or len(test) == 0:
        raise ValueError(
            f"the splits must hold at least 2 training, 1 validation and 1 test image, got {len(train_idx)}, "
            f"{len(val_idx)} and {len(test)} ({cfg.dataset} at {cfg.root})"
        )
    return Splits(train, val, test, train_idx, val_idx, list(range(len(test))))


# ----------------------------------------------------------------------------------------------
# One run


def _make_task(cfg: FinetuneConfig, reader):
    if cfg.task == "cls":
        from .classification import ClassificationTask

        return ClassificationTask(reader, cfg.arch, cfg.size)
    from .segmentation import SegmentationTask

    return SegmentationTask(reader, cfg.arch, cfg.size, cfg.masks, cfg.seg_mode)


def _optimizer(cfg: FinetuneConfig, params):
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def _evaluate(model, task, dataset, cfg, ctx) -> tuple[dict, float]:
    """(metrics over the whole ``dataset``, mean loss); every rank gets the same result.

    BatchNorm running statistics are first broadcast from rank 0: each rank updated its own in its
    last training forward (DDP only syncs buffers at the start of a forward), and rank 0's are
    the ones checkpointed.
    """
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    mine = list(range(ctx.rank, len(dataset), ctx.world))
    loader = DataLoader(Subset(dataset, mine), batch_size=max(1, cfg.batch_size // ctx.world), shuffle=False,
                        num_workers=cfg.workers, worker_init_fn=worker_init)
    parts: dict[str, list] = {}
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    model.eval()
    with torch.no_grad(), _autocast(cfg, ctx):
        for x, y in loader:
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            logits = model(x).float()
            loss_sum += task.loss(logits, y).double() * x.shape[0]
            for key, value in task.collect(logits, y).items():
                parts.setdefault(key, []).append(value)
    local = {k: np.concatenate(v) for k, v in parts.items()}
    shards = [(mine, local, float(loss_sum))]
    if ctx.distributed:
        shards = [None] * ctx.world
        dist.all_gather_object(shards, (mine, local, float(loss_sum)))
    order = np.argsort(np.concatenate([np.asarray(s[0], dtype=np.int64) for s in shards]), kind="stable")
    keys = next((list(s[1]) for s in shards if s[1]), [])
    merged = {k: np.concatenate([s[1][k] for s in shards if s[1]])[order] for k in keys}
    return task.metrics(merged), sum(s[2] for s in shards) / max(1, len(dataset))


def _autocast(cfg, ctx):
    enabled = cfg.amp == "bf16" and ctx.device.type == "cuda"
    return torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=enabled)


def _all_sum(ctx, *values: torch.Tensor) -> list[float]:
    packed = torch.stack([v.double() for v in values])
    if ctx.distributed:
        dist.all_reduce(packed)
    return packed.tolist()


def finetune_run(cfg: FinetuneConfig, seed: int, *, label: str | None = None, progress: bool = False,
                 log=None, ctx: ProcessContext | None = None) -> dict:
    """One fine-tuning run (see the module docstring), evaluated on the test set.

    Args:
        cfg: configuration (resolved here).
        seed: the run's seed.
        label: name of the initialisation in logs (default ``cfg.init``).
        progress: tqdm bar per epoch on rank 0.
        log: None or a callable receiving each epoch's row (dict).
        ctx: process context (made from ``cfg.device`` when None).

    Returns:
        dict: ``seed``, ``init`` (the initialisation report), ``best_epoch``, ``epochs_run``,
        ``monitor``, ``val`` and ``test`` (metric dicts; see :mod:`.metrics`), ``history``
        (per-epoch rows), sizes ``n_train``/``n_val``/``n_test`` and ``checkpoint`` (path or None).
    """
    cfg = cfg.resolved()
    own_ctx = ctx is None
    ctx = ctx or ProcessContext(cfg.device, cfg.dist_timeout)
    try:
        return _run(cfg, seed, label or cfg.init, progress, log, ctx)
    finally:
        if own_ctx:
            ctx.close()


def _run(cfg, seed, label, progress, log, ctx) -> dict:
    splits = open_splits(cfg, seed)
    task = _make_task(cfg, splits.train)
    torch.manual_seed(seed)
    model, encoder = task.build_model()
    report = load_encoder(encoder, cfg.init, cfg.arch)
    frozen = encoder if cfg.freeze_encoder else None
    if frozen is not None:
        frozen.requires_grad_(False)
    model.to(ctx.device)
    net = model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index]
                                                        if ctx.device.type == "cuda" else None)
    train_set = task.dataset(splits.train, splits.train_idx, train=True, seed=seed)
    val_set = task.dataset(splits.val, splits.val_idx, train=False, seed=seed)
    test_set = task.dataset(splits.test, splits.test_idx, train=False, seed=seed)
    local_batch = max(1, cfg.batch_size // ctx.world)
    sampler = None
    if ctx.distributed:
        sampler = torch.utils.data.DistributedSampler(train_set, ctx.world, ctx.rank, shuffle=True, seed=seed)
    loader = DataLoader(train_set, batch_size=local_batch, shuffle=sampler is None, sampler=sampler,
                        generator=torch.Generator().manual_seed(seed), num_workers=cfg.workers,
                        worker_init_fn=worker_init, pin_memory=ctx.device.type == "cuda")
    optimizer = _optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    total = cfg.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total)))))

    best, best_state, best_epoch, stale, monitor = -math.inf, None, 0, 0, None
    history, val_metrics = [], {}
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_loss = _train_epoch(net, task, loader, optimizer, schedule, cfg, ctx,
                                  f"{label} seed {seed} epoch {epoch}/{cfg.epochs}" if progress and ctx.main else None,
                                  frozen)
        metrics, val_loss = _evaluate(model, task, val_set, cfg, ctx)
        if monitor is None:  # whether the metric is defined depends on the set's labels only
            monitor = f"val_{task.primary}" if not math.isnan(metrics[task.primary]) else "val_loss"
        score = metrics[task.primary] if monitor != "val_loss" else -val_loss
        row = {"init": label, "seed": seed, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
               f"val_{task.primary}": metrics[task.primary], "lr": optimizer.param_groups[0]["lr"],
               "seconds": round(time.time() - t0, 3)}
        history.append(row)
        if log is not None and ctx.main:
            log(row)
        if score > best:
            best, best_epoch, stale, val_metrics = score, epoch, 0, metrics
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                break
    if best_state is not None:  # None only when every validation score was NaN: keep the last weights
        model.load_state_dict(best_state)
    else:
        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    test_metrics, test_loss = _evaluate(model, task, test_set, cfg, ctx)
    checkpoint = None
    if cfg.save_weights and ctx.main:
        checkpoint = str(Path(cfg.out) / f"seed{seed}" / "best.pt")
        atomic_save({"kind": FINETUNE_KIND, "version": FINETUNE_VERSION, "task": task.name, "arch": cfg.arch,
                     "classes": list(task.classes), "model": best_state, "config": cfg.to_dict(), "seed": seed,
                     "init": report.to_dict(), "epoch": best_epoch, "val": val_metrics, "test": test_metrics,
                     "versions": {"torch": str(torch.__version__)}}, checkpoint)
    return {"seed": seed, "init": report.to_dict(), "init_summary": report.summary(), "best_epoch": best_epoch,
            "epochs_run": len(history), "monitor": monitor, "val": val_metrics, "test": test_metrics,
            "test_loss": test_loss, "history": history, "n_train": len(splits.train_idx),
            "n_val": len(splits.val_idx), "n_test": len(splits.test_idx), "checkpoint": checkpoint}


def evaluate_checkpoint(path, *, split: str | None = None, device: str = "auto", batch_size: int | None = None,
                        workers: int = 0) -> dict:
    """Re-evaluates a fine-tuned checkpoint (``seed<S>/best.pt``) on a split of its data set.

    Args:
        path: a file written by a run (``kind`` ``adam_ext.finetune``).
        split: split to evaluate (default the run's test split).
        device: auto / cpu / cuda; batch_size: default the run's; workers: DataLoader workers.

    Returns:
        dict: the metrics (see :mod:`.metrics`) over the whole split.
    """
    ckpt = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != FINETUNE_KIND:
        raise ValueError(f"checkpoint {os.fspath(path)!r} must be an adam_ext.finetune file, got another kind")
    cfg = FinetuneConfig(**ckpt["config"])
    cfg = dataclasses.replace(cfg, device=device, workers=workers, batch_size=batch_size or cfg.batch_size)
    cfg = cfg.resolved()
    from adam_ext.data.registry import open_dataset

    reader = open_dataset(cfg.dataset, cfg.root, split=split or cfg.test_split, **cfg.options)
    task = _make_task(cfg, reader)
    model, _ = task.build_model()
    model.load_state_dict(ckpt["model"])
    ctx = ProcessContext(cfg.device, cfg.dist_timeout)
    try:
        model.to(ctx.device)
        metrics, _ = _evaluate(model, task, task.dataset(reader, range(len(reader)), False, 0), cfg, ctx)
    finally:
        ctx.close()
    return metrics


def _train_epoch(net, task, loader, optimizer, schedule, cfg, ctx, desc, frozen=None) -> float:
    """One epoch; returns the mean training loss over all ranks' samples (one sync per epoch).
    ``frozen``: a module kept in eval mode (a frozen encoder's BN statistics do not move)."""
    bar = None
    if desc is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc=desc, leave=False)
    net.train()
    if frozen is not None:
        frozen.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    count = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for x, y in loader:
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        if x.shape[0] < 2:  # BatchNorm cannot train on one image; every rank has the same batch sizes
            schedule.step()
            continue
        with _autocast(cfg, ctx):
            loss = task.loss(net(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.detach().double() * x.shape[0]
        count += x.shape[0]
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    total, n = _all_sum(ctx, loss_sum, count)
    mean = total / max(1.0, n)
    if not math.isfinite(mean):
        raise ValueError(f"training loss must stay finite, got {mean}; lower lr (now {cfg.lr})")
    return mean


# ----------------------------------------------------------------------------------------------
# Repeated runs, comparison, reports


def _metric_order(names, primary: str) -> list[str]:
    head = [m for m in (primary, "mean_iou", "accuracy") if m in names]
    return head + sorted(m for m in names if m not in head)


def _summaries(runs: list[dict]) -> dict:
    names = list(runs[0]["test"]) if runs else []
    return {m: summarize([r["test"].get(m, math.nan) for r in runs]) for m in names}


def finetune(cfg: FinetuneConfig, progress: bool = True, *, label: str | None = None) -> dict:
    """``cfg.runs`` runs with seeds ``cfg.seed ..``, mean ± std, files under ``cfg.out``.

    Returns:
        dict: ``task``, ``dataset``, ``init``, ``config`` (resolved), ``runs`` (see
        :func:`finetune_run`), ``summary`` ({metric: {mean, std, n}} over the runs' test metrics),
        ``primary`` and the paths ``results_json``, ``results_md``, ``curves``.
    """
    cfg = cfg.resolved()
    ctx = ProcessContext(cfg.device, cfg.dist_timeout)
    try:
        with runfolder.lock(cfg.out) if ctx.main else contextlib.nullcontext():  # one writer per folder
            return _finetune(cfg, progress, label or init_label(cfg.init), ctx)
    finally:
        ctx.close()


def _finetune(cfg, progress, label, ctx) -> dict:
    out = Path(cfg.out)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        runfolder.refuse_symlinks(out)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_text(out / "metrics.jsonl", "")

    def log(row):
        runfolder.append_line(out / "metrics.jsonl", json.dumps(json_safe(row)))

    runs = []
    for i in range(cfg.runs):
        run = _run(cfg, cfg.seed + i, label, progress, log, ctx)
        if ctx.main and i == 0:
            print(run["init_summary"], flush=True)
        if ctx.main:
            primary = "mean_auc" if cfg.task == "cls" else "mean_dice"
            print(f"{label} seed {run['seed']}: best epoch {run['best_epoch']}/{run['epochs_run']}, "
                  f"test {primary} {run['test'][primary]:.4f}", flush=True)
        runs.append(run)
    primary = "mean_auc" if cfg.task == "cls" else "mean_dice"
    result = {"kind": "adam_ext.finetune.results", "task": cfg.task, "dataset": cfg.dataset, "init": cfg.init,
              "label": label, "primary": primary, "config": cfg.to_dict(), "runs": runs,
              "summary": _summaries(runs)}
    if ctx.main:
        result.update(_write_results(out, result))
    return result


def _write_results(out: Path, result: dict) -> dict:
    paths = {"results_json": str(out / "results.json"), "results_md": str(out / "results.md"),
             "curves": str(out / "curves.png")}
    body = {k: v for k, v in result.items()}
    body["runs"] = [{k: v for k, v in r.items() if k != "init_summary"} for r in result["runs"]]
    atomic_write_json(out / "results.json", body)
    atomic_write_text(out / "results.md", results_markdown(result))
    plot_curves({result["label"]: result["runs"]}, out / "curves.png", result["primary"])
    return paths


def results_markdown(result: dict) -> str:
    """A Markdown page: setup line, then one row per test metric with mean ± std over runs."""
    cfg, runs = result["config"], result["runs"]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    shots = f", {cfg['shots']}-shot" if cfg.get("shots") else ""
    if cfg.get("freeze_encoder"):
        shots += ", frozen encoder (only the head trains)"
    lines = [
        f"# Fine-tuning: {result['task']} on {result['dataset']} from {result['label']}",
        "",
        (f"{cfg['arch']}, init `{result['init']}`, {len(runs)} run(s) (seeds {seeds}){shots}, "
         f"size {cfg['size']}, {cfg['optimizer']} lr {cfg['lr']}, up to {cfg['epochs']} epochs "
         f"(patience {cfg['patience']}). Test metrics of the best validation epoch, mean ± sample std over "
         "runs; n/a: undefined (e.g. a class with one label value in the test set)."),
        "",
        "| metric | mean ± std | runs |",
        "|---|---|---|",
    ]
    summary = result["summary"]
    for m in _metric_order(summary, result["primary"]):
        lines.append(f"| {m} | {format_summary(summary[m])} | {summary[m]['n']} |")
    return "\n".join(lines) + "\n"


def plot_curves(groups: dict, out, primary: str) -> Path:
    """Training loss and validation metric per epoch, one line per (initialisation, run).

    Args:
        groups: {label: [run dicts with ``history``]}.
        out: PNG path.
        primary: metric name of the validation curve (``mean_auc`` / ``mean_dice``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for g, (label, runs) in enumerate(groups.items()):
        colour = colours[g % len(colours)]
        for i, run in enumerate(runs):
            epochs = [r["epoch"] for r in run["history"]]
            name = label if i == 0 else None
            ax_loss.plot(epochs, [r["train_loss"] for r in run["history"]], color=colour, alpha=0.7, label=name)
            values = [r.get(f"val_{primary}") for r in run["history"]]
            values = [math.nan if v is None else v for v in values]
            ax_val.plot(epochs, values, color=colour, alpha=0.7, marker="o", ms=3, label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax_val.set(xlabel="epoch", ylabel=f"validation {primary}", title=f"validation {primary}")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_val):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)


def compare(cfg: FinetuneConfig, inits, progress: bool = True) -> dict:
    """Runs each initialisation under the same seeds and t-tests each against the first.

    Args:
        cfg: configuration (its ``init`` is replaced by each of ``inits``; ``runs`` >= 2 for a
            defined t-test).
        inits: at least two init specs; the first is the baseline.
        progress: tqdm bars on rank 0.

    Returns:
        dict: ``baseline``, ``labels``, ``results`` ({label: :func:`finetune` result without
        files of its own beyond ``out/<label>/``}), ``metrics`` ({metric: {label: {mean, std, n},
        ..., "tests": {label: {t, p}}}}) and the paths ``compare_json``, ``compare_md``, ``curves``.
        Files: ``out/<label>/...`` per initialisation, ``out/compare.json``, ``out/compare.md``,
        ``out/curves.png``.
    """
    inits = list(inits)
    if len(inits) < 2:
        raise ValueError(f"init must be given at least twice to compare, got {inits}")
    cfg = cfg.resolved()
    labels = _unique_labels(inits)
    ctx = ProcessContext(cfg.device, cfg.dist_timeout)
    main = ctx.main
    try:
        results = {}
        for label, spec in zip(labels, inits):
            sub = dataclasses.replace(cfg, init=spec, out=str(Path(cfg.out) / label))
            validate(sub)
            results[label] = _finetune(sub, progress, label, ctx)
    finally:
        ctx.close()
    base = labels[0]
    names = _metric_order(results[base]["summary"], results[base]["primary"])
    table = {}
    for m in names:
        entry = {lab: results[lab]["summary"].get(m, summarize([])) for lab in labels}
        base_values = [r["test"].get(m, math.nan) for r in results[base]["runs"]]
        entry["tests"] = {lab: ttest(base_values, [r["test"].get(m, math.nan) for r in results[lab]["runs"]])
                          for lab in labels[1:]}
        table[m] = entry
    out = {"kind": "adam_ext.finetune.compare", "task": cfg.task, "dataset": cfg.dataset, "baseline": base,
           "labels": labels, "inits": dict(zip(labels, inits)), "seeds": [cfg.seed + i for i in range(cfg.runs)],
           "primary": results[base]["primary"], "metrics": table, "results": results}
    if main:
        folder = Path(cfg.out)
        body = {k: v for k, v in out.items() if k != "results"}
        body["results"] = {lab: results[lab].get("results_json") for lab in labels}
        atomic_write_json(folder / "compare.json", body)
        atomic_write_text(folder / "compare.md", compare_markdown(out, cfg))
        plot_curves({lab: results[lab]["runs"] for lab in labels}, folder / "curves.png", out["primary"])
        out.update(compare_json=str(folder / "compare.json"), compare_md=str(folder / "compare.md"),
                   curves=str(folder / "curves.png"))
    return out


def _unique_labels(inits) -> list[str]:
    labels = []
    for spec in inits:
        base, label, k = init_label(spec), init_label(spec), 2
        while label in labels:
            label, k = f"{base}-{k}", k + 1
        labels.append(label)
    return labels


def compare_markdown(result: dict, cfg: FinetuneConfig) -> str:
    """Markdown table: one row per test metric, mean ± std per initialisation, p-value vs the baseline."""
    labels, base = result["labels"], result["baseline"]
    others = labels[1:]
    lines = [
        f"# Comparison: {result['task']} on {result['dataset']}",
        "",
        (f"{cfg.arch}, {len(result['seeds'])} run(s) per initialisation under the same seeds "
         f"({', '.join(map(str, result['seeds']))}){f', {cfg.shots}-shot' if cfg.shots else ''}{', frozen encoder' if cfg.freeze_encoder else ''}. "
         "Test metrics, mean ± sample std; p: independent two-sample t-test (scipy.stats.ttest_ind) "
         f"against `{base}`; n/a: undefined."),
        "",
        "| metric | " + " | ".join(labels) + " | " + " | ".join(f"p ({o} vs {base})" for o in others) + " |",
        "|---|" + "---|" * (len(labels) + len(others)),
    ]
    for m, entry in result["metrics"].items():
        cells = [format_summary(entry[lab]) for lab in labels]
        cells += ["n/a" if math.isnan(entry["tests"][o]["p"]) else f"{entry['tests'][o]['p']:.3g}" for o in others]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Initialisations: " + "; ".join(f"`{lab}` = `{spec}`" for lab, spec in result["inits"].items())]
    return "\n".join(lines) + "\n"
