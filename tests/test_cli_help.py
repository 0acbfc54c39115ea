"""Every ``aioetl ... --help`` works and shows its text as written (#12).

Typer with rich 15 parsed help text as rich markup: ``ais://BUCKET[/PREFIX]`` in a
docstring raised ``MarkupError`` (a closing tag with no opening one), so ``aioetl
--help`` crashed, and ``[a-z0-9-]`` would have been swallowed as a style. The CLI
turns markup off for every app (``common.new_app``); these tests walk the click
tree Typer builds, so a command added later is covered without editing this file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from aioetl.engine.client.cli.main import app

AIOETL = Path(sys.executable).parent / "aioetl"


def _walk(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(argv path, click command)`` for the root and every group and command below it."""
    yield path, cmd
    for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
        yield from _walk(sub, (*path, name))


COMMANDS = dict(_walk(typer.main.get_command(app)))


def _flat(text: str) -> str:
    """Whitespace collapsed: help is wrapped to the terminal width."""
    return " ".join(text.split())


def _bracketed(cmd: Any) -> list[str]:
    """Every ``[...]`` in a command's own help text and its parameters' help."""
    texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
    return [m for t in texts for m in re.findall(r"\S*\[[^\]\n]*\]\S*", t)]


def test_the_walk_finds_every_level() -> None:
    paths = {" ".join(p) for p in COMMANDS}
    for expected in ("", "cluster", "cluster up", "put", "etl", "etl init", "etl init class", "etl init image",
                     "etl bucket", "etl objects", "job", "job errors", "bucket evict", "prefetch"):
        assert expected in paths, sorted(paths)
    assert len(paths) > 25


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p) or "aioetl")
def test_help_exits_0_and_shows_bracketed_text_literally(path: tuple[str, ...]) -> None:
    r = CliRunner().invoke(app, [*path, "--help"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "Usage:" in r.output
    shown = _flat(r.output)
    for lit in _bracketed(COMMANDS[path]):
        assert _flat(lit) in shown, (lit, r.output)


def test_the_documented_brackets_are_there() -> None:
    """The texts that crashed (or would have vanished) are in the help, unmangled."""
    assert any("ais://BUCKET[/PREFIX]" in b for b in _bracketed(COMMANDS[("put",)]))
    assert "ais://BUCKET[/PREFIX]" in CliRunner().invoke(app, ["put", "--help"]).output
    assert "[a-z0-9-]" in CliRunner().invoke(app, ["etl", "init", "image", "--help"]).output


def test_markup_is_off_for_every_app() -> None:
    groups = [c for c in COMMANDS.values() if getattr(c, "commands", None)]
    assert len(groups) >= 5
    for c in COMMANDS.values():
        assert getattr(c, "rich_markup_mode", None) is None, c.name


def test_user_text_in_errors_is_not_markup(tmp_path: Path) -> None:
    """A path or URL with brackets reaches the user as typed (it went through rich markup)."""
    missing = tmp_path / "no[/such]file"
    r = CliRunner().invoke(app, ["put", str(missing), "ais://b", "--endpoint", "http://127.0.0.1:9"])
    assert r.exit_code == 1, r.output
    assert f"error: {missing} does not exist" in _flat(r.output)

    r = CliRunner().invoke(app, ["ls", "gs://b[/x]", "--endpoint", "http://127.0.0.1:9"])
    assert r.exit_code == 2, r.output
    assert ("expected ais://BUCKET[/OBJECT], aws://BUCKET[/OBJECT] or s3://BUCKET[/OBJECT], got 'gs://b[/x]'"
            in _flat(r.output))

    r = CliRunner().invoke(app, ["ls", "s3://b[/x]", "--endpoint", "http://127.0.0.1:9"])
    assert r.exit_code == 2, r.output
    assert 'bucket name "b[" is invalid' in _flat(r.output)


def test_console_script_help(tmp_path: Path) -> None:
    """The installed entry point (and ``python -m aioetl``), in a process of its own, outside the repository."""
    assert AIOETL.exists(), AIOETL
    for argv in (["--help"], ["put", "--help"]):
        r = subprocess.run([str(AIOETL), *argv], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "Usage: aioetl" in r.stdout
    assert "ais://BUCKET[/PREFIX]" in r.stdout
    r = subprocess.run([sys.executable, "-m", "aioetl", "etl", "--help"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Initialize, inspect and use ETLs." in r.stdout
