"""Every `stirgate ...` command line the docs show parses with the CLI's own argument parser (issue 14).

The README's and docs/*.md's fenced code blocks, and the systemd unit's Exec lines: a renamed option or a
subcommand that changed its arguments fails here instead of in a reader's terminal. Parsing only (what `--help`
knows): nothing runs.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from proxy.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
UNIT = ROOT / "examples" / "systemd" / "stirgate.service"
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}
FENCE = re.compile(r"^\s*```")


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) in fenced code blocks; backslash continuations joined, a `$ ` prompt dropped."""
    out: list[tuple[int, str]] = []
    inside, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        out.append((start, logical.removeprefix("$ ")))
    return out


def stirgate_commands(line: str) -> list[list[str]]:
    """The argument lists of the `stirgate` invocations on one shell line (after `&&`, `;`, ... too)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # not shell (YAML, a log line): nothing to check
        return []
    commands, current = [], []
    for token in [*tokens, ";"]:
        if token in SHELL_OPERATORS:
            if current and (current[0] == "stirgate" or current[0].endswith("/stirgate")):
                commands.append(current[1:])
            current = []
        else:
            current.append(token)
    return commands


def documented() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for doc in DOCS:
        for number, line in code_lines(doc.read_text()):
            found += [(f"{doc.relative_to(ROOT)}:{number}", argv) for argv in stirgate_commands(line)]
    for number, line in enumerate(UNIT.read_text().splitlines(), 1):
        key, _, value = line.partition("=")
        if key.startswith("Exec"):
            found += [(f"{UNIT.relative_to(ROOT)}:{number}", argv) for argv in stirgate_commands(value)]
    return found


COMMANDS = documented()


def test_the_docs_show_commands() -> None:
    # The README alone shows verify, sign, traceback, report, run, check-config, certs init and --version.
    shown = {argv[0] for _where, argv in COMMANDS if argv}
    assert {"run", "check-config", "verify", "sign", "traceback", "report", "certs", "--version"} <= shown, shown


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(where: str, argv: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:  # --help / --version exit 0; a parse error exits 2
            assert exc.code == 0, f"{where}: stirgate {shlex.join(argv)}\n{err.getvalue()}"


def test_a_wrong_option_is_caught() -> None:
    """The check can fail: the README's old spelling of verify (the header is positional) does not parse."""
    (argv,) = stirgate_commands('stirgate verify --identity "$IDENTITY" --orig 1 --dest 2 --ca ca/')
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
