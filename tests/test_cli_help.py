"""Every command's --help states each option's default at most once, and never a default of None."""

from __future__ import annotations

import argparse
from typing import Callable

import pytest

from cloud_server.cli import build_parser as cloud_parser
from edge_client.cli import build_parser as edge_parser
from fer_bench.cli import build_parser as bench_parser
from shared_model.training.cli import build_parser as train_parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(found[0].choices) if found else {}


def _option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help line of one option exactly as --help prints it, without the wrapping."""
    formatter = parser._get_formatter()
    return " ".join(formatter._expand_help(action).split()) if action.help else ""


COMMANDS = [
    (name, command, sub)
    for name, factory in (("fer-edge", edge_parser), ("fer-cloud", cloud_parser), ("fer-bench", bench_parser), ("fer-train", train_parser))
    for command, sub in _subcommands(factory()).items()
]


@pytest.mark.parametrize(("program", "command", "parser"), COMMANDS, ids=[f"{p} {c}" for p, c, _ in COMMANDS])
def test_each_default_is_stated_once(program: str, command: str, parser: argparse.ArgumentParser) -> None:
    lines = {", ".join(action.option_strings) or action.dest: _option_help(parser, action) for action in parser._actions}
    assert not [option for option, text in lines.items() if "(default: None)" in text or "(default: False)" in text]
    assert not [option for option, text in lines.items() if text.count("(default") > 1], lines
