"""``adam compare``'s registration module (``adam_ext.cli`` calls one ``add_parser`` per module)."""

from __future__ import annotations

from .cli import add_compare_parser as add_parser

__all__ = ["add_parser"]
