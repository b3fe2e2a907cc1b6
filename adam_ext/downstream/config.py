"""Settings of fine-tuning (``adam finetune`` / ``adam compare``): :class:`FinetuneConfig`, the
single home of their defaults, its validation and :func:`load_finetune_config` (defaults, flags, a
YAML file, ``key=value`` overrides)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..checkpoints import parse_init
from ..data.registry import DATASETS, FUNDUS, SPLITS
from ..engine.config import check_field, is_int, is_num, layered_values

__all__ = ["FUNDUS", "TASKS", "FinetuneConfig", "load_finetune_config", "validate"]

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
        frozen_epochs: the encoder is frozen as with ``freeze_encoder`` for the first this many
            epochs, then fine-tuned with the rest (LP-FT: linear probing, then fine-tuning; Kumar
            et al. 2022); 0: fine-tuned from the first step.
        encoder_lr_scale: the encoder's learning rate as a fraction of ``lr`` (the head's,
            decoder's and every other layer's stay ``lr``); 1: one rate for all.
        size: input side in px (None: 512 for fundus, 224 otherwise).
        masks: seg: mask names to segment (None: all of the reader's); seg_mode: ``multilabel``
            (sigmoid per mask) or ``multiclass`` (softmax); dice_backend: ``adam_ext`` or ``monai``
            (Dice and IoU by MONAI's metrics, :func:`~adam_ext.downstream.metrics.dice_iou`).
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
    frozen_epochs: int = 0
    encoder_lr_scale: float = 1.0
    size: int | None = None
    masks: list | None = None
    seg_mode: str = "multilabel"
    dice_backend: str = "adam_ext"
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
            cfg.size = DATASETS[cfg.dataset].finetune_size
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
    check_field(
        cfg.dataset is None or cfg.dataset in SPLITS,
        "dataset",
        f"one of {sorted(SPLITS)} or null",
        cfg.dataset,
    )
    check_field(isinstance(cfg.root, str) and cfg.root != "", "root", "the data set's folder", cfg.root)
    check_field(isinstance(cfg.options, dict), "options", "a mapping of reader options", cfg.options)
    check_field(cfg.arch in BACKBONES, "arch", f"one of {list(BACKBONES)}", cfg.arch)
    parse_init(cfg.init)
    check_field(
        cfg.size is None or (is_int(cfg.size) and cfg.size >= 32), "size", "an int >= 32 or null", cfg.size
    )
    check_field(
        cfg.masks is None
        or (
            isinstance(cfg.masks, (list, tuple))
            and len(cfg.masks) > 0
            and all(isinstance(m, str) for m in cfg.masks)
        ),
        "masks",
        "null or a non-empty list of mask names",
        cfg.masks,
    )
    check_field(
        cfg.seg_mode in ("multilabel", "multiclass"), "seg_mode", "multilabel or multiclass", cfg.seg_mode
    )
    check_field(
        cfg.dice_backend in ("adam_ext", "monai"), "dice_backend", "adam_ext or monai", cfg.dice_backend
    )
    check_field(cfg.optimizer in ("adamw", "adam"), "optimizer", "adamw or adam", cfg.optimizer)
    check_field(cfg.lr is None or (is_num(cfg.lr) and cfg.lr > 0), "lr", "> 0 or null", cfg.lr)
    check_field(
        cfg.weight_decay is None or (is_num(cfg.weight_decay) and cfg.weight_decay >= 0),
        "weight_decay",
        ">= 0 or null",
        cfg.weight_decay,
    )
    check_field(
        cfg.betas is None
        or (
            isinstance(cfg.betas, (list, tuple))
            and len(cfg.betas) == 2
            and all(is_num(b) and 0 <= b < 1 for b in cfg.betas)
        ),
        "betas",
        "null or two numbers in [0, 1)",
        cfg.betas,
    )
    check_field(is_int(cfg.epochs) and cfg.epochs > 0, "epochs", "a positive int", cfg.epochs)
    check_field(
        is_int(cfg.patience) and cfg.patience >= 0,
        "patience",
        "an int >= 0 (0: no early stopping)",
        cfg.patience,
    )
    check_field(is_int(cfg.batch_size) and cfg.batch_size >= 2, "batch_size", "an int >= 2", cfg.batch_size)
    check_field(is_int(cfg.workers) and cfg.workers >= 0, "workers", "an int >= 0", cfg.workers)
    check_field(
        is_num(cfg.val_fraction) and 0 < cfg.val_fraction < 1, "val_fraction", "in (0, 1)", cfg.val_fraction
    )
    check_field(
        cfg.shots is None or (is_int(cfg.shots) and cfg.shots >= 2), "shots", "null or an int >= 2", cfg.shots
    )
    check_field(is_int(cfg.runs) and cfg.runs >= 1, "runs", "an int >= 1", cfg.runs)
    check_field(is_int(cfg.seed) and cfg.seed >= 0, "seed", "an int >= 0", cfg.seed)
    check_field(cfg.device in ("auto", "cpu", "cuda"), "device", "one of auto, cpu, cuda", cfg.device)
    check_field(cfg.amp in ("none", "bf16"), "amp", "none or bf16", cfg.amp)
    check_field(isinstance(cfg.out, str) and cfg.out != "", "out", "a folder path", cfg.out)
    check_field(isinstance(cfg.save_weights, bool), "save_weights", "true or false", cfg.save_weights)
    check_field(isinstance(cfg.freeze_encoder, bool), "freeze_encoder", "true or false", cfg.freeze_encoder)
    check_field(
        is_int(cfg.frozen_epochs) and 0 <= cfg.frozen_epochs < cfg.epochs,
        "frozen_epochs",
        f"an int in [0, epochs = {cfg.epochs})",
        cfg.frozen_epochs,
    )
    check_field(
        not (cfg.freeze_encoder and cfg.frozen_epochs),
        "frozen_epochs",
        "0 with freeze_encoder (the encoder is then frozen throughout)",
        cfg.frozen_epochs,
    )
    check_field(
        is_num(cfg.encoder_lr_scale) and 0 < cfg.encoder_lr_scale <= 10,
        "encoder_lr_scale",
        "a number in (0, 10]",
        cfg.encoder_lr_scale,
    )
    check_field(
        not (cfg.freeze_encoder and cfg.encoder_lr_scale != 1),
        "encoder_lr_scale",
        "1 with freeze_encoder (a frozen encoder has no learning rate)",
        cfg.encoder_lr_scale,
    )
    check_field(
        is_num(cfg.dist_timeout) and cfg.dist_timeout > 0, "dist_timeout", "> 0 seconds", cfg.dist_timeout
    )


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
    cfg = FinetuneConfig(**values)
    validate(cfg)
    return cfg
