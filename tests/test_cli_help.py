"""Every command says what it does in one line and shows an example (checked generically, so a
new subcommand without them fails here)."""

from __future__ import annotations

import argparse

import pytest

from honed.cli.main import build_parser
from tests.helpers import cli


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str | None,
                                                                                          argparse.ArgumentParser]]:
    """(command path, its one-line help, its parser) for every subcommand, nested ones included."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append(((*path, name), helps.get(name), sub))
                out += _commands(sub, (*path, name))
    return out


COMMANDS = _commands(build_parser())


def test_top_level_help_lists_commands_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text
    for path, _, _ in COMMANDS:
        if len(path) == 1:
            assert path[0] in text


def test_the_shortcuts_are_registered() -> None:
    names = {p[0] for p, _, _ in COMMANDS}
    assert {"finetune", "optimize", "quantize", "capture-onnx-graph", "run"} <= names


@pytest.mark.parametrize(("path", "help_line", "parser"), COMMANDS, ids=[" ".join(p) for p, _, _ in COMMANDS])
def test_subcommand_has_one_line_help_and_an_example(path: tuple[str, ...], help_line: str | None,
                                                     parser: argparse.ArgumentParser) -> None:
    assert help_line, f"honed {' '.join(path)}: add help= (one line saying what it does)"
    assert "\n" not in help_line and len(help_line) <= 110
    epilog = parser.epilog or ""
    assert "example" in epilog.lower(), f"honed {' '.join(path)}: add an example to epilog"
    # The example itself is a honed command line, shown verbatim in --help.
    assert f"honed {path[0]}" in epilog
    assert epilog.strip().splitlines()[-1] in parser.format_help()


@pytest.mark.parametrize("path", [p for p, _, _ in COMMANDS], ids=[" ".join(p) for p, _, _ in COMMANDS])
def test_help_exits_zero(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli(*path, "--help")
    assert e.value.code == 0
    assert "usage: honed " + " ".join(path) in capsys.readouterr().out


def test_the_cli_log_format_leaves_the_shared_record_alone() -> None:
    """honed's handler prints ``warning: ...``; the record itself must keep ``WARNING`` for every other handler
    (a log capture, a user's handler). Fault caught: lower-casing ``record.levelname`` in place, which made a later
    test's capture see no WARNING records after any in-process CLI run."""
    import logging

    from honed.cli.main import _LowerLevel

    record = logging.LogRecord("honed", logging.WARNING, __file__, 1, "disk %s", ("full",), None)
    assert _LowerLevel("%(levelname)s: %(message)s").format(record) == "warning: disk full"
    assert record.levelname == "WARNING"
