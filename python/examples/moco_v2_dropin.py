"""Plain MoCo v2 pretraining with the purposively pruned InfoNCE loss dropped in.

The usual single-file MoCo v2 (facebookresearch/moco's main_moco.py + builder.py, one process,
no DDP, no shuffle-BN): query and momentum key encoders with an MLP head, a queue of keys kept as
MoCo keeps it (a (dim, K) buffer), SGD with a cosine schedule, two augmented crops per image. The
one change is the loss: the (B, 1 + K) logit matrix and CrossEntropyLoss are replaced by
``adam_ext.pruned_info_nce(q, k, self.queue.t(), ...)`` (the transposed view is read in place, no
copy of the queue), which also drops queue keys at least ``--gamma`` similar to the query (Adam's
purposive pruner; ``--gamma none`` gives MoCo v2's own loss). docs/moco-dropin.md walks through it.

    python python/examples/moco_v2_dropin.py --smoke                        # CPU check in seconds (see below)
    python python/examples/moco_v2_dropin.py --max-steps 20                 # random images, no download
    python python/examples/moco_v2_dropin.py --data /path/to/imagefolder --arch resnet50 --gamma 0.8
    python python/examples/moco_v2_dropin.py --gamma none                   # plain MoCo v2 InfoNCE

``--smoke`` changes the defaults to a run that ends in seconds on a laptop CPU: resnet18 on 32-px
FakeData images, batches of 8, a queue of K = 256, 3 steps, no loader workers, on the CPU (the
paper-size defaults, resnet50 on 224-px images with K = 65,536, take minutes for a single CPU
step). Options given beside it win: ``--smoke --max-steps 10``.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision import datasets, transforms

import adam_ext

#: The defaults --smoke changes (options given on the command line beside it win).
SMOKE = {
    "arch": "resnet18",
    "size": 32,
    "moco_k": 256,
    "batch_size": 8,
    "fake_images": 32,
    "workers": 0,
    "max_steps": 3,
    "device": "cpu",
}


def contrastive_loss(q, k, queue, T: float, gamma: float | None):
    """MoCo's InfoNCE over the queue with the purposive pruner.

    Args:
        q (Tensor[N, C]): queries; k (Tensor[N, C]): positive keys.
        queue (Tensor[C, K]): the negatives as MoCo stores them, one key per column.
        T: temperature. gamma: queue keys with cosine >= gamma to a query are dropped (None: none,
            MoCo v2's loss).

    Returns:
        ``(loss, pruned)``: the mean loss and Tensor[N] int64, keys dropped per query.
    """
    # before (MoCo v2's builder):
    #   l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
    #   l_neg = torch.einsum("nc,ck->nk", [q, queue.clone().detach()])
    #   logits = torch.cat([l_pos, l_neg], dim=1) / T
    #   loss = nn.CrossEntropyLoss()(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=q.device))
    # after: the (K, C) view of the same memory, read in place (no clone, no (N, 1 + K) logits).
    return adam_ext.pruned_info_nce(q, k, queue.t(), temperature=T, gamma=gamma, return_pruned=True)


class MoCo(nn.Module):
    """MoCo v2: encoder_q, momentum encoder_k, MLP head, a queue (dim, K) of normalised keys (MoCo's layout)."""

    def __init__(self, arch="resnet50", dim=128, K=65536, m=0.999, T=0.2):
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.encoder_q = torchvision.models.__dict__[arch](num_classes=dim, weights=None)
        self.encoder_k = torchvision.models.__dict__[arch](num_classes=dim, weights=None)
        dim_mlp = self.encoder_q.fc.weight.shape[1]
        self.encoder_q.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), self.encoder_q.fc)
        self.encoder_k.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), self.encoder_k.fc)
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data.copy_(param_q.data)
            param_k.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        params_k = list(self.encoder_k.parameters())
        torch._foreach_mul_(params_k, self.m)
        torch._foreach_add_(params_k, [p.detach() for p in self.encoder_q.parameters()], alpha=1 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        # A ring buffer: any batch size up to K (no K % batch == 0 assert), no host synchronisation.
        index = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % self.K
        self.queue.index_copy_(1, index, keys.t())
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.K)

    def forward(self, im_q, im_k, gamma=None):
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            k = F.normalize(self.encoder_k(im_k), dim=1)
        loss, pruned = contrastive_loss(q, k, self.queue, self.T, gamma)
        self._dequeue_and_enqueue(k)  # safe before backward: the loss's backward never reads the queue
        return loss, pruned


class TwoCropsTransform:
    """Two independent augmentations of one image: the query and the key."""

    def __init__(self, base_transform):
        self.base_transform = base_transform

    def __call__(self, x):
        return [self.base_transform(x), self.base_transform(x)]


def moco_v2_augmentation(size: int):
    blur = 2 * max(1, round(size * 0.05)) + 1  # MoCo v2: kernel ~10% of the side, odd
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.2, 1.0)),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.RandomApply([transforms.GaussianBlur(blur, sigma=(0.1, 2.0))], p=0.5),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="ImageFolder root (default: random FakeData images)")
    p.add_argument("--fake-images", type=int, default=1024, help="images in the FakeData set")
    p.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet50"])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--moco-dim", type=int, default=128)
    p.add_argument("--moco-k", type=int, default=65536)
    p.add_argument("--moco-m", type=float, default=0.999)
    p.add_argument("--moco-t", type=float, default=0.2)
    p.add_argument(
        "--gamma",
        type=lambda s: None if s.lower() == "none" else float(s),
        default=0.8,
        help="purposive pruner threshold; 'none' disables it",
    )
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a CPU check that ends in seconds: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in SMOKE.items()),
    )
    args = p.parse_args(argv)
    if args.smoke:
        for name, value in SMOKE.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    return args


def train(args):
    """Trains as ``args`` say; returns the model and the per-step (loss, pruned fraction)."""
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = MoCo(args.arch, args.moco_dim, args.moco_k, args.moco_m, args.moco_t).to(device)
    optimizer = torch.optim.SGD(
        model.encoder_q.parameters(), args.lr, momentum=args.momentum, weight_decay=args.wd
    )
    augment = TwoCropsTransform(moco_v2_augmentation(args.size))
    if args.data:
        dataset = datasets.ImageFolder(args.data, augment)
    else:
        dataset = datasets.FakeData(
            args.fake_images, (3, args.size, args.size), transform=augment, random_offset=args.seed
        )
    loader = torch.utils.data.DataLoader(
        dataset,
        args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    total = args.epochs * len(loader)
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    history, step = [], 0
    model.train()
    while step < total:
        for (im_q, im_k), _ in loader:
            lr = args.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, pruned = model(
                im_q.to(device, non_blocking=True), im_k.to(device, non_blocking=True), gamma=args.gamma
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            record = (loss.item(), pruned.float().mean().item() / args.moco_k)
            history.append(record)
            print(
                f"step {step + 1}/{total}  lr {lr:.4f}  loss {record[0]:.4f}  "
                f"pruned {100 * record[1]:.3f}% of K",
                flush=True,
            )
            step += 1
            if step >= total:
                break
    return model, history


def main(argv=None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
