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
    from qbench.records import ResultsDocument
    from qbench.report import render

    path = args.path / RESULTS_FILE if args.path.is_dir() else args.path
    doc = ResultsDocument.load(path)
    for written in render(doc, args.out):
        print(written)
    return 0
