"""The two hybrid encoders of the table: Adam's query trunk with some layers from torchvision's init.

python hybrids.py runs/curve_cpu OUTDIR     # writes random_stem_layer1.pt and random_layer3_4.pt
"""

import sys
from pathlib import Path

import torch
import torchvision

from adam_ext.checkpoints import load_pretrained

run, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
adam = load_pretrained(f"{run}/adam/snapshots/stage2_n4_epoch10.pt").encoder_q
torch.manual_seed(0)
random = torchvision.models.resnet18().state_dict()
for name, prefixes in {
    "random_stem_layer1": ("conv1.", "bn1.", "layer1."),
    "random_layer3_4": ("layer3.", "layer4."),
}.items():
    torch.save(
        {k: (random[k] if k.startswith(prefixes) else v).clone() for k, v in adam.items()}, out / f"{name}.pt"
    )
