"""lightly's MoCo example with Adam's purposive pruner: the criterion is the one changed line.

This is the recipe of lightly's own PyTorch MoCo example (``examples/pytorch/moco.py``, lightly
1.6): a torchvision resnet18 backbone without its classifier, ``MoCoProjectionHead(512, 512, 128)``,
momentum copies of both updated with ``update_momentum`` on a ``cosine_schedule`` from 0.996 to 1,
``MoCoV2Transform(input_size=32)``, batches of 256, SGD with lr 0.06, 10 epochs. Only the criterion
differs::

    criterion = NTXentLoss(memory_bank_size=(4096, 128))                                  # lightly's
    criterion = PrunedNTXentLoss(memory_bank_size=(4096, 128), gamma=0.8)                  # this file

``PrunedNTXentLoss`` (``adam_ext.integrations.lightly``, ``pip install adam_ext[lightly]``) keeps
lightly's memory bank and, with ``gamma=None``, computes exactly lightly's loss (fused: no B×K
logits); with ``gamma`` it also removes the bank keys at least that similar to each query.

lightly's example downloads CIFAR-10; this one never downloads anything. The images come from
torchvision's ``FakeData`` unless ``--cifar10 DIR`` (an already downloaded CIFAR-10) or
``--data DIR`` (an image folder) says otherwise; the command-line flags below exist so that a test
can run a few small steps (the defaults are the example's).

    python python/examples/lightly_moco.py --steps 3 --batch-size 16 --workers 0     # FakeData, 3 steps
    python python/examples/lightly_moco.py --cifar10 datasets/cifar10                 # the example's run
    python python/examples/lightly_moco.py --gamma none                               # = lightly's NTXentLoss
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
import torchvision
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.moco_transform import MoCoV2Transform
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from adam_ext.integrations.lightly import PrunedNTXentLoss


class MoCo(nn.Module):
    """lightly's example model: backbone + projection head, and their momentum copies."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projection_head = MoCoProjectionHead(512, 512, 128)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Queries (Tensor[B, 128]) of images x (Tensor[B, 3, H, W])."""
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        """Keys (Tensor[B, 128], detached) of images x from the momentum copies."""
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--cifar10", metavar="DIR", help="a downloaded CIFAR-10 (torchvision layout; never downloads)"
    )
    source.add_argument("--data", metavar="DIR", help="an image folder (torchvision ImageFolder)")
    p.add_argument("--fake-images", type=int, default=2048, help="FakeData size when neither is given")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps (default: all epochs)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--memory-bank-size", type=int, default=4096, help="K of memory_bank_size=(K, 128)")
    p.add_argument("--gamma", default="0.8", help="pruning threshold, or 'none' for lightly's plain loss")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.gamma = None if args.gamma.lower() == "none" else float(args.gamma)
    return args


def make_dataset(args: argparse.Namespace, transform):
    if args.cifar10:
        return torchvision.datasets.CIFAR10(args.cifar10, download=False, transform=transform)
    if args.data:
        return torchvision.datasets.ImageFolder(args.data, transform=transform)
    return torchvision.datasets.FakeData(
        args.fake_images, (3, 32, 32), 10, transform=transform, random_offset=args.seed
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    resnet = torchvision.models.resnet18()
    model = MoCo(nn.Sequential(*list(resnet.children())[:-1]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)

    dataset = make_dataset(args, MoCoV2Transform(input_size=32))
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers
    )
    # The one changed line; lightly's: criterion = NTXentLoss(memory_bank_size=(4096, 128))
    criterion = PrunedNTXentLoss(memory_bank_size=(args.memory_bank_size, 128), gamma=args.gamma)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)

    print(f"Starting Training: {criterion}")
    step = 0
    for epoch in range(args.epochs):
        total_loss, batches = 0.0, 0
        momentum_val = cosine_schedule(epoch, args.epochs, 0.996, 1)
        for batch in dataloader:
            x_query, x_key = batch[0]
            update_momentum(model.backbone, model.backbone_momentum, m=momentum_val)
            update_momentum(model.projection_head, model.projection_head_momentum, m=momentum_val)
            query = model(x_query.to(device))
            key = model.forward_momentum(x_key.to(device))
            loss = criterion(query, key)
            total_loss += loss.detach()
            batches += 1
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if args.steps is not None:
                pruned = criterion.last_pruned.double().mean().item() / args.memory_bank_size
                print(f"step {step}, loss: {loss.item():.5f}, pruned {pruned:.2%} of the memory bank")
                if step >= args.steps:
                    break
        avg_loss = float(total_loss) / max(batches, 1)
        print(f"epoch: {epoch:>02}, loss: {avg_loss:.5f}")
        if not math.isfinite(avg_loss):
            print("the loss is not finite: stopping")
            return 1
        if args.steps is not None and step >= args.steps:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
