"""Tables show intervals, 'no difference', seeds, and the speed-up against fp32 on the same runtime."""

from __future__ import annotations

from qbench.report import accuracy_table, deployment_table, delta_cell, error_cell, seeds_table


def _rec(**fields):
    base = {"status": "ok", "role": "student", "model": "lstm", "distill": "kd", "backend": "torch",
            "precision": "fp32", "method": "fp32", "seed": None, "weight_bits": None}
    return {**base, **fields}


def test_error_and_change_cells_carry_their_intervals() -> None:
    r = _rec(metrics={"error": 0.25, "n": 3000, "ci95": [0.235, 0.266]})
    assert error_cell(r) == "25.0 [23.5, 26.6]"
    assert delta_cell({"delta_error_vs_fp32": 0.004, "delta_ci95": [-0.002, 0.01]}).endswith("(no difference)")
    assert "no difference" not in delta_cell({"delta_error_vs_fp32": 0.03, "delta_ci95": [0.02, 0.04]})
    table = accuracy_table([r])
    assert "25.0 [23.5, 26.6]" in table and "3000" in table


def test_seeds_table_reports_mean_spread_and_per_seed_intervals() -> None:
    records = [
        _rec(distill="none", metrics={"error": e}, seed=s) for s, e in ((None, 0.30), (1, 0.32), (2, 0.28))
    ] + [
        _rec(metrics={"error": e}, seed=s, delta_error_vs_no_kd=d, delta_ci95_vs_no_kd=ci)
        for s, e, d, ci in ((None, 0.27, -0.03, [-0.05, -0.01]), (1, 0.31, -0.01, [-0.03, 0.01]),
                            (2, 0.27, -0.01, [-0.02, 0.005]))
    ]
    table = seeds_table(records)
    assert "30.0 ± 2.0" in table and "-1.7 ± 1.2" in table and "1 of 3 seeds beyond their interval" in table
    assert seeds_table(records[:1]) == ""  # one seed: no table


def test_speed_up_is_against_fp32_on_the_same_runtime() -> None:
    lat = lambda ms: {"b1_t1": {"median_ms": ms, "iqr_ms": 0.01}}  # noqa: E731
    records = [
        _rec(backend="onnxruntime", latency=lat(2.0), metrics={"error": 0.2}),
        _rec(backend="torch", latency=lat(1.0), metrics={"error": 0.2}),
        _rec(backend="onnxruntime", method="qat", precision="w8a8", weight_bits=8, latency=lat(0.5),
             metrics={"error": 0.21}, delta_error_vs_fp32=0.01, delta_ci95=[0.0, 0.02]),
        _rec(backend="engine", method="qat", precision="w8a8", weight_bits=8, latency=lat(0.25),
             metrics={"error": 0.21}),
    ]
    table = deployment_table(records)
    assert "| 4× |" in table  # ORT int8 0.5 ms against ORT fp32 2.0 ms, not against PyTorch
    assert "4× (vs PyTorch fp32)" in table  # the engine has no fp32 form of its own
    assert table.count("baseline") == 2
