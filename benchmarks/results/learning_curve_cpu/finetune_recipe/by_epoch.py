"""Validation mean Dice by epoch (seeds 0-2, mean) of the screening runs; paths are those of the session that made them."""
import json, sys, statistics as st
from pathlib import Path
def curve(path, seeds=(0,1,2)):
    rows=[json.loads(l) for l in open(path)]
    out={}
    for e in (10,20,40,60,80,120):
        v=[r['val_mean_dice'] for r in rows if r['epoch']==e and r['seed'] in seeds]
        out[e]=st.mean(v) if len(v)==len(seeds) else float('nan')
    return out
srcs={"random base":"/work/exp11/long_ft_e150/random/metrics.jsonl","stem base":"/work/exp11b/ten_fstem_ft/metrics.jsonl"}
for n in ["random_s01","stem_s01","random_s03","stem_s03","random_lpft50","stem_lpft50","random_lpft50_s03","stem_lpft50_s03"]:
    srcs[n]=f"/work/exp11c/{n}/metrics.jsonl"
print("| run | "+" | ".join(f"epoch {e}" for e in (10,20,40,60,80,120))+" |")
print("|---|" + "---|" * 6)
for n,p in srcs.items():
    c=curve(p); print(f"| {n} | "+" | ".join(f"{v:.3f}" for v in c.values())+" |")
