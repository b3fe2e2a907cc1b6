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

Default splits per data set: each data set's registry entry (the table in :mod:`adam_ext.data.registry`;
``train_split`` / ``test_split`` override them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader

from .._util import runfolder
from .._util.seeds import SPLIT_VERSION
from ..checkpoints import (
    FINETUNE_KIND,
    FINETUNE_VERSION,
    atomic_write_text,
    init_label,
    json_safe,
    load_encoder,
    parse_init,
)
from ..data.registry import SPLITS
from ..data.views import worker_init
from ..engine import MetricsLog, cosine_schedule
from ..engine.checkpointer import Checkpointer
from ..engine.distributed import ProcessContext
from .config import FUNDUS, TASKS, FinetuneConfig, load_finetune_config, validate  # noqa: F401 (TASKS)
from .report import (
    compare_markdown,  # noqa: F401 (re-exported, as before the split)
    compare_table,
    plot_curves,  # noqa: F401
    results_markdown,  # noqa: F401
    summaries,
    write_compare,
    write_results,
)
from .splits import Splits, few_shot, holdout, open_splits  # noqa: F401 (Splits)
from .training import evaluate, make_optimizer, train_epoch

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


def _make_task(cfg: FinetuneConfig, reader):
    if cfg.task == "cls":
        from .classification import ClassificationTask

        return ClassificationTask(reader, cfg.arch, cfg.size)
    from .segmentation import SegmentationTask

    return SegmentationTask(reader, cfg.arch, cfg.size, cfg.masks, cfg.seg_mode, cfg.dice_backend)


# ----------------------------------------------------------------------------------------------
# One run


def finetune_run(
    cfg: FinetuneConfig,
    seed: int,
    *,
    label: str | None = None,
    progress: bool = False,
    log=None,
    ctx: ProcessContext | None = None,
) -> dict:
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
    if cfg.freeze_encoder or cfg.frozen_epochs:  # before DDP: it reduces only what needs a gradient
        encoder.requires_grad_(False)
    model.to(ctx.device)
    net = _wrap(model, ctx)
    train_set = task.dataset(splits.train, splits.train_idx, train=True, seed=seed)
    val_set = task.dataset(splits.val, splits.val_idx, train=False, seed=seed)
    test_set = task.dataset(splits.test, splits.test_idx, train=False, seed=seed)
    loader, sampler = _train_loader(cfg, train_set, seed, ctx)
    fit = _fit(
        cfg,
        task,
        model,
        net,
        encoder,
        loader,
        sampler,
        val_set,
        ctx,
        run=f"{label} seed {seed}" if progress and ctx.main else None,
        log=log,
        row_head={"init": label, "seed": seed},
    )
    test_metrics, test_loss = evaluate(model, task, test_set, cfg, ctx)
    checkpoint = None
    if cfg.save_weights and ctx.main:
        checkpoint = str(Path(cfg.out) / f"seed{seed}" / "best.pt")
        fit["checkpoints"].save(
            checkpoint,
            {
                "kind": FINETUNE_KIND,
                "version": FINETUNE_VERSION,
                "task": task.name,
                "arch": cfg.arch,
                "classes": list(task.classes),
                "model": fit["best_state"],
                "config": cfg.to_dict(),
                "seed": seed,
                "init": report.to_dict(),
                "epoch": fit["best_epoch"],
                "val": fit["val"],
                "test": test_metrics,
                "versions": {"torch": str(torch.__version__)},
                "split_version": SPLIT_VERSION,
            },
        )
    history = fit["history"]
    return {
        "seed": seed,
        "init": report.to_dict(),
        "init_summary": report.summary(),
        "best_epoch": fit["best_epoch"],
        "epochs_run": len(history),
        "monitor": fit["monitor"],
        "val": fit["val"],
        "test": test_metrics,
        "test_loss": test_loss,
        "history": history,
        "n_train": len(splits.train_idx),
        "n_val": len(splits.val_idx),
        "n_test": len(splits.test_idx),
        "checkpoint": checkpoint,
    }


def _wrap(model, ctx):
    """``model`` under DDP when distributed (its parameters that need a gradient), else itself."""
    if not ctx.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
    )


def _param_groups(cfg, model, encoder) -> list[dict]:
    """The optimiser's groups: the encoder's parameters at ``lr * encoder_lr_scale``, the rest at
    ``lr``. A frozen encoder (``freeze_encoder``) is left out; one frozen only for the first
    ``frozen_epochs`` is in (AdamW skips a parameter while it has no gradient)."""
    own = {id(p) for p in encoder.parameters()}
    trained = [p for p in model.parameters() if (id(p) in own and not cfg.freeze_encoder) or p.requires_grad]
    if cfg.encoder_lr_scale == 1:
        return [{"params": trained, "lr": cfg.lr}]
    return [
        {"params": [p for p in trained if id(p) not in own], "lr": cfg.lr},
        {"params": [p for p in trained if id(p) in own], "lr": cfg.lr * cfg.encoder_lr_scale},
    ]


def _train_loader(cfg, train_set, seed, ctx):
    """(DataLoader, DistributedSampler or None) of the training set: seeded order, batches split over ranks."""
    local_batch = max(1, cfg.batch_size // ctx.world)
    sampler = None
    if ctx.distributed:
        sampler = torch.utils.data.DistributedSampler(train_set, ctx.world, ctx.rank, shuffle=True, seed=seed)
    loader = DataLoader(
        train_set,
        batch_size=local_batch,
        shuffle=sampler is None,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
        num_workers=cfg.workers,
        worker_init_fn=worker_init,
        pin_memory=ctx.device.type == "cuda",
    )
    return loader, sampler


def _fit(cfg, task, model, net, encoder, loader, sampler, val_set, ctx, *, run, log, row_head) -> dict:
    """Trains up to ``cfg.epochs`` epochs with early stopping on the validation set and leaves the
    best weights in ``model``. ``encoder``: the encoder module inside ``model`` (frozen in eval mode
    with ``freeze_encoder``, and for the first ``frozen_epochs``, then unfrozen). ``run``:
    progress-bar prefix (None: no bar); ``row_head``: the first fields of each epoch's row. Returns
    ``history``, ``best_state``, ``best_epoch``, ``monitor`` and ``val`` (the best epoch's
    validation metrics)."""
    optimizer = make_optimizer(cfg, _param_groups(cfg, model, encoder))
    total = cfg.epochs * len(loader)
    schedule = cosine_schedule(optimizer, total)

    checkpoints = Checkpointer(
        main=ctx.main, mode="max"
    )  # pretraining's policy: a non-finite score never wins
    best_state, best_epoch, stale, monitor = None, 0, 0, None
    history, val_metrics = [], {}
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        if sampler is not None:
            sampler.set_epoch(epoch)
        if cfg.frozen_epochs and epoch == cfg.frozen_epochs + 1:  # LP-FT: the encoder joins in
            encoder.requires_grad_(True)
            net = _wrap(model, ctx)
        frozen = encoder if cfg.freeze_encoder or epoch <= cfg.frozen_epochs else None
        train_loss = train_epoch(
            net,
            task,
            loader,
            optimizer,
            schedule,
            cfg,
            ctx,
            f"{run} epoch {epoch}/{cfg.epochs}" if run is not None else None,
            frozen,
        )
        metrics, val_loss = evaluate(model, task, val_set, cfg, ctx)
        if monitor is None:  # whether the metric is defined depends on the set's labels only
            monitor = f"val_{task.primary}" if not math.isnan(metrics[task.primary]) else "val_loss"
        score = metrics[task.primary] if monitor != "val_loss" else -val_loss
        row = {
            **row_head,
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            f"val_{task.primary}": metrics[task.primary],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.time() - t0, 3),
        }
        history.append(row)
        if log is not None and ctx.main:
            log(row)
        if checkpoints.improves(score):
            best_epoch, stale, val_metrics = epoch, 0, metrics
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                break
    if best_state is not None:  # None only when every validation score was NaN: keep the last weights
        model.load_state_dict(best_state)
    else:
        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return {
        "history": history,
        "best_state": best_state,
        "best_epoch": best_epoch,
        "monitor": monitor,
        "val": val_metrics,
        "checkpoints": checkpoints,
    }


def evaluate_checkpoint(
    path, *, split: str | None = None, device: str = "auto", batch_size: int | None = None, workers: int = 0
) -> dict:
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
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} must be an adam_ext.finetune file, got another kind"
        )
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
        metrics, _ = evaluate(model, task, task.dataset(reader, range(len(reader)), False, 0), cfg, ctx)
    finally:
        ctx.close()
    return metrics


# ----------------------------------------------------------------------------------------------
# Repeated runs, comparison


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
        with _output(cfg.out, "finetune", _inputs(cfg, [cfg.init]), ctx):  # one writer, a folder of its kind
            return _finetune(cfg, progress, label or init_label(cfg.init), ctx)
    finally:
        ctx.close()


def _inputs(cfg: FinetuneConfig, inits) -> list:
    """What runs of ``cfg`` read (the data set's root, its cache, the initialisations' files): an
    output folder must not be, or contain, one of them."""
    files = [parse_init(spec)[1] for spec in inits]
    return [cfg.root, cfg.options.get("cache") if isinstance(cfg.options.get("cache"), str) else None, *files]


def _output(out, kind: str, inputs, ctx, part_of: str | None = None, writes=()):
    """On rank 0, the run folder ``out`` claimed for ``kind`` and locked while the block runs
    (:func:`adam_ext._util.runfolder.run_folder`); on other ranks nothing."""
    if not ctx.main:
        return contextlib.nullcontext()
    return runfolder.run_folder(out, kind, inputs=inputs, part_of=part_of, writes=writes)


def _finetune(cfg, progress, label, ctx) -> dict:
    out = Path(cfg.out)
    if ctx.main:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_text(out / "metrics.jsonl", "")

    metrics = MetricsLog(out, enabled=ctx.main, tensorboard=False)

    def log(row):
        metrics.log(json_safe(row))

    runs = []
    for i in range(cfg.runs):
        run = _run(cfg, cfg.seed + i, label, progress, log, ctx)
        if ctx.main and i == 0:
            print(run["init_summary"], flush=True)
        if ctx.main:
            primary = "mean_auc" if cfg.task == "cls" else "mean_dice"
            print(
                f"{label} seed {run['seed']}: best epoch {run['best_epoch']}/{run['epochs_run']}, "
                f"test {primary} {run['test'][primary]:.4f}",
                flush=True,
            )
        runs.append(run)
    primary = "mean_auc" if cfg.task == "cls" else "mean_dice"
    result = {
        "kind": "adam_ext.finetune.results",
        "task": cfg.task,
        "dataset": cfg.dataset,
        "init": cfg.init,
        "label": label,
        "primary": primary,
        "config": cfg.to_dict(),
        "split_version": SPLIT_VERSION,
        "runs": runs,
        "summary": summaries(runs),
    }
    if ctx.main:
        result.update(write_results(out, result))
    return result


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
    subs = [
        dataclasses.replace(cfg, init=spec, out=str(Path(cfg.out) / label))
        for label, spec in zip(labels, inits)
    ]
    for sub in subs:  # every initialisation is checked before the first one trains
        validate(sub)
        path = parse_init(sub.init)[1]
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(
                f"init {sub.init!r}: checkpoint {path!r} does not exist"
                + (" (it is a folder)" if os.path.isdir(path) else "")
            )
    inputs = _inputs(cfg, inits)
    ctx = ProcessContext(cfg.device, cfg.dist_timeout)
    try:
        # The comparison's folder and each initialisation's are locked, of their kind, free of links.
        with _output(cfg.out, "compare", inputs, ctx, writes=labels):
            results = {}
            for label, sub in zip(labels, subs):
                with _output(sub.out, "finetune", inputs, ctx, part_of="compare"):
                    results[label] = _finetune(sub, progress, label, ctx)
            out = _compare_result(cfg, labels, inits, results)
            if ctx.main:
                out.update(write_compare(Path(cfg.out), out, cfg))
    finally:
        ctx.close()
    return out


def _compare_result(cfg, labels, inits, results) -> dict:
    base = labels[0]
    return {
        "kind": "adam_ext.finetune.compare",
        "task": cfg.task,
        "dataset": cfg.dataset,
        "baseline": base,
        "labels": labels,
        "inits": dict(zip(labels, inits)),
        "seeds": [cfg.seed + i for i in range(cfg.runs)],
        "split_version": SPLIT_VERSION,
        "primary": results[base]["primary"],
        "metrics": compare_table(results, labels),
        "results": results,
    }


#: Names of a comparison's own files: no initialisation's folder may take one.
COMPARE_FILES = ("compare.json", "compare.md", "curves.png", runfolder.MARKER, runfolder.LOCK_FILE)


def _unique_labels(inits) -> list[str]:
    """One label per initialisation: its :func:`init_label` as one safe path component
    (:func:`adam_ext._util.runfolder.safe_name`: ``sub/../best.pt`` gives ``best``, never ``..``),
    made unique (``-2``, ``-3``...; compared without case, for case-insensitive file systems)."""
    labels = []
    for spec in inits:
        kind, path = parse_init(spec)
        if path is not None:  # runs/a/../b/best.pt is named after b, the folder it is in
            spec = ("imagenet:" if kind == "imagenet" else "") + os.path.normpath(path)
        base = runfolder.safe_name(init_label(spec), reserved=COMPARE_FILES)
        label, k = base, 2
        while label.lower() in {x.lower() for x in labels}:
            label, k = f"{base}-{k}", k + 1
        labels.append(label)
    return labels
