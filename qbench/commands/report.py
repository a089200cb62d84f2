"""``qbench report PATH``: re-render tables and plots from a stored results file (a sweep's or a search's)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "re-render the Markdown tables, CSV and plots from stored sweep or search records"
RESULTS_FILE = "sweep.json"
SEARCH_FILE = "search.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help=f"a results folder (holding {RESULTS_FILE} or {SEARCH_FILE}) "
                        "or such a JSON file")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: beside the results file)")


def run(args: argparse.Namespace) -> int:
    from qbench.files import environment_errors, writable_dir
    from qbench.records import ResultsDocument
    from qbench.report import render

    path = args.path / RESULTS_FILE if args.path.is_dir() else args.path
    search = args.path / SEARCH_FILE if args.path.is_dir() else args.path
    if search.name == SEARCH_FILE and search.is_file():
        from qbench.search_report import load, render_search

        doc, where = load(search), writable_dir(args.out or search.parent, what="report folder")
        with environment_errors("cannot write the report"):
            written = render_search(doc, where)
        for p in written:
            print(p)
        return 0
    doc = ResultsDocument.load(path)
    out = writable_dir(args.out or doc.path.parent, what="report folder")
    with environment_errors("cannot write the report"):
        written = render(doc, out)
    for p in written:
        print(p)
    return 0
