"""python by_epoch.py — validation mean Dice by epoch (seeds 0-2, mean) of the screening runs.

Reads each run folder's ``metrics.jsonl`` (validation columns only); the paths are those of the
session that made them (``/work/exp11*``). Prints ``by_epoch.md``.
"""

import json
import statistics

EPOCHS = (10, 20, 40, 60, 80, 120)
SOURCES = {
    "random base": "/work/exp11/long_ft_e150/random/metrics.jsonl",
    "stem base": "/work/exp11b/ten_fstem_ft/metrics.jsonl",
}
for recipe in ("s01", "s03", "lpft50", "lpft50_s03"):
    for init in ("random", "stem"):
        SOURCES[f"{init}_{recipe}"] = f"/work/exp11c/{init}_{recipe}/metrics.jsonl"


def curve(path, seeds=(0, 1, 2)):
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    out = {}
    for epoch in EPOCHS:
        values = [r["val_mean_dice"] for r in rows if r["epoch"] == epoch and r["seed"] in seeds]
        out[epoch] = statistics.mean(values) if len(values) == len(seeds) else float("nan")
    return out


print("| run | " + " | ".join(f"epoch {e}" for e in EPOCHS) + " |")
print("|---|" + "---|" * len(EPOCHS))
for name, path in SOURCES.items():
    print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in curve(path).values()) + " |")
