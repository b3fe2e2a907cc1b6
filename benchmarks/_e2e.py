"""End-to-end pretraining benchmark (``bench_pretrain.py --e2e``): the real loop against its floor.

* **loop**: :func:`adam_ext.pretrain.pretrain`, the function behind ``adam pretrain``, on the
  configured data (reader, anatomy decomposer, views, DataLoader with its workers, pinned memory
  on a GPU, the step, the metric log), stopped by ``max_steps`` inside its first stage.
* **floor**: the same step, :meth:`Trainer.train_step <adam_ext.pretrain.loop.Trainer.train_step>` of a
  Trainer built from the same configuration (MoCo model, optimiser, schedule, gradient scaler,
  autocast, channels-last and backend settings, e.g. cuDNN's autotuner), on random views already on
  the device; in the same process, half its steps before the loop and half after it, so that a
  machine whose load drifts (other work on shared cores) biases the ratio less and shows the drift.

Set by the benchmark whatever the configuration says: ``monitor.enabled=false``,
``snapshots=false``, ``checkpoint_every=0``, no progress bar, ``max_steps`` = warm-up + measured
steps. Each epoch's end still validates and writes ``best.pt`` / ``last.pt`` (the loop cannot skip
them); that time is measured apart ("epoch end") and left out of the step times.

Where the time goes comes from an :class:`adam_ext.engine.PhaseTimer` the loop is given: data wait
(blocked on the loader's next batch), H2D copy, forward (both encoders), momentum+queue, loss,
backward, optimiser, logging/other. On a GPU the measured steps run unsynchronised (the loop as it
runs: their total is timed between two synchronisations) and as many steps after them are
synchronised at every phase boundary for the breakdown; on a CPU nothing is asynchronous, so the
measured steps give both.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import itertools
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from adam_ext.data.synthetic import ensure_synthetic
from adam_ext.engine import STEP_PHASES, PhaseTimer, git_commit, machine
from adam_ext.engine.distributed import ProcessContext, resolve_workers
from adam_ext.pretrain import Trainer, open_splits, pretrain
from adam_ext.pretrain.config import PretrainConfig, load_config
from adam_ext.pretrain.report import read_metrics
from adam_ext.pretrain.run import set_backends

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Settings the benchmark imposes on the loop (see the module's docstring).
FORCED = ("monitor.enabled=false", "snapshots=false", "checkpoint_every=0")
#: The phases of the loop's step that are (nearly) empty in its floor: no loader, no copy, no metric log.
OVERHEAD = ("data wait", "H2D copy", "logging/other")


@dataclass(frozen=True)
class Plan:
    """Which steps of a run are warm-up, measured (images/s) and split (the breakdown)."""

    warmup: int
    steps: int
    gpu: bool

    @property
    def total(self) -> int:
        return self.warmup + self.steps * (2 if self.gpu else 1)

    @property
    def measured(self) -> slice:
        return slice(self.warmup, self.warmup + self.steps)

    @property
    def split(self) -> slice:
        return slice(self.warmup + self.steps, self.total) if self.gpu else self.measured

    def timer(self, device: torch.device) -> PhaseTimer:
        """Unsplit measured steps on a GPU, delimited by a synchronisation at each end; split steps after."""
        ends = {self.warmup - 1, self.warmup + self.steps - 1} - {-1}
        return PhaseTimer(device, split_from=self.split.start, sync_at=ends)


@dataclass
class Result:
    """One run's timer over the plan's steps: images/s of the measured steps, ms per phase of the split ones."""

    timer: PhaseTimer
    plan: Plan
    batch: int

    def step_seconds(self, steps: slice) -> list[float]:
        return [sum(phases.values()) for phases in self.timer.steps[steps]]

    @property
    def images_per_s(self) -> float:
        return images_per_s([self])

    def phases_ms(self) -> dict[str, float]:
        return phases_ms([self])


def images_per_s(results: list[Result]) -> float:
    """Images/s over the measured steps of ``results`` together."""
    seconds = sum(sum(r.step_seconds(r.plan.measured)) for r in results)
    return sum(r.batch * r.plan.steps for r in results) / seconds


def phases_ms(results: list[Result]) -> dict[str, float]:
    """Milliseconds per phase, mean over the split steps of ``results`` together."""
    split = [step for r in results for step in r.timer.steps[r.plan.split]]
    return {p: 1e3 * sum(step.get(p, 0.0) for step in split) / len(split) for p in STEP_PHASES}


# ----------------------------------------------------------------------------- running


def configure(args, out: Path, extra=()) -> PretrainConfig:
    """The loop's configuration: preset, file and ``--set`` overrides, then :data:`FORCED` and the run's own."""
    plan = args.plan
    overrides = [
        *args.overrides,
        *FORCED,
        f"out={out}",
        f"device={args.device}",
        f"max_steps={plan.total}",
        *extra,
    ]
    return load_config(args.config, overrides, preset=args.preset)


def steps_per_epoch(cfg: PretrainConfig) -> int:
    """Full batches in an epoch of the configured training split (the data generated first if synthetic)."""
    if cfg.data.dataset == "synthetic":
        ensure_synthetic(
            cfg.data.root,
            cfg.data.synthetic_n,
            cfg.data.synthetic_size,
            seed=cfg.seed,
            log=lambda message: print(f"bench_pretrain --e2e: {message}", flush=True),
        )
    _, train_idx, _, _ = open_splits(cfg)
    return len(train_idx) // cfg.optim.batch_size


def run_loop(cfg: PretrainConfig, plan: Plan) -> tuple[Result, list[dict]]:
    """``pretrain`` with a phase timer; the timer and the run's training rows of ``metrics.jsonl``."""
    timer = plan.timer(torch.device(cfg.device))
    pretrain(cfg, progress=False, phase_timer=timer)
    if len(timer.steps) != plan.total:
        raise RuntimeError(f"the loop ran {len(timer.steps)} steps, the plan {plan.total}")
    rows = [r for r in read_metrics(cfg.out)[0] if r["stage"] == 0]
    return Result(timer, plan, cfg.optim.batch_size), rows


def run_floor(cfg: PretrainConfig, plan: Plan) -> Result:
    """The loop's own step on random views already on the device (same model, optimiser, precision)."""
    ctx = ProcessContext(cfg.device, cfg.dist_timeout)
    timer = plan.timer(ctx.device)
    with contextlib.redirect_stdout(io.StringIO()):  # the stage's banner
        trainer = Trainer(cfg, ctx, progress=False, phase_timer=timer)
        trainer.begin_stage(0)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    shape = (cfg.optim.batch_size, 3, cfg.data.view_size, cfg.data.view_size)
    im_q, im_k = (torch.randn(shape, device=ctx.device).contiguous(memory_format=fmt) for _ in range(2))
    trainer.model.train()
    timer.start()
    for _ in range(plan.total):
        timer.mark("data wait")
        trainer.train_step((im_q, im_k))
        timer.end_step("logging/other")
    return Result(timer, plan, cfg.optim.batch_size)


def logged_check(loop: Result, rows: list[dict]) -> tuple[int, float, float]:
    """The loop's own clock against the timer: (steps, seconds by ``metrics.jsonl``, seconds by the timer)
    over the logging windows wholly inside the measured steps.

    A window's rows share its ``images_per_s``, timed by the loop from the window's start to its
    flush's host synchronisation; the rows it then writes are outside it, inside the timer's
    logging/other of the window's last step."""
    measured = range(loop.plan.measured.start, loop.plan.measured.stop)
    steps = logged = timed = 0
    for rate, window in itertools.groupby(rows, key=lambda r: r["images_per_s"]):
        window = [r["step"] for r in window]
        if window[0] in measured and window[-1] in measured:
            steps += len(window)
            logged += len(window) * loop.batch / rate
            timed += sum(loop.step_seconds(slice(window[0], window[-1] + 1)))
    return steps, logged, timed


# ----------------------------------------------------------------------------- reporting


def load_line() -> str:
    """``uptime``'s three load averages and the busiest other processes (``ps``: %CPU over their lifetime)."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unknown"
    text = f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"
    try:
        ps = subprocess.run(
            ["ps", "-eo", "pid=,pcpu=,args=", "--sort=-pcpu"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return text
    busiest = []
    for pid, cpu, *command in (line.split() for line in ps if len(line.split()) >= 3):
        if int(pid) != os.getpid() and float(cpu) >= 5:
            busiest.append(f"`{' '.join([Path(command[0]).name, *command[1:5]])[:60]}` {cpu}%")
    return text + (f"; busiest other processes: {', '.join(busiest[:4])}" if busiest else "")


def _describe(cfg: PretrainConfig, spe: int) -> str:
    n = cfg.stages[0]
    views = cfg.data.view_options()
    return (
        f"{cfg.model.backbone}, {cfg.data.view_size}-px views ({views or 'default view options'}), "
        f"global batch {cfg.optim.batch_size}, K = {cfg.model.K}, dim {cfg.model.dim}, m = {cfg.model.m}, "
        f"{cfg.optim.optimizer}, amp {cfg.amp}, channels-last {cfg.channels_last}; first stage n = {n} "
        f"(γ = {cfg.gamma_for(n)}); data: {cfg.data.dataset} at {cfg.data.root}, {spe} steps per epoch, "
        f"data.workers {cfg.data.workers} ({resolve_workers(cfg.data.workers)} per rank), log_every {cfg.log_every}, tensorboard {cfg.tensorboard}"
    )


def _timing_tables(loop: Result, floors: list[Result]) -> list[str]:
    floor = images_per_s(floors)
    runs = [("loop (`adam pretrain`)", loop.images_per_s), ("floor (the step on device tensors)", floor)]
    if len(floors) == 2:
        runs += [
            (f"floor's {r.plan.steps} steps {when} the loop", r.images_per_s)
            for when, r in zip(("before", "after"), floors)
        ]
    lines = ["| run | images/s | ms / step | × floor |", "|---|---:|---:|---:|"]
    lines += [
        f"| {name} | {rate:.1f} | {1e3 * loop.batch / rate:.1f} | {rate / floor:.2f}× |"
        for name, rate in runs
    ]
    where = (
        "Where the time goes (ms per step, mean over the breakdown steps; forward = both encoders, "
        "backward includes the loss's, logging/other = the window's bookkeeping and flush):"
    )
    lines += [
        "",
        f"**loop / floor = {loop.images_per_s / floor:.2f}**",
        "",
        where,
        "",
        "| run | " + " | ".join(STEP_PHASES) + " | sum |",
        "|---|" + "---:|" * (len(STEP_PHASES) + 1),
    ]
    ms = {"loop": loop.phases_ms(), "floor": phases_ms(floors)}
    ms["loop − floor"] = {p: ms["loop"][p] - ms["floor"][p] for p in STEP_PHASES}
    for name, row in ms.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{row[p]:.1f}" for p in STEP_PHASES)
            + f" | {sum(row.values()):.1f} |"
        )
    return lines


def overhead_line(loop: Result, floors: list[Result]) -> list[str]:
    """The loop's time in the phases that are (nearly) empty in the floor, beyond the floor's, as a share of
    its step: what loop / floor would be if the two computed equally fast (no drift of the machine's load)."""
    ms, floor_ms = loop.phases_ms(), phases_ms(floors)
    overhead = sum(ms[p] - floor_ms[p] for p in OVERHEAD)
    share = overhead / sum(ms.values())
    halves = " and ".join(f"{r.images_per_s:.1f}" for r in floors)
    return [
        "",
        (
            f"The loop's own work ({', '.join(OVERHEAD)}, beyond the floor's) takes {overhead:.1f} ms, "
            f"{100 * share:.1f}% of its step: computing as fast as the floor, loop / floor would be "
            f"{1 - share:.2f}. "
            f"The measured ratio also holds how the machine's load moved between the runs (the floor: "
            f"{halves} images/s) and any CPU a loader worker takes from the step (slower compute phases, "
            f"in the loop − floor row)."
        ),
    ]


def epoch_start_line(loop: Result, spe: int) -> list[str]:
    """The data wait of the breakdown's steps that begin an epoch against the others', when it has both."""
    split = list(enumerate(loop.timer.steps))[loop.plan.split]
    first = [1e3 * step["data wait"] for i, step in split if i % spe == 0]
    rest = [1e3 * step["data wait"] for i, step in split if i % spe]
    if not (first and rest):
        return []
    return [
        "",
        (
            f"Data wait at the first step of an epoch (its batches begin only when the epoch does): "
            f"{sum(first) / len(first):.1f} ms ({len(first)} step(s)); at the other steps "
            f"{sum(rest) / len(rest):.1f} ms ({len(rest)})."
        ),
    ]


def report(args, cfg: PretrainConfig, spe: int, loop: Result, rows: list[dict], floors: list[Result]) -> str:
    plan = loop.plan
    breakdown = (
        f"then {plan.steps} more steps synchronised at every phase boundary give the breakdown"
        if plan.gpu
        else "the same steps give the breakdown (on a CPU there is nothing to synchronise)"
    )
    lines = [
        f"# Pretraining end to end: the `adam pretrain` loop against its floor, {args.device}",
        "",
        f"- machine: {machine(torch.device(args.device))}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}",
        f"- adam_ext commit {git_commit()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `{' '.join(['python benchmarks/bench_pretrain.py --e2e', *args.argv])}`",
        f"- machine load: before, {args.load_before}; after, {load_line()}",
        f"- configuration: {_describe(cfg, spe)}",
        (
            f"- set by the benchmark: {', '.join(FORCED)}, no progress bar, max_steps {plan.total}; each epoch's "
            f"validation and best.pt / last.pt are timed apart (epoch end) and left out of the step times"
        ),
        (
            f"- method: {plan.warmup} warm-up step(s), then {plan.steps} measured steps (images/s, timed as one "
            f"range between two synchronisations); {breakdown}. Floor: the Trainer's own step "
            f"(`Trainer.train_step`) on random views already on the device, in the same process: half its measured "
            f"steps before the loop and half after, each half after {plan.warmup} warm-up step(s) of its own"
        ),
        "",
        *_timing_tables(loop, floors),
    ]
    lines += overhead_line(loop, floors)
    steps, logged, timed = logged_check(loop, rows)
    if steps:
        lines += [
            "",
            (
                f"The loop's own clock (`images_per_s` of metrics.jsonl, {steps} measured steps in whole "
                f"logging windows): {1e3 * logged / steps:.1f} ms per step against the phase timer's "
                f"{1e3 * timed / steps:.1f} ms for the same steps (the loop's windows leave out the rows "
                f"they write after timing themselves)."
            ),
        ]
    lines += epoch_start_line(loop, spe)
    ends = -(-plan.total // spe) - 1  # epochs begun after the first
    if ends:
        end_s = loop.timer.between.get("epoch end", 0.0) / ends
        step_s = loop.batch / loop.images_per_s
        amortised = spe * loop.batch / (spe * step_s + end_s)
        lines += [
            "",
            (
                f"Epoch ends inside the run: {ends}, {end_s:.2f} s each (validation, best.pt, last.pt); "
                f"spread over an epoch of {spe} steps the loop would make {amortised:.1f} images/s."
            ),
        ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_pretrain.py --e2e", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--preset", default="demo", help="pretraining preset (default demo; 'none' for the defaults)"
    )
    p.add_argument("--config", help="pretraining YAML file, after the preset")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pretraining override, value in YAML (repeatable), e.g. data.root=/data/synthetic",
    )
    p.add_argument("--steps", type=int, default=20, help="measured steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps before them (default 3)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Markdown file to write (default benchmarks/results/pretrain-e2e-<device>.md; '-': none)",
    )
    args = p.parse_args(argv)
    args.argv = list(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no GPU is available")
    args.preset = None if args.preset == "none" else args.preset
    args.plan = Plan(args.warmup, args.steps, gpu=args.device == "cuda")
    return args


def main(argv=None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    args.load_before = load_line()
    with tempfile.TemporaryDirectory(prefix="bench_e2e-") as tmp:
        try:
            cfg = configure(args, Path(tmp) / "loop")
            spe = steps_per_epoch(cfg)
        except (ValueError, OSError) as exc:  # a configuration or data folder that cannot run
            raise SystemExit(f"bench_pretrain --e2e: error: {exc}") from None
        if args.plan.total > spe * cfg.optim.epochs:
            raise SystemExit(
                f"bench_pretrain --e2e: error: --warmup + --steps{' x 2 on cuda' if args.plan.gpu else ''}"
                f" = {args.plan.total} steps exceed the first stage's {cfg.optim.epochs} epochs x "
                f"{spe} steps; raise optim.epochs (--set optim.epochs=N) or lower --steps"
            )
        print(f"bench_pretrain --e2e on {machine(torch.device(args.device))}: {args.plan}", flush=True)
        # The floor's steps half before and half after the loop: a machine whose load drifts (other
        # work on shared cores) biases the ratio less, and the two halves show the drift.
        plan, floor_cfg = args.plan, configure(args, Path(tmp) / "floor", ["tensorboard=false"])
        before, after = (
            Plan(plan.warmup, n, plan.gpu) if n else None for n in (-(-plan.steps // 2), plan.steps // 2)
        )
        set_backends(floor_cfg, torch.device(args.device))  # what pretrain sets, before the loop sets it
        floors = [run_floor(floor_cfg, before)]
        loop, rows = run_loop(cfg, plan)
        if after is not None:
            floors.append(run_floor(floor_cfg, after))
    text = report(args, cfg, spe, loop, rows, floors)
    print("\n" + text)
    floor = images_per_s(floors)
    print(
        f"loop {loop.images_per_s:.1f} images/s, floor {floor:.1f} images/s, "
        f"loop / floor = {loop.images_per_s / floor:.2f}"
    )
    out = args.out or RESULTS_DIR / f"pretrain-e2e-{args.device}.md"
    if str(out) != "-":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"written to {out}")
    return 0
