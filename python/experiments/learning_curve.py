"""Learning curve: does pretraining learn, and how fast? Adam and MoCo v2 against random initialisation.

Pretrains one run per method with a snapshot of the weights at the end of every epoch
(:func:`adam_ext.pretrain.pretrain` with ``snapshots: true``):

* ``adam``: the decomposer's stages n = 0, 2, 4 (the configured ``stages``) with the purposive pruner;
* ``mocov2``: n = 0 only, no pruner, the same total number of epochs (so the same steps and images)
  and the same seed;

then evaluates the snapshots at growing budgets (``--budgets``, fractions of the total; each
rounded to an epoch) and a random initialisation by few-shot segmentation (default: 16-shot
heart + clavicles on the synthetic SCR layout), fine-tuned and with the encoder frozen, under the
same seeds (``--runs``, default 10), with the monitors the pretraining logged at that point.
A snapshot is the weights at that point of the run (not the best validation loss), as a learning
curve needs.

Outputs::

    OUT/<method>/              pretraining run folders; OUT/<method>/snapshots/*.pt stay there, so
                               others can evaluate any of them further (``adam export`` reads them)
    OUT/eval/<label>/          fine-tuning results of each (snapshot or random, fine-tuned or frozen)
    OUT/curve.json             every number: per point, test Dice per seed, mean ± std, p-values, monitors
    OUT/curve.md               the table: mean ± std, t-test p against random and Adam against MoCo v2
    OUT/curve.png              mean Dice against images seen, one line per method, error bars (std)

Resumable: run the same command again after an interruption; a finished pretraining and finished
evaluations of the same configuration are reused, an unfinished pretraining resumes.

Example (the CPU curve of the README; about 2 hours on 2 cores)::

    python python/experiments/learning_curve.py --out runs/curve --preset demo --runs 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import yaml

from adam_ext.checkpoints import atomic_write_json, atomic_write_text
from adam_ext.cli.finetune import add_recipe_arguments, recipe_values
from adam_ext.downstream import FinetuneConfig, finetune, load_finetune_config, summarize, ttest
from adam_ext.engine.config import config_differences
from adam_ext.pretrain import initial_knn, pretrain
from adam_ext.pretrain.config import PretrainConfig, load_config
from adam_ext.pretrain.report import read_metrics, read_monitors

METHODS = ("adam", "mocov2")
#: Pretraining fields a finished run may differ in and still be reused.
REUSABLE = {
    "out",
    "device",
    "log_every",
    "checkpoint_every",
    "tensorboard",
    "dist_timeout",
    "data.workers",
    "data.root",
    "data.cache",
    "monitor.enabled",
    "monitor.every",
    "monitor.images",
    "monitor.knn_images",
    "monitor.k",
    "monitor.temperature",
}
FINETUNE_REUSABLE = {"out", "device", "workers", "dist_timeout"}
#: The few-shot task of the issue and of make demo: 16-shot heart + clavicles on the synthetic SCR layout.
DEFAULT_TASK = {
    "task": "seg",
    "dataset": "scr",
    "masks": ["heart", "left clavicle", "right clavicle"],
    "shots": 16,
    "size": 128,
    "epochs": 15,
    "patience": 5,
    "batch_size": 8,
    "lr": 1e-3,
    "workers": 0,
    "runs": 10,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Example") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="folder of the runs, evaluations and curve.*")
    p.add_argument("--methods", default="adam,mocov2", help="comma-separated subset of adam,mocov2")
    p.add_argument(
        "--budgets",
        default="0.125,0.25,0.5,1",
        help="fractions of the total pretraining epochs to evaluate (default 0.125,0.25,0.5,1)",
    )
    pre = p.add_argument_group("pretraining (as adam pretrain: defaults, --preset, --config, --set)")
    pre.add_argument("--preset", default="demo", help="named pretraining preset (default demo)")
    pre.add_argument("--config", help="pretraining YAML file")
    pre.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pretraining override, value in YAML (repeatable), e.g. optim.epochs=5",
    )
    down = p.add_argument_group(
        "downstream (as adam finetune seg; defaults: 16-shot heart + clavicles, "
        "10 runs, the data set under the pretraining root's scr/)"
    )
    add_recipe_arguments(down, task="seg")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device of pretraining and fine-tuning")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_budgets(text: str) -> list[float]:
    """``"0.25,0.5,1"`` -> ``[0.25, 0.5, 1.0]``; each in (0, 1], ascending, no repeats (ValueError otherwise)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--budgets must be comma-separated numbers in (0, 1], got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values) or sorted(set(values)) != values:
        raise ValueError(f"--budgets must be ascending distinct fractions in (0, 1], got {text!r}")
    return values


def pretrain_configs(args) -> dict[str, PretrainConfig]:
    """{method: config}: Adam as configured; MoCo v2 with n = 0 only, no pruner, the same total epochs."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods) or len(set(methods)) != len(methods):
        raise ValueError(f"--methods must be a subset of {','.join(METHODS)}, got {args.methods!r}")
    for text in args.overrides:
        key = text.partition("=")[0].strip()
        if key in ("out", "snapshots"):
            raise ValueError(f"--set {key}=... is not allowed: the learning curve sets it")
    extra = [f"device={args.device}"] if args.device else []
    base = load_config(args.config, [*args.overrides, *extra], preset=args.preset)
    configs = {}
    for method in methods:
        overrides = [*args.overrides, *extra, f"out={Path(args.out) / method}", "snapshots=true"]
        if method == "mocov2":
            overrides += [
                "stages=[0]",
                "gamma=null",
                "gamma_n0=null",
                f"optim.epochs={base.optim.epochs * len(base.stages)}",
            ]
        configs[method] = load_config(args.config, overrides, preset=args.preset)
    return configs


def run_pretraining(cfg: PretrainConfig, progress: bool) -> None:
    """Pretrains into ``cfg.out`` unless finished under the same configuration; resumes an unfinished run."""
    out = Path(cfg.out)
    if (out / "summary.json").is_file() and (out / "best.pt").is_file():
        saved = yaml.safe_load((out / "config.yaml").read_text()) or {}
        differ = config_differences(saved, cfg.to_dict(), REUSABLE)
        if differ:
            raise ValueError(
                f"{out} holds a finished pretraining of another configuration (differs in "
                f"{', '.join(list(differ)[:6])}); choose another --out or delete that folder"
            )
        return
    summary = pretrain(cfg, resume="auto", progress=progress)
    if summary["interrupted"]:
        raise RuntimeError(
            f"pretraining {out} stopped before its end; run the learning curve again to resume it"
        )


def budget_points(cfg: PretrainConfig, budgets: list[float]) -> list[dict]:
    """The snapshot of each budget: {budget, stage, n, epoch, global_epoch, path, images}."""
    epochs, stages = cfg.optim.epochs, cfg.stages
    total = epochs * len(stages)
    points = []
    for budget in budgets:
        g = max(1, round(budget * total))
        stage, epoch = (g - 1) // epochs, (g - 1) % epochs + 1
        path = Path(cfg.out) / "snapshots" / f"stage{stage}_n{stages[stage]}_epoch{epoch}.pt"
        points.append(
            {
                "budget": budget,
                "stage": stage,
                "n": stages[stage],
                "epoch": epoch,
                "global_epoch": g,
                "path": str(path),
            }
        )
    return points


def monitors_at(run: Path, stage: int, epoch: int) -> dict:
    """The monitors the run logged at the end of (stage, epoch); {} when it logged none."""
    rows = [r for r in read_monitors(run) if r["stage"] == stage and r["epoch"] == epoch]
    return dict(rows[-1]["monitor"]) if rows else {}


def images_per_epoch(run: Path) -> int:
    train, _ = read_metrics(run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    steps = max(r["step"] for r in train if r["stage"] == 0 and r["epoch"] == 1)
    return (steps + 1) * cfg["optim"]["batch_size"]


def evaluate(base: FinetuneConfig, init: str, label: str, progress: bool) -> list[float]:
    """Test mean Dice per seed of ``init`` (fine-tuned as ``base`` says), reusing finished results."""
    cfg = dataclasses.replace(base, init=init, out=str(Path(base.out) / label))
    path = Path(cfg.out) / "results.json"
    now = json.loads(json.dumps(cfg.resolved().to_dict()))
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved is None or config_differences(saved.get("config", {}), now, FINETUNE_REUSABLE):
        saved = finetune(cfg, progress=progress, label=label)
    return [math.nan if r["test"]["mean_dice"] is None else r["test"]["mean_dice"] for r in saved["runs"]]


def _cell(values: list[float]) -> str:
    s = summarize(values)
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _p(a, b) -> str:
    p = ttest(a, b)["p"]
    return "n/a" if math.isnan(p) else f"{p:.2g}"


def curve_markdown(result: dict) -> str:
    ft = result["finetune"]
    lines = [
        "# Learning curve: few-shot segmentation from pretrained encoders",
        "",
        f"{ft['shots']}-shot {', '.join(ft['masks'] or [])} on `{ft['root']}` ({ft['arch']}, {ft['size']} px, "
        f"{ft['optimizer']} lr {ft['lr']}, up to {ft['epochs']} epochs, patience {ft['patience']}), "
        f"{len(result['seeds'])} seeds ({', '.join(map(str, result['seeds']))}), the same for every row. Test mean "
        "Dice, mean ± sample std; p: two-sample t-test (scipy.stats.ttest_ind) against random initialisation "
        "(and, last column, Adam against MoCo v2 at the same budget). Monitors: logged by the pretraining at "
        "that point (landmark k-NN accuracy, RankMe); the k-NN's patches are cut at the stage's scale, so each "
        "value has beside it the random (initial) encoder's at the same scale.",
        "",
        "| method | budget | images seen | Dice fine-tuned | p vs random | Dice frozen | p vs random | "
        "p Adam vs MoCo (ft / frozen) | landmark k-NN | RankMe |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rnd = result["random"]
    reference = rnd.get("knn_landmark", {})
    lines.append(
        f"| random | — | 0 | {_cell(rnd['finetuned'])} | — | {_cell(rnd['frozen'])} | — | — | "
        + ", ".join(f"n={n}: {v:.3f}" for n, v in reference.items())
        + " | |"
    )
    by_key = {(p["method"], p["budget"]): p for p in result["points"]}
    for p in result["points"]:
        other = by_key.get(("mocov2", p["budget"])) if p["method"] == "adam" else None
        versus = (
            f"{_p(p['finetuned'], other['finetuned'])} / {_p(p['frozen'], other['frozen'])}" if other else "—"
        )
        mon = p["monitors"]
        knn = f"{mon['knn_landmark']:.3f}" if "knn_landmark" in mon else ""
        if knn and str(p["n"]) in reference:
            knn += f" (random {reference[str(p['n'])]:.3f})"
        rank = f"{mon['rankme']:.1f}" if "rankme" in mon else ""
        lines.append(
            f"| {p['method']} | {p['budget']:g} (stage {p['stage']} n={p['n']} epoch {p['epoch']}) | "
            f"{p['images']} | {_cell(p['finetuned'])} | {_p(p['finetuned'], rnd['finetuned'])} | "
            f"{_cell(p['frozen'])} | {_p(p['frozen'], rnd['frozen'])} | {versus} | {knn} | {rank} |"
        )
    return "\n".join(lines + ["", "![learning curve](curve.png)", ""])


def plot_curve(result: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110, sharey=True)
    for ax, mode in zip(axes, ("finetuned", "frozen")):
        rnd = summarize(result["random"][mode])
        ax.axhspan(rnd["mean"] - rnd["std"], rnd["mean"] + rnd["std"], color="grey", alpha=0.2)
        ax.axhline(rnd["mean"], color="grey", ls="--", label="random initialisation (± std)")
        for method in dict.fromkeys(p["method"] for p in result["points"]):
            pts = [p for p in result["points"] if p["method"] == method]
            stats = [summarize(p[mode]) for p in pts]
            ax.errorbar(
                [p["images"] for p in pts],
                [s["mean"] for s in stats],
                yerr=[s["std"] for s in stats],
                marker="o",
                capsize=3,
                label=method,
            )
        ax.set_title(f"{'fine-tuned' if mode == 'finetuned' else 'frozen encoder'}", fontsize=10)
        ax.set_xlabel("pretraining images seen")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test mean Dice")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    progress = not args.no_progress
    try:
        budgets = parse_budgets(args.budgets)
        configs = pretrain_configs(args)
        first = next(iter(configs.values()))
        values = {**DEFAULT_TASK, "arch": first.model.backbone, **recipe_values(args)}
        values.setdefault("root", str(Path(first.data.root) / "scr"))
        values["out"] = str(Path(args.out) / "eval")
        if args.device:
            values["device"] = args.device
        base = load_finetune_config(None, [], base=values).resolved()
        if base.arch != first.model.backbone:
            raise ValueError(
                f"--arch must match the pretraining backbone {first.model.backbone!r}, got {base.arch!r}"
            )
    except ValueError as exc:
        print(f"learning_curve: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    for cfg in configs.values():
        run_pretraining(cfg, progress)
    if not Path(base.root).is_dir():
        print(
            f"learning_curve: error: the downstream data {base.root!r} does not exist (--data)",
            file=sys.stderr,
        )
        return 2
    frozen = dataclasses.replace(
        base, freeze_encoder=True, frozen_epochs=0, encoder_lr_scale=1.0
    )  # frozen throughout
    result = {
        "finetune": base.to_dict(),
        "seeds": list(range(base.seed, base.seed + base.runs)),
        "points": [],
        "random": {},
        "pretraining": {m: c.to_dict() for m, c in configs.items()},
    }
    result["random"] = {
        "finetuned": evaluate(base, "random", "random", progress),
        "frozen": evaluate(frozen, "random", "random_frozen", progress),
    }
    # the random encoder's landmark k-NN at every stage's scale (a stage's patches depend on its n)
    reference = {
        str(n): v["knn_landmark"]
        for cfg in configs.values()
        for n, v in initial_knn(cfg).items()
        if "knn_landmark" in v
    }
    if reference:
        result["random"]["knn_landmark"] = reference
    for method, cfg in configs.items():
        per_epoch = images_per_epoch(Path(cfg.out))
        for point in budget_points(cfg, budgets):
            label = f"{method}_{point['budget']:g}"
            point.update(
                method=method,
                images=point["global_epoch"] * per_epoch,
                monitors=monitors_at(Path(cfg.out), point["stage"], point["epoch"]),
                finetuned=evaluate(base, point["path"], label, progress),
                frozen=evaluate(frozen, point["path"], f"{label}_frozen", progress),
            )
            result["points"].append(point)
            atomic_write_json(out / "curve.json", result)  # partial results after every point
            atomic_write_text(out / "curve.md", curve_markdown(result))
    plot_curve(result, out / "curve.png")
    print(curve_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
