"""Configuration of Adam pretraining: typed dataclasses are the single home of the defaults.

The defaults are the paper's protocol (DESIGN.md): ResNet-50, MoCo v2 (m = 0.999, K = 65536,
τ = 0.2), SGD lr 0.03 per 256 images, momentum 0.9, weight decay 1e-4, cosine schedule, 200 epochs
a stage, global batch 256, stages n = 0, 2, 4, purposive pruner γ = 0.8 at n > 0, 10% of the
training images for validation. A YAML file overrides them, and ``key=value`` overrides (dotted
keys, YAML values) override the file::

    data:
      dataset: folder
      root: /data/cxr
    optim:
      epochs: 100

    cfg = load_config("my.yaml", ["optim.batch_size=128", "stages=[0,2]"])

Every field is validated; errors name the field (``optim.lr must be > 0, got -1``). The resolved
configuration is saved as ``config.yaml`` in the run folder and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import yaml

from ..engine.config import (  # noqa: F401 (ConfigLoader, load_yaml, parse_override: importable from here too)
    ConfigLoader,
    build_dataclass,
    check_field,
    check_memory,
    check_side,
    config_differences,
    is_int,
    is_num,
    layered_values,
    load_yaml,
    parse_override,
)
from ..models import BACKBONES, MOCO_DEFAULTS, TRUNK_MODULES, MoCo

__all__ = [
    "PRESETS",
    "ConfigLoader",
    "DataConfig",
    "ModelConfig",
    "MonitorConfig",
    "OptimConfig",
    "PretrainConfig",
    "load_config",
    "load_yaml",
]


@dataclass
class DataConfig:
    """Where the images come from and how views are made.

    Attributes:
        dataset: a name of :data:`adam_ext.data.DATASETS` (``folder`` reads any tree of images).
        root: the data set's folder. For ``synthetic`` it is generated (``synthetic_n`` images
            of ``synthetic_size`` px) when it does not exist yet.
        options: extra reader options (e.g. ``{"channels": 3}`` for a colour folder, ``{"size": 256}``).
        cache: a decoded-image cache folder (``adam cache``), or None.
        train_split / val_split: the reader's split names. When the reader has no ``val_split``,
            a seeded ``val_fraction`` of ``train_split`` is held out.
        val_fraction: the held-out share when the reader has no validation split.
        view_size: side of the two views in pixels (224 in the paper).
        views: other fields of :class:`adam_ext.data.views.ViewConfig` (``scale``, ``degrees``,
            ``blur_sigma``...). Unset sizes in pixels (``blur_sigma``, ``blur_kernel``) scale with
            ``view_size`` from the paper's values at 224 px.
        workers: DataLoader worker processes per rank (0: load in the training process), or
            ``auto`` (the default): the CPUs available to this process, shared by the node's
            ranks, less one for the training process, at most 16
            (:func:`adam_ext.distributed.auto_workers`; 1 on a 2-core machine, 15 for one GPU
            with 16 cores). The run prints the number it chose.
        synthetic_n / synthetic_size: images and their side when ``synthetic`` data is generated.
        film_features: film features of generated ``synthetic`` data switched off or on (fields of
            :class:`adam_ext.data.synthetic.FilmFeatures`: ``markers``, ``electrodes``,
            ``collimation``, ``exposure_variation``; unnamed ones stay on), e.g. ``{markers: false}``.
    """

    dataset: str = "folder"
    root: str = ""
    options: dict = field(default_factory=dict)
    cache: str | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    val_fraction: float = 0.1
    view_size: int = 224
    views: dict = field(default_factory=dict)
    workers: int | str = "auto"
    synthetic_n: int = 1000
    synthetic_size: int = 256
    film_features: dict = field(default_factory=dict)

    def view_options(self) -> dict:
        """``views`` as keyword arguments of :class:`adam_ext.data.views.TwoViews` (YAML lists as tuples)."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.views.items()}


@dataclass
class ModelConfig:
    """The MoCo model (see :class:`adam_ext.models.MoCo`); defaults: :data:`adam_ext.models.MOCO_DEFAULTS`."""

    backbone: str = MOCO_DEFAULTS["backbone"]
    weights: str | None = MOCO_DEFAULTS["weights"]
    dim: int = MOCO_DEFAULTS["dim"]
    K: int = MOCO_DEFAULTS["K"]
    m: float = MOCO_DEFAULTS["m"]
    T: float = MOCO_DEFAULTS["T"]
    mlp_hidden: int | None = MOCO_DEFAULTS["mlp_hidden"]
    shuffle_bn_groups: int = MOCO_DEFAULTS["shuffle_bn_groups"]
    query_bn_groups: int = MOCO_DEFAULTS["query_bn_groups"]
    sync_bn: bool = MOCO_DEFAULTS["sync_bn"]
    #: Trunk modules pretraining keeps at their initialisation (``[conv1, bn1]``: the stem); see ``MoCo(frozen=...)``.
    frozen: list = field(default_factory=lambda: list(MOCO_DEFAULTS["frozen"]))

    def build(self, distributed: bool = False) -> MoCo:
        """The :class:`~adam_ext.models.MoCo` model these fields describe, drawn from torch's global
        generator (seed it first). Every field is a ``MoCo`` argument of the same name, so a new field
        reaches the model without another line here; ``sync_bn`` applies only when ``distributed``."""
        values = dataclasses.asdict(self)
        values["sync_bn"] = self.sync_bn and distributed
        if self.weights is not None:  # a file of any layout we read -> the trunk's state dict
            from ..checkpoints import trunk_weights

            values["weights"] = trunk_weights(self.weights, self.backbone)
        return MoCo(**values)


@dataclass
class OptimConfig:
    """The optimiser (SGD in the paper) with a cosine schedule, per stage.

    Attributes:
        optimizer: ``sgd`` (the paper's, with ``momentum``) or ``adamw`` (MoCo v3's; betas 0.9,
            0.999, decoupled ``weight_decay``), which moves every layer from the first steps: what
            a run of a few hundred steps on a CPU needs (see the ``demo`` preset).
        lr: learning rate per 256 images; the optimiser uses ``lr * batch_size / 256``.
        batch_size: global batch (all ranks together); must divide by the world size.
        epochs: epochs of each stage.
        warmup_epochs: linear warm-up before the cosine decay (0 in the paper).
        lr_scaling: ``linear`` (default: ``lr * batch_size / 256``) or ``none`` (``lr`` as given, the
            official code's; equal at batch 256).
        schedule_unit: ``step`` (default: the cosine moves every step, to 0 at the end) or ``epoch``
            (set once an epoch, ½(1 + cos(π e / E)): the official code's, never 0).
    """

    optimizer: str = "sgd"
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 256
    epochs: int = 200
    warmup_epochs: float = 0.0
    lr_scaling: str = "linear"
    schedule_unit: str = "step"


@dataclass
class MonitorConfig:
    """Representation monitors (:class:`adam_ext.monitors.RepresentationMonitor`), computed on the
    validation images at the end of every epoch (and every ``every`` steps if > 0).

    Attributes:
        enabled: compute them at all.
        every: also every this many steps (0: at the end of epochs only).
        images: at most this many validation images (their two views of the validation pass) feed
            the label-free monitors, which cost no extra forward pass.
        knn_images: training images the k-NN is fitted on, and validation images it is scored on
            (the k-NN's forwards are the monitors' only cost).
        k, temperature: the weighted k-NN's neighbours and vote temperature (solo-learn's 20 and 0.07).
    """

    enabled: bool = True
    every: int = 0
    images: int = 1024
    knn_images: int = 64
    k: int = 20
    temperature: float = 0.07


@dataclass
class PretrainConfig:
    """Everything an ``adam pretrain`` run needs.

    Attributes:
        stages: the decomposer's n for each stage, coarse to fine; each stage starts from the
            previous stage's state as ``stage_init`` says, with a fresh optimiser and schedule.
        stage_init: what a stage starts from: ``best`` (default), the previous stage's weights and
            queue with the lowest validation loss; or ``last``, its state at the end of its last
            epoch (both encoders, queue and pointer), as the official code chains its stages.
        gamma: the purposive pruner's threshold at n > 0 (None: off).
        gamma_n0: the threshold at n = 0 (None: off, the paper's choice).
        val_pruning: compute the validation loss with the stage's γ (True) or without pruning
            (False, default). With pruning, a collapsed model (every key at least γ similar to
            every query) has a validation loss of exactly 0 and would be kept as the best; the
            unpruned loss ranks it last.
        out: run folder (config.yaml, metrics.jsonl, tensorboard/, stage folders, report).
        seed: seed of everything random (data order, views, initial weights, shuffle-BN).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``.
        amp: autocast on GPU: ``auto`` (default: bf16 on a GPU that has it, Ampere and later; off on
            older GPUs and on the CPU), ``none``, ``bf16`` or ``fp16`` (with a gradient scaler).
        channels_last: the channels-last memory format for the encoders and images (faster on
            GPUs, and on CPU: a resnet18 step at 128 px, batch 64 took 2.4 s instead of 3.1-3.4 s
            on the 2-core EPYC of the README's benchmarks).
        checkpoint_every: steps between checkpoints (besides one at each epoch's end; 0: epochs only).
        log_every: steps between log lines / metrics rows (the loss is checked for NaN there
            and before every checkpoint, so a checkpoint never holds weights after a bad step).
        dist_timeout: seconds a rank waits for the others before giving up with an error.
        deterministic: ``torch.use_deterministic_algorithms(True)`` (exact resume on GPU too).
        tensorboard: write TensorBoard event files.
        max_steps: stop every stage after this many steps (0: no limit); for smoke runs.
        snapshots: also keep the weights at the end of every epoch as
            ``snapshots/stage<i>_n<n>_epoch<e>.pt`` (what ``adam export`` and fine-tuning read), for
            learning curves.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    stages: list = field(default_factory=lambda: [0, 2, 4])
    stage_init: str = "best"
    gamma: float | None = 0.8
    gamma_n0: float | None = None
    val_pruning: bool = False
    out: str = "runs/adam"
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    checkpoint_every: int = 500
    log_every: int = 10
    dist_timeout: float = 600.0
    deterministic: bool = False
    tensorboard: bool = True
    max_steps: int = 0
    snapshots: bool = False

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/checkpoint friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PretrainConfig:
        """Builds a config from a nested dict; unknown keys are errors naming the key."""
        return build_dataclass(cls, values or {})

    def gamma_for(self, n: int) -> float | None:
        """The pruning threshold of the stage with decomposer grid ``n``."""
        return self.gamma if n > 0 else self.gamma_n0


#: Named starting points (``adam pretrain --preset NAME``); fields not given keep the defaults.
PRESETS: dict[str, dict] = {
    # Sized for a 2-core CPU: a few minutes for stages 0, 2, 4 (README, `make demo`);
    # m = 0.99 and lr 0.3 per 256 because a few hundred steps a stage are too few for the paper's
    # m = 0.999 (the key encoder would keep ~75% of its random initialisation) and lr 0.03.
    # Images at 256 px so that a cell of the n = 4 grid (64 px) fills a 64-px view without upsampling.
    # Views: crops of 50-100% of the anchor, rotation up to 10 degrees, no colour jitter. Measured
    # (docs/experiments/demo-2026-12.md): with the paper's views (20-100%, 30 degrees, jitter 0.4 at
    # p = 0.8) the loss of stage n = 0 fell for two epochs, then rose back to log(K + 1) as the
    # representation collapsed; with jitter 0.2 it learned little (validation loss 5.0 after 10
    # epochs); without jitter 4.4, and 3.5 at the end of stage n = 4.
    "demo": {
        "data": {
            "dataset": "synthetic",
            "root": "data/synthetic",
            "view_size": 64,
            "workers": 1,
            "synthetic_n": 800,
            "synthetic_size": 256,
            "views": {"scale": [0.5, 1.0], "degrees": 10, "jitter_p": 0.0},
        },
        # The stem (conv1 + bn1) stays at its random initialisation: trained here, its filters turn
        # smooth within the first epoch (18 steps) and a frozen U-Net decoder loses the detail it reads
        # from them (16-shot frozen validation Dice 0.747 trained vs 0.828 kept; docs/experiments/
        # demo-2026-12.md, "Keeping the stem at its initialisation").
        "model": {
            "backbone": "resnet18",
            "K": 256,
            "dim": 64,
            "mlp_hidden": 256,
            "m": 0.99,
            "frozen": ["conv1", "bn1"],
        },
        # The paper's γ = 0.8 and the official chaining of stages (each from the previous one's last
        # state): what the pretraining-seed study measured over 5 seeds (docs/experiments/
        # pretraining-seeds.md: locality margin above random initialisation's, p = 0.0025; no collapse).
        "gamma": 0.8,
        "stage_init": "last",
        "optim": {"batch_size": 32, "epochs": 10, "lr": 0.3, "warmup_epochs": 1},
        # k-NN on 6 training and 6 validation images' landmark patches (156 forwards at 64 px): with 8,
        # the monitors took 0.44 s of a 10.2-s epoch on 2 cores (plus ~0.1 s for the second views)
        "monitor": {"knn_images": 6},
        "out": "runs/demo",
        "checkpoint_every": 0,
        "log_every": 4,
    },
    # The official Adam-v1 code's behaviour where it differs from the defaults (docs/fidelity.md; each
    # key is a row of its table, and tests/pretrain/test_config.py checks that the preset sets them all):
    # stages chained from the last state, "best" chosen by the pruned validation loss, per-GPU BN of 4
    # GPUs emulated on one device (torchrun on 4 ranks: 64 images each, as the official run), lr 0.03
    # unscaled, the cosine set once an epoch, equal decomposer cells (the remainder left out), and
    # about 13% of the images for validation (the official lists' share).
    "paper": {
        "stage_init": "last",
        "val_pruning": True,
        "model": {"shuffle_bn_groups": 4, "query_bn_groups": 4},
        "optim": {"lr_scaling": "none", "schedule_unit": "epoch"},
        "data": {"views": {"grid_remainder": "drop"}, "val_fraction": 0.13},
        "out": "runs/paper",
    },
}


#: The most images ``synthetic`` data may be generated with: about nine times ChestX-ray14's 112,120
#: (a 256-px phantom takes about 0.1 s of a core and 100 KB on disk with its masks: a million is a
#: day of 2 cores and 100 GB); more is a typo that would run until killed.
MAX_SYNTHETIC_N = 1_000_000
#: Bytes per view pixel a training sample keeps at the least: the float32 view (3 channels) and the
#: stem's two saved maps at stride 2 (64 channels each: conv1 and bn1 outputs), 4 x (3 + 2 x 16).
VIEW_BYTES_PER_PIXEL = 140


def validate(cfg: PretrainConfig) -> None:
    """Raises ValueError naming the first field that is out of range (sizes: see :func:`check_sizes`)."""
    from ..data.registry import DATASETS

    d, m, o = cfg.data, cfg.model, cfg.optim
    check_field(d.dataset in DATASETS, "data.dataset", f"one of {sorted(DATASETS)}", d.dataset)
    check_field(isinstance(d.root, str), "data.root", "a folder path", d.root)
    check_field(isinstance(d.options, dict), "data.options", "a mapping of reader options", d.options)
    _check_reader_options(d.dataset, d.options)
    check_field(
        is_num(d.val_fraction) and 0 < d.val_fraction < 1, "data.val_fraction", "in (0, 1)", d.val_fraction
    )
    for name in ("view_size", "synthetic_n", "synthetic_size"):
        check_field(
            is_int(getattr(d, name)) and getattr(d, name) > 0,
            f"data.{name}",
            "a positive int",
            getattr(d, name),
        )
    check_field(
        d.workers == "auto" or (is_int(d.workers) and d.workers >= 0),
        "data.workers",
        "an int >= 0 or auto",
        d.workers,
    )
    check_field(isinstance(d.views, dict), "data.views", "a mapping of ViewConfig fields", d.views)
    from ..data.synthetic import FilmFeatures

    check_field(
        isinstance(d.film_features, dict)
        and set(d.film_features) <= set(FilmFeatures.__dataclass_fields__)
        and all(isinstance(v, bool) for v in d.film_features.values()),
        "data.film_features",
        f"a mapping of {', '.join(FilmFeatures.__dataclass_fields__)} to true or false",
        d.film_features,
    )
    from ..data.views import ViewConfig

    try:
        ViewConfig(size=d.view_size, **d.view_options())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data.views must hold valid ViewConfig fields, got {d.views!r}: {exc}") from None
    check_field(m.backbone in BACKBONES, "model.backbone", f"one of {list(BACKBONES)}", m.backbone)
    for name in ("dim", "K", "shuffle_bn_groups", "query_bn_groups"):
        check_field(
            is_int(getattr(m, name)) and getattr(m, name) > 0,
            f"model.{name}",
            "a positive int",
            getattr(m, name),
        )
    check_field(
        m.mlp_hidden is None or (is_int(m.mlp_hidden) and m.mlp_hidden > 0),
        "model.mlp_hidden",
        "a positive int or null",
        m.mlp_hidden,
    )
    check_field(is_num(m.m) and 0 <= m.m <= 1, "model.m", "in [0, 1]", m.m)
    check_field(is_num(m.T) and m.T >= 1e-4, "model.T", ">= 1e-4 (the loss's smallest temperature)", m.T)
    check_field(o.lr_scaling in ("linear", "none"), "optim.lr_scaling", "linear or none", o.lr_scaling)
    check_field(o.schedule_unit in ("step", "epoch"), "optim.schedule_unit", "step or epoch", o.schedule_unit)
    check_field(
        isinstance(m.frozen, list)
        and all(name in TRUNK_MODULES for name in m.frozen)
        and len(set(m.frozen)) == len(m.frozen),
        "model.frozen",
        f"a list of distinct trunk modules among {', '.join(TRUNK_MODULES)}",
        m.frozen,
    )
    check_field(o.optimizer in ("sgd", "adamw"), "optim.optimizer", "sgd or adamw", o.optimizer)
    check_field(is_num(o.lr) and o.lr > 0, "optim.lr", "> 0", o.lr)
    check_field(is_num(o.momentum) and 0 <= o.momentum < 1, "optim.momentum", "in [0, 1)", o.momentum)
    check_field(is_num(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", ">= 0", o.weight_decay)
    check_field(is_int(o.batch_size) and o.batch_size >= 2, "optim.batch_size", "an int >= 2", o.batch_size)
    check_field(is_int(o.epochs) and o.epochs > 0, "optim.epochs", "a positive int", o.epochs)
    check_field(
        is_num(o.warmup_epochs) and 0 <= o.warmup_epochs <= o.epochs,
        "optim.warmup_epochs",
        f"in [0, epochs={o.epochs}]",
        o.warmup_epochs,
    )
    check_field(
        isinstance(cfg.stages, (list, tuple))
        and len(cfg.stages) > 0
        and all(is_int(n) and n >= 0 for n in cfg.stages),
        "stages",
        "a non-empty list of ints >= 0",
        cfg.stages,
    )
    cfg.stages = list(cfg.stages)
    check_field(cfg.stage_init in ("best", "last"), "stage_init", "best or last", cfg.stage_init)
    for name in ("gamma", "gamma_n0"):
        value = getattr(cfg, name)
        check_field(value is None or (is_num(value) and -1 <= value <= 1), name, "null or in [-1, 1]", value)
    check_field(isinstance(cfg.out, str) and cfg.out != "", "out", "a folder path", cfg.out)
    check_field(is_int(cfg.seed) and 0 <= cfg.seed < 2**63, "seed", "an int in [0, 2**63)", cfg.seed)
    check_field(cfg.device in ("auto", "cpu", "cuda"), "device", "one of auto, cpu, cuda", cfg.device)
    check_field(cfg.amp in ("auto", "none", "bf16", "fp16"), "amp", "one of auto, none, bf16, fp16", cfg.amp)
    for name in ("checkpoint_every", "max_steps"):
        check_field(
            is_int(getattr(cfg, name)) and getattr(cfg, name) >= 0, name, "an int >= 0", getattr(cfg, name)
        )
    check_field(is_int(cfg.log_every) and cfg.log_every > 0, "log_every", "a positive int", cfg.log_every)
    check_field(
        is_num(cfg.dist_timeout) and cfg.dist_timeout > 0, "dist_timeout", "> 0 seconds", cfg.dist_timeout
    )
    check_field(isinstance(cfg.snapshots, bool), "snapshots", "true or false", cfg.snapshots)
    mon = cfg.monitor
    check_field(isinstance(mon.enabled, bool), "monitor.enabled", "true or false", mon.enabled)
    for name in ("every", "images", "knn_images", "k"):
        low = 0 if name == "every" else 1
        check_field(
            is_int(getattr(mon, name)) and getattr(mon, name) >= low,
            f"monitor.{name}",
            f"an int >= {low}",
            getattr(mon, name),
        )
    check_field(mon.images >= 2, "monitor.images", "an int >= 2", mon.images)
    check_field(
        is_num(mon.temperature) and mon.temperature > 0, "monitor.temperature", "> 0", mon.temperature
    )
    check_sizes(cfg)


def check_sizes(cfg: PretrainConfig) -> None:
    """The upper bounds of the sizes (issue 24), checked before anything is allocated: the image sides
    at most :func:`~adam_ext.engine.config.max_side`, ``data.synthetic_n`` at most
    :data:`MAX_SYNTHETIC_N`, and lower bounds of the memory a training step takes for its views
    (``data.view_size``: :data:`VIEW_BYTES_PER_PIXEL` per pixel, two views per image of the batch of
    one rank) and for the queue and projection head (``model.dim``, ``model.K``: the queue
    K x dim and the head's last layer hidden x dim in both encoders, its gradient and momentum;
    float32) within this machine's memory.

    Raises:
        ValueError: naming the field.
    """
    d, m = cfg.data, cfg.model
    check_side("data.view_size", d.view_size)
    check_side("data.synthetic_size", d.synthetic_size)
    check_field(
        d.synthetic_n <= MAX_SYNTHETIC_N,
        "data.synthetic_n",
        f"at most {MAX_SYNTHETIC_N:,} images (nine times ChestX-ray14)",
        d.synthetic_n,
    )
    world = os.environ.get("WORLD_SIZE", "1")
    world = max(1, int(world)) if world.isdigit() else 1
    local_batch = max(1, cfg.optim.batch_size // world)
    check_memory(
        "data.view_size",
        d.view_size,
        local_batch * 2 * VIEW_BYTES_PER_PIXEL * d.view_size**2,
        f"the two views of a batch of {local_batch} images and their first layer's maps",
    )
    hidden = m.mlp_hidden or BACKBONES[m.backbone]
    check_memory(
        "model.dim",
        m.dim,
        4 * (m.K * m.dim + 4 * hidden * m.dim),
        f"the queue (model.K = {m.K} x model.dim) and the projection head's last layer",
    )


def _check_reader_options(dataset: str, options: dict) -> None:
    """Raises ValueError naming a ``data.options`` key that the data set's reader does not take."""
    from ..data.registry import check_options

    check_options(dataset, options, "data.options")


def load_config(
    path: str | os.PathLike | None = None, overrides=(), preset: str | None = None
) -> PretrainConfig:
    """Defaults, then a preset, then a YAML file, then ``key=value`` overrides.

    Args:
        path: a YAML file (a nested mapping like :meth:`PretrainConfig.to_dict`), or None.
        overrides: strings ``dotted.key=value``; values are parsed as YAML (``null``, ``[0,2]``).
        preset: a name of :data:`PRESETS`, or None.

    Returns:
        PretrainConfig, validated.
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return PretrainConfig.from_dict(layered_values(PRESETS.get(preset), path, overrides))


def dump_config(cfg: PretrainConfig) -> str:
    """The configuration as YAML text (what ``config.yaml`` holds)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
