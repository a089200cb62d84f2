"""Mixed-precision search (issue 17): the greedy descent, the frontier, the answer's rule, and
``qbench search --quick`` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qbench.cli import main
from qbench.quant.precision import Precision
from qbench.search import (Layer, SearchConfig, answer, bitops, greedy_path, layer_table, pareto_front, spread,
                           weight_bytes)

LAYERS = [Layer("a", "Conv2d", 1000, 10_000), Layer("b", "Conv2d", 1000, 10_000), Layer("c", "Linear", 100, 100)]
WIDTHS = (2, 4, 8)


def test_greedy_lowers_the_least_sensitive_layer_per_byte_first() -> None:
    sens = {"a": {2: 0.30, 4: 0.11, 8: 0.10}, "b": {2: 0.12, 4: 0.10, 8: 0.10}, "c": {2: 0.10, 4: 0.10, 8: 0.10}}
    path = greedy_path(LAYERS, sens, WIDTHS, lambda w: weight_bytes(LAYERS, w, 8))
    assert path[0] == {"a": 8, "b": 8, "c": 8} and path[-1] == {"a": 2, "b": 2, "c": 2}
    assert len(path) == 1 + len(LAYERS) * (len(WIDTHS) - 1)
    costs = [weight_bytes(LAYERS, w, 8) for w in path]
    assert all(x > y for x, y in zip(costs, costs[1:]))  # every step saves
    # free moves first, biggest saving first: b to 4 (costless, 500 B), then c (free, 50 B) ... a's 2-bit step last
    assert path[1] == {"a": 8, "b": 4, "c": 8} and path[-2] == {"a": 4, "b": 2, "c": 2}


def test_frontier_spread_and_costs() -> None:
    assert pareto_front([(3, 0.1), (2, 0.2), (1, 0.5), (2.5, 0.3)]) == [2, 1, 0]
    assert spread([1, 2, 3, 4, 5, 6, 7], 3) == [1, 4, 7] and spread([1, 2], 4) == [1, 2]
    assert weight_bytes(LAYERS, {"a": 4}, 8) == 500 + 1000 + 100
    assert bitops(LAYERS, {"c": 2}, 8, 8) == 10_000 * 64 * 2 + 100 * 16


def test_config_precision_is_compact_and_uniform_when_alike() -> None:
    scfg = SearchConfig(widths=WIDTHS)
    assert scfg.precision({"a": 4, "b": 4, "c": 4}) == Precision(4, 8)
    assert str(scfg.precision({"a": 4, "b": 4}, ["a", "b", "c"])) == "w4a8:c=w8"
    with pytest.raises(Exception, match="at least two widths"):
        SearchConfig(widths=(8,))


def _candidate(kind, bits, delta_hi, packed, ok=True):
    q = {"status": "ok", "error": 0.2, "delta": delta_hi / 2, "delta_ci95": [0.0, delta_hi], "packed_bytes": packed}
    return {"kind": kind, "bits": bits, "name": Precision.parse(bits).name, "bitops": packed * 10,
            "qat": q if ok else {"status": "failed", "reason": "x"}}


def test_answer_is_the_cheapest_within_the_budget_at_95_percent() -> None:
    students = {"m": {"confirmed": [
        _candidate("uniform", "w8a8", 0.002, 30_000), _candidate("uniform", "w4a8", 0.015, 16_000),
        _candidate("mixed", "w4a8:fc=w8", 0.008, 17_000), _candidate("mixed", "w2a8:fc=w8", 0.03, 9_000),
        _candidate("mixed", "w3a8:fc=w8", 0.001, 12_000, ok=False)]}}
    a = answer(students, SearchConfig(widths=WIDTHS, max_error_increase=1.0))["m"]
    assert a["best"] == "w4a8:fc=w8" and a["best_uniform"] == "w8a8" and a["mixed_wins"]
    # a uniform configuration as cheap as the best mixed one wins the tie
    students["m"]["confirmed"].append(_candidate("uniform", "w6a8", 0.005, 17_000))
    a = answer(students, SearchConfig(widths=WIDTHS))["m"]
    assert a["best"] == "w6a8" and not a["mixed_wins"]


def test_layer_table_counts_weights_and_macs() -> None:
    import models
    import numpy as np

    net = models.build_student("lstm", n_mels=20, n_frames=48, n_classes=4)
    table = {l.name: l for l in layer_table(net, np.zeros((2, 48, 20), np.float32))}
    assert set(table) == {"lstm", "fc"}
    lstm = net.lstm
    assert table["lstm"].params == lstm.weight_ih_l0.numel() + lstm.weight_hh_l0.numel()
    assert table["fc"].macs == net.fc.in_features * net.fc.out_features
    assert table["lstm"].macs % table["lstm"].params == 0  # one pass of the weights per time step


def test_search_quick_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "search"
    code = main(["search", "--quick", "--models", "dscnn", "--widths", "4,8", "--out", str(out), "--no-progress",
                 "--cache", str(tmp_path / "cache")])
    assert code == 0
    doc = json.loads((out / "search.json").read_text())
    assert doc["kind"] == "qbench-search" and doc["provenance"]["machine_id"] and doc["config"]["search"]["widths"] == [4, 8]
    s = doc["students"]["dscnn"]
    assert len(s["path"]) == 1 + len(s["layers"]) and set(s["sensitivity"]) == {l["name"] for l in s["layers"]}
    uniform = {c["bits"] for c in s["confirmed"] if c["kind"] == "uniform"}
    assert uniform == {"w4a8", "w8a8"}
    for c in s["confirmed"]:
        assert c["qat"]["status"] == "ok" and len(c["qat"]["delta_ci95"]) == 2 and c["qat"]["n"] > 0
    a = doc["answer"]["dscnn"]
    assert a["best"] is None or a["command"].startswith("python -m qbench sweep --models dscnn")
    for name in ("pareto.csv", "search.md", "frontier_dscnn.png", "sensitivity_dscnn.png"):
        assert (out / name).stat().st_size > 0
    (out / "search.md").unlink()
    assert main(["report", str(out)]) == 0  # re-rendered from search.json alone
    assert "## dscnn" in (out / "search.md").read_text()


def test_bad_search_options_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["search", "--quick", "--models", "dscnn", "--widths", "8", "--out", str(tmp_path)]) == 2
    assert "at least two widths" in capsys.readouterr().err
    assert main(["search", "--quick", "--cost", "latency", "--latency-backend", "tpu", "--out", str(tmp_path)]) == 2
    assert "--latency-backend must be one of" in capsys.readouterr().err


def test_search_quick_latency_cost_measures_and_deploys(tmp_path: Path) -> None:
    out = tmp_path / "search"
    code = main(["search", "--quick", "--models", "lstm", "--cost", "latency", "--backends", "engine",
                 "--out", str(out), "--no-progress", "--cache", str(tmp_path / "cache")])
    assert code == 0
    doc = json.loads((out / "search.json").read_text())
    for c in doc["students"]["lstm"]["confirmed"]:
        assert c["latency"]["backend"] == "engine" and c["latency"]["status"] == "ok"
        assert c["latency"]["latency"]["b1_t1"]["median_ms"] > 0
    a = doc["answer"]["lstm"]
    assert a["best"] is not None and math.isfinite(a["best_cost"])
    assert [d["backend"] for d in a["deployment"]] == ["torch", "engine"]
    assert all(d["status"] == "ok" and d["latency_ms"] > 0 for d in a["deployment"])
