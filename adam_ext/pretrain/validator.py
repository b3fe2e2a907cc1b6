"""Validation of a pretraining run: the validation loss, the representation monitors and their warning.

:class:`Validator` measures the model on the validation images without changing anything of the
training state (no momentum update, no enqueue, eval-mode BN), logs the monitors on rank 0 and warns
once a stage when they show a collapse.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from .config import PretrainConfig
from .parts import RunData, stage_monitor

__all__ = ["MONITOR_COLLAPSE_STD", "MONITOR_MIN_RANK", "Validator"]

#: A monitor whose collapse indicator falls below this fraction of its healthy value (1/sqrt(dim)),
#: or whose RankMe falls below MONITOR_MIN_RANK, makes the run warn of a collapse.
MONITOR_COLLAPSE_STD = 0.2
MONITOR_MIN_RANK = 2.0


class Validator:
    """The validation loss and monitors of one run.

    Args:
        cfg: the configuration; ``ctx``: this process's rank, world and device; ``model``: the MoCo
            model; ``data``: the run's :class:`~adam_ext.pretrain.parts.RunData`; ``metrics``: the
            run's :class:`~adam_ext.engine.MetricsLog`.
        to_device: moves a batch of views to the device (memory format included).
        autocast: the run's autocast context factory.
        global_step: (stage, step) -> the step over the whole run, for TensorBoard.

    Attributes:
        collapsed: stages whose monitors signalled a collapse (saved in checkpoints).
        headline: the latest headline monitor as text (``knn_landmark=0.42``), for the progress bar.
    """

    def __init__(
        self,
        cfg: PretrainConfig,
        ctx,
        model,
        data: RunData,
        metrics,
        to_device: Callable,
        autocast: Callable,
        global_step: Callable[[int, int], int],
    ):
        self.cfg, self.ctx, self.model, self.data, self.metrics = cfg, ctx, model, data, metrics
        self.to_device, self.autocast, self.global_step = to_device, autocast, global_step
        self.monitor = None
        self.collapsed: set[int] = set()
        self.headline: str | None = None

    def begin_stage(self, stage: int) -> None:
        """The stage's monitor (rank 0, when monitors are on): its landmark patches are cut at the stage's scale."""
        enabled = self.cfg.monitor.enabled and self.ctx.main
        self.monitor = stage_monitor(self.cfg, stage, self.data.splits) if enabled else None

    @torch.no_grad()
    def loss(self, stage: int, gamma, collected=None) -> float:
        """The validation loss (all ranks); ``collected``: a monitor collector recording the outputs."""
        net, device = self.model, self.ctx.device
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for im_q, im_k in self.data.loader(stage, 0, 0, train=False):
            im_k = self.to_device(im_k)
            with self.autocast():
                out = net.validation_loss(self.to_device(im_q), im_k, gamma=gamma)
                if collected is not None:  # inside the collector the query encoder is in eval mode
                    collected.add(out, lambda im_k=im_k: net.encoder_q(im_k))
            total[0] += out["loss"].double() * im_q.shape[0]
            total[1] += im_q.shape[0]
        if self.ctx.distributed:
            dist.all_reduce(total)
        return (total[0] / total[1].clamp_min(1)).item()

    def measure(
        self, stage: int, epoch: int, step: int, gamma, warn: bool = True
    ) -> tuple[float, dict | None]:
        """The validation loss and, on rank 0, the monitors (logged); changes nothing of the training
        state. ``warn``: warn of a collapse (not at a stage's start: a random ResNet's head outputs
        are themselves nearly collinear, per-dimension std about 0.02 against a healthy 1/sqrt(dim))."""
        if self.monitor is None:
            return self.loss(stage, gamma), None
        encoder = self.model.encoder_q
        with self.monitor.collector(encoder) as collected:
            val = self.loss(stage, gamma, collected)
        t0 = time.perf_counter()
        values = {
            **self.monitor.label_free(collected),
            **self.monitor.knn_monitor(encoder, self.ctx.device, self.cfg.channels_last),
        }
        values["seconds"] = round(time.perf_counter() - t0, 3)
        n = self.cfg.stages[stage]
        self.metrics.log(
            {"stage": stage, "n": n, "epoch": epoch, "step": step, "monitor": values},
            {f"monitor/{k}": v for k, v in values.items() if k != "seconds"},
            self.global_step(stage, step),
        )
        head = next((k for k in ("knn_landmark", "knn_auc", "knn_accuracy") if k in values), "rankme")
        self.headline = f"{head}={values[head]:.3g}"
        if warn and stage not in self.collapsed and self._collapsed(values):
            self.collapsed.add(stage)
            print(
                f"adam pretrain: warning: at stage {stage} (n={n}) step {step} the representation collapsed: "
                f"per-dimension std of the normalised embeddings {values['collapse_std']:.4f} (healthy about "
                f"{values['collapse_std_healthy']:.4f}), RankMe {values['rankme']:.2f}. The loss will sit at "
                f"log(K + 1); check the views (do two views of an image share more than two images do?), "
                f"lower optim.lr or raise model.m.",
                file=sys.stderr,
                flush=True,
            )
        return val, values

    def measure_start(self, stage: int, gamma) -> None:
        """Measures where a stage starts (stage 0: the initialisation), logged as its epoch 0; no collapse
        warning (see :meth:`measure`)."""
        val, _ = self.measure(stage, 0, 0, gamma, warn=False)
        self.log_loss(stage, 0, 0, val, best=False)

    def log_loss(self, stage: int, epoch: int, step: int, val: float, best: bool) -> None:
        """Logs a validation loss (metrics.jsonl and TensorBoard's ``val/loss``) after ``epoch``."""
        n = self.cfg.stages[stage]
        self.metrics.log(
            {"stage": stage, "n": n, "epoch": epoch, "step": step, "val_loss": val, "best": best},
            {"val/loss": val},
            self.global_step(stage, step),
        )

    def report(self, where: str, val: float, is_best: bool, values: dict | None) -> None:
        """Prints an epoch's validation line (rank 0): the loss and the headline monitors."""
        if self.ctx.main:
            shown = "".join(
                f", {k} {values[k]:.3g}"
                for k in ("knn_landmark", "knn_auc", "knn_accuracy", "rankme", "alignment", "uniformity")
                if values and k in values
            )
            print(
                f"adam pretrain: {where}: val loss {val:.4f}{' (best)' if is_best else ''}{shown}", flush=True
            )

    @staticmethod
    def _collapsed(values: dict) -> bool:
        """The monitors' collapse rule; NaN (a single validation image) never warns."""
        return (
            values["collapse_std"] < MONITOR_COLLAPSE_STD * values["collapse_std_healthy"]
            or values["rankme"] < MONITOR_MIN_RANK
        )
