"""Ablation of the purposive pruner's threshold γ (the paper's ablation figure).

For each γ of ``--gammas`` (``none``: no pruning), pretrains Adam into ``OUT/gamma_<γ>/`` with
:func:`adam_ext.pretrain.pretrain`, fine-tunes its ``best.pt`` on one downstream task with
:func:`adam_ext.downstream.finetune` into ``OUT/downstream/gamma_<γ>/``, and compares the test
metrics across γ. Every γ shares the pretraining configuration (seed included) and the downstream
seeds, so the runs are paired: only γ differs. γ applies at the stages with n > 0, as in the
paper; ``gamma_n0`` stays as configured.

Outputs::

    OUT/gamma_<γ>/             pretraining run folders (best.pt, summary.json, metrics.jsonl, report.md)
    OUT/downstream/<label>/    fine-tuning results of each initialisation (results.json, results.md)
    OUT/ablation.json          per γ: test metrics per run, mean ± std, t-test vs no pruning, pruned fraction
    OUT/ablation.md            the same as Markdown tables
    OUT/ablation.png           primary test metric vs γ (no pruning and baseline as bands); pruned fraction vs γ

The files are rewritten after every γ, so an interrupted ablation still shows what it has. Run
the same command again to continue: a γ whose ``best.pt`` exists is not pretrained again (and its
fine-tuning results are reused when their configuration is unchanged), one with ``last.pt``
resumes. Single process (no torchrun).

Example (the ``make demo`` few-shot segmentation on synthetic data)::

    python python/experiments/gamma_ablation.py --out runs/gamma_ablation --preset demo \\
        --gammas 0.7,0.8,0.9,none --baseline random --task seg --data data/synthetic/scr \\
        --masks "heart,left clavicle,right clavicle" --size 128 --shots 16 --runs 3 --epochs 15 \\
        --patience 5 --batch-size 8 --lr 1e-3 --workers 1
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
from pathlib import Path

import torch
import yaml

from adam_ext.checkpoints import atomic_write_json
from adam_ext.cli.finetune import add_recipe_arguments, recipe_values
from adam_ext.downstream import FinetuneConfig, finetune, load_finetune_config, parse_init, summarize, ttest
from adam_ext.downstream.metrics import format_summary
from adam_ext.engine.config import config_differences
from adam_ext.pretrain import NonFiniteLossError, ResumeError, pretrain
from adam_ext.pretrain.config import PretrainConfig, load_config
from adam_ext.pretrain.report import read_metrics

NO_PRUNING = "none"
#: Pretraining fields a finished run may differ in and still be reused: paths and bookkeeping.
REUSABLE_CHANGES = {
    "out",
    "device",
    "log_every",
    "checkpoint_every",
    "tensorboard",
    "dist_timeout",
    "max_steps",
    "data.workers",
    "data.root",
    "data.cache",
}
#: Fine-tuning fields whose change does not change the results.
FINETUNE_REUSABLE = {"out", "device", "workers", "dist_timeout"}


# flag dest -> FinetuneConfig field (None values are not passed), as in ``adam finetune``.
class AblationError(RuntimeError):
    """A run folder that cannot be used as it is (another configuration, an unfinished pretraining)."""


# ----------------------------------------------------------------------------------------------
# Arguments


def parse_gammas(text: str) -> list[float | None]:
    """``"0.7,0.8,0.9,none"`` -> ``[0.7, 0.8, 0.9, None]``.

    Raises:
        ValueError: an empty list, an entry that is neither a number nor ``none``, a γ outside
            (−1, 1] (γ = −1 would prune every key), or a repeated γ.
    """
    gammas: list[float | None] = []
    for item in (part.strip() for part in text.split(",")):
        if item.lower() in (NO_PRUNING, "null"):
            gamma = None
        else:
            try:
                gamma = float(item)
            except ValueError:
                raise ValueError(
                    f"--gammas entries must be numbers or 'none', got {item!r} in {text!r}"
                ) from None
            if not -1 < gamma <= 1:
                raise ValueError(f"--gammas entries must lie in (-1, 1] (cosine similarities), got {item}")
        if gamma in gammas:
            raise ValueError(f"--gammas must not repeat a value, got {item!r} twice in {text!r}")
        gammas.append(gamma)
    return gammas


def _gamma_list(text: str) -> list[float | None]:
    try:
        return parse_gammas(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--gammas ")) from None  # argparse names it


def gamma_label(gamma: float | None) -> str:
    """Run folder name of one γ: ``gamma_0.8``, ``gamma_none``."""
    return f"gamma_{NO_PRUNING if gamma is None else format(gamma, 'g')}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Example") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="ablation folder (runs, results, ablation.json/.md/.png)")
    p.add_argument(
        "--gammas",
        type=_gamma_list,
        default=parse_gammas("0.7,0.8,0.9,none"),
        help="comma-separated thresholds in (-1, 1]; 'none': no pruning (default 0.7,0.8,0.9,none)",
    )
    pre = p.add_argument_group("pretraining (as adam pretrain: defaults, --preset, --config, --set)")
    pre.add_argument("--preset", help="named pretraining preset, e.g. demo")
    pre.add_argument("--config", help="pretraining YAML file")
    pre.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pretraining override, value in YAML (repeatable), e.g. optim.epochs=5",
    )
    down = p.add_argument_group("downstream (as adam finetune)")
    down.add_argument(
        "--task", required=True, choices=("seg", "cls"), help="segmentation (Dice) or classification (AUC)"
    )
    add_recipe_arguments(
        down, task=None
    )  # --data (required here), --arch (must be the pretraining backbone), ...
    down.add_argument("--finetune-config", help="YAML file of FinetuneConfig fields")
    down.add_argument(
        "--finetune-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fine-tuning override, value in YAML (repeatable), e.g. val_fraction=0.2",
    )
    down.add_argument(
        "--baseline",
        metavar="INIT",
        help="also fine-tune this initialisation (random, imagenet:PATH or a checkpoint PATH) "
        "under the same seeds",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device of pretraining and fine-tuning")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def pretrain_configs(args) -> dict[str, PretrainConfig]:
    """{run label: validated pretraining config} for every γ, into ``OUT/gamma_<γ>``.

    Raises:
        ValueError: naming the option: a ``--set`` of a field the ablation owns, a config out of
            range, no stage where γ applies, or a missing folder of training images.
    """
    for text in args.overrides:
        key = text.partition("=")[0].strip()
        if key in ("gamma", "out"):
            raise ValueError(
                f"--set {key}=... is not allowed: the ablation sets {key} per run (--gammas, --out)"
            )
    extra = [f"device={args.device}"] if args.device else []
    configs = {}
    for gamma in args.gammas:
        label = gamma_label(gamma)
        overrides = [
            *args.overrides,
            *extra,
            f"gamma={'null' if gamma is None else gamma}",
            f"out={Path(args.out) / label}",
        ]
        configs[label] = load_config(args.config, overrides, preset=args.preset)
    cfg = next(iter(configs.values()))
    if not cfg.data.root:
        raise ValueError(
            "pretraining data.root must name the training images: use --preset, --config or "
            "--set data.root=FOLDER"
        )
    if cfg.data.dataset != "synthetic" and not Path(cfg.data.root).is_dir():  # synthetic data is generated
        raise ValueError(f"pretraining data.root must be an existing folder, got {cfg.data.root!r}")
    if all(n == 0 for n in cfg.stages):
        raise ValueError(
            f"pretraining stages must include a stage with n > 0, where gamma applies, got {cfg.stages}"
        )
    return configs


def finetune_base(args, backbone: str) -> FinetuneConfig:
    """The downstream configuration shared by every initialisation (``init`` and ``out`` set per run).

    Raises:
        ValueError: naming the option (``--data``, ``--arch``, ``--masks``, ``--baseline``, ...).
    """
    if args.root is None or not Path(args.root).is_dir():
        raise ValueError(f"--data must be an existing folder, got {args.root!r}")
    if args.arch is not None and args.arch != backbone:
        raise ValueError(
            f"--arch must match the pretraining backbone (model.backbone={backbone!r}), got {args.arch!r}"
        )
    if args.task != "seg" and (args.masks or args.seg_mode):
        raise ValueError("--masks and --seg-mode apply to --task seg only")
    base = {
        "task": args.task,
        "arch": backbone,
        **recipe_values(args),
        "out": str(Path(args.out) / "downstream"),
    }
    cfg = load_finetune_config(args.finetune_config, args.finetune_set, base=base).resolved()
    if args.baseline is not None:
        _, path = parse_init(args.baseline)
        if path is not None and not Path(path).is_file():
            raise ValueError(f"--baseline file {path!r} does not exist")
    return cfg


# ----------------------------------------------------------------------------------------------
# Runs


def run_pretraining(cfg: PretrainConfig, progress: bool) -> str:
    """Pretrains into ``cfg.out`` unless it is done; returns ``reused``, ``resumed`` or ``trained``.

    Raises:
        AblationError: the folder holds a finished run of another configuration, or the run
            stopped before its end (``max_steps``, a signal), so there is no ``best.pt``.
    """
    out = Path(cfg.out)
    if (out / "best.pt").is_file():
        saved = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
        differ = config_differences(saved, cfg.to_dict(), REUSABLE_CHANGES)
        if differ:
            raise AblationError(
                f"{out} holds a finished pretraining of another configuration (differs in "
                f"{', '.join(list(differ)[:6])}); choose another --out or delete that folder"
            )
        return "reused"
    status = "resumed" if (out / "last.pt").is_file() else "trained"
    summary = pretrain(cfg, resume="auto", progress=progress)
    if summary["interrupted"]:
        raise AblationError(
            f"pretraining {out} stopped before its end (max_steps or a signal), so it has no "
            f"best.pt; run the ablation again to resume it"
        )
    return status


def weights_digest(state: dict) -> str:
    """A short SHA-256 of a state dict's tensors (names and bytes): equal digests, equal weights."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().contiguous().cpu().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def pretraining_summary(run: Path) -> dict:
    """Per-stage results of a finished run, where its best weights come from, and the pruner's state.

    Returns:
        dict: ``stages`` (summary.json), ``collapse_warning`` (any stage), ``pruned_fraction``: the
        mean fraction of the queue pruned per query over the last epoch of the last stage (None when
        no training row was logged); ``best`` {``stage``, ``n``, ``epoch``, ``pruned_fraction`` (mean
        over the chosen epoch's steps), ``digest`` (of the weights, :func:`weights_digest`)}, None
        without best.pt.
    """
    stages = (
        json.loads((run / "summary.json").read_text())["stages"] if (run / "summary.json").is_file() else []
    )
    rows, _ = read_metrics(run)

    def mean_pruned(stage, epoch):
        values = [r["pruned_fraction"] for r in rows if r["stage"] == stage and r["epoch"] == epoch]
        return sum(values) / len(values) if values else None

    pruned = None
    if rows:
        stage = max(r["stage"] for r in rows)
        pruned = mean_pruned(stage, max(r["epoch"] for r in rows if r["stage"] == stage))
    best = None
    if (run / "best.pt").is_file():
        ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
        index, epoch = ckpt["stage"]["index"], ckpt["epoch"]
        best = {
            "stage": index,
            "n": ckpt["stage"]["n"],
            "epoch": epoch,
            "pruned_fraction": mean_pruned(index, epoch),
            "digest": weights_digest(ckpt["model"]),
        }
    return {
        "stages": stages,
        "collapse_warning": any(s.get("collapse_warning") for s in stages),
        "pruned_fraction": pruned,
        "best": best,
    }


def run_downstream(base: FinetuneConfig, init: str, label: str, progress: bool, reuse: bool) -> dict:
    """Fine-tunes ``init`` under the shared seeds into ``<base.out>/<label>``.

    With ``reuse``, an earlier ``results.json`` of the same configuration is read instead.

    Returns:
        dict: ``dir``, ``reused``, ``seeds``, ``test`` (one metric dict per run), ``summary``
        ({metric: {mean, std, n}}).
    """
    cfg = dataclasses.replace(base, init=init, out=str(Path(base.out) / label))
    path = Path(cfg.out) / "results.json"
    now = json.loads(json.dumps(cfg.resolved().to_dict()))
    saved = json.loads(path.read_text()) if reuse and path.is_file() else None
    reused = saved is not None and not config_differences(saved.get("config", {}), now, FINETUNE_REUSABLE)
    result = saved if reused else finetune(cfg, progress=progress, label=label)
    test = [{k: math.nan if v is None else v for k, v in r["test"].items()} for r in result["runs"]]
    names = list(test[0]) if test else []
    return {
        "dir": cfg.out,
        "init": init,
        "reused": reused,
        "seeds": [r["seed"] for r in result["runs"]],
        "test": test,
        "summary": {m: summarize([t.get(m, math.nan) for t in test]) for m in names},
    }


def paired_tests(entries: list[dict], reference: str | None) -> None:
    """Adds ``tests`` ({metric: {t, p}}, ``scipy.stats.ttest_ind``) vs the reference entry to the others."""
    ref = next((e for e in entries if e["label"] == reference), None)
    for entry in entries:
        if ref is None or entry is ref:
            entry["tests"] = {}
            continue
        names = entry["downstream"]["summary"]
        entry["tests"] = {
            m: ttest(
                [t.get(m, math.nan) for t in ref["downstream"]["test"]],
                [t.get(m, math.nan) for t in entry["downstream"]["test"]],
            )
            for m in names
        }


# ----------------------------------------------------------------------------------------------
# Reports


def _p(test: dict | None) -> str:
    if test is None:
        return "—"
    return "n/a" if math.isnan(test["p"]) else f"{test['p']:.3g}"


def _name(entry: dict) -> str:
    if entry["role"] == "baseline":
        return f"{entry['init']} init"
    return "no pruning" if entry["gamma"] is None else format(entry["gamma"], "g")


def ablation_markdown(result: dict) -> str:
    """Markdown: one row per γ (primary metric, runs, p vs no pruning, pruned fraction), then all metrics."""
    primary, entries, ft = result["primary"], result["entries"], result["finetune"]
    seeds = ", ".join(map(str, result["seeds"]))
    shots = f", {ft['shots']}-shot" if ft.get("shots") else ""
    pre = result["pretraining"]
    lines = [
        f"# Gamma ablation: {ft['task']} on {ft['dataset']}",
        "",
        (
            f"Pretraining {pre['backbone']}, stages n = {pre['stages']}, {pre['epochs']} epoch(s) a stage, seed "
            f"{pre['seed']}; γ applies at n > 0 (n = 0: gamma_n0 = {pre['gamma_n0']}). Fine-tuning {ft['arch']} at "
            f"{ft['size']} px{shots}, {len(result['seeds'])} run(s) per initialisation under the same seeds "
            f"({seeds}). Test metrics of the best validation epoch, mean ± sample std; p: independent two-sample "
            "t-test (scipy.stats.ttest_ind) against no pruning; n/a: undefined (fewer than 2 runs, or no variance). "
            "Pruned: mean fraction of the queue pruned per query over the last pretraining epoch."
        ),
        "",
        f"| γ | {primary} | runs | p vs no pruning | pruned at the end | best weights (pruned then) | pretraining |",
        "|---|---|---|---|---|---|---|",
    ]

    def fraction(v):
        return "—" if v is None else f"{v:.3f}"

    for e in entries:
        s = e["downstream"]["summary"].get(primary, summarize([]))
        pre_e = e.get("pretrain")
        best = (pre_e or {}).get("best")
        where = (
            "—"
            if best is None
            else (
                f"n={best['n']} epoch {best['epoch']}/{pre['epochs']} ({fraction(best['pruned_fraction'])})"
            )
        )
        status = (
            "—"
            if pre_e is None
            else pre_e["status"] + (", collapse warning" if pre_e["collapse_warning"] else "")
        )
        lines.append(
            f"| {_name(e)} | {format_summary(s)} | {s['n']} | {_p(e['tests'].get(primary)) if e['tests'] else '—'} "
            f"| {fraction(None if pre_e is None else pre_e['pruned_fraction'])} | {where} | {status} |"
        )
    same: dict[str, list[str]] = {}
    for e in entries:
        best = (e.get("pretrain") or {}).get("best")
        if best is not None:
            same.setdefault(best["digest"], []).append(_name(e))
    for names in (n for n in same.values() if len(n) > 1):
        lines += [
            "",
            (
                f"γ = {', '.join(names)}: bit-identical best weights. Their pretraining runs are the same "
                "until the pruner first removes a key, and validation chose an epoch before that; γ "
                "cannot change their downstream results."
            ),
        ]
    metrics = list(entries[0]["downstream"]["summary"]) if entries else []
    metrics = [primary] + sorted(m for m in metrics if m != primary)
    lines += [
        "",
        "## All test metrics",
        "",
        "| metric | " + " | ".join(_name(e) for e in entries) + " |",
        "|---|" + "---|" * len(entries),
    ]
    for m in metrics:
        lines.append(
            f"| {m} | "
            + " | ".join(format_summary(e["downstream"]["summary"].get(m, summarize([]))) for e in entries)
            + " |"
        )
    lines += ["", "![ablation](ablation.png)"]
    return "\n".join(lines) + "\n"


def plot_ablation(result: dict, out) -> Path:
    """Primary test metric vs γ with error bars (no pruning and the baseline as dashed lines with ±std
    bands), and the pruned fraction at the end of pretraining vs γ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary, entries = result["primary"], result["entries"]
    fig, (ax_m, ax_p) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    swept = sorted(
        (e for e in entries if e["role"] == "gamma" and e["gamma"] is not None), key=lambda e: e["gamma"]
    )
    xs = [e["gamma"] for e in swept]
    means = [e["downstream"]["summary"].get(primary, summarize([]))["mean"] for e in swept]
    stds = [e["downstream"]["summary"].get(primary, summarize([]))["std"] for e in swept]
    if swept:
        ax_m.errorbar(xs, means, yerr=stds, marker="o", capsize=4, color="C0", label="Adam, γ")
        pruned = [e["pretrain"]["pruned_fraction"] for e in swept]
        ax_p.plot(xs, [math.nan if v is None else v for v in pruned], marker="o", color="C0", label="γ")
    for e, colour in zip((e for e in entries if e not in swept), ("C1", "C2", "C3")):
        s = e["downstream"]["summary"].get(primary, summarize([]))
        if s["n"]:
            ax_m.axhline(s["mean"], ls="--", color=colour, label=f"{_name(e)} ({s['n']} runs)")
            ax_m.axhspan(s["mean"] - s["std"], s["mean"] + s["std"], color=colour, alpha=0.15)
        if e.get("pretrain") and e["pretrain"]["pruned_fraction"] is not None:
            ax_p.axhline(e["pretrain"]["pruned_fraction"], ls="--", color=colour, label=_name(e))
    ax_m.set(
        xlabel="γ (purposive pruner threshold)", ylabel=f"test {primary}", title=f"downstream {primary} vs γ"
    )
    ax_p.set(
        xlabel="γ (purposive pruner threshold)",
        ylabel="fraction of the queue pruned",
        title="pruned at the end of pretraining",
    )
    for ax in (ax_m, ax_p):
        if xs:
            ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)


def write_outputs(result: dict, out: Path) -> dict:
    """Writes ``ablation.json``, ``ablation.md`` and ``ablation.png``; returns their paths."""
    paths = {"json": out / "ablation.json", "md": out / "ablation.md", "png": out / "ablation.png"}
    atomic_write_json(paths["json"], result)
    paths["md"].write_text(ablation_markdown(result))
    plot_ablation(result, paths["png"])
    return paths


# ----------------------------------------------------------------------------------------------
# Driver


def run_ablation(args, configs: dict[str, PretrainConfig], base: FinetuneConfig) -> dict:
    """Pretrains and fine-tunes every γ (then the baseline), rewriting the reports after each."""
    out, progress = Path(args.out), not args.no_progress
    first = next(iter(configs.values()))
    result = {
        "kind": "adam_ext.gamma_ablation",
        "task": base.task,
        "dataset": base.dataset,
        "primary": "mean_dice" if base.task == "seg" else "mean_auc",
        "seeds": [base.seed + i for i in range(base.runs)],
        "reference": gamma_label(None) if None in args.gammas else None,
        "pretraining": {
            "preset": args.preset,
            "config": args.config,
            "overrides": args.overrides,
            "backbone": first.model.backbone,
            "stages": first.stages,
            "epochs": first.optim.epochs,
            "seed": first.seed,
            "gamma_n0": first.gamma_n0,
        },
        "finetune": base.to_dict(),
        "entries": [],
    }
    total = len(configs) + (args.baseline is not None)
    for i, (label, cfg) in enumerate(configs.items(), 1):
        print(f"gamma_ablation: [{i}/{total}] gamma={cfg.gamma}: pretraining {cfg.out}", flush=True)
        status = run_pretraining(cfg, progress)
        print(
            f"gamma_ablation: [{i}/{total}] gamma={cfg.gamma}: pretraining {status}; fine-tuning", flush=True
        )
        init = str(Path(cfg.out) / "best.pt")
        entry = {
            "label": label,
            "role": "gamma",
            "gamma": cfg.gamma,
            "init": init,
            "pretrain": {"dir": cfg.out, "status": status, **pretraining_summary(Path(cfg.out))},
            "downstream": run_downstream(base, init, label, progress, reuse=status == "reused"),
        }
        _report(result, entry, out, i, total)
    if args.baseline is not None:
        print(f"gamma_ablation: [{total}/{total}] baseline {args.baseline}: fine-tuning", flush=True)
        label = "baseline_" + parse_init(args.baseline)[0]
        entry = {
            "label": label,
            "role": "baseline",
            "gamma": None,
            "init": args.baseline,
            "pretrain": None,
            "downstream": run_downstream(base, args.baseline, label, progress, reuse=True),
        }
        _report(result, entry, out, total, total)
    return result


def _report(result: dict, entry: dict, out: Path, i: int, total: int) -> None:
    result["entries"].append(entry)
    paired_tests(result["entries"], result["reference"])
    s = entry["downstream"]["summary"].get(result["primary"], summarize([]))
    reused = " (reused)" if entry["downstream"]["reused"] else ""
    print(
        f"gamma_ablation: [{i}/{total}] {_name(entry)}: test {result['primary']} {format_summary(s)} over {s['n']} "
        f"run(s){reused}",
        flush=True,
    )
    write_outputs(result, out)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configs = pretrain_configs(args)
        base = finetune_base(args, next(iter(configs.values())).model.backbone)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    try:
        run_ablation(args, configs, base)
    except (AblationError, NonFiniteLossError, ResumeError) as exc:
        print(f"gamma_ablation: error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(
        f"gamma_ablation: done: {Path(args.out) / 'ablation.md'}  {Path(args.out) / 'ablation.json'}  "
        f"{Path(args.out) / 'ablation.png'}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
