"""The CLI lists its commands, reports its version, and turns user errors into one line."""

import subprocess
import sys

import pytest

from qbench import __version__
from qbench.cli import COMMANDS, build_parser, main


def test_help_lists_every_built_command():
    help_text = build_parser().format_help()
    for name in COMMANDS:
        assert f"\n    {name}" in help_text, f"{name} missing from --help"


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice" in err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_python_dash_m_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "qbench", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "report" in done.stdout
