"""The README's Python API example runs as printed (issue 14, item 3)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = README.read_text()
    section = text[text.index("\n## Python API\n"):]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the Python API section has no python block"
    return match.group(1)


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "cache"))
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(python_api_example(), str(README) + ":python-api", "exec"), namespace)
    frame = namespace["frame"]
    assert set(frame["status"]) == {"ok"}, frame[frame["status"] != "ok"]["error"].tolist()
    kws = frame[frame["model"] == "Kws"]
    assert {"w4a4", "w8a8", "fp32"} <= set(kws["precision"])
    assert {"torch", "onnxruntime"} <= set(kws["backend"])
    assert (kws["metrics.error"].between(0, 1)).all()
    assert "Kws" in capsys.readouterr().out
