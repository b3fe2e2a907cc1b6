"""Pretraining benchmark: images/s of a full Adam step, ours vs the official-style step.

One step = two views per image from the data pipeline (anatomy decomposer n = 2 + TwoViews, on
decoded synthetic radiographs held in memory), both encoders, the loss, backward, the SGD step
and the queue update. Providers, on the same MoCo encoders (same seed, same shuffle-BN):

* ``ours``            adam_ext.models.MoCo.forward: fused adam_ext.pruned_info_nce (no B×K logits),
                      ``_foreach`` momentum update, ring-buffer enqueue; encoders and images in the
                      channels-last memory format, as ``adam pretrain`` runs them (``--no-channels-last``
                      to compare the loss and bookkeeping alone).
* ``official-style``  the loss as the official Adam code builds it
                      (adam_ext.ops.reference.official_loop_pruned_info_nce: einsum l_pos / l_neg over a
                      clone of the whole queue, then one masked cross-entropy per query in a Python
                      loop), a per-parameter Python loop for the momentum update, slice enqueue.

Images/s are medians over rounds that alternate the providers (order reversed every other round),
after a warm-up step each. Instrumented steps, one per provider in every round and not counted in
the images/s, split the time into data, encoders (forward of both), momentum update, loss (its
forward and its backward to q), backward (encoder_q's, from that gradient) and optimiser + queue;
each phase is a median over those steps (torch.cuda.synchronize between phases on a GPU).

``--e2e`` measures something else: the real ``adam pretrain`` loop (reader, decomposer, views,
DataLoader, step, logging) against its floor, the same step on random tensors already on the device,
with a breakdown of the loop's step into data wait, H2D copy, forward, loss, backward, optimiser,
momentum + queue and logging (benchmarks/_e2e.py; its own options: ``--e2e --help``).

Usage::

    python benchmarks/bench_pretrain.py                   # default config, writes results/pretrain-cpu.md
    python benchmarks/bench_pretrain.py --batch 4 --K 256 --size 32 --rounds 1 --out /tmp/p.md
    python benchmarks/bench_pretrain.py --e2e --preset demo --set data.root=data/synthetic --steps 20
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from adam_ext.data.synthetic import SyntheticDataset, generate
from adam_ext.data.views import TwoViews
from adam_ext.engine import git_commit, machine
from adam_ext.models import BACKBONES, MoCo
from adam_ext.ops.reference import official_loop_pruned_info_nce

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET = 1.8  # ours / official-style images/s at the default config on the CPU
PHASES = ("data", "encoders", "momentum", "loss", "backward", "optimiser+queue")
PROVIDERS = ("ours", "official-style")


@dataclasses.dataclass(frozen=True)
class Config:
    arch: str = "resnet18"
    size: int = 128
    batch: int = 64
    K: int = 65536
    dim: int = 128
    gamma: float | None = 0.8
    T: float = 0.2
    m: float = 0.999
    n: int = 2
    images: int = 64
    image_side: int = 256
    channels_last: bool = True  # ours only: the official code keeps the default layout


# ----------------------------------------------------------------------------- pieces


class ViewBatches:
    """Batches of Adam view pairs from decoded synthetic radiographs kept in memory."""

    def __init__(
        self,
        images: list[torch.Tensor],
        cfg: Config,
        device: torch.device,
        seed: int,
        channels_last: bool = False,
    ):
        self.images, self.batch, self.device = images, cfg.batch, device
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.views = TwoViews(cfg.size, n=cfg.n, seed=seed)
        self.next = 0

    def __call__(self):
        pairs = []
        for _ in range(self.batch):
            pairs.append(self.views(self.images[self.next % len(self.images)]))
            self.next += 1
        im_q = torch.stack([q for q, _ in pairs]).to(self.device).contiguous(memory_format=self.format)
        im_k = torch.stack([k for _, k in pairs]).to(self.device).contiguous(memory_format=self.format)
        return im_q, im_k


def decoded_synthetic_images(cfg: Config, seed: int) -> list[torch.Tensor]:
    """``cfg.images`` synthetic chest radiographs (uint8 Tensor[1, side, side]) written and read back."""
    with tempfile.TemporaryDirectory(prefix="bench_pretrain-") as tmp:
        root = generate(
            Path(tmp) / "synth", cfg.images, size=cfg.image_side, seed=seed, workers=1, progress=False
        )
        dataset = SyntheticDataset(root, "all")
        return [torch.from_numpy(dataset.load_image(key)) for key in dataset.image_keys()]


def build(cfg: Config, device: torch.device, seed: int, channels_last: bool = False):
    torch.manual_seed(seed)
    model = MoCo(cfg.arch, cfg.dim, cfg.K, cfg.m, cfg.T, cfg.gamma).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.encoder_q.parameters(), lr=0.03 * cfg.batch / 256, momentum=0.9, weight_decay=1e-4
    )
    return model, optimizer


@torch.no_grad()
def official_momentum_update(model: MoCo) -> None:
    """The official MoCo / Adam momentum update: one Python iteration per parameter."""
    for param_q, param_k in zip(model.encoder_q.parameters(), model.encoder_k.parameters()):
        param_k.data = param_k.data * model.m + param_q.data * (1.0 - model.m)


@torch.no_grad()
def official_enqueue(model: MoCo, keys: torch.Tensor) -> None:
    """The official enqueue: a slice write at the host-side pointer (needs K % batch == 0)."""
    ptr = int(model.queue_ptr)
    model.queue[ptr : ptr + keys.shape[0]] = keys
    model.queue_ptr[0] = (ptr + keys.shape[0]) % model.K


class Phases:
    """Wall-clock time per phase of one step (synchronising a GPU at each boundary)."""

    def __init__(self, device: torch.device, enabled: bool):
        self.device, self.enabled = device, enabled
        self.times: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._last = 0.0

    def start(self) -> None:
        if self.enabled:
            _sync(self.device)
            self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        if self.enabled:
            _sync(self.device)
            now = time.perf_counter()
            self.times[phase] += now - self._last
            self._last = now


def ours_step(model: MoCo, optimizer, data: Callable, gamma, device, instrument: bool) -> dict:
    """One step of ours. Uninstrumented: exactly MoCo.forward; instrumented: the same calls, split."""
    t = Phases(device, instrument)
    t.start()
    im_q, im_k = data()
    t.mark("data")
    if not instrument:
        loss = model(im_q, im_k, gamma)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return t.times
    q = model.encoder_q(im_q)
    t.mark("encoders")
    model._momentum_update_key_encoder()
    t.mark("momentum")
    k = model._encode_keys(im_k)
    t.mark("encoders")
    out = model._loss(q, k, gamma)
    (grad_q,) = torch.autograd.grad(out["loss"], q)
    t.mark("loss")
    optimizer.zero_grad(set_to_none=True)
    q.backward(grad_q)
    t.mark("backward")
    optimizer.step()
    model._dequeue_and_enqueue(out["k"])
    t.mark("optimiser+queue")
    return t.times


def official_step(model: MoCo, optimizer, data: Callable, gamma, device, instrument: bool) -> dict:
    """One step as the official Adam code takes it (phases in its order)."""
    t = Phases(device, instrument)
    t.start()
    im_q, im_k = data()
    t.mark("data")
    q = model.encoder_q(im_q)
    t.mark("encoders")
    official_momentum_update(model)
    t.mark("momentum")
    with torch.no_grad():
        k = F.normalize(model._encode_keys(im_k), dim=1)
    t.mark("encoders")
    loss = official_loop_pruned_info_nce(q, k, model.queue, temperature=model.T, gamma=gamma)
    if instrument:
        (grad_q,) = torch.autograd.grad(loss, q)
    t.mark("loss")
    official_enqueue(model, k)
    t.mark("optimiser+queue")
    optimizer.zero_grad(set_to_none=True)
    if instrument:
        q.backward(grad_q)
    else:
        loss.backward()
    t.mark("backward")
    optimizer.step()
    t.mark("optimiser+queue")
    return t.times


# ----------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg: Config, args, device: torch.device) -> tuple[dict, dict]:
    """Images/s per round and median phase times (s) per provider."""
    images = decoded_synthetic_images(cfg, args.seed)
    runners = {}
    for name, step in (("ours", ours_step), ("official-style", official_step)):
        channels_last = cfg.channels_last and name == "ours"
        model, optimizer = build(cfg, device, args.seed, channels_last)
        model.train()
        data = ViewBatches(images, cfg, device, args.seed, channels_last)
        runners[name] = functools.partial(step, model, optimizer, data, cfg.gamma, device)

    for name, run in runners.items():
        for _ in range(args.warmup):
            run(instrument=False)
        print(f"  warmed up {name}", flush=True)

    rates: dict[str, list[float]] = {name: [] for name in runners}
    phase_runs: dict[str, list[dict]] = {name: [] for name in runners}
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            _sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                runners[name](instrument=False)
            _sync(device)
            rates[name].append(args.steps * cfg.batch / (time.perf_counter() - start))
            print(f"  round {r + 1}/{args.rounds} {name:15s} {rates[name][-1]:7.2f} images/s", flush=True)
        # Instrumented steps inside the rounds, so that the breakdown sees the same machine state.
        for name in order:
            for _ in range(args.breakdown_steps):
                phase_runs[name].append(runners[name](instrument=True))
    phases = {
        name: {p: statistics.median(run[p] for run in runs) for p in PHASES}
        for name, runs in phase_runs.items()
    }
    return rates, phases


# ----------------------------------------------------------------------------- reporting


def _load() -> float:
    """The 1-minute load average (NaN where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def ratio_of(phases: dict) -> float:
    """Official-style over ours, summed phase times of the instrumented steps."""
    return sum(phases["official-style"].values()) / sum(phases["ours"].values())


def report(cfg: Config, args, device, rates, phases) -> tuple[str, bool]:
    ips = {name: statistics.median(values) for name, values in rates.items()}
    ratio = ips["ours"] / ips["official-style"]
    default = cfg == Config() and device.type == "cpu"
    passed = ratio >= TARGET
    verdict = f"{'PASS' if passed else 'FAIL'}: ours is {ratio:.2f}× the official-style step "
    verdict += f"(target ≥ {TARGET}×"
    verdict += ")" if default else " at the default config; this run is not at it)"
    lines = [
        f"# Pretraining step: {device.type}, float32",
        "",
        f"- machine: {machine(device)}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}",
        f"- adam_ext commit {git_commit()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- config: {cfg.arch}, {cfg.size} px views, batch {cfg.batch}, K = {cfg.K}, dim {cfg.dim}, "
        f"γ = {cfg.gamma}, τ = {cfg.T}, m = {cfg.m}, fp32, SGD (momentum 0.9, wd 1e-4); ours in "
        f"{'channels-last' if cfg.channels_last else 'the default'} memory format; views from "
        f"TwoViews + AnatomyDecomposer(n = {cfg.n}) on {cfg.images} synthetic {cfg.image_side}-px "
        f"radiographs (adam_ext.data.synthetic.generate), decoded once, augmented in the step",
        f"- method: images/s = median over {args.rounds} rounds of {args.steps} step(s) per provider, "
        f"providers alternating (order reversed every other round), after {args.warmup} warm-up step(s) "
        f"each; breakdown = per-phase median over {args.rounds * args.breakdown_steps} instrumented steps "
        f"per provider ({args.breakdown_steps} a round, not counted in images/s)",
        f"- command: `{' '.join(['python benchmarks/bench_pretrain.py', *args.argv])}`; "
        f"1-min load average {args.load[0]:.2f} before, {_load():.2f} after (other work on this machine "
        f"shows in the per-round spread)",
        "",
        f"**{verdict}**",
        "",
        "| provider | images/s | s / step | × official-style | rounds (images/s) |",
        "|---|---:|---:|---:|---|",
    ]
    for name in PROVIDERS:
        each = ", ".join(f"{v:.2f}" for v in rates[name])
        lines.append(
            f"| {name} | {ips[name]:.2f} | {cfg.batch / ips[name]:.3f} | "
            f"{ips[name] / ips['official-style']:.2f}× | {each} |"
        )
    lines += [
        "",
        "Where the time goes (ms per step, median of the instrumented steps; encoders = forward of both, "
        "loss = its forward and backward, backward = encoder_q's):",
        "",
        "| provider | " + " | ".join(PHASES) + " | sum | loss share |",
        "|---|" + "---:|" * (len(PHASES) + 2),
    ]
    for name in PROVIDERS:
        total = sum(phases[name].values())
        lines.append(
            f"| {name} | "
            + " | ".join(f"{1e3 * phases[name][p]:.1f}" for p in PHASES)
            + f" | {1e3 * total:.1f} | {100 * phases[name]['loss'] / total:.1f}% |"
        )
    saved = {p: phases["official-style"][p] - phases["ours"][p] for p in PHASES}
    official = phases["official-style"]
    rest = sum(official.values()) - official["loss"] - official["momentum"]
    lines += [
        "",
        f"Loss alone (forward + backward to q): ours {1e3 * phases['ours']['loss']:.1f} ms, official-style "
        f"{1e3 * official['loss']:.1f} ms ({official['loss'] / phases['ours']['loss']:.1f}×).",
        "",
        "Official-style minus ours per phase (ms): "
        + ", ".join(f"{p} {1e3 * saved[p]:+.1f}" for p in PHASES)
        + ".",
        "",
        f"Amdahl bound: with a loss and momentum update that cost nothing, a step would be at most "
        f"{sum(official.values()) / rest:.2f}× the official-style step (its other phases take "
        f"{1e3 * rest:.0f} ms; ours reaches {ratio_of(phases):.2f}× by the same sums).",
        "",
    ]
    return "\n".join(lines), passed


def e2e_module():
    """benchmarks/_e2e.py, loaded by its path (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_pretrain_e2e", Path(__file__).with_name("_e2e.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--e2e" in argv:
        return e2e_module().main([a for a in argv if a != "--e2e"])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--e2e",
        action="store_true",
        help="benchmark the real adam pretrain loop against its floor instead (see --e2e --help)",
    )
    defaults = Config()
    p.add_argument("--arch", default=defaults.arch, choices=list(BACKBONES))
    p.add_argument("--size", type=int, default=defaults.size, help="view side in pixels")
    p.add_argument("--batch", type=int, default=defaults.batch)
    p.add_argument("--K", type=int, default=defaults.K, help="queue length (a multiple of --batch)")
    p.add_argument("--dim", type=int, default=defaults.dim)
    p.add_argument(
        "--gamma",
        type=lambda s: None if s.lower() == "none" else float(s),
        default=defaults.gamma,
        help="pruning threshold; 'none' disables it",
    )
    p.add_argument("--images", type=int, default=defaults.images, help="synthetic images generated")
    p.add_argument("--image-side", type=int, default=defaults.image_side, help="their side in pixels (>= 64)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=1, help="timed steps per provider and round")
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps per provider")
    p.add_argument("--breakdown-steps", type=int, default=1, help="instrumented steps per provider and round")
    p.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="run ours in the default memory format too",
    )
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Markdown file to write (default benchmarks/results/pretrain-<device>.md; '-': none)",
    )
    args = p.parse_args(argv)
    args.argv = argv
    args.load = (_load(),)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no GPU is available")
    if args.K % args.batch:
        p.error(
            f"--K must be a multiple of --batch (the official-style slice enqueue), "
            f"got {args.K} and {args.batch}"
        )
    for name in ("rounds", "steps", "breakdown_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = Config(
        arch=args.arch,
        size=args.size,
        batch=args.batch,
        K=args.K,
        dim=args.dim,
        gamma=args.gamma,
        images=args.images,
        image_side=args.image_side,
        channels_last=args.channels_last,
    )
    print(f"bench_pretrain on {machine(device)}; torch {torch.__version__}; {cfg}", flush=True)

    rates, phases = measure(cfg, args, device)
    text, passed = report(cfg, args, device, rates, phases)
    print("\n" + text)
    print("PASS" if passed else "FAIL", f"(target ≥ {TARGET}× at the default config)")
    out = args.out or RESULTS_DIR / f"pretrain-{device.type}.md"
    if str(out) != "-":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
