"""Command-line entry point: ``python -m qbench <command> ...``.

Each subcommand lives in ``qbench/commands/<name>.py`` and exposes ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Modules import their heavy
dependencies (torch, brevitas, runtimes) inside ``run`` so ``--help`` stays fast.
User errors (:class:`~qbench.errors.QbenchError`, which config validation errors are too) become one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from qbench import __version__
from qbench.errors import QbenchError

# Order is the order ``--help`` lists them in.
COMMANDS = ("data", "train", "quantize", "export", "sweep", "report")

EXIT_USAGE = 2
DESCRIPTION = "qbench: quantization and kernel benchmarks for small on-device audio models"


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors on one line (its default prints usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _command_module(name: str):
    return importlib.import_module(f"qbench.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qbench", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"qbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = _command_module(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args._run(args) or 0)
    except QbenchError as exc:
        print(f"qbench {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"qbench {args.command}: interrupted", file=sys.stderr)
        return 130

