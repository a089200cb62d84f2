"""A training step of the fp32 networks with qbench's fused passes against PyTorch's own, one thread.

The transformer teacher and the DS-CNN student as the default sweep trains them (one intra-op
thread, batch 64, 3 s clips of 40 log-mel bins, channels-last CNN, glibc's malloc settings as
``qbench.provenance.apply_malloc_policy`` sets them for every qbench process). One step is forward
+ cross-entropy + backward + an AdamW step. The fused side is the sweep's: ``models.fused``
dropout and BatchNorm + ReLU, and AdamW's fused step. The stock side runs PyTorch's ``F.dropout``,
the conv body as a plain ``nn.Sequential`` and AdamW's per-parameter loop. The teacher's input
BatchNorm on contiguous rows is the same on both sides (it has no switch).

The two sides run alternately, one step each per round, from the same initial weights; the median
of the rounds' time ratios (stock / fused) is recorded with its 95 % interval (order statistics):
this virtual machine's speed drifts between minutes, and a round's pair shares its phase.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models.students as students
import models.teachers as teachers
from models import build_student, build_teacher
from models.fused import fused_batch_norm_relu_declined
from qbench.provenance import apply_malloc_policy
from qbench.stats import median_with_interval

THREADS = 1
BATCH, FRAMES, MELS, CLASSES = 64, 301, 40, 12
ROUNDS = 30


@pytest.fixture(autouse=True)
def _as_the_sweep_trains():
    apply_malloc_policy()
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    shape = dict(n_mels=MELS, n_frames=FRAMES, n_classes=CLASSES)
    if name == "transformer":
        return build_teacher(name, **shape).train()
    return build_student(name, **shape).to(memory_format=torch.channels_last).train()


@pytest.mark.parametrize("name", ["transformer", "dscnn"])
def test_bench_fused_training_step_paired(benchmark, name: str, monkeypatch) -> None:
    fused, stock = _model(name), _model(name)
    stock.load_state_dict(fused.state_dict())
    if name == "dscnn":  # the fused pairs are taken: the stem conv's map is channels-last
        stem = fused.body[0](torch.zeros(2, 1, FRAMES, MELS).to(memory_format=torch.channels_last))
        assert fused_batch_norm_relu_declined(stem, fused.body[1]) is None
    optimizers = {"fused": torch.optim.AdamW(fused.parameters(), lr=1e-3, fused=True),
                  "stock": torch.optim.AdamW(stock.parameters(), lr=1e-3, foreach=False)}
    x = torch.randn(BATCH, FRAMES, MELS, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, CLASSES, (BATCH,), generator=torch.Generator().manual_seed(2))

    def step(model: torch.nn.Module, side: str) -> None:
        loss = F.cross_entropy(model(x), y)
        optimizers[side].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[side].step()

    def stock_step() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(teachers, "dropout", F.dropout)
            patch.setattr(students, "run_sequential", lambda body, inp: body(inp))
            step(stock, "stock")

    pairs: list[tuple[float, float]] = []

    def one_round() -> None:
        t0 = time.perf_counter()
        stock_step()
        t1 = time.perf_counter()
        step(fused, "fused")
        pairs.append((t1 - t0, time.perf_counter() - t1))

    benchmark.pedantic(one_round, warmup_rounds=3, rounds=ROUNDS, iterations=1)
    times = np.array(pairs[3:])  # the warm-up rounds are appended too
    ratio, interval = median_with_interval(times[:, 0] / times[:, 1])
    benchmark.extra_info.update(
        model=name, threads=THREADS, batch=BATCH, frames=FRAMES, mels=MELS, rounds=len(times),
        stock_ms=float(np.median(times[:, 0]) * 1e3), fused_ms=float(np.median(times[:, 1]) * 1e3),
        stock_over_fused=ratio, stock_over_fused_ci95=list(interval), loadavg=list(os.getloadavg()),
    )
