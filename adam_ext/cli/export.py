"""``adam export``: a pretraining checkpoint's encoder as a plain state dict for torchvision, smp or timm."""

from __future__ import annotations

import argparse

# adam_ext.export.FORMATS, written out so that `adam export --help` imports nothing heavy
# (tests/test_cli.py checks that they agree)
FORMATS = ("torchvision", "smp", "timm")


def export_parser(parser: argparse.ArgumentParser) -> None:
    """``adam export CKPT OUT --format torchvision|smp|timm [--encoder q|k]``."""
    parser.description = (
        "Write the query (or key) encoder's ResNet trunk of a pretraining checkpoint (adam_ext, official "
        "Adam/MoCo with 'module.' keys, or a torchvision state dict) as a plain state dict, verified to "
        "load in the chosen library. The output directory is created if missing."
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="pretraining checkpoint (.pt / .pth.tar)")
    parser.add_argument("out", metavar="OUT", help="output state dict file")
    parser.add_argument("--format", required=True, choices=FORMATS, help="library the file is for")
    parser.add_argument(
        "--encoder", choices=("q", "k"), default="q", help="query encoder (default) or momentum key encoder"
    )
    parser.set_defaults(func=run_export)


def run_export(args) -> int:
    from ..export import export_encoder, load_pretrained, usage_hint

    pre = load_pretrained(args.checkpoint)
    try:
        out = export_encoder(pre, args.format, args.out, encoder=args.encoder)
    except ImportError as err:
        raise ValueError(str(err)) from err
    trunk = pre.encoder_q if args.encoder == "q" else pre.encoder_k
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_params = sum(v.numel() for k, v in trunk.items() if not k.endswith(buffers))
    which = "query" if args.encoder == "q" else "key"
    epoch = f", epoch {pre.meta['epoch']}" if "epoch" in pre.meta else ""
    print(
        f"wrote {out}: {pre.arch} {which} encoder trunk for {args.format} ({len(trunk)} tensors, "
        f"{n_params / 1e6:.1f}M parameters) from {pre.path} ({pre.source} layout{epoch})"
    )
    print(f"load it with: {usage_hint(args.format, pre.arch, out)}")
    return 0


PARSERS = {"export": export_parser}
