"""Text for the terminal: values that came from users or files, shown safely.

Run ids, token labels, reasons, paths and anything else a user or a file chose can hold
terminal control sequences (ANSI escapes that move the cursor, recolour or retitle the
terminal, rewrite earlier lines) or rich console markup (``[link=...]``, ``[red]``). Such a
value is printed through :func:`shown`, which writes every control character visibly as an
escape and escapes markup, so that what appears is exactly what is stored.
"""

from __future__ import annotations

import re

from rich.markup import escape

# C0 and C1 controls, DEL, and the Unicode bidirectional overrides and isolates (which
# can make text display in another order than it is stored).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(value: object) -> str:
    """``value`` as text with every control character written as a visible escape."""
    return _CONTROL.sub(_visible, str(value))


def shown(value: object) -> str:
    """``value`` ready for a rich console: control characters visible, markup escaped."""
    return escape(plain(value))
