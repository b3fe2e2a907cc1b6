"""The ``adam`` command line: one entry point, one subcommand per task, outside the library.

Each command family has a module here (``data``, ``pretrain``, ``export``, ``finetune``, ``eve``)
with one protocol: a dict ``PARSERS`` mapping a command name to a function that adds the
command's arguments to its parser and sets ``func`` (``func(args)`` returns an exit status).
Those modules import nothing heavy at the top; the library is imported when a command runs. Only
the parser of the command being run is built, so ``adam --help``, ``adam --version`` and
``adam pretrain --help`` never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__  # a string of adam_ext/__init__.py, which imports no torch

# command -> (module of PARSERS, one-line help shown by `adam --help`)
COMMANDS = {
    "synth": ("adam_ext.cli.data", "write synthetic chest radiographs in the ChestX-ray14 and SCR layouts"),
    "cache": ("adam_ext.cli.data", "decode and resize a data set's images once into a memory-mapped cache"),
    "pretrain": (
        "adam_ext.cli.pretrain",
        ("Adam pretraining (stages n = 0, 2, 4) on a folder of images or a known data set"),
    ),
    "report": ("adam_ext.cli.pretrain", "write report.md with loss and pruned-fraction curves for a run"),
    "export": (
        "adam_ext.cli.export",
        ("export the pretrained encoder for torchvision, smp, timm or MONAI, or as safetensors"),
    ),
    "finetune": (
        "adam_ext.cli.finetune",
        "fine-tune and evaluate an encoder on classification or segmentation",
    ),
    "compare": ("adam_ext.cli.finetune", "compare initialisations under the same seeds, with t-tests"),
    "embed": ("adam_ext.cli.eve", "global (and dense) embeddings of images from a pretrained encoder"),
    "eve": (
        "adam_ext.cli.eve",
        ("analyses of the learned embeddings (locality, compositionality, correspondence, Grad-CAM)"),
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``adam`` parser; with ``command``, only that command's arguments are added (the others
    keep their one-line help), without it every command's (which imports what they need)."""
    parser = argparse.ArgumentParser(
        prog="adam",
        description="Adam: anatomy-aware self-supervised pretraining.",
        epilog="Errors print one line; --debug (anywhere) shows the traceback. Exit "
        "status: 0 success, 1 failure, 2 usage error, 130/143 stopped by "
        "SIGINT/SIGTERM (adam pretrain: resume with --resume).",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument(
        "--version",
        action="version",
        version=f"adam (adam_ext) {__version__}",
        help="print the version of adam_ext and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if command is None or name == command:
            importlib.import_module(module_name).PARSERS[name](p)
    return parser


def _command(argv: list[str]) -> str | None:
    """The command named in ``argv`` (its first word that is not an option), if it is one of ours."""
    return next((a for a in argv if not a.startswith("-")), None) if argv else None


#: Exit status: 0 success, 1 a failure while working (a file that cannot be written, a full disk,
#: a diverged loss), 2 a usage error (bad argument, configuration or input file), 130 / 143 a run
#: stopped by SIGINT / SIGTERM after saving its checkpoint (``adam pretrain``).
EXIT_FAILURE, EXIT_USAGE = 1, 2


def error_message(exc: BaseException) -> str:
    """The one line ``adam`` prints for ``exc``: our messages as they are; an OSError without one as
    ``'PATH': reason`` (never "[Errno 13] ..."); an error raised in a DataLoader worker as its own
    last line (not the worker's traceback); any other error with its type and a --debug hint.
    Control characters are escaped (:func:`adam_ext._util.escape.terminal`)."""
    from .._util.escape import terminal

    message = str(exc).strip() or type(exc).__name__
    if "\nOriginal Traceback" in message:  # torch's DataLoader re-raising a worker's error
        last = message.rstrip().splitlines()[-1]
        kind, sep, text = last.partition(": ")
        message = f"{text if sep and kind.isidentifier() else last} (in a DataLoader worker)"
    elif isinstance(exc, OSError) and exc.strerror and message.startswith("[Errno"):
        names = " -> ".join(repr(os.fspath(n)) for n in (exc.filename, exc.filename2) if n is not None)
        message = f"{names}: {exc.strerror}" if names else exc.strerror
    if not isinstance(exc, (ValueError, OSError)):  # not one of our messages: say what kind of error
        message = f"{type(exc).__name__}: {message} (--debug shows the traceback)"
    return terminal(message)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line: also after the subcommand
    argv = [a for a in argv if a != "--debug"]
    command = _command(argv)
    parser = build_parser(command if command in COMMANDS else "")
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides after an option (`adam pretrain a=1 --epochs 2 b=2`) join the others
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        if debug:
            raise
        usage = isinstance(exc, (ValueError, FileNotFoundError))  # a bad argument, configuration or path
        print(f"adam {args.command}: error: {error_message(exc)}", file=sys.stderr)
        return EXIT_USAGE if usage else EXIT_FAILURE
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"adam {args.command}: interrupted", file=sys.stderr)
        return 130
