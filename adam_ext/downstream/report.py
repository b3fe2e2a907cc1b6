"""Reports of fine-tuning: ``results.json`` / ``results.md`` of a set of runs, ``curves.png``, and the
t-test tables of a comparison (``compare.json`` / ``compare.md``)."""

from __future__ import annotations

import math
from pathlib import Path

from .._util.atomic import atomic_save_figure
from .._util.escape import markdown_code, markdown_text
from ..checkpoints import atomic_write_json, atomic_write_text
from .config import FinetuneConfig
from .metrics import format_summary, summarize, ttest

__all__ = [
    "compare_markdown",
    "compare_table",
    "metric_order",
    "plot_curves",
    "plot_label",
    "results_markdown",
    "summaries",
    "write_compare",
    "write_results",
]


def plot_label(name) -> str:
    """``name`` as a matplotlib legend entry shows it: ``$`` would start mathtext (a parse error
    for a stray one) and a leading ``_`` hides the entry."""
    name = str(name).replace("$", r"\$")
    return f" {name}" if name.startswith("_") else name


def metric_order(names, primary: str) -> list[str]:
    head = [m for m in (primary, "mean_iou", "accuracy") if m in names]
    return head + sorted(m for m in names if m not in head)


def summaries(runs: list[dict]) -> dict:
    names = list(runs[0]["test"]) if runs else []
    return {m: summarize([r["test"].get(m, math.nan) for r in runs]) for m in names}


def write_results(out: Path, result: dict) -> dict:
    paths = {
        "results_json": str(out / "results.json"),
        "results_md": str(out / "results.md"),
        "curves": str(out / "curves.png"),
    }
    body = {k: v for k, v in result.items()}
    body["runs"] = [{k: v for k, v in r.items() if k != "init_summary"} for r in result["runs"]]
    atomic_write_json(out / "results.json", body)
    atomic_write_text(out / "results.md", results_markdown(result))
    plot_curves({result["label"]: result["runs"]}, out / "curves.png", result["primary"])
    return paths


def _encoder_note(cfg: dict) -> str:
    """How the encoder trained, for a setup line: ``, frozen encoder ...``, ``, encoder frozen for the
    first N epochs (LP-FT)``, ``, encoder lr × S``; empty for the default (all layers at ``lr``)."""
    if cfg.get("freeze_encoder"):
        return ", frozen encoder (only the head trains)"
    note = ""
    if cfg.get("frozen_epochs"):
        note += f", encoder frozen for the first {cfg['frozen_epochs']} epochs (LP-FT)"
    if cfg.get("encoder_lr_scale", 1) != 1:
        note += f", encoder lr × {cfg['encoder_lr_scale']:g}"
    return note


def results_markdown(result: dict) -> str:
    """A Markdown page: setup line, then one row per test metric with mean ± std over runs. Names
    (the label, the init) are escaped (:mod:`adam_ext._util.escape`)."""
    cfg, runs = result["config"], result["runs"]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    shots = f", {cfg['shots']}-shot" if cfg.get("shots") else ""
    shots += _encoder_note(cfg)
    title = f"{result['task']} on {markdown_text(result['dataset'])} from {markdown_text(result['label'])}"
    lines = [
        f"# Fine-tuning: {title}",
        "",
        (
            f"{cfg['arch']}, init {markdown_code(result['init'])}, {len(runs)} run(s) (seeds {seeds}){shots}, "
            f"size {cfg['size']}, {cfg['optimizer']} lr {cfg['lr']}, up to {cfg['epochs']} epochs "
            f"(patience {cfg['patience']}). Test metrics of the best validation epoch, mean ± sample std over "
            "runs; n/a: undefined (e.g. a class with one label value in the test set)."
        ),
        "",
        "| metric | mean ± std | runs |",
        "|---|---|---|",
    ]
    summary = result["summary"]
    for m in metric_order(summary, result["primary"]):
        lines.append(f"| {m} | {format_summary(summary[m])} | {summary[m]['n']} |")
    return "\n".join(lines) + "\n"


def plot_curves(groups: dict, out, primary: str) -> Path:
    """Training loss and validation metric per epoch, one line per (initialisation, run).

    Args:
        groups: {label: [run dicts with ``history``]}.
        out: PNG path.
        primary: metric name of the validation curve (``mean_auc`` / ``mean_dice``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for g, (label, runs) in enumerate(groups.items()):
        colour = colours[g % len(colours)]
        for i, run in enumerate(runs):
            epochs = [r["epoch"] for r in run["history"]]
            name = plot_label(label) if i == 0 else None
            ax_loss.plot(
                epochs, [r["train_loss"] for r in run["history"]], color=colour, alpha=0.7, label=name
            )
            values = [r.get(f"val_{primary}") for r in run["history"]]
            values = [math.nan if v is None else v for v in values]
            ax_val.plot(epochs, values, color=colour, alpha=0.7, marker="o", ms=3, label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax_val.set(xlabel="epoch", ylabel=f"validation {primary}", title=f"validation {primary}")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_val):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, out)  # never a partial figure, never through a link
    plt.close(fig)
    return Path(out)


def compare_table(results: dict, labels: list[str]) -> dict:
    """{metric: {label: {mean, std, n}, ..., "tests": {label: {t, p}}}}: each initialisation's test
    metrics against the first's (independent two-sample t-test), in the report's metric order."""
    base = labels[0]
    names = metric_order(results[base]["summary"], results[base]["primary"])
    table = {}
    for m in names:
        entry = {lab: results[lab]["summary"].get(m, summarize([])) for lab in labels}
        base_values = [r["test"].get(m, math.nan) for r in results[base]["runs"]]
        entry["tests"] = {
            lab: ttest(base_values, [r["test"].get(m, math.nan) for r in results[lab]["runs"]])
            for lab in labels[1:]
        }
        table[m] = entry
    return table


def write_compare(folder: Path, out: dict, cfg: FinetuneConfig) -> dict:
    """Writes ``compare.json``, ``compare.md`` and ``curves.png`` of a comparison under ``folder``;
    returns their paths (``compare_json``, ``compare_md``, ``curves``)."""
    labels, results = out["labels"], out["results"]
    body = {k: v for k, v in out.items() if k != "results"}
    body["results"] = {lab: results[lab].get("results_json") for lab in labels}
    atomic_write_json(folder / "compare.json", body)
    atomic_write_text(folder / "compare.md", compare_markdown(out, cfg))
    plot_curves({lab: results[lab]["runs"] for lab in labels}, folder / "curves.png", out["primary"])
    return {
        "compare_json": str(folder / "compare.json"),
        "compare_md": str(folder / "compare.md"),
        "curves": str(folder / "curves.png"),
    }


def compare_markdown(result: dict, cfg: FinetuneConfig) -> str:
    """Markdown table: one row per test metric, mean ± std per initialisation, p-value vs the baseline;
    labels and inits escaped (:mod:`adam_ext._util.escape`)."""
    labels, base = result["labels"], result["baseline"]
    others = labels[1:]
    cell = {lab: markdown_text(lab) for lab in labels}
    lines = [
        f"# Comparison: {result['task']} on {markdown_text(result['dataset'])}",
        "",
        (
            f"{cfg.arch}, {len(result['seeds'])} run(s) per initialisation under the same seeds "
            f"({', '.join(map(str, result['seeds']))}){f', {cfg.shots}-shot' if cfg.shots else ''}{_encoder_note(cfg.to_dict())}. "
            "Test metrics, mean ± sample std; p: independent two-sample t-test (scipy.stats.ttest_ind) "
            f"against {markdown_code(base)}; n/a: undefined."
        ),
        "",
        "| metric | "
        + " | ".join(cell[lab] for lab in labels)
        + " | "
        + " | ".join(f"p ({cell[o]} vs {cell[base]})" for o in others)
        + " |",
        "|---|" + "---|" * (len(labels) + len(others)),
    ]
    for m, entry in result["metrics"].items():
        cells = [format_summary(entry[lab]) for lab in labels]
        cells += [
            "n/a" if math.isnan(entry["tests"][o]["p"]) else f"{entry['tests'][o]['p']:.3g}" for o in others
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Initialisations: "
        + "; ".join(f"{markdown_code(lab)} = {markdown_code(spec)}" for lab, spec in result["inits"].items()),
    ]
    return "\n".join(lines) + "\n"
