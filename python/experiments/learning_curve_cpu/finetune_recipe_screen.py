"""python screen.py [EXP11 EXP11B EXP11C] — the fine-tuning recipes screened on the validation split (issue 11).

Reads only the best epoch's *validation* mean Dice of ``adam finetune seg`` runs, seeds 0-2 (the
runs also computed test metrics; those are not read here and were not used to choose). With the
three experiment folders given it collects the per-seed values into ``screening_val.json`` (kept
here); without, it reads that file. Rows: the base recipe (every layer at lr 1e-3; random from
``EXP11/long_ft_e150/random``, stem kept from ``EXP11B/ten_fstem_ft``, seeds 0-2 of those runs) and
the recipes of ``EXP11C/{init}_{recipe}`` (``scr.sh`` in README.md). Prints mean ± sample std and a
two-sample t-test against the base recipe of the same initialisation
(:func:`adam_ext.downstream.ttest`, :func:`~adam_ext.downstream.summarize`).
"""

import json
import sys
from pathlib import Path

from adam_ext.downstream import summarize, ttest

# the results this script reads and writes: benchmarks/results/learning_curve_cpu/finetune_recipe/
HERE = (
    Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "learning_curve_cpu" / "finetune_recipe"
)
EXTRACT = HERE / "screening_val.json"
INITS = {"random": "random initialisation", "stem": "Adam, stem kept"}
RECIPES = {
    "base": "every layer at lr 1e-3 (as before)",
    "s01": "encoder lr × 0.1",
    "s03": "encoder lr × 0.3",
    "lpft50": "encoder frozen 50 epochs, then lr 1e-3 (LP-FT)",
    "lpft50_s03": "encoder frozen 50 epochs, then lr × 0.3",
}


def collect(exp11: Path, exp11b: Path, exp11c: Path) -> dict:
    def val(path, seeds=(0, 1, 2)):
        with open(path) as f:
            runs = json.load(f)["runs"]
        return {str(r["seed"]): r["val"]["mean_dice"] for r in runs if r["seed"] in seeds}

    rows = {
        "random_base": val(exp11 / "long_ft_e150" / "random" / "results.json"),
        "stem_base": val(exp11b / "ten_fstem_ft" / "results.json"),
    }
    for init in INITS:
        for recipe in list(RECIPES)[1:]:
            path = exp11c / f"{init}_{recipe}" / "results.json"
            if path.exists():
                rows[f"{init}_{recipe}"] = val(path)
    return rows


if len(sys.argv) == 4:
    with open(EXTRACT, "w") as f:
        json.dump(collect(*map(Path, sys.argv[1:])), f, indent=1)
with open(EXTRACT) as f:
    rows = json.load(f)

print("| recipe | " + " | ".join(INITS.values()) + " |")
print("|---|" + "---|" * len(INITS))
for recipe, text in RECIPES.items():
    cells = []
    for init in INITS:
        values = list(rows.get(f"{init}_{recipe}", {}).values())
        if not values:
            cells.append("—")
            continue
        s = summarize(values)
        cell = f"{s['mean']:.3f} ± {s['std']:.3f}"
        if recipe != "base":
            cell += f" (p = {ttest(values, list(rows[f'{init}_base'].values()))['p']:.2g})"
        cells.append(cell)
    print(f"| {text} | " + " | ".join(cells) + " |")
