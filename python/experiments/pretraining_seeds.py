"""The pretraining-seed study: the paper's claims measured across pretraining seeds, at the demo's scale.

Every comparison before this one rested on one pretraining run per method, so its p-values measured
fine-tuning seeds only. Here each method is pretrained from several seeds and every run is measured
the same way, against random initialisation (the very weights each run starts from, so the
comparison is paired by seed):

* Eve locality on the synthetic test split: 1-NN across scales (a patch's nearest neighbour among
  the patches of the other scales shows the same landmark) and the margin (mean cosine of the same
  landmark across scales minus that of different landmarks);
* Eve compositionality: cosine of a patch's embedding with the mean of its n x n parts' (n = 2, 3, 4);
* the landmark k-NN monitor at the scales of n = 0 and n = 4 (the same patches for every run);
* frozen 16-shot segmentation (heart + clavicles on the synthetic SCR layout, the demo's converged
  frozen recipe), 3 fine-tuning seeds, test mean Dice (their mean is the run's number).

Plans (``--plan``, several allowed; runs shared between plans are made once):

``main``       Adam (n = 0, 2, 4; gamma = 0.8 at n > 0; stages chained from the last state) and
               MoCo v2 (n = 0 only, no pruner, the same epochs in all) x ``--seeds`` (default 0-4),
               and random initialisation of the same seeds.
``shortcuts``  Adam pretrained on phantoms without one film feature (markers, electrodes,
               collimation, exposure variation) and without all four, x the first 3 seeds; measured
               on the full phantoms' test split.
``gamma``      Adam with gamma 0.7, 0.9 and none (0.8 is main's) x the first 3 seeds.
``stage_init`` Adam with stages chained from the best weights instead of the last state (3 seeds).
``budget``     Adam with 3 and 10 times the epochs a stage (3 seeds; the 10x runs come last).

The ablations (all but ``main``) measure locality, compositionality and the k-NN monitor only.

Resumable and idempotent: a run's measures are written to ``OUT/measures/<run>.json`` when complete
and reused; an unfinished pretraining resumes. ``--table`` only gathers what exists into
``OUT/study.json`` and ``OUT/study.md`` (means +- std over pretraining seeds, paired t-tests and effect
sizes). Everything runs on one CPU thread by default (``--threads``).

Example (main plan at the demo's scale: about 2.5 hours on one core of the 2-core machine)::

    nohup python python/experiments/pretraining_seeds.py --out runs/study --plan main > study.log 2>&1 &
    python python/experiments/pretraining_seeds.py --out runs/study --table
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from adam_ext.checkpoints import atomic_save, atomic_write_json, atomic_write_text
from adam_ext.data.synthetic import SyntheticDataset, generate
from adam_ext.downstream import FinetuneConfig, finetune
from adam_ext.eve.compositionality import part_whole_similarity, sample_patches
from adam_ext.eve.embed import Embedder
from adam_ext.eve.locality import embed_in_batches, landmark_patches, locality_metrics
from adam_ext.pretrain import initial_model, knn_at_scales, pretrain
from adam_ext.pretrain.config import load_config

#: The data of every run: the demo's 800 phantoms of 256 px (seed 0), the same for every pretraining seed.
DATA = {"n": 800, "size": 256, "seed": 0}
FEATURES = ("markers", "electrodes", "collimation", "exposure_variation")
#: Frozen 16-shot segmentation: the demo's converged frozen recipe (Makefile DEMO_FROZEN).
SEGMENTATION = {
    "task": "seg",
    "dataset": "scr",
    "masks": ["heart", "left clavicle", "right clavicle"],
    "arch": "resnet18",
    "size": 64,
    "shots": 16,
    "runs": 3,
    "seed": 0,
    "epochs": 150,
    "patience": 40,
    "batch_size": 4,
    "lr": 1e-3,
    "workers": 0,
    "freeze_encoder": True,
    "device": "cpu",
    "save_weights": False,
}
LOCALITY = {"images": 60, "size": 64, "seed": 0}
COMPOSITIONALITY = {"patches": 100, "grids": (2, 3, 4), "fraction": 0.5, "size": 64, "seed": 0}
PLANS = ("main", "shortcuts", "gamma", "stage_init", "budget")
#: Overrides of every pretraining after the study's own (``--smoke`` fills it).
PRETRAIN_EXTRA: list[str] = []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Example") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="folder of the runs, measures and study.*")
    p.add_argument("--plan", action="append", choices=PLANS, default=[], help="what to run (repeatable)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="pretraining seeds of the main plan (default 0-4)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--table", action="store_true", help="only gather the existing measures into study.*")
    p.add_argument("--dry-run", action="store_true", help="list the runs of the plans and stop")
    p.add_argument(
        "--pretrained-only",
        action="store_true",
        help="leave the random initialisations to another process of the same --out",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny version of everything (48 phantoms, 1 epoch a stage, 2 fine-tuning epochs): "
        "checks the pipeline in a minute, measures nothing",
    )
    return p


def smoke() -> None:
    """Shrinks every protocol constant to a check of the pipeline (``--smoke``, the tests)."""
    DATA.update(n=48, size=64)
    SEGMENTATION.update(shots=4, runs=1, epochs=2, patience=0)
    LOCALITY.update(images=6, size=32)
    COMPOSITIONALITY.update(patches=6, size=32)
    PRETRAIN_EXTRA[:] = [
        "optim.epochs=1",
        "optim.batch_size=8",
        "model.K=16",
        "data.synthetic_n=48",
        "data.view_size=32",
        "monitor.knn_images=2",
        "optim.warmup_epochs=0",
    ]


# ------------------------------------------------------------------------------------------ runs


def run_specs(plans, seeds: list[int]) -> list[dict]:
    """The runs of ``plans`` in the order of :data:`PLANS` (random initialisations first):
    ``{name, method, seed, overrides, data, segmentation}`` (``data``: features switched off;
    ``segmentation``: the main plan's runs are also fine-tuned, the ablations measure locality only)."""
    few = seeds[:3]
    specs = []

    def add(name, method, seed, overrides=(), data=()):
        if name not in {s["name"] for s in specs}:
            specs.append(
                {
                    "name": name,
                    "method": method,
                    "seed": seed,
                    "overrides": list(overrides),
                    "data": list(data),
                    "segmentation": plan == "main" or method == "random",
                }
            )

    for plan in sorted(set(plans), key=PLANS.index):
        for s in seeds if plan == "main" else few:
            if plan == "main":
                add(f"random_s{s}", "random", s)
                add(f"adam_s{s}", "adam", s)
                add(f"mocov2_s{s}", "mocov2", s)
            elif plan == "gamma":
                for gamma in ("0.7", "0.9", "null"):
                    add(f"adam_gamma{gamma.replace('null', 'none')}_s{s}", "adam", s, [f"gamma={gamma}"])
            elif plan == "shortcuts":
                for feature in FEATURES:
                    add(f"adam_no_{feature}_s{s}", "adam", s, data=[feature])
                add(f"adam_no_shortcuts_s{s}", "adam", s, data=list(FEATURES))
                add(f"random_s{s}", "random", s)
            elif plan == "budget":
                for factor in (3, 10):
                    add(f"adam_x{factor}_s{s}", "adam", s, [f"optim.epochs={10 * factor}"])
            elif plan == "stage_init":
                add(f"adam_best_s{s}", "adam", s, ["stage_init=best"])
    return sorted(
        specs, key=lambda r: (r["method"] != "random", "x10" in r["name"])
    )  # stable: plan order kept


def data_root(out: Path, without: list[str]) -> Path:
    """The phantoms of the study (made once): the full ones, or those without the ``without`` features."""
    name = "synthetic" if not without else "synthetic_no_" + "_".join(sorted(without))
    root = out / "data" / name
    if not (root / "synthetic.json").is_file():
        generate(
            root,
            DATA["n"],
            size=DATA["size"],
            seed=DATA["seed"],
            workers=1,
            progress=False,
            **{feature: False for feature in without},
        )
    return root


def pretrain_config(out: Path, spec: dict, data: Path):
    """The demo preset with the study's method, seed and overrides (one process, no loader worker)."""
    overrides = [
        f"seed={spec['seed']}",
        f"out={out / 'runs' / spec['name']}",
        f"data.root={data}",
        "data.workers=0",
        "gamma=0.8",
        "stage_init=last",
        "tensorboard=false",
        *PRETRAIN_EXTRA,
        *spec["overrides"],
    ]
    if spec["method"] == "mocov2":
        epochs = load_config(None, overrides, preset="demo").optim.epochs
        overrides += ["stages=[0]", "gamma=null", "gamma_n0=null", f"optim.epochs={3 * epochs}"]
    return load_config(None, overrides, preset="demo")


def initial_weights(out: Path, spec: dict, data: Path) -> Path:
    """The query trunk a run of seed ``spec['seed']`` starts from, as a torchvision state dict file."""
    path = out / "runs" / spec["name"] / "initial_trunk.pt"
    if not path.is_file():
        cfg = pretrain_config(out, {**spec, "method": "adam", "overrides": []}, data)
        trunk = initial_model(cfg).encoder_q
        state = {k: v for k, v in trunk.state_dict().items() if not k.startswith("fc.")}
        atomic_save(state, path)
    return path


# -------------------------------------------------------------------------------------- measures


def locality(weights: Path, test) -> dict:
    patches = landmark_patches(test, images=LOCALITY["images"], seed=LOCALITY["seed"])
    embedder = Embedder(str(weights), arch="resnet18", size=LOCALITY["size"], device="cpu")
    emb = embed_in_batches(embedder.global_embeddings, patches.patches, progress=False)
    m = locality_metrics(emb, patches.landmark, patches.level, k=(1,), image=patches.image)
    return {
        "knn1": m["knn"][1],
        "knn1_other_images": m["knn_other_images"][1],
        "margin": m["gap"],
        "same": m["same"],
        "different": m["different"],
        "silhouette": m["silhouette"],
    }


def compositionality(weights: Path, test) -> dict:
    c = COMPOSITIONALITY
    patches = sample_patches(test, c["patches"], fraction=c["fraction"], source="random", seed=c["seed"])
    embedder = Embedder(str(weights), arch="resnet18", size=c["size"], device="cpu")
    sims = part_whole_similarity(patches, embedder.global_embeddings, c["grids"], progress=False)
    return {f"grid{n}": float(np.mean(v)) for n, v in sims.items()}


def knn_monitor(weights: Path, out: Path, data: Path) -> dict:
    """The landmark k-NN monitor at n = 0's and n = 4's scale, the same patches for every run (seed 0)."""
    cfg = load_config(
        None,
        [
            f"data.root={data}",
            "stages=[0,4]",
            "seed=0",
            "monitor.knn_images=32",
            f"out={out / 'unused'}",
            *PRETRAIN_EXTRA,
        ],
        preset="demo",
    )
    model = cfg.model.build()
    trunk = torch.load(weights, map_location="cpu", weights_only=True)
    model.encoder_q.load_state_dict(trunk, strict=False)  # the trunk; fc (the head) is not used by the k-NN
    return {f"knn_n{n}": v.get("knn_landmark") for n, v in knn_at_scales(cfg, model.encoder_q).items()}


def segmentation(init: Path, out: Path, data: Path) -> dict:
    cfg = FinetuneConfig(**{**SEGMENTATION, "root": str(data / "scr"), "init": str(init), "out": str(out)})
    path = out / "results.json"
    saved = json.loads(path.read_text()) if path.is_file() else finetune(cfg, progress=False, label=out.name)
    dice = [r["test"]["mean_dice"] for r in saved["runs"]]
    return {"frozen_dice": float(np.mean(dice)), "frozen_dice_per_seed": dice}


def trunk_of(checkpoint: Path, path: Path) -> Path:
    """The query trunk of a pretraining checkpoint as a torchvision state dict file (what every measure reads)."""
    if not path.is_file():
        model = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
        atomic_save(
            {
                k[len("encoder_q.") :]: v
                for k, v in model.items()
                if k.startswith("encoder_q.") and not k.startswith("encoder_q.fc.")
            },
            path,
        )
    return path


def measure_run(out: Path, spec: dict, full: Path) -> dict:
    """Pretrains (unless random) and measures one run; its measures file makes it done."""
    done = out / "measures" / f"{spec['name']}.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.time()
    folder = out / "runs" / spec["name"]
    record = {
        "name": spec["name"],
        "method": spec["method"],
        "seed": spec["seed"],
        "overrides": spec["overrides"],
        "pretrained_without": spec["data"],
    }
    if spec["method"] == "random":
        weights = initial_weights(out, spec, full)
    else:
        data = data_root(out, spec["data"])
        cfg = pretrain_config(out, spec, data)
        if not (folder / "summary.json").is_file():
            summary = pretrain(cfg, resume="auto", progress=False)
            if summary["interrupted"]:
                raise RuntimeError(f"pretraining {folder} stopped before its end; run again to resume it")
        weights = trunk_of(folder / "best.pt", folder / "final_trunk.pt")
        summary = json.loads((folder / "summary.json").read_text())
        record["pretraining"] = {
            "stages": [
                {k: s[k] for k in ("n", "gamma", "best_val_loss", "seconds", "collapse_warning")}
                for s in summary["stages"]
            ],
            "config": cfg.to_dict(),
        }
    test = SyntheticDataset(full, split="test")
    record["locality"] = locality(weights, test)
    record["compositionality"] = compositionality(weights, test)
    record["knn_monitor"] = knn_monitor(weights, out, full)
    if spec["segmentation"]:
        record["segmentation"] = segmentation(weights, out / "segmentation" / spec["name"], full)
    record["seconds"] = round(time.time() - t0, 1)
    record["machine"] = machine()
    atomic_write_json(done, record)
    return record


def machine() -> dict:
    import platform

    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "date": time.strftime("%Y-%m-%d"),
    }


# -------------------------------------------------------------------------------------- the table

#: (measure key, label) in table order; each is a number per run.
MEASURES = [
    ("locality.margin", "locality margin"),
    ("locality.knn1", "1-NN across scales"),
    ("locality.knn1_other_images", "1-NN, other images"),
    ("compositionality.grid2", "compositionality 2x2"),
    ("compositionality.grid4", "compositionality 4x4"),
    ("knn_monitor.knn_n0", "k-NN monitor (n=0 scale)"),
    ("knn_monitor.knn_n4", "k-NN monitor (n=4 scale)"),
    ("segmentation.frozen_dice", "frozen 16-shot Dice"),
]


def value(record: dict, key: str):
    section, _, name = key.partition(".")
    v = record.get(section, {}).get(name)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def paired(a: dict, b: dict, key: str) -> dict:
    """Paired comparison of two groups {seed: record} on ``key``: n, mean difference, t-test p, Cohen's d_z."""
    from scipy import stats

    seeds = sorted(
        s for s in set(a) & set(b) if value(a[s], key) is not None and value(b[s], key) is not None
    )
    diff = np.array([value(a[s], key) - value(b[s], key) for s in seeds])
    if len(diff) < 2:
        return {"n": len(diff), "diff": float(diff.mean()) if len(diff) else None, "p": None, "d": None}
    sd = diff.std(ddof=1)
    p = (
        float(stats.ttest_rel([value(a[s], key) for s in seeds], [value(b[s], key) for s in seeds]).pvalue)
        if sd > 0
        else (1.0 if diff.mean() == 0 else 0.0)
    )
    return {
        "n": len(diff),
        "diff": float(diff.mean()),
        "p": p,
        "d": float(diff.mean() / sd) if sd > 0 else None,
    }


def summary(group: dict, key: str) -> dict:
    values = [value(r, key) for r in group.values() if value(r, key) is not None]
    return {
        "n": len(values),
        "mean": float(np.mean(values)) if values else None,
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
    }


def groups(records: list[dict]) -> dict[str, dict[int, dict]]:
    """{group name: {seed: record}}: the run's name without its seed suffix."""
    out: dict[str, dict[int, dict]] = {}
    for r in records:
        out.setdefault(r["name"].rsplit("_s", 1)[0], {})[r["seed"]] = r
    return out


def _fmt(s: dict) -> str:
    if s["mean"] is None:
        return "—"
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["std"] is not None else f"{s['mean']:.3f}"


def _cmp(c: dict) -> str:
    if c["p"] is None:
        return "—"
    d = f", d {c['d']:+.2f}" if c["d"] is not None else ""
    return f"{c['diff']:+.3f} (p {c['p']:.2g}{d})"


def study_tables(records: list[dict]) -> tuple[dict, str]:
    g = groups(records)
    result = {
        "groups": {name: {str(s): r for s, r in runs.items()} for name, runs in g.items()},
        "summaries": {},
        "comparisons": {},
    }
    lines = [
        "# Pretraining-seed study",
        "",
        "Each cell: mean ± std over pretraining seeds (n per group in the header). Comparisons are paired by "
        "pretraining seed (the same initial weights): mean difference, paired t-test p, Cohen's d_z. "
        "Random: the very initial weights of that seed's runs. See the module docstring of "
        "`python/experiments/pretraining_seeds.py` for the protocol.",
        "",
    ]
    names = sorted(g, key=lambda n: (n != "random", n != "adam", n != "mocov2", n))
    lines += [
        "| measure | " + " | ".join(f"{n} (n={len(g[n])})" for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for key, label in MEASURES:
        cells = []
        for n in names:
            s = summary(g[n], key)
            result["summaries"].setdefault(n, {})[key] = s
            cells.append(_fmt(s))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    pairs = [
        (a, b)
        for a in names
        for b in ("random", "mocov2", "adam")
        if a != b
        and b in g
        and a != "random"
        and not (a == "mocov2" and b == "adam")
        and not (a != "adam" and b == "mocov2")
    ]
    if pairs:
        lines += [
            "",
            "Paired differences (first − second), over the pretraining seeds both have:",
            "",
            "| comparison | n | " + " | ".join(label for _, label in MEASURES) + " |",
            "|---" * (len(MEASURES) + 2) + "|",
        ]
        for a, b in pairs:
            cells, n = [], 0
            for key, _ in MEASURES:
                c = paired(g[a], g[b], key)
                result["comparisons"].setdefault(f"{a} - {b}", {})[key] = c
                n = max(n, c["n"])
                cells.append(_cmp(c))
            lines.append(f"| {a} − {b} | {n} | " + " | ".join(cells) + " |")
    return result, "\n".join(lines) + "\n"


def write_table(out: Path) -> str:
    records = [json.loads(p.read_text()) for p in sorted((out / "measures").glob("*.json"))]
    result, text = study_tables(records)
    atomic_write_json(out / "study.json", result)
    atomic_write_text(out / "study.md", text)
    return text


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(
            f"pretraining_seeds: error: --seeds must be comma-separated ints, got {args.seeds!r}",
            file=sys.stderr,
        )
        return 2
    if args.table:
        print(write_table(out))
        return 0
    if not args.plan:
        print("pretraining_seeds: error: name at least one --plan (or --table)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.smoke:
        smoke()
    specs = run_specs(args.plan, seeds)
    if args.pretrained_only:
        specs = [s for s in specs if s["method"] != "random"]
    if args.dry_run:
        print(
            "\n".join(
                f"{s['name']}: {s['method']} seed {s['seed']} {s['overrides']} without {s['data']}"
                for s in specs
            )
        )
        return 0
    full = data_root(out, [])
    for i, spec in enumerate(specs):
        t0 = time.time()
        record = measure_run(out, spec, full)
        dice = record.get("segmentation", {}).get("frozen_dice")
        print(
            f"[{time.strftime('%H:%M:%S')}] {i + 1}/{len(specs)} {spec['name']}: margin "
            f"{record['locality']['margin']:.3f}, 1-NN {record['locality']['knn1']:.3f}"
            + (f", frozen Dice {dice:.3f}" if dice is not None else "")
            + f" ({time.time() - t0:.0f} s)",
            flush=True,
        )
        write_table(out)
    print(write_table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
