"""The SIMD gate product (kernels.simd): exact against int64 NumPy on every instruction set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from kernels.simd import ISA_ENV, ROWS_PER_BLOCK, block_weights, compiled_isa, gate_dot, target_isa, unblock_weights

ROOT = Path(__file__).resolve().parents[1]
# rows not a multiple of 64, odd K, batches around the 4-row tile
SHAPES = [(4, 3, 1), (20, 7, 5), (256, 104, 1), (256, 104, 4), (512, 192, 6), (1024, 320, 3)]


@numba.njit(cache=True)
def _compiled_gate_dot(blocks, z, acc):
    gate_dot(blocks, z, acc)


def _case(rows: int, k: int, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (rows, k)).astype(np.int8)
    w[0] = -128  # with z[0] below, the extremes: int8 -128 x int16 -32768 products
    blocks = block_weights(w)
    z = np.zeros((batch, 2 * blocks.shape[1]), np.int16)
    z[:, :k] = rng.integers(-2**15, 2**15, (batch, k))
    z[0, :k] = -2**15
    expected = (z[:, :k].astype(np.int64) @ w.T.astype(np.int64)).astype(np.int32)  # int32 wraparound, as the lanes
    return blocks, z, expected


def _check_all_shapes() -> None:
    for rows, k, batch in SHAPES:
        blocks, z, expected = _case(rows, k, batch)
        acc = np.full((batch, blocks.shape[0] * ROWS_PER_BLOCK), 7, np.int32)
        _compiled_gate_dot(blocks, z, acc)
        np.testing.assert_array_equal(acc[:, :rows], expected, err_msg=f"{rows}x{k} batch {batch}")
        assert not acc[:, rows:].any(), "padding rows must sum to zero"


def test_block_layout_round_trips_and_pads_with_zeros() -> None:
    w = np.arange(-50, 50, dtype=np.int8).reshape(20, 5)
    blocks = block_weights(w)
    assert blocks.shape == (1, 3, ROWS_PER_BLOCK, 2) and blocks.dtype == np.int8
    assert blocks[0, 1, 7, 0] == w[7, 2] and blocks[0, 1, 7, 1] == w[7, 3]
    back = unblock_weights(blocks)
    np.testing.assert_array_equal(back[:20, :5], w)
    assert not back[20:].any() and not back[:, 5:].any()


@pytest.mark.parametrize(("rows", "k", "batch"), SHAPES)
def test_python_fallback_matches_int64(rows: int, k: int, batch: int) -> None:
    blocks, z, expected = _case(rows, k, batch)
    acc = np.zeros((batch, blocks.shape[0] * ROWS_PER_BLOCK), np.int32)
    gate_dot(blocks, z, acc)  # plain Python: what a kernel's .py_func runs
    np.testing.assert_array_equal(acc[:, :rows], expected)


def test_compiled_matches_int64_on_this_cpu() -> None:
    _check_all_shapes()


@pytest.mark.slow  # a fresh Numba compile per ISA in a subprocess: minutes under emulation
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_compiled_matches_int64_on_narrower_instruction_sets(isa: str, tmp_path) -> None:
    # the instruction set is fixed at compile time: a fresh process with its own Numba cache
    env = {**os.environ, ISA_ENV: isa, "NUMBA_CACHE_DIR": str(tmp_path)}
    code = ("import sys; sys.path[:0] = ['tests', '.']; import test_kernels_simd as t; t._check_all_shapes(); "
            "from kernels.simd import compiled_isa; print(compiled_isa())")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    order = ["generic", "avx2", "avx512"]
    host = compiled_isa()
    assert run.stdout.strip() == order[min(order.index(isa), order.index(host))]


def test_target_isa_reads_features_and_only_narrows(monkeypatch) -> None:
    monkeypatch.delenv(ISA_ENV, raising=False)
    assert target_isa("+sse2,+avx2,+avx512f,+avx512bw") == "avx512"
    assert target_isa("+sse2,+avx2,-avx512bw") == "avx2"
    assert target_isa("+neon,+fp-armv8") == "generic"
    monkeypatch.setenv(ISA_ENV, "generic")
    assert target_isa("+avx2,+avx512bw") == "generic"
    monkeypatch.setenv(ISA_ENV, "avx512")
    assert target_isa("+avx2") == "avx2"  # never wider than the CPU
    monkeypatch.setenv(ISA_ENV, "sse9")
    with pytest.raises(ValueError, match=ISA_ENV):
        target_isa("+avx2")
