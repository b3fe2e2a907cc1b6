"""The Markdown form of a model card (``OUT.card.md``), rendered from its JSON (:mod:`.card`) alone.

Everything the card holds came from somewhere else (a configuration, a path, a checkpoint), so every
value is escaped for where it lands, by the helpers of :mod:`adam_ext._util.escape`: ``markdown_text``
in prose and table cells (HTML's ``& < >`` as entities, Markdown's marks backslash-escaped, one line),
``markdown_fence`` around code blocks (a fence longer than any backtick run inside), and the
configuration's JSON with ``< > &`` as ``\\u`` escapes.
No card value can close a code span or block, split a table cell, or put raw HTML, a link or emphasis
into the page; the Markdown file holds no ``<`` it did not write. Only the page's own words are
Markdown.
"""

from __future__ import annotations

import json

from .._util.escape import markdown_fence, markdown_text
from .card import UNKNOWN

__all__ = ["render_card"]

#: What each monitor measures (adam_ext.engine.monitors), for the card's readers.
_MONITORS = {
    "rankme": "effective rank of the embeddings (1: collapsed; up to the embedding dimension)",
    "collapse_std": "per-dimension std of the L2-normalised embeddings (0: collapsed)",
    "collapse_std_healthy": "its value for embeddings spread over the sphere, 1/sqrt(dim)",
    "alignment": "mean squared distance of two views' embeddings (lower: views agree)",
    "uniformity": "log mean Gaussian potential of the embeddings (lower: more uniform)",
    "knn_landmark": "weighted k-NN accuracy of landmark patches (anatomy told apart)",
    "knn_auc": "weighted k-NN mean ROC AUC on the labels",
    "knn_accuracy": "weighted k-NN accuracy on the labels",
}
_LIBRARIES = {
    "torchvision": "torchvision",
    "smp": "segmentation-models-pytorch",
    "timm": "timm",
    "monai": "MONAI",
    "safetensors": "safetensors (torchvision key names: torchvision, smp, timm and MONAI)",
}


def _json(value) -> str:
    """Indented JSON of ``value`` with ``< > &`` written as ``\\u003c``..., the same JSON value, with no
    character an HTML renderer could take for markup even outside its code block."""
    text = json.dumps(value, indent=2)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _cell(value) -> str:
    """A card value as escaped table-cell text: numbers to 4 significant digits, lists joined."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if value is None:
        return "none"
    return markdown_text(value)


def _int(value) -> str:
    """An integer with thousands separators (a card's counts are validated ints); else as a cell."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else _cell(value)


def _table(rows) -> list[str]:
    """A two-column table of ``(name, Markdown)`` rows: the values are escaped by the caller."""
    lines = ["| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return lines + [""]


def _size(n) -> str:
    return f"{n / 2**20:.1f} MiB" if isinstance(n, int) and not isinstance(n, bool) else UNKNOWN


def _weights(card: dict) -> list[str]:
    w, i = card["weights"], card["input"]
    encoder = {
        "query": "query encoder (`encoder_q`, the one the paper fine-tunes)",
        "key": "momentum key encoder (`encoder_k`)",
    }.get(w["encoder"], _cell(w["encoder"]))
    normalise = (
        f"(x - mean) / std on intensities in [0, 1]; mean {_cell(i['mean'])}, std {_cell(i['std'])}"
        if i["mean"] != UNKNOWN
        else UNKNOWN
    )
    library = _LIBRARIES.get(w["format"], _cell(w["format"]))
    lines = ["## The weights", ""] + _table(
        [
            ("file", f"{markdown_text(w['file'])} ({_size(w['bytes'])})"),
            ("SHA-256", f"`{w['sha256']}`"),  # 64 hex digits: read_card checks
            ("architecture", f"{_cell(w['arch'])}: the ResNet trunk, without `fc` (a new head is yours)"),
            ("encoder", encoder),
            (
                "export format",
                (
                    f"{_cell(w['format'])} (verified to load in {library}; every format has the same "
                    f"key names)"
                ),
            ),
            (
                "tensors",
                (
                    f"{_int(w['tensors'])}, holding {_int(w['parameters'])} parameters and the BatchNorm "
                    f"statistics"
                ),
            ),
            (
                "input channels",
                (f"{_cell(i['channels'])} (grey X-rays are repeated to 3 channels before normalising)")
                if i["mean"] != UNKNOWN
                else _cell(i["channels"]),
            ),
            ("pretraining view size", f"{_cell(i['size'])} px" if i["size"] != UNKNOWN else UNKNOWN),
            ("normalisation", normalise),
        ]
    )
    lines += [
        "Layers (state dict keys by their first name; the JSON card lists every key and shape):",
        "",
        "| layer | tensors | parameters |",
        "|---|---|---|",
    ]
    lines += [
        f"| {markdown_text(g['name'])} | {_int(g['tensors'])} | {_int(g['parameters'])} |"
        for g in w["layers"]
    ]
    return lines + [""]


def _stages(stages) -> str:
    if not isinstance(stages, list):
        return UNKNOWN
    parts = []
    for s in stages:
        gamma = "pruner off" if s["gamma"] is None else f"γ = {_cell(s['gamma'])}"
        extra = f", best val loss {_cell(s['best_val_loss'])}" if "best_val_loss" in s else ""
        warned = (
            " (collapse warning)" if s.get("collapse_warning") or s.get("monitor_collapse_warning") else ""
        )
        parts.append(
            f"stage {_cell(s['index'])}: n = {_cell(s['n'])}, {gamma}, {_cell(s['epochs'])} epochs, "
            f"{_cell(s['steps'])} steps{extra}{warned}"
        )
    return "; ".join(parts)


def _training(card: dict) -> list[str]:
    t, p, src = card["training"], card["provenance"], card["source"]
    origin = src.get("original", src)  # a re-export: the checkpoint the first export read
    data, sched, pos = t["data"], t["schedule"], t["position"]
    if isinstance(sched, dict):
        schedule = (
            f"{_cell(sched['epochs_per_stage'])} epochs a stage × {_cell(sched['steps_per_epoch'])} "
            f"steps of {_cell(sched['batch_size'])} images; {_cell(sched['total_steps'])} steps in all "
            f"up to these weights"
        )
    else:
        schedule = UNKNOWN
    where = ", ".join(f"{k} {_cell(pos[k])}" for k in ("stage", "n", "epoch", "step", "val_loss") if k in pos)
    rows = [
        ("method", _cell(t["method"])),
        ("stages trained", _stages(t["stages"])),
        ("stages of the run", _cell(t.get("run_stages", UNKNOWN))),
        (
            "data",
            (
                f"{_cell(data['dataset'])} at {_cell(data.get('root', UNKNOWN))}: "
                f"{_cell(data['train_images'])} training, {_cell(data['val_images'])} validation images"
            ),
        ),
        ("schedule", schedule),
        ("seed", _cell(t.get("seed", UNKNOWN))),
        ("checkpoint", f"{_cell(origin['checkpoint'])} ({_cell(origin['layout'])} layout): {where}"),
        ("run folder", _cell(origin["run_folder"])),
        (
            "versions",
            (
                f"adam_ext {_cell(p['adam_ext'])}, torch {_cell(p['torch'])}, "
                f"Python {_cell(p['python'])}, {_cell(p['world_size'])} process(es)"
            ),
        ),
        ("git commit", _cell(p["git_commit"])),
    ]
    if "original" in src:
        carried = f" (its encoder: {_cell(src['card_encoder'])})" if "card_encoder" in src else ""
        rows.append(
            (
                "exported from",
                (
                    f"{_cell(src['checkpoint'])}, whose card "
                    f"{_cell(src.get('card', UNKNOWN))} this one carries on{carried}"
                ),
            )
        )
    note = [f"*{markdown_text(t['note'])}.*", ""] if "note" in t else []
    return ["## How they were made", ""] + note + _table(rows)


def _monitors(card: dict) -> list[str]:
    m = card["monitors"]
    lines = ["## Monitors", ""]
    if not isinstance(m["values"], dict):
        return lines + [f"{UNKNOWN}: {markdown_text(m.get('note', 'not recorded'))}.", ""]
    when = "on these weights" if m["of_these_weights"] is True else "last before these weights"
    measured = (
        f"Measured {when} (stage {_cell(m['stage'])}, epoch {_cell(m['epoch'])}, "
        f"step {_cell(m['step'])}) on the run's validation images, from {_cell(m['source'])}:"
    )
    lines += [measured, "", "| monitor | value | meaning |", "|---|---|---|"]
    lines += [f"| {markdown_text(k)} | {_cell(v)} | {_MONITORS.get(k, '')} |" for k, v in m["values"].items()]
    return lines + [""]


def _loading(card: dict) -> list[str]:
    lines = ["## Loading", "", "From the folder that holds the file:", ""]
    for library, code in card["load"].items():
        heading = _LIBRARIES.get(library, markdown_text(library))
        lines += [f"### {heading}", "", markdown_fence(code.rstrip("\n"), "python"), ""]
    return lines


def render_card(card: dict) -> str:
    """The Markdown text of a model card: the weights, how they were made, monitors, loading
    snippets and the resolved configuration (folded). Everything comes from ``card``, escaped."""
    w, t, c = card["weights"], card["training"], card["created"]
    library = _LIBRARIES.get(w["format"], _cell(w["format"]))
    summary = (
        f"{_cell(w['arch'])} {_cell(w['encoder'])} encoder trunk, pretrained with "
        f"{_cell(t['method'])}, exported for {library} by {_cell(c['by'])} "
        f"(adam_ext {_cell(c['adam_ext'])}) at {_cell(c['at'])}."
    )
    lines = [
        f"# Model card: {markdown_text(w['file'])}",
        "",
        summary,
        "",
        f"This file is rendered from {markdown_text(str(w['file']) + '.card.json')}, the card's source.",
        "",
    ]
    lines += _weights(card) + _training(card) + _monitors(card) + _loading(card)
    lines += ["## Resolved configuration", ""]
    if isinstance(t["config"], dict):
        lines += [
            "<details><summary>the pretraining configuration, as the checkpoint records it</summary>",
            "",
            markdown_fence(_json(t["config"]), "json"),
            "",
            "</details>",
            "",
        ]
    else:
        lines += [f"{UNKNOWN}.", ""]
    return "\n".join(lines)
