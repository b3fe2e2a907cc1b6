"""Per-seed extracts of ``adam finetune`` results, shared by the result scripts of this folder."""

import json
from pathlib import Path


def per_seed(source: Path, extract: Path, keys) -> dict:
    """``{seed: {"val", "best_epoch", "test": {key: value}}}`` of one run folder's ``results.json``
    (``source``), written to ``extract``; read back from ``extract`` when ``source`` is absent (the
    run folders are not kept in the repository, the extracts are)."""
    if source is not None and source.exists():
        with open(source) as f:
            runs = json.load(f)["runs"]
        rows = {
            str(r["seed"]): {
                "val": r["val"]["mean_dice"],
                "best_epoch": r["best_epoch"],
                "test": {k: r["test"][k] for k in keys},
            }
            for r in runs
        }
        with open(extract, "w") as f:
            json.dump(rows, f, indent=1)
    with open(extract) as f:
        return json.load(f)
