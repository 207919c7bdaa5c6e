"""Every subcommand's --help ends with an example that parses with the same parser."""

import re
import shlex

import pytest

from iotstream.cli.help import EXAMPLES, subcommands
from iotstream.cli.main import build_parser

PARSER = build_parser()
ALL = dict(subcommands(PARSER))


def test_every_subcommand_has_an_example_and_no_example_is_stale():
    assert set(ALL) == set(EXAMPLES)


@pytest.mark.parametrize("words", sorted(ALL))
def test_help_shows_an_example_that_parses(words):
    text = ALL[words].format_help()
    assert f"example:\n  {EXAMPLES[words]}" in text
    example = EXAMPLES[words].split("  (")[0].replace("<ID from query anomalies>", "ID")
    argv = shlex.split(re.split(r" [>|] ", example)[0])[1:]  # the command, without a redirect or pipe
    args = PARSER.parse_args(argv)  # argparse exits on an unknown flag or a missing argument
    assert args.fn is not None
