"""python combine.py [FOLDER] — the 10-seed table of the frozen-stem encoder against random initialisation.

Inputs: ``ten_fstem_ft/results.json`` and ``ten_fstem_frozen/results.json`` (``adam finetune seg --runs 10``
outputs, or their per-seed extracts ``fstem_ft.json`` / ``fstem_frozen.json`` kept here) and
``../converged/combined.json`` (random initialisation and the trained-stem Adam encoder, same seeds 0-9,
same recipe). Prints test mean Dice per structure, mean ± sample std, two-sample t-tests
(:func:`adam_ext.downstream.ttest`, :func:`~adam_ext.downstream.summarize`), and writes
``combined.json`` and the per-seed extracts.
"""

import json
import sys
from pathlib import Path

import extracts  # this folder's shared helper

from adam_ext.downstream import summarize, ttest

# the results this script reads and writes: benchmarks/results/learning_curve_cpu/frozen_stem/
HERE = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "learning_curve_cpu" / "frozen_stem"
RUNS = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
KEYS = ["mean_dice", "dice/heart", "dice/left clavicle", "dice/right clavicle"]


def per_seed(mode):
    """{seed: {"val": val mean Dice, "test": {key: value}, "best_epoch": e}} of the frozen-stem runs."""
    rows = extracts.per_seed(RUNS / f"ten_fstem_{mode}" / "results.json", HERE / f"fstem_{mode}.json", KEYS)
    return {int(s): r for s, r in rows.items()}


with open(HERE.parent / "converged" / "combined.json") as f:
    converged = json.load(f)
out = {}
for mode in ("ft", "frozen"):
    new = per_seed(mode)
    seeds = sorted(new)
    print(f"## {mode}: seeds {seeds}")
    for k in KEYS:
        old = converged[mode][k]
        assert old["seeds"] == seeds, (old["seeds"], seeds)
        random, adam = old["random"], old["adam"]
        stem = [new[s]["test"][k] for s in seeds]
        p_random, p_adam = ttest(stem, random)["p"], ttest(stem, adam)["p"]
        shown = "   ".join(
            f"{name} {r['mean']:.3f} ± {r['std']:.3f}"
            for name, r in (
                ("random", summarize(random)),
                ("trained stem", summarize(adam)),
                ("frozen stem", summarize(stem)),
            )
        )
        print(f"{k:20s} {shown}   p vs random {p_random:.2g}   p vs trained stem {p_adam:.2g}")
        out.setdefault(mode, {})[k] = {
            "seeds": seeds,
            "random": random,
            "trained_stem": adam,
            "frozen_stem": stem,
            "p_vs_random": p_random,
            "p_vs_trained_stem": p_adam,
        }
    print("validation mean Dice, frozen stem:", [round(new[s]["val"], 3) for s in seeds])
    print("best epochs, frozen stem:", [new[s]["best_epoch"] for s in seeds])
with open(HERE / "combined.json", "w") as f:
    json.dump(out, f, indent=1)
