"""The encoder of a fine-tuned segmentation checkpoint as a torchvision ResNet state dict."""

import sys

import torch

ck = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
sd = ck.get("model", ck)
for wrap in ("state_dict", "model"):
    if isinstance(sd, dict) and wrap in sd and isinstance(sd[wrap], dict):
        sd = sd[wrap]
trunk = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
if not trunk:
    trunk = {k.split("encoder.", 1)[1]: v for k, v in sd.items() if ".encoder." in k}
print(len(trunk), "encoder tensors, e.g.", list(trunk)[:3], file=sys.stderr)
torch.save(trunk, sys.argv[2])
