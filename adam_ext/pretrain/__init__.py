"""Adam pretraining: ``adam pretrain`` and :func:`pretrain`.

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

Modules: :mod:`.run` (:func:`pretrain`: run folder, lock, resume, stages), :mod:`.loop` (the
:class:`~.loop.Trainer`, which only wires the components below), :mod:`.parts` (splits, loaders,
the model, the monitors' scales, signals), :mod:`.stage` (one stage's optimiser, schedule and
position), :mod:`.validator` (validation loss, monitors, collapse warning), :mod:`.steplog` (the
step rows, the non-finite stop, the pruner's warning), :mod:`.resume` (reading, checking and
restoring a resume checkpoint, RNG state), :mod:`.config` and :mod:`.report`. The checkpoint policy
and the pieces both loops share are :mod:`adam_ext.engine`'s; what an epoch reads is
:mod:`adam_ext.data.sampling`'s.
"""

from ..data.sampling import EpochBatches, PretrainViews, sample_seed
from ..engine import NonFiniteLossError
from .loop import Trainer
from .parts import RunData, initial_knn, initial_model, knn_at_scales, open_splits
from .resume import ResumeError, load_checkpoint
from .run import pretrain

__all__ = [
    "EpochBatches",
    "NonFiniteLossError",
    "PretrainViews",
    "ResumeError",
    "RunData",
    "Trainer",
    "initial_knn",
    "initial_model",
    "knn_at_scales",
    "load_checkpoint",
    "open_splits",
    "pretrain",
    "sample_seed",
]
