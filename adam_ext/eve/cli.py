"""``adam eve ANALYSIS``: one sub-subcommand per analysis module.

Each analysis module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["ANALYSES", "add_parser"]

# analysis name -> module defining HELP, add_arguments(parser) and run(args)
ANALYSES = {
    "locality": "adam_ext.eve.locality",
    "compositionality": "adam_ext.eve.compositionality",
    "correspondence": "adam_ext.eve.correspondence",
    "gradcam": "adam_ext.eve.gradcam",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eve", help="analyses of the learned embeddings (locality, compositionality, "
                                          "correspondence, Grad-CAM)",
                              description="What the embeddings know about anatomy; every analysis compares "
                                          "the encoders given with --ckpt side by side.")
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    sub.required = True
    for name, module_name in ANALYSES.items():
        module = importlib.import_module(module_name)
        sp = sub.add_parser(name, help=module.HELP, description=(module.__doc__ or module.HELP).strip())
        sp.formatter_class = argparse.RawDescriptionHelpFormatter
        module.add_arguments(sp)
        sp.set_defaults(func=module.run)
    return p
