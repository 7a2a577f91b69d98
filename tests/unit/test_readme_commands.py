"""Every cmdb-connector command the READMEs show parses as written (the README must stay true)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from connector.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
READMES = [ROOT / "README.md", ROOT / "mappings" / "README.md", ROOT / "deploy" / "README.md"]
# a command, where a shell or a unit file would run it: at the start, after &&, after cron's fields, after
# ExecStart=, or as a path's last part; its arguments up to the end of the command
COMMAND = re.compile(r"(?:^|&& |\* |=|bin/)cmdb-connector((?: +[^\s`&|;]+)*)")


def shown_commands() -> list[str]:
    found = []
    for readme in READMES:
        text = readme.read_text()
        places = re.findall(r"`([^`\n]+)`", text)
        places += [line.strip() for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) for line in block.splitlines()]
        for place in places:
            for match in COMMAND.finditer(place):
                args = " ".join(shlex.split(match.group(1), comments=True))
                # not the synopsis ([--config PATH] COMMAND), nor the name alone (Description=cmdb-connector: ...)
                if args and "[" not in args and "COMMAND" not in args:
                    found.append(args)
    return sorted(set(found))


def test_the_readmes_show_commands():
    assert len(shown_commands()) >= 8  # the extraction finds them: a test of nothing would pass


@pytest.mark.parametrize("args", shown_commands())
def test_a_command_the_readmes_show_parses(args):
    argv = shlex.split(args)
    _parser().parse_args(argv)  # argparse exits (SystemExit) on anything it does not take
