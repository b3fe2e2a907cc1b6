"""The ``adam`` command line: one entry point, one subcommand per task.

Each subcommand lives in the module that implements it and registers itself
through a function ``add_parser(subparsers)`` that returns the subparser with
``func`` set (``parser.set_defaults(func=...)``); ``func(args)`` returns an exit
code. Modules are imported lazily, so ``adam --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module that defines add_parser(subparsers)
SUBCOMMANDS = {
    "synth": "adam_ext.data.synthetic",
    "cache": "adam_ext.data.cache",
    "pretrain": "adam_ext.train",
    "export": "adam_ext.export",
    "report": "adam_ext.report",
    "finetune": "adam_ext.downstream.cli",
    "compare": "adam_ext.downstream.compare",
    "embed": "adam_ext.eve.embed",
    "eve": "adam_ext.eve.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adam", description="Adam: anatomy-aware self-supervised pretraining.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in SUBCOMMANDS.values():
        module = importlib.import_module(module_name)
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"adam {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
