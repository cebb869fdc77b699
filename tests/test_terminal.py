"""What the CLI prints of stored text shows exactly that text: no control sequence acts."""

from __future__ import annotations

import io

from rich.console import Console

from countyfl.terminal import plain, shown


def rendered(text: str) -> str:
    out = io.StringIO()
    Console(file=out, force_terminal=False, width=200, highlight=False).print(text)
    return out.getvalue().rstrip("\n")


def test_control_characters_become_visible_escapes() -> None:
    assert plain("run\x1b[2J\x07\r\n\x9b\u202e\u2066x") == (
        "run\\x1b[2J\\x07\\x0d\\x0a\\x9b\\u202e\\u2066x"
    )
    assert plain("café 2026-11-28 run-42") == "café 2026-11-28 run-42"


def test_markup_is_printed_as_written() -> None:
    evil = "[link=https://evil.example]click[/link] [red]all models revoked[/red]\x1b]0;title\x07"
    printed = rendered(shown(evil))
    assert "\x1b" not in printed and "\x07" not in printed
    assert printed.startswith("[link=https://evil.example]click[/link] [red]all models revoked")
    assert rendered(evil) != printed, "unescaped, rich would interpret it"
