"""The Markdown form of a model card (``OUT.card.md``), rendered from its JSON (:mod:`.card`) alone."""

from __future__ import annotations

import json

from .card import UNKNOWN

__all__ = ["render_card"]

#: What each monitor measures (adam_ext.monitors), for the card's readers.
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
_LIBRARIES = {"torchvision": "torchvision", "smp": "segmentation-models-pytorch", "timm": "timm"}


def _cell(value) -> str:
    """A value as table cell text: numbers to 4 significant digits, lists joined, ``|`` escaped."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, list):
        text = ", ".join(_cell(v) for v in value)
    elif value is None:
        text = "none"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows) -> list[str]:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in rows]
    return lines + [""]


def _size(n) -> str:
    return f"{n / 2**20:.1f} MiB" if isinstance(n, int) else UNKNOWN


def _weights(card: dict) -> list[str]:
    w, i = card["weights"], card["input"]
    encoder = {"query": "query encoder (`encoder_q`, the one the paper fine-tunes)",
               "key": "momentum key encoder (`encoder_k`)"}.get(w["encoder"], w["encoder"])
    normalise = (f"(x - mean) / std on intensities in [0, 1]; mean {_cell(i['mean'])}, std {_cell(i['std'])}"
                 if i["mean"] != UNKNOWN else UNKNOWN)
    lines = ["## The weights", ""] + _table([
        ("file", f"`{w['file']}` ({_size(w['bytes'])})"),
        ("SHA-256", f"`{w['sha256']}`"),
        ("architecture", f"{w['arch']}: the ResNet trunk, without `fc` (a new head is yours)"),
        ("encoder", encoder),
        ("export format", (f"{w['format']} (verified to load in {_LIBRARIES.get(w['format'], w['format'])}; "
                           "the three formats share the key names)")),
        ("tensors", f"{w['tensors']}, holding {w['parameters']:,} parameters and the BatchNorm statistics"),
        ("input channels", f"{i['channels']} (grey X-rays are repeated to 3 channels before normalising)"
         if i["mean"] != UNKNOWN else i["channels"]),
        ("pretraining view size", f"{i['size']} px" if i["size"] != UNKNOWN else UNKNOWN),
        ("normalisation", normalise),
    ])
    lines += ["Layers (state dict keys by their first name; the JSON card lists every key and shape):", "",
              "| layer | tensors | parameters |", "|---|---|---|"]
    lines += [f"| `{g['name']}` | {g['tensors']} | {g['parameters']:,} |" for g in w["layers"]]
    return lines + [""]


def _stages(stages) -> str:
    if not isinstance(stages, list):
        return UNKNOWN
    parts = []
    for s in stages:
        gamma = "pruner off" if s["gamma"] is None else f"γ = {_cell(s['gamma'])}"
        extra = f", best val loss {_cell(s['best_val_loss'])}" if "best_val_loss" in s else ""
        warned = " (collapse warning)" if s.get("collapse_warning") or s.get("monitor_collapse_warning") else ""
        parts.append(f"stage {s['index']}: n = {s['n']}, {gamma}, {s['epochs']} epochs, {s['steps']} steps"
                     f"{extra}{warned}")
    return "; ".join(parts)


def _training(card: dict) -> list[str]:
    t, p, src = card["training"], card["provenance"], card["source"]
    origin = src.get("original", src)  # a re-export: the checkpoint the first export read
    data, sched, pos = t["data"], t["schedule"], t["position"]
    if isinstance(sched, dict):
        schedule = (f"{sched['epochs_per_stage']} epochs a stage × {sched['steps_per_epoch']} steps of "
                    f"{sched['batch_size']} images; {sched['total_steps']} steps in all up to these weights")
    else:
        schedule = UNKNOWN
    where = ", ".join(f"{k} {_cell(pos[k])}" for k in ("stage", "n", "epoch", "step", "val_loss") if k in pos)
    rows = [
        ("method", t["method"]),
        ("stages trained", _stages(t["stages"])),
        ("stages of the run", t.get("run_stages", UNKNOWN)),
        ("data", (f"{data['dataset']} at `{data.get('root', UNKNOWN)}`: {data['train_images']} training, "
                  f"{data['val_images']} validation images")),
        ("schedule", schedule),
        ("seed", t.get("seed", UNKNOWN)),
        ("checkpoint", f"`{origin['checkpoint']}` ({origin['layout']} layout): {where}"),
        ("run folder", origin["run_folder"]),
        ("versions", (f"adam_ext {p['adam_ext']}, torch {p['torch']}, Python {p['python']}, "
                      f"{p['world_size']} process(es)")),
        ("git commit", p["git_commit"]),
    ]
    if "original" in src:
        rows.append(("exported from", f"`{src['checkpoint']}`, whose card `{src['card']}` this one carries on"))
    note = [f"*{t['note']}.*", ""] if "note" in t else []
    return ["## How they were made", ""] + note + _table(rows)


def _monitors(card: dict) -> list[str]:
    m = card["monitors"]
    lines = ["## Monitors", ""]
    if not isinstance(m["values"], dict):
        return lines + [f"{UNKNOWN}: {m.get('note', 'not recorded')}.", ""]
    when = "on these weights" if m["of_these_weights"] is True else "last before these weights"
    measured = (f"Measured {when} (stage {m['stage']}, epoch {m['epoch']}, step {m['step']}) on the run's "
                f"validation images, from `{m['source']}`:")
    lines += [measured, "", "| monitor | value | meaning |", "|---|---|---|"]
    lines += [f"| {k} | {_cell(v)} | {_MONITORS.get(k, '')} |" for k, v in m["values"].items()]
    return lines + [""]


def _loading(card: dict) -> list[str]:
    lines = ["## Loading", "", "From the folder that holds the file:", ""]
    for library, code in card["load"].items():
        lines += [f"### {_LIBRARIES.get(library, library)}", "", "```python", code.rstrip("\n"), "```", ""]
    return lines


def render_card(card: dict) -> str:
    """The Markdown text of a model card: the weights, how they were made, monitors, loading
    snippets and the resolved configuration (folded). Everything comes from ``card``."""
    w, t, c = card["weights"], card["training"], card["created"]
    summary = (f"{w['arch']} {w['encoder']} encoder trunk, pretrained with {t['method']}, exported for "
               f"{_LIBRARIES.get(w['format'], w['format'])} by {c['by']} (adam_ext {c['adam_ext']}) at {c['at']}.")
    lines = [f"# Model card: {w['file']}", "", summary, "",
             f"This file is rendered from `{w['file']}.card.json`, the card's source.", ""]
    lines += _weights(card) + _training(card) + _monitors(card) + _loading(card)
    lines += ["## Resolved configuration", ""]
    if isinstance(t["config"], dict):
        lines += ["<details><summary>the pretraining configuration, as the checkpoint records it</summary>", "",
                  "```json", json.dumps(t["config"], indent=2), "```", "", "</details>", ""]
    else:
        lines += [f"{UNKNOWN}.", ""]
    return "\n".join(lines)
