"""``adam export``: a pretraining checkpoint's encoder as a plain state dict for torchvision, smp or timm."""

from __future__ import annotations

import argparse
import sys

# adam_ext.export.FORMATS, written out so that `adam export --help` imports nothing heavy
# (tests/test_cli.py checks that they agree)
FORMATS = ("torchvision", "smp", "timm")


def export_parser(parser: argparse.ArgumentParser) -> None:
    """``adam export CKPT OUT --format torchvision|smp|timm [--encoder q|k] [--no-card]``."""
    parser.description = (
        "Write the query (or key) encoder's ResNet trunk of a pretraining checkpoint (adam_ext, official "
        "Adam/MoCo with 'module.' keys, or a torchvision state dict) as a plain state dict, verified to "
        "load in the chosen library, with its model card beside it: OUT.card.json and OUT.card.md (what "
        "the weights are, how they were made, their monitors, how to load them, their SHA-256). The "
        "output directory is created if missing."
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="pretraining checkpoint (.pt / .pth.tar)")
    parser.add_argument("out", metavar="OUT", help="output state dict file")
    parser.add_argument("--format", required=True, choices=FORMATS, help="library the file is for")
    parser.add_argument(
        "--encoder", choices=("q", "k"), default="q", help="query encoder (default) or momentum key encoder"
    )
    parser.add_argument("--no-card", action="store_true", help="write the weights alone, without a model card")
    parser.set_defaults(func=run_export)


def run_export(args) -> int:
    import warnings

    from ..checkpoints import card_line, read_card
    from ..checkpoints.export import export_encoder, load_pretrained, usage_hint

    with warnings.catch_warnings(record=True) as caught:  # one "adam export: warning:" line each
        warnings.simplefilter("always")
        try:
            pre = load_pretrained(args.checkpoint)
            out = export_encoder(pre, args.format, args.out, encoder=args.encoder, card=not args.no_card)
            card = None if args.no_card else read_card(out)  # read back: the card on disk matches the file
        except ImportError as err:
            raise ValueError(str(err)) from err
        finally:
            for w in caught:
                print(f"adam export: warning: {w.message}", file=sys.stderr)
    trunk = pre.encoder_q if args.encoder == "q" else pre.encoder_k
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_params = sum(v.numel() for k, v in trunk.items() if not k.endswith(buffers))
    which = "query" if args.encoder == "q" else "key"
    epoch = f", epoch {pre.meta['epoch']}" if "epoch" in pre.meta else ""
    print(
        f"wrote {out}: {pre.arch} {which} encoder trunk for {args.format} ({len(trunk)} tensors, "
        f"{n_params / 1e6:.1f}M parameters) from {pre.path} ({pre.source} layout{epoch})"
    )
    if card is not None:
        print(card_line(card, out))
    print(f"load it with: {usage_hint(args.format, pre.arch, out)}")
    return 0


PARSERS = {"export": export_parser}
