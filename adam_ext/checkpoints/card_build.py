"""Building a model card (:mod:`.card`) from a loaded checkpoint and the run folder beside it.

What each field comes from:

* the checkpoint (an ``adam_ext.pretrain`` file): the resolved ``config``, where the weights were
  saved (``stage``, ``epoch``, ``step``, ``val_loss``), ``versions`` (with ``git_commit`` since
  adam_ext recorded it), ``world_size`` and ``data`` (image counts and steps per epoch, likewise);
* the run folder — the checkpoint's folder, or its parent for ``stage1_n2/best.pt`` and
  ``snapshots/...``, when its ``config.yaml`` is the checkpoint's run (same seed, stages, model
  and optimiser): the monitors of ``metrics.jsonl`` and the per-stage results of ``summary.json``;
  without one, a ``last.pt``'s own ``summary``;
* the weights themselves: keys, shapes, parameter count and input channels;
* :class:`~adam_ext.data.views.ViewConfig`: the normalisation the configured views applied.

A source that is itself an exported file with a card that :func:`~.card.read_card` accepted (it
parses, and the weights bear out its claims) passes its card on (``input``, ``training``,
``monitors``, ``provenance``): re-exporting for another library keeps the history. A card that was
ignored is never carried on: the new card then says :data:`~.card.UNKNOWN`.
"""

from __future__ import annotations

import datetime
import os
import warnings

import torch

from .. import __version__
from .._util.runfolder import read_jsonl
from .card import CARD_KIND, CARD_VERSION, UNKNOWN, ModelCardWarning, card_paths, layer_counts
from .layouts import Pretrained

__all__ = ["build_card"]

#: Config sections that identify a run: a run folder whose config.yaml agrees on them is the checkpoint's.
_RUN_IDENTITY = ("seed", "stages", "gamma", "gamma_n0", "model", "optim")


def build_card(pre: Pretrained, trunk: dict, *, fmt: str, encoder: str, weights_file: str, load) -> dict:
    """The model card (a JSON-ready dict, see :mod:`.card`) of an exported trunk.

    Args:
        pre (Pretrained): the checkpoint the trunk comes from.
        trunk (dict[str, Tensor]): the exported state dict (torchvision key names, no ``fc.*``).
        fmt (str): the export format (``torchvision``, ``smp``, ``timm``, ``monai``, ``safetensors``).
        encoder (str): ``"q"`` or ``"k"``, the encoder of ``pre`` exported.
        weights_file (str): the weights' file name (the snippets load it from the card's folder).
        load (Callable[[dict], dict[str, str]]): the card's ``input`` section -> ``{library: Python
            snippet}`` that loads the file (and normalises as the pretraining did).

    Returns:
        dict: ``kind``, ``version``, ``weights``, ``input``, ``load``, ``source``, ``training``,
        ``monitors``, ``provenance``, ``created``; unknown fields are :data:`~.card.UNKNOWN`.
        ``weights.sha256`` and ``weights.bytes`` are None: the file is not written yet, and its
        writer sets them as it writes it.
    """
    inherited = pre.card if pre.source == "torchvision" else None
    which = {"q": "query", "k": "key"}[encoder]
    if inherited is not None:  # an exported file: its trunk is the encoder its own card names
        which = inherited["weights"].get("encoder", which)
    run = _run_folder(pre)
    source_input = inherited["input"] if inherited is not None else _input(pre, trunk)
    card = {
        "kind": CARD_KIND,
        "version": CARD_VERSION,
        "weights": {
            "file": weights_file,
            "sha256": None,
            "bytes": None,
            "format": fmt,
            "encoder": which,
            "arch": pre.arch,
            **layer_counts(trunk),
        },
        "input": source_input,
        "load": dict(load(source_input)),
        "source": {
            "checkpoint": os.path.abspath(pre.path),
            "layout": pre.source,
            "run_folder": run or UNKNOWN,
        },
        "training": _training(pre, run),
        "monitors": _monitors(pre, run),
        "provenance": _provenance(pre),
        "created": {
            "by": "adam export",
            "adam_ext": __version__,
            "torch": str(torch.__version__),
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    if inherited is not None:
        for section in ("training", "monitors", "provenance"):
            card[section] = inherited[section]
        card["source"]["card"] = os.path.abspath(card_paths(pre.path)[0])
        card["source"]["card_encoder"] = inherited.get("checked", {}).get("encoder", UNKNOWN)  # its verdict
        card["source"]["original"] = inherited["source"].get(
            "original", inherited["source"]
        )  # the first export's
    return card


def _input(pre: Pretrained, trunk: dict) -> dict:
    """Channels (from ``conv1``), and the view size and normalisation of the pretraining views."""
    out = {"channels": int(trunk["conv1.weight"].shape[1]), "size": UNKNOWN, "mean": UNKNOWN, "std": UNKNOWN}
    data = (pre.config or {}).get("data") if pre.source == "adam_ext" else None
    if not isinstance(data, dict):
        return out
    from ..data.views import ViewConfig

    views = data.get("views") if isinstance(data.get("views"), dict) else {}
    try:
        config = ViewConfig(
            size=data.get("view_size"),
            **{k: tuple(v) if isinstance(v, list) else v for k, v in views.items()},
        )
    except (TypeError, ValueError):  # a config of another adam_ext version: keep what it states
        return {
            **out,
            **{k: views[k] for k in ("mean", "std") if k in views},
            "size": data.get("view_size", UNKNOWN),
        }
    return {**out, "size": config.size, "mean": list(config.mean), "std": list(config.std)}


def _run_folder(pre: Pretrained) -> str | None:
    """The run folder of an ``adam_ext`` checkpoint: its folder or the parent, holding metrics.jsonl and
    a config.yaml of the same run."""
    if pre.source != "adam_ext" or not isinstance(pre.config, dict):
        return None
    import yaml

    here = os.path.dirname(os.path.abspath(pre.path))
    for folder in (here, os.path.dirname(here)):
        config = os.path.join(folder, "config.yaml")
        if not (os.path.isfile(config) and os.path.isfile(os.path.join(folder, "metrics.jsonl"))):
            continue
        try:
            with open(config, encoding="utf-8") as f:
                saved = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(saved, dict) and all(saved.get(k) == pre.config.get(k) for k in _RUN_IDENTITY):
            return folder
    return None


def _position(pre: Pretrained) -> tuple[int | None, int | None]:
    """(stage index, steps of the stage done) where the checkpoint was saved, None where unrecorded."""
    stage = pre.meta.get("stage")
    index = stage.get("index") if isinstance(stage, dict) else None
    step = pre.meta.get("step")
    return (index if isinstance(index, int) else None), (step if isinstance(step, int) else None)


def _stage_results(pre: Pretrained, run: str | None) -> dict[int, dict]:
    """Per-stage results ({stage index: summary entry}): summary.json of the run folder, else the
    summary a ``last.pt`` carries."""
    entries = pre.provenance.get("summary")
    if run is not None and os.path.isfile(os.path.join(run, "summary.json")):
        import json

        try:
            with open(os.path.join(run, "summary.json"), encoding="utf-8") as f:
                entries = json.load(f).get("stages")
        except (OSError, ValueError, AttributeError) as err:
            warnings.warn(
                f"{os.path.join(run, 'summary.json')} cannot be read ({err}); the model card leaves "
                f"the per-stage results out",
                ModelCardWarning,
                stacklevel=4,
            )
    entries = entries if isinstance(entries, list) else []
    return {e["stage"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("stage"), int)}


def _get(cfg: dict, *keys):
    """``cfg[k1][k2]...``, or :data:`~.card.UNKNOWN` where a level is missing (a partial config)."""
    for key in keys:
        if not isinstance(cfg, dict) or key not in cfg:
            return UNKNOWN
        cfg = cfg[key]
    return cfg


def _training(pre: Pretrained, run: str | None) -> dict:
    cfg = pre.config
    position = {k: pre.meta.get(k, UNKNOWN) for k in ("epoch", "step")}
    if pre.source != "adam_ext" or not isinstance(cfg, dict):
        return {
            "method": UNKNOWN,
            "stages": UNKNOWN,
            "gamma": UNKNOWN,
            "data": {"dataset": UNKNOWN, "train_images": UNKNOWN, "val_images": UNKNOWN},
            "schedule": UNKNOWN,
            "position": position,
            "config": UNKNOWN,
            "note": f"the {pre.source} checkpoint records no training configuration",
        }
    data = pre.provenance.get("data") if isinstance(pre.provenance.get("data"), dict) else {}
    spe = data.get("steps_per_epoch", UNKNOWN)
    stages = _stages(pre, run, spe)
    steps = [s["steps"] for s in stages] if isinstance(stages, list) else [UNKNOWN]
    index, _ = _position(pre)
    stage = pre.meta.get("stage") if isinstance(pre.meta.get("stage"), dict) else {}
    position.update(
        {
            "stage": index if index is not None else UNKNOWN,
            "n": stage.get("n", UNKNOWN),
            "val_loss": pre.provenance.get("val_loss", UNKNOWN),
            "file": os.path.basename(pre.path),
        }
    )
    return {
        "method": _method(stages) if isinstance(stages, list) else UNKNOWN,
        "stages": stages,
        "run_stages": _get(cfg, "stages"),
        "gamma": _get(cfg, "gamma"),
        "data": {
            "dataset": _get(cfg, "data", "dataset"),
            "root": _get(cfg, "data", "root"),
            "train_images": data.get("train_images", UNKNOWN),
            "val_images": data.get("val_images", UNKNOWN),
        },
        "schedule": {
            "epochs_per_stage": _get(cfg, "optim", "epochs"),
            "steps_per_epoch": spe,
            "batch_size": _get(cfg, "optim", "batch_size"),
            "total_steps": sum(steps) if all(isinstance(s, int) for s in steps) else UNKNOWN,
        },
        "position": position,
        "seed": _get(cfg, "seed"),
        "config": cfg,
    }


def _stages(pre: Pretrained, run: str | None, spe) -> list[dict] | str:
    """The stages these weights went through (the checkpoint's and those before it): n, gamma, epochs
    and steps trained, and the stage's results where the run recorded them."""
    cfg = pre.config
    index, step = _position(pre)
    epochs, planned = _get(cfg, "optim", "epochs"), _get(cfg, "stages")
    if (
        index is None
        or not isinstance(pre.meta.get("epoch"), int)
        or not isinstance(planned, list)
        or not isinstance(epochs, int)
        or index >= len(planned)
    ):
        return UNKNOWN
    results = _stage_results(pre, run)
    stages = []
    for j, n in enumerate(planned[: index + 1]):
        steps = (epochs * spe if isinstance(spe, int) else UNKNOWN) if j < index else step
        gamma = _get(cfg, "gamma" if n > 0 else "gamma_n0")
        entry = {
            "index": j,
            "n": n,
            "gamma": gamma,
            "epochs": epochs if j < index else pre.meta["epoch"],
            "steps": UNKNOWN if steps is None else steps,
        }
        found = results.get(j, {})
        entry.update(
            {
                k: found[k]
                for k in ("best_val_loss", "collapse_warning", "monitor_collapse_warning", "seconds")
                if k in found
            }
        )
        stages.append(entry)
    return stages


def _method(stages: list[dict]) -> str:
    """``MoCo v2``, or ``Adam (MoCo v2 + anatomy decomposer + purposive pruner)`` for what the stages used."""
    parts = ["MoCo v2"]
    if any(s["n"] > 0 for s in stages):
        parts.append("anatomy decomposer")
    if any(s["gamma"] not in (None, UNKNOWN) for s in stages):
        parts.append("purposive pruner")
    return "MoCo v2" if len(parts) == 1 else f"Adam ({' + '.join(parts)})"


def _monitors(pre: Pretrained, run: str | None) -> dict:
    """The monitors of the checkpoint's stage measured last before (ideally at) its step."""
    index, step = _position(pre)
    unknown = {
        "source": UNKNOWN,
        "stage": UNKNOWN,
        "epoch": UNKNOWN,
        "step": UNKNOWN,
        "of_these_weights": UNKNOWN,
        "values": UNKNOWN,
    }
    if pre.source != "adam_ext" or index is None or step is None:
        return {**unknown, "note": f"a {pre.source} checkpoint records no monitors"}
    if run is not None:
        metrics = os.path.join(run, "metrics.jsonl")
        try:
            rows = [
                r
                for r in read_jsonl(metrics)
                if isinstance(r.get("monitor"), dict)
                and r.get("stage") == index
                and isinstance(r.get("step"), int)
                and r["step"] <= step
            ]
        except (OSError, ValueError) as err:
            warnings.warn(
                f"{metrics} cannot be read ({err}); the model card's monitors are unknown",
                ModelCardWarning,
                stacklevel=4,
            )
            rows = []
        if rows:
            row = rows[-1]
            return {
                "source": metrics,
                "stage": index,
                "epoch": row.get("epoch", UNKNOWN),
                "step": row["step"],
                "of_these_weights": row["step"] == step,
                "values": _values(row["monitor"]),
            }
    found = _stage_results(pre, None).get(index)  # a last.pt carries the summary of its finished stages
    if found is not None and isinstance(found.get("monitor"), dict):
        return {
            "source": f"{os.path.abspath(pre.path)} (its summary)",
            "stage": index,
            "epoch": found.get("epochs", UNKNOWN),
            "step": UNKNOWN,
            "of_these_weights": pre.meta.get("epoch") == found.get("epochs"),
            "values": _values(found["monitor"]),
        }
    return {
        **unknown,
        "note": "no monitor measured at this stage (monitor.enabled off) or no run folder beside "
        "the checkpoint",
    }


def _values(monitor: dict) -> dict:
    return {k: v for k, v in monitor.items() if k != "seconds"}


def _provenance(pre: Pretrained) -> dict:
    versions = pre.provenance.get("versions") if isinstance(pre.provenance.get("versions"), dict) else {}
    return {
        **{k: versions.get(k, UNKNOWN) for k in ("adam_ext", "torch", "python", "git_commit")},
        "world_size": pre.provenance.get("world_size", UNKNOWN),
        "checkpoint_version": pre.meta.get("version", UNKNOWN),
    }
