"""Command-line entry point: ``python -m qbench <command> ...``.

Each subcommand lives in ``qbench/commands/<name>.py`` and exposes ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Modules import their heavy
dependencies (torch, brevitas, runtimes) inside ``run`` so ``--help`` stays fast.
User errors (:class:`~qbench.errors.QbenchError`, which config validation errors are too) become one line
on stderr and exit code 2.

Exit codes: 0 done (for ``sweep``: every point ok); 1 a sweep finished but some points failed
(each recorded with its reason); 2 bad input, refused before or instead of the work (one line on
stderr); 130 interrupted (Ctrl-C; finished sweep points are kept). Anything else is a bug: Python's
traceback and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from qbench import __version__
from qbench.errors import QbenchError
from qbench.files import is_environment_error, os_error_line

# Order is the order ``--help`` lists them in.
COMMANDS = ("data", "train", "quantize", "export", "sweep", "search", "report")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
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
    except OSError as exc:  # a full disk or a read-only place any command met: the machine's doing, not a bug
        if not is_environment_error(exc):
            raise
        print(f"qbench {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"qbench {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

