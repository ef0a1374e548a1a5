"""`unlearnable --help` and every command's `--help` stay word for word what users and docs know.

tests/cli_help_snapshot.json holds those texts; this module writes it (`python tests/test_cli_help.py`). It was
first written from the one-file CLI, before the commands moved into modules of their own. Rewrite it only when
a flag or a help text changes on purpose, and read the diff.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).with_name("cli_help_snapshot.json")
#: argparse wraps help at $COLUMNS: fixed, so the texts do not depend on the terminal
COLUMNS = 100


def help_texts() -> dict[str, str]:
    """The help of the top level (key "") and of every command, as `--help` prints them at $COLUMNS."""
    from shared_core.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return {"": parser.format_help(), **{name: command.format_help() for name, command in commands.choices.items()}}


def python_version() -> str:
    """argparse's layout changes between Python versions, so a snapshot holds for the version that wrote it."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def test_help_texts_match_the_snapshot(monkeypatch):
    snapshot = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    if snapshot["python"] != python_version():
        pytest.skip(f"the help snapshot was written with Python {snapshot['python']}, whose argparse lays help out differently")
    monkeypatch.setenv("COLUMNS", str(snapshot["columns"]))
    texts = help_texts()
    assert list(texts) == list(snapshot["help"]), "the commands changed"
    for command, text in snapshot["help"].items():
        assert texts[command] == text, f"`{f'unlearnable {command}'.strip()} --help` changed"


if __name__ == "__main__":
    os.environ["COLUMNS"] = str(COLUMNS)
    snapshot = {"python": python_version(), "columns": COLUMNS, "help": help_texts()}
    SNAPSHOT.write_text(json.dumps(snapshot, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {SNAPSHOT}: {len(snapshot['help'])} help texts (Python {snapshot['python']}, {COLUMNS} columns)")
