"""``adam export``: a pretraining checkpoint's encoder as a plain state dict for torchvision, smp, timm or
MONAI, or as a safetensors file."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

# adam_ext.checkpoints.export.FORMATS, written out so that `adam export --help` imports nothing heavy
# (tests/cli/test_cli.py checks that they agree)
FORMATS = ("torchvision", "smp", "timm", "monai", "safetensors")


def export_parser(parser: argparse.ArgumentParser) -> None:
    """``adam export CKPT OUT --format torchvision|smp|timm|monai|safetensors [--encoder q|k]
    [--no-card]``."""
    parser.description = (
        "Write the query (or key) encoder's ResNet trunk of a pretraining checkpoint (adam_ext, official "
        "Adam/MoCo with 'module.' keys, or a torchvision state dict; a .pt or a .safetensors file) as a "
        "plain state dict, verified to load in the chosen library, with its model card beside it: "
        "OUT.card.json and OUT.card.md (what the weights are, how they were made, their monitors, how to "
        "load them, their SHA-256). --format monai: MONAI's ResNet and FlexibleUNet encoder (2-D); "
        "--format safetensors: a safetensors file with the same keys (loads in every library). The output "
        "directory is created if missing."
    )
    parser.add_argument(
        "checkpoint", metavar="CKPT", help="pretraining checkpoint (.pt / .pth.tar / .safetensors)"
    )
    parser.add_argument("out", metavar="OUT", help="output state dict file")
    parser.add_argument("--format", required=True, choices=FORMATS, help="library the file is for")
    parser.add_argument(
        "--encoder", choices=("q", "k"), default="q", help="query encoder (default) or momentum key encoder"
    )
    parser.add_argument(
        "--no-card", action="store_true", help="write the weights alone, without a model card"
    )
    parser.set_defaults(func=run_export)


class _Stopped(BaseException):
    """SIGTERM / SIGHUP during an export: raised where the export is, so that its temp files are
    removed on the way out (a BaseException: no ``except Exception`` swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_cleanly():
    """SIGTERM and SIGHUP raise :class:`_Stopped` for the duration (in the main thread only)."""

    def stop(signum, frame):
        raise _Stopped(signum)

    previous = {}
    try:
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                previous[sig] = signal.signal(sig, stop)
    except ValueError:  # not the main thread: signals cannot be caught here
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_export(args) -> int:
    import warnings

    from ..checkpoints import card_line, printable
    from ..checkpoints.export import export_encoder, load_pretrained, usage_hint

    with warnings.catch_warnings(record=True) as caught:  # one "adam export: warning:" line each
        warnings.simplefilter("always")
        try:
            with _stop_cleanly():
                pre = load_pretrained(args.checkpoint)
                out = export_encoder(pre, args.format, args.out, encoder=args.encoder, card=not args.no_card)
                # read back: the card on disk is checked against the file written
                card = None if args.no_card else load_pretrained(out).card
        except ImportError as err:
            raise ValueError(str(err)) from err
        except _Stopped as stopped:
            name = signal.Signals(stopped.signum).name
            print(f"adam export: stopped by {name}; nothing written (temp files removed)", file=sys.stderr)
            return 128 + stopped.signum
        finally:
            for w in caught:
                print(f"adam export: warning: {printable(w.message)}", file=sys.stderr)
    trunk = pre.encoder_q if args.encoder == "q" else pre.encoder_k
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_params = sum(v.numel() for k, v in trunk.items() if not k.endswith(buffers))
    which = "query" if args.encoder == "q" else "key"
    epoch = f", epoch {pre.meta['epoch']}" if "epoch" in pre.meta else ""
    print(
        printable(
            f"wrote {out}: {pre.arch} {which} encoder trunk for {args.format} ({len(trunk)} tensors, "
            f"{n_params / 1e6:.1f}M parameters) from {pre.path} ({pre.source} layout{epoch})"
        )
    )
    if card is not None:
        print(card_line(card, out))
    print(printable(f"load it with: {usage_hint(args.format, pre.arch, out)}"))
    return 0


PARSERS = {"export": export_parser}
