"""Every ``countyfl`` command in README.md and docs/*.md works as written.

Commands are taken from fenced shell blocks (each ``&&``/``;`` segment whose command is
``countyfl`` or ``.venv/bin/countyfl``, after any ``VAR=value``) and from inline code spans
that start with ``countyfl``. Each document is replayed in its own empty folder, in the
order its commands appear, so that what a command needs is what the document made before
it (``task init`` before ``task validate``, ``certs add-node NAME`` before ``server
add-node certs/nodes/NAME.pub``). Each command is, in this order of choice:

- a **reference** when it is a command's name in a sentence (``countyfl run``), a group
  (``countyfl users``) or ends in ``...``: the command (or group) must exist;
- **parsed** when it takes minutes or needs a running county (:data:`PARSED`, with the
  reason): click's own parsing must accept it (unknown options, a wrong subcommand, a bad
  value fail), and every file it names must exist once the document's commands have run,
  unless a placeholder names it or the document has the reader provide it
  (:data:`PROVIDED`);
- **run** otherwise, through the real CLI (``countyfl.cli.app``), and must exit 0.

Placeholders (``NAME``, ``VERSION``, ``RUN_DIR`` ...) are replaced by :data:`PLACEHOLDERS`;
an unknown one fails the test, so that a new one is looked at.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from countyfl.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Command paths that are parsed, not run, and why.
PARSED: dict[tuple[str, ...], str] = {
    ("simulate",): "trains for minutes",
    ("server", "start"): "the county's SuperLink: a daemon",
    ("server", "add-node"): "needs a running SuperLink",
    ("node", "start"): "an institution's SuperNode: a daemon",
    ("node", "check"): "needs the site's own export, which the site provides",
    ("node", "approve"): "needs the site's own site.toml, which the site writes",
    ("run",): "a federated run on a deployed county",
    ("serve",): "the API server: a daemon",
    ("model", "publish"): "needs a finished run's folder",
    ("registry", "register"): "needs a published model and a registry user",
    ("registry", "promote"): "needs a registered model and held-out data",
    ("users", "approve"): "needs a pending account in the registry",
    ("users", "approve-token"): "needs a pending token in the registry",
    ("users", "token"): "needs a user in the registry",
}
# Files the documents have the reader provide (their own data, or a file they write
# from a documented example), rather than make with an earlier command.
PROVIDED = {
    "site.toml": "each institution writes it (docs/deployment.md step 3, docs/site-data.md)",
    "export.toml": "the export file of docs/site-data.md",
    "heldout.csv": "the regulator's held-out data",
}
PLACEHOLDERS = {
    "NAME": "township-3",
    "VERSION": "1",
    "ID": "1",
    "RUN_DIR": "runs/hf/seed-42",
    "FOLDER": "runs/hf/seed-42/published",
    "SCENARIO": "fed-heart-disease",
    "TASK.toml": "task.toml",
    "EXPORT": "export.csv",
}
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_]*[A-Z](?:\.toml)?\b")
FENCE = re.compile(r"^\s*```(\S*)\s*$")
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
OPTIONS_WRITTEN = {"--out", "-o", "--output", "--state-dir", "--share"}


class Mode(StrEnum):
    RUN = "run"
    PARSE = "parse"
    REFERENCE = "reference"


@dataclass(frozen=True)
class DocCommand:
    """One ``countyfl`` command as a document writes it."""

    document: str
    line: int
    text: str
    argv: tuple[str, ...]  # after ``countyfl``, placeholders replaced
    placeholder_values: frozenset[str]
    inline: bool = False  # from a code span in prose, not a shell block

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: `{self.text}`"


def _shell_lines(text: str) -> Iterator[tuple[int, str]]:
    inside: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match:
            inside = (match[1] or "") if inside is None else None
        elif inside in SHELL_BLOCKS:
            yield number, line


def _prose(text: str) -> str:
    """The document with every fenced block blanked (line numbers kept)."""
    lines, inside = [], False
    for line in text.splitlines():
        fence = bool(FENCE.match(line))
        lines.append("" if inside or fence else line)
        inside = inside != fence
    return "\n".join(lines)


def _command(
    document: str, line: int, words: list[str], *, inline: bool = False
) -> DocCommand | None:
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]  # VAR=value before the command
    if not words or not (words[0] == "countyfl" or words[0].endswith("/countyfl")):
        return None
    text = " ".join(["countyfl", *words[1:]])
    used: set[str] = set()
    argv = []
    for word in words[1:]:
        for name, value in PLACEHOLDERS.items():
            if name in word:
                word = word.replace(name, value)
                used.add(value)
        argv.append(word)
    return DocCommand(document, line, text, tuple(argv), frozenset(used), inline)


def extract(path: Path) -> list[DocCommand]:
    """Every countyfl command of a document, in the order it appears."""
    text = path.read_text(encoding="utf-8")
    found: list[DocCommand] = []
    for number, line in _shell_lines(text):
        if not re.search(r"(^|[\s/])countyfl\s", line):
            continue  # a file tree, a comment, another tool
        words = shlex.split(line, comments=True)
        segment: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";", "||", "|"):
                command = _command(path.name, number, segment)
                if command is not None:
                    found.append(command)
                segment = []
            else:
                segment.append(word)
    prose = _prose(text)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        words_text = " ".join(match[1].split())
        if not re.match(r"(\S*/)?countyfl ", words_text):
            continue
        number = prose.count("\n", 0, match.start()) + 1
        command = _command(path.name, number, shlex.split(words_text), inline=True)
        if command is not None:
            found.append(command)
    return sorted(found, key=lambda c: c.line)


def _resolve(argv: tuple[str, ...]) -> tuple[tuple[str, ...], click.Command, list[str]]:
    """The command path argv names, its click command and the rest of argv."""
    command: click.Command = typer.main.get_command(app)
    context = click.Context(command, info_name="countyfl")
    path: list[str] = []
    rest = list(argv)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name, sub, rest = command.resolve_command(context, rest)
        if sub is None or name is None:
            raise click.UsageError(f"no command {rest[0]!r} under {' '.join(path) or 'countyfl'}")
        path.append(name)
        command = sub
        context = click.Context(command, info_name=name, parent=context)
    return tuple(path), command, rest


def _mode(command: DocCommand) -> Mode:
    if "..." in command.argv:
        _resolve(tuple(word for word in command.argv if word != "..."))
        return Mode.REFERENCE
    path, click_command, rest = _resolve(command.argv)
    if not rest and (command.inline or isinstance(click_command, click.Group)):
        return Mode.REFERENCE  # a command's name in a sentence, or a group
    if "--help" in rest:
        return Mode.RUN
    if any(path[: len(prefix)] == prefix for prefix in PARSED):
        return Mode.PARSE
    return Mode.RUN


FILE_LIKE = re.compile(r"[\w.\-/]+\.(toml|json|csv|xlsx|pub|key|pem|ckks|npz)|[\w.\-]+/[\w.\-/]+")


def _looks_like_a_file(word: str) -> bool:
    return not word.startswith("-") and bool(FILE_LIKE.fullmatch(word))


def _parse(command: DocCommand, folder: Path) -> str:
    """Why click or the files refuse ``command`` (empty if they accept it)."""
    path, click_command, rest = _resolve(command.argv)
    try:
        click_command.make_context(" ".join(path), list(rest))
    except click.ClickException as error:
        return error.format_message()
    missing = []
    previous = ""
    for word in rest:
        written = previous in OPTIONS_WRITTEN
        previous = word
        if written or not _looks_like_a_file(word) or word.startswith("/"):
            continue
        if any(value in word for value in command.placeholder_values):
            continue
        if Path(word).name in PROVIDED or (folder / word).exists():
            continue
        missing.append(word)
    if missing:
        return (
            f"names {', '.join(missing)}, which no command of the document makes and the "
            "reader is not told to provide (PROVIDED)"
        )
    return ""


def _run(command: DocCommand, folder: Path) -> str:
    result = CliRunner(env={"COLUMNS": "200", "COUNTYFL_HOME": str(folder / "home")}).invoke(
        app, list(command.argv)
    )
    if result.exit_code == 0:
        return ""
    problem = result.output.strip()[-800:] or repr(result.exception)
    return f"exit {result.exit_code}: {problem}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.name for d in DOCUMENTS])
def test_every_countyfl_command_of_the_document_works_as_written(
    document: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COUNTYFL_HOME", str(tmp_path / "home"))
    problems = []
    modes: dict[DocCommand, Mode] = {}
    for command in extract(document):
        unknown = set(PLACEHOLDER.findall(" ".join(command.argv))) - {"KEY", "VALUE"}
        if unknown:
            problems.append(f"{command}: unknown placeholder(s) {sorted(unknown)}")
            continue
        try:
            modes[command] = _mode(command)
        except click.UsageError as error:
            problems.append(f"{command}: {error.format_message()}")
    # The commands that run make the document's files, in its order; a parsed command
    # may name a file its document makes anywhere (a table of what runs where comes
    # before the steps that make the files).
    for mode, check in ((Mode.RUN, _run), (Mode.PARSE, _parse)):
        for command in (c for c, m in modes.items() if m is mode):
            problem = check(command, tmp_path)
            if problem:
                problems.append(f"{command} ({mode.value}): {problem}")
    assert not problems, "\n".join(problems)


def test_the_extractor_finds_block_and_inline_commands(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Run `countyfl task show\n  heart-failure.toml` or `ruff check countyfl`.\n\n"
        "```bash\n"
        "bash scripts/setup.sh && .venv/bin/countyfl scenarios   # lists them\n"
        "COUNTYFL_X=1 countyfl users token NAME\n"
        "```\n\n"
        "```toml\n"
        'x = "countyfl run"\n'
        "```\n",
        encoding="utf-8",
    )
    found = [(c.line, c.argv) for c in extract(page)]
    assert found == [
        (1, ("task", "show", "heart-failure.toml")),
        (5, ("scenarios",)),
        (6, ("users", "token", "township-3")),
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("run", "--state-dir", "s", "-o", "out", "--no-such-option"), "No such option"),
        (("node", "begin", "--site", "site.toml"), "No such command"),
        (("server", "add-node", "certs/nodes/x.pub", "--state-dir", "s"), "no command of"),
    ],
    ids=["unknown-option", "wrong-subcommand", "missing-file"],
)
def test_a_parsed_command_that_is_wrong_is_caught(
    argv: tuple[str, ...], expected: str, tmp_path: Path
) -> None:
    command = DocCommand("page.md", 1, " ".join(argv), argv, frozenset())
    try:
        problem = _parse(command, tmp_path)
    except click.UsageError as error:
        problem = error.format_message()
    assert expected in problem
