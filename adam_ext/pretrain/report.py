"""A pretraining run's report: curves as PNG and a Markdown page, from the run folder alone. Names
it did not write (the run's path, the folders of comparisons and analyses, the configuration) are
escaped (:mod:`adam_ext._util.escape`); the tables it includes escape their own.

``adam report RUN`` (and every finished ``adam pretrain``) reads ``RUN/metrics.jsonl``,
``RUN/summary.json`` and ``RUN/config.yaml`` and writes::

    RUN/report.md            summary table, configuration, the figures
    RUN/loss.png             training loss per step (and its moving average), validation loss per epoch
    RUN/pruned.png           fraction of the queue removed by the purposive pruner per step
    RUN/monitors.png         the representation monitors (RankMe, collapse indicator, alignment,
                             uniformity, k-NN) per stage, when the run logged them
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import numpy as np
import yaml

from .._util.atomic import atomic_save_figure, atomic_write_text
from .._util.escape import markdown_code, markdown_fence, markdown_text
from .._util.runfolder import read_jsonl, refuse_symlinks

__all__ = ["read_metrics", "read_monitors", "write_report"]

#: monitor name -> (axis label, what a healthy trend looks like)
MONITORS = {
    "knn_landmark": ("landmark k-NN accuracy", "higher is better"),
    "knn_auc": ("k-NN mean AUC", "higher is better"),
    "knn_accuracy": ("k-NN accuracy", "higher is better"),
    "rankme": ("RankMe (pooled features)", "higher: more dimensions used"),
    "collapse_std": ("std of normalised head outputs", "about 1/sqrt(dim) healthy, 0 collapsed"),
    "alignment": ("alignment (views)", "lower: views agree"),
    "uniformity": ("uniformity", "lower: spread on the sphere"),
}


def read_metrics(run) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows) of ``run/metrics.jsonl``."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"run must be a pretraining run folder holding metrics.jsonl, got {str(run)!r}"
        )
    rows = read_jsonl(path)
    return [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]


def read_monitors(run) -> list[dict]:
    """The monitor rows of ``run/metrics.jsonl`` (``{"stage", "n", "epoch", "step", "monitor": {...}}``)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in read_jsonl(path) if "monitor" in r]


def _plot_monitors(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in MONITORS if any(m in r["monitor"] for r in rows)]
    cols = min(3, len(names))
    fig, axes = plt.subplots(
        -(-len(names) // cols),
        cols,
        figsize=(4.2 * cols, 3.0 * -(-len(names) // cols)),
        dpi=100,
        squeeze=False,
    )
    stages = sorted({r["stage"] for r in rows})
    offsets, offset = {}, 0
    for stage in stages:  # stages one after the other, as in loss.png
        offsets[stage] = offset
        offset += max(r["step"] for r in rows if r["stage"] == stage) + 1
    for ax, name in zip(axes.flat, names):
        for stage in stages:
            mine = [r for r in rows if r["stage"] == stage and name in r["monitor"]]
            ax.plot(
                [r["step"] + offsets[stage] for r in mine],
                [r["monitor"][name] for r in mine],
                "o-",
                ms=3,
                label=f"stage {stage} (n={mine[0]['n']})" if mine else None,
            )
        if name == "collapse_std" and "collapse_std_healthy" in rows[-1]["monitor"]:
            ax.axhline(rows[-1]["monitor"]["collapse_std_healthy"], color="grey", ls=":", lw=1)
        label, hint = MONITORS[name]
        ax.set_title(f"{label}\n({hint})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("step (stages one after the other)", fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, out)  # a failed write keeps the old figure; never through a link
    plt.close(fig)
    return out


def _monitor_lines(rows: list[dict]) -> list[str]:
    names = [m for m in MONITORS if any(m in r["monitor"] for r in rows)]
    lines = [
        "## Representation monitors",
        "",
        "Measured on validation images in eval mode at each stage's start and after every epoch "
        "(`adam_ext.monitors`); the first row of stage 0 is the random initialisation. (The validation "
        "loss logged there is low for another reason: the initial queue holds random keys, nearly "
        "orthogonal to every embedding of a random network, whose embeddings are nearly collinear.)",
        "",
        "| stage | n | | " + " | ".join(MONITORS[m][0] for m in names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for stage in sorted({r["stage"] for r in rows}):
        mine = [r for r in rows if r["stage"] == stage]
        for what, r in (("start", mine[0]), ("end", mine[-1])):
            cells = [f"{r['monitor'][m]:.4g}" if m in r["monitor"] else "" for m in names]
            lines.append(f"| {stage} | {r['n']} | {what} (step {r['step']}) | " + " | ".join(cells) + " |")
    return lines + ["", "![monitors](monitors.png)", ""]


def _moving_average(values: np.ndarray, width: int) -> np.ndarray:
    if len(values) < width or width < 2:
        return values
    kernel = np.ones(width) / width
    head = np.cumsum(values[: width - 1]) / np.arange(1, width)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def _plot(train: list[dict], val: list[dict], key: str, ylabel: str, out: Path, log_y: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    offset, ticks = 0, []
    for stage in sorted({r["stage"] for r in train}):
        rows = [r for r in train if r["stage"] == stage]
        steps = np.array([r["step"] for r in rows]) + offset
        values = np.array([r[key] for r in rows], dtype=float)
        n = rows[0]["n"]
        line = ax.plot(steps, values, alpha=0.3, lw=0.8)[0]
        ax.plot(
            steps,
            _moving_average(values, max(1, len(values) // 20)),
            color=line.get_color(),
            lw=1.8,
            label=f"stage {stage} (n={n}) train",
        )
        if key == "loss":
            v = [r for r in val if r["stage"] == stage and r["epoch"] > 0]  # epoch 0: before training
            if v:
                ax.plot(
                    np.array([r["step"] for r in v]) + offset,
                    [r["val_loss"] for r in v],
                    "o--",
                    color=line.get_color(),
                    ms=4,
                    label=f"stage {stage} (n={n}) validation",
                )
        ticks.append(offset)
        offset = steps.max() + 1
    for x in ticks[1:]:
        ax.axvline(x, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("step (stages one after the other)")
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, out)  # a failed write keeps the old figure; never through a link
    plt.close(fig)
    return out


def write_report(run) -> Path:
    """Writes ``run/report.md`` with ``loss.png`` and ``pruned.png``; returns the report's path.

    Args:
        run: a pretraining run folder (``adam pretrain --out``).
    """
    run = Path(run)
    train, val = read_metrics(run)
    refuse_symlinks(run)  # the report's files are overwritten: never through a link
    if not train:
        raise ValueError(f"run {str(run)!r} has no training steps in metrics.jsonl yet")
    _plot(train, val, "loss", "InfoNCE loss", run / "loss.png")
    _plot(train, val, "pruned_fraction", "fraction of the queue pruned", run / "pruned.png")
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"stages": []}
    lines = [f"# Adam pretraining report: {markdown_code(run)}", ""]
    config_values = (
        yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    )
    pruned_val = bool((config_values or {}).get("val_pruning", False))
    if summary["stages"]:
        lines += [
            "| stage | n | γ | epochs | best validation loss | time (s) | images/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in summary["stages"]:
            best = "n/a" if s["best_val_loss"] is None else f"{s['best_val_loss']:.4f}"
            collapse = " (collapse warning)" if s.get("collapse_warning") else ""
            if s.get("monitor_collapse_warning"):
                collapse += " (monitors: representation collapsed)"
            lines.append(
                f"| {s['stage']} | {s['n']} | {s['gamma']}{collapse} | {s['epochs']} | {best} | "
                f"{s['seconds']} | {s['images_per_s']} |"
            )
        lines += [
            "",
            f"Validation loss: InfoNCE of held-out images against the queue, "
            f"{'with the stage’s pruning' if pruned_val else 'without pruning (val_pruning: false)'}; "
            f"each stage keeps its lowest.",
            "",
        ]
        estimate = summary.get("estimate")
        if estimate:
            measured = sum(s["seconds"] for s in summary["stages"])
            lines += [
                f"Time: estimated {estimate['total_seconds']:.0f} s of training steps after step "
                f"{estimate['at_step']} ({estimate['seconds_per_step']:.3g} s a step × "
                f"{estimate['total_steps']} steps); measured {measured:.0f} s for the stages, validation "
                f"and checkpoints included.",
                "",
            ]
    for stage in sorted({r["stage"] for r in train}):
        rows = [r for r in train if r["stage"] == stage]
        first, last = rows[: max(1, len(rows) // 10)], rows[-max(1, len(rows) // 10) :]
        mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        lines.append(
            f"- stage {stage} (n={rows[0]['n']}): training loss {mean(first, 'loss'):.3f} → "
            f"{mean(last, 'loss'):.3f} (first and last 10% of steps), queue pruned "
            f"{100 * mean(rows, 'pruned_fraction'):.2f}% on average"
        )
    lines += ["", "## Loss", "", "![loss](loss.png)", ""]
    monitors = read_monitors(run)
    if monitors:
        _plot_monitors(monitors, run / "monitors.png")
        lines += _monitor_lines(monitors)
    lines += [
        "## Purposive pruner",
        "",
        "Fraction of the queue's keys at least γ similar to the query, removed from the negatives "
        "(0 where the pruner is off).",
        "",
        "![pruned](pruned.png)",
        "",
    ]
    for table in sorted(run.glob("*/compare.md")):  # downstream comparisons run into the folder (make demo)
        name = table.parent.name
        lines += [f"## Downstream: {markdown_code(name)}", "", table.read_text().strip(), ""]
        if (table.parent / "curves.png").is_file():
            lines += [f"![{markdown_text(name)} curves]({quote(name)}/curves.png)", ""]
    for folder in sorted(
        p for p in run.glob("eve/*") if p.is_dir()
    ):  # adam eve ANALYSIS --out RUN/eve/ANALYSIS
        table = folder / f"{folder.name}.md"
        if not table.is_file():
            continue
        text = table.read_text().strip()
        if text.startswith("# "):  # the analysis' own title: the section heading replaces it
            text = text.split("\n", 1)[1].strip() if "\n" in text else ""
        lines += [f"## Eve: {markdown_text(folder.name)}", "", text, ""]
        for picture in sorted(folder.glob("*.png")):
            link = quote(f"eve/{folder.name}/{picture.name}")
            lines += [f"![{markdown_text(folder.name)}: {markdown_text(picture.stem)}]({link})", ""]
    config = run / "config.yaml"
    if config.is_file():
        lines += ["## Configuration", "", markdown_fence(config.read_text().rstrip(), "yaml"), ""]
    out = run / "report.md"
    atomic_write_text(out, "\n".join(lines))
    return out
