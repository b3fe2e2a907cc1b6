"""python combine.py [EXP11C] — the chosen fine-tuning recipe on the test split, 10 seeds (issue 11).

Inputs: ``EXP11C/ten_{stem_s03,random_s03}/results.json`` (``ten.sh`` outputs, seeds
0-9), or their per-seed extracts ``ten_*.json`` kept here; the base recipe's runs under the same
seeds: ``../converged/combined.json`` (random initialisation) and ``../frozen_stem/fstem_ft.json``
(Adam, stem kept). Prints test mean Dice per structure, mean ± sample std and two-sample t-tests
(:func:`adam_ext.downstream.ttest`, :func:`~adam_ext.downstream.summarize`); writes ``combined.json``.
"""

import json
import sys
from pathlib import Path

from extracts import per_seed  # this folder's shared helper

from adam_ext.downstream import summarize, ttest

# the results this script reads and writes: benchmarks/results/learning_curve_cpu/finetune_recipe/
HERE = (
    Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "learning_curve_cpu" / "finetune_recipe"
)
RUNS = Path(sys.argv[1]) if len(sys.argv) > 1 else None
KEYS = ["mean_dice", "dice/heart", "dice/left clavicle", "dice/right clavicle"]
SEEDS = [str(s) for s in range(10)]


def extract(name):
    """{seed: {"val", "best_epoch", "test": {key: value}}} of one 10-seed run folder."""
    return per_seed(
        RUNS / f"ten_{name}" / "results.json" if RUNS is not None else None, HERE / f"ten_{name}.json", KEYS
    )


with open(HERE.parent / "converged" / "combined.json") as f:
    converged = json.load(f)["ft"]
with open(HERE.parent / "frozen_stem" / "fstem_ft.json") as f:
    stem_base = json.load(f)
values = {  # name -> {key: [10 values, seeds 0-9]}
    "random, base": {k: converged[k]["random"] for k in KEYS},
    "stem kept, base": {k: [stem_base[s]["test"][k] for s in SEEDS] for k in KEYS},
}
for name, label in (("random_s03", "random, encoder lr × 0.3"), ("stem_s03", "stem kept, encoder lr × 0.3")):
    rows = extract(name)
    values[label] = {k: [rows[s]["test"][k] for s in SEEDS] for k in KEYS}
assert converged["mean_dice"]["seeds"] == list(range(10))

print("| fine-tuning | " + " | ".join(KEYS) + " |")
print("|---|" + "---|" * len(KEYS))
for label, per_key in values.items():
    cells = [f"{summarize(v)['mean']:.3f} ± {summarize(v)['std']:.3f}" for v in per_key.values()]
    print(f"| {label} | " + " | ".join(cells) + " |")
tests = [
    ("stem kept, encoder lr × 0.3", "random, encoder lr × 0.3", "same recipe (× 0.3)"),
    ("stem kept, encoder lr × 0.3", "random, base", "each at the recipe it had"),
    ("stem kept, encoder lr × 0.3", "stem kept, base", "what × 0.3 did for the pretrained encoder"),
    ("random, encoder lr × 0.3", "random, base", "what × 0.3 did for random initialisation"),
]
print()
print("| comparison | what it asks | " + " | ".join(f"p ({k})" for k in KEYS) + " |")
print("|---|---|" + "---|" * len(KEYS))
out = {"values": values, "tests": []}
for a, b, what in tests:
    ps = {k: ttest(values[a][k], values[b][k])["p"] for k in KEYS}
    out["tests"].append({"a": a, "b": b, "what": what, "p": ps})
    print(f"| {a} vs {b} | {what} | " + " | ".join(f"{p:.2g}" for p in ps.values()) + " |")
with open(HERE / "combined.json", "w") as f:
    json.dump(out, f, indent=1)
