"""One module per CLI subcommand (see :mod:`qbench.cli`)."""
