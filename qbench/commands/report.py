"""``qbench report PATH``: re-render tables and plots from a stored results file."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "re-render the Markdown table, CSV and Pareto plots from stored sweep records"
RESULTS_FILE = "sweep.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help=f"a results folder (holding {RESULTS_FILE}) or a results JSON file")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: beside the results file)")


def run(args: argparse.Namespace) -> int:
    from qbench.files import environment_errors, writable_dir
    from qbench.records import ResultsDocument
    from qbench.report import render

    path = args.path / RESULTS_FILE if args.path.is_dir() else args.path
    doc = ResultsDocument.load(path)
    out = writable_dir(args.out or doc.path.parent, what="report folder")
    with environment_errors("cannot write the report"):
        written = render(doc, out)
    for p in written:
        print(p)
    return 0
