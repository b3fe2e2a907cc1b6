"""Escaping of text adam_ext did not write (file names, labels, encoder names, paths) into what it
generates: one helper per format, and every generated document uses them.

- :func:`markdown_text`: a Markdown table cell or inline text. ``|`` cannot end the cell, ``<``,
  ``>`` and ``&`` become entities (no raw HTML, no ``<script>``), Markdown's inline marks
  (`````, ``*``, ``_``, ``[``, ``]``, ``~``, ``\\``) are backslash-escaped, and line breaks and
  control characters become one space or ``\\xNN`` (a row stays one row).
- :func:`markdown_code`: an inline code span (``\\`path\\```) that holds any text: a fence of more
  backticks than the text's longest run, padded when it starts or ends with one.
- :func:`markdown_fence`: a fenced block that holds any text (a fence longer than its longest run).
- :func:`html_text`: text or an attribute value in HTML (``& < > " '``).
- :func:`terminal`: text printed to a terminal: control characters (an ESC that would move the
  cursor or recolour the screen, a carriage return that would overwrite the line) and Unicode
  direction overrides are shown as ``\\xNN`` / ``\\uNNNN`` escapes; line breaks and tabs stay.

Example:
    >>> markdown_text("a|b <script>")
    'a\\\\|b &lt;script&gt;'
    >>> markdown_code("x`y")
    '``x`y``'
    >>> terminal("red\\x1b[31m")
    'red\\\\x1b[31m'
"""

from __future__ import annotations

import html
import re

__all__ = ["html_text", "markdown_code", "markdown_fence", "markdown_text", "terminal"]

# C0 controls but tab and newline, DEL, C1 controls, and the Unicode bidirectional overrides and
# isolates (they reorder what a reader sees: "Trojan source").
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
_MARKDOWN_MARKS = re.compile(r"([\\`*_\[\]|~])")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal(text) -> str:
    """``text`` safe to print to a terminal: control characters and direction overrides escaped
    (``\\x1b``, ``\\u202e``); newlines and tabs kept."""
    return _CONTROL.sub(_visible, str(text))


def markdown_text(text) -> str:
    """``text`` as literal Markdown inline text, safe inside a table cell (see the module docstring)."""
    text = re.sub(r"\r\n|\r|\n", " ", str(text)).replace("\t", " ")
    text = _CONTROL.sub(_visible, text)
    text = html.escape(text, quote=False)  # & < > as entities: no raw HTML reaches the page
    return _MARKDOWN_MARKS.sub(r"\\\1", text)


def markdown_code(text) -> str:
    """``text`` as one inline code span, whatever backticks it holds (not for table cells: a ``|``
    inside a code span still splits a GitHub table row; use :func:`markdown_text` there)."""
    text = _CONTROL.sub(_visible, re.sub(r"\r\n|\r|\n", " ", str(text)))
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padded = text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" "))
    pad = " " if padded else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_fence(text, info: str = "") -> str:
    """``text`` as a fenced code block (``info``: its language, e.g. ``yaml``) whose fence no line
    of ``text`` can close."""
    text = _CONTROL.sub(_visible, str(text))
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def html_text(text) -> str:
    """``text`` escaped for HTML content and quoted attribute values."""
    return html.escape(_CONTROL.sub(_visible, str(text)), quote=True)
