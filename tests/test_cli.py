"""The ``ftbc`` command's conventions: version, help with defaults, one name per flag, clear exits."""

import argparse
import re
import importlib

import pytest

from ftbc.cli import SUBCOMMANDS, DefaultsHelpFormatter, main


def _parsers():
    for name, (module, _) in SUBCOMMANDS.items():
        parser = importlib.import_module(module).get_args_parser()
        parser.formatter_class = DefaultsHelpFormatter
        yield name, parser


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("ftbc ")


@pytest.mark.parametrize("name, parser", list(_parsers()), ids=list(SUBCOMMANDS))
def test_every_flag_has_help_and_shows_its_default(name, parser):
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert [a.dest for a in actions if not a.help] == []
    text = parser.format_help()
    for a in actions:
        if a.option_strings and not a.required and a.default not in (None, False, []):
            assert f"(default: {a.default})" in " ".join(text.split()), (name, a.dest)
            # the formatter adds the default: a help that also says it in words shows it twice
            assert not re.search(r"\(default [^:]", a.help), (name, a.dest, a.help)
    flags = {o for a in actions for o in a.option_strings}
    # one name for one thing across subcommands; old spellings stay as aliases of the new ones
    assert not {"--batch", "--output"} & flags or {"--batch-size", "--out"} <= flags


def test_methods_names_what_matched_nothing_and_shows_papers(capsys):
    assert main(["methods", "nosuch*"]) == 2
    assert "no registered method matches 'nosuch*'; registered: maxnorm" in capsys.readouterr().err
    assert main(["methods", "-v", "snnc_light"]) == 0
    out = capsys.readouterr().out
    assert "snnc_light: ReLU ANN, MSE-searched thresholds" in out and "ICML 2021" in out
