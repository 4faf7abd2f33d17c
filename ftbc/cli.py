"""The ``ftbc`` command: one subcommand per entry point.

Each subcommand lives in its own module exposing ``get_args_parser()`` and
``main(args)`` (torchvision-references style), so scripts and the workflow
can call ``main`` directly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable, NoReturn

from ftbc.train.allocator import keep_freed_memory
from ftbc.errors import UserError

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("ftbc.train.training", "train an ANN (ReLU, QCFS or clipped ReLU)"),
    "evaluate": ("ftbc.run.evaluation", "convert, calibrate and evaluate an SNN at every time step"),
    "quickstart": ("ftbc.run.quickstart", "train the small network on CIFAR-10, convert, calibrate, print the per-T table"),
    "methods": ("baselines.cli", "list the registered conversion methods"),
    "bench": ("ftbc.bench.bench", "time SNN evaluation and an FTBC pass against T ANN passes, the releases and SpikingJelly"),
    "prepare-data": ("ftbc.data.prepare", "check a dataset (extracting an archive if given one) and cache it"),
    "tables": ("ftbc.report.tables", "aggregate evaluation outputs into the long table, paper tables and figures"),
    "import-checkpoint": ("ftbc.interop.checkpoint_import", "map a release's trained ANN (.pth) onto the suite's model"),
    "export": ("ftbc.interop.export", "write a saved calibrated SNN as a SpikingJelly module or a NIR graph"),
}


def version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("ftbc")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown (not installed)"


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Each flag's help ends with its default, unless the flag is required or off by default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.required or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _usage_error(prog: str) -> Callable[[str], NoReturn]:
    """An ``ArgumentParser.error`` that raises :class:`UserError`: one line, no usage block, status 2."""

    def error(message: str) -> NoReturn:
        raise UserError(f"{message} (see {prog} --help)")

    return error


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="ftbc", description=__doc__.splitlines()[0])
    top.add_argument("--version", action="version", version=f"ftbc {version()}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if argv[:1] == ["--version"]:
        top.parse_args(argv)  # prints the version and exits
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"ftbc: error: unknown command {argv[0]!r} (choose from {', '.join(SUBCOMMANDS)})", file=sys.stderr)
            return 2
        top.print_help()
        return 0
    try:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        parser = module.get_args_parser()
        parser.prog = f"ftbc {argv[0]}"
        parser.formatter_class = DefaultsHelpFormatter
        parser.error = _usage_error(parser.prog)  # type: ignore[method-assign]
        args = parser.parse_args(argv[1:])
        # Progress lines (per epoch, stage, FTBC iteration, T) go to stdout as they happen,
        # so `tail -f` on a job's log shows where it is; bars only on a terminal.
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                            stream=sys.stdout)
        keep_freed_memory()  # no page-fault churn from freeing and reallocating the same tensors
        return int(module.main(args) or 0)
    except UserError as e:
        print(f"ftbc {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
