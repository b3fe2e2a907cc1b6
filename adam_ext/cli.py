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
    parser = argparse.ArgumentParser(prog="adam", description="Adam: anatomy-aware self-supervised pretraining.",
                                     epilog="Errors print one line; --debug (anywhere) shows the traceback. Exit "
                                            "status: 0 success, 1 failure, 2 usage error, 130/143 stopped by "
                                            "SIGINT/SIGTERM (adam pretrain: resume with --resume).")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in SUBCOMMANDS.values():
        module = importlib.import_module(module_name)
        module.add_parser(sub)
    return parser


#: Exit status: 0 success, 1 a failure while working (a file that cannot be written, a full disk,
#: a diverged loss), 2 a usage error (bad argument, configuration or input file), 130 / 143 a run
#: stopped by SIGINT / SIGTERM after saving its checkpoint (``adam pretrain``).
EXIT_FAILURE, EXIT_USAGE = 1, 2


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line: also after the subcommand
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
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
        message = str(exc).strip() or type(exc).__name__
        if not isinstance(exc, (ValueError, OSError)):  # not one of our messages: say what kind of error
            message = f"{type(exc).__name__}: {message} (--debug shows the traceback)"
        print(f"adam {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE if usage else EXIT_FAILURE
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"adam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
