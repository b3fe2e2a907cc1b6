"""python combine.py FOLDER — 10-seed table: seeds 0-2 (long_*_e150) + seeds 3-9 (test_*_e150_seeds3to9), test Dice, t-tests."""

import json
import sys
from pathlib import Path

from adam_ext.downstream import summarize, ttest

E = Path(sys.argv[1] if len(sys.argv) > 1 else ".")  # the folder holding the four compare outputs


def runs(folder, label):
    f = folder / label / "results.json"
    if not f.exists():
        return {}
    with open(f) as fh:
        return {r["seed"]: r for r in json.load(fh)["runs"]}


rows = {}
for mode in ("ft", "frozen"):
    for label in ("random", "stage2_n4_epoch10"):
        r = {**runs(E / f"long_{mode}_e150", label), **runs(E / f"test_{mode}_e150_seeds3to9", label)}
        rows[(mode, label)] = r
keys = ["mean_dice", "dice/heart", "dice/left clavicle", "dice/right clavicle"]
out = {}
for mode in ("ft", "frozen"):
    a, b = rows[(mode, "random")], rows[(mode, "stage2_n4_epoch10")]
    seeds = sorted(set(a) & set(b))
    print(f"## {mode}: seeds {seeds}")
    for k in keys:
        x = [a[s]["test"][k] for s in seeds]
        y = [b[s]["test"][k] for s in seeds]
        p = ttest(y, x)["p"]
        sx, sy = summarize(x), summarize(y)
        v = (
            summarize([a[s]["val"]["mean_dice"] for s in seeds]),
            summarize([b[s]["val"]["mean_dice"] for s in seeds]),
        )
        print(
            f"{k:22s} random {sx['mean']:.3f} ± {sx['std']:.3f}   adam {sy['mean']:.3f} ± {sy['std']:.3f}   p={p:.3g}"
            + (
                f"   (val mean_dice: random {v[0]['mean']:.3f}, adam {v[1]['mean']:.3f})"
                if k == "mean_dice"
                else ""
            )
        )
        out.setdefault(mode, {})[k] = {"random": x, "adam": y, "p": p, "seeds": seeds}
    print(
        "best epochs random", [a[s]["best_epoch"] for s in seeds], "adam", [b[s]["best_epoch"] for s in seeds]
    )
with open(E / "combined.json", "w") as f:
    json.dump(out, f, indent=1)
