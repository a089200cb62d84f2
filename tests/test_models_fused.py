"""models.fused: the training-time fused dropout and BatchNorm + ReLU against PyTorch's modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import build_student, build_teacher
from models import fused
from models import students

EPS32 = float(np.finfo(np.float32).eps)
# The fused BatchNorm + ReLU sums in float64 where PyTorch sums in float32, and folds the affine
# differently: against a float64 computation of the same thing, its error may be at most this many
# times PyTorch's own float32 error, plus a few float32 steps of the values' size.
ATEN_ERROR_FACTOR = 4.0
EPS_STEPS = 8.0


# ---- dropout ---------------------------------------------------------------------------------------

def test_dropout_kernel_matches_its_reference_and_py_func():
    n, threshold = 1003, fused.drop_threshold(0.3)  # not a multiple of anything the kernel might group by
    x = np.linspace(-2, 2, n, dtype=np.float32)
    seeds = (np.uint32(123456789), np.uint32(987654321))
    scale = np.float32(fused._keep_scale(threshold))
    results = []
    for kernel in (fused._dropout_forward, fused._dropout_forward.py_func):
        out, keep = np.empty_like(x), np.empty(n, dtype=np.uint8)
        with np.errstate(over="ignore"):  # the interpreted kernel's uint32 products wrap, as compiled
            kernel(x, seeds[0], seeds[1], np.uint32(threshold), scale, out, keep)
        results.append((out, keep))
    reference = fused._reference_keep(tuple(int(s) for s in seeds), n, threshold)
    for out, keep in results:
        np.testing.assert_array_equal(keep.astype(bool), reference)
        np.testing.assert_array_equal(out, np.where(reference, x * scale, np.float32(0)))


def test_32_bit_hash_operations_compile_to_their_python_meaning():
    """The hash's multiply, xor and xor-shift are 32-bit LLVM operations when compiled
    (intrinsics); in Python they are defined on integers. Both must agree, wraparound included."""
    import numba

    @numba.njit
    def compiled(a, b):
        return fused._mul32(a, b), fused._xor32(a, b), fused._xorshift32(a, 13), fused._fmix32(a)

    values = np.concatenate([np.array([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF], dtype=np.uint32),
                             np.random.default_rng(5).integers(0, 2**32, 200, dtype=np.uint32)])
    for a, b in zip(values, np.roll(values, 1)):
        mul, xor, xs, fmix = compiled(a, b)
        assert (int(mul), int(xor), int(xs)) == ((int(a) * int(b)) % 2**32, int(a) ^ int(b), int(a) ^ (int(a) >> 13))
        assert int(fmix) == int(fused._fmix32.py_func(a))


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_dropout_drops_p_of_the_elements_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(200_000)
    out = fused.dropout(x, p, True)
    dropped = float((out == 0).float().mean())
    sigma = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(dropped - p) < 5 * sigma, (dropped, p)
    kept = out[out != 0]
    assert torch.all(kept == kept[0]) and abs(float(kept[0]) - 1 / (1 - p)) < 1e-6 / (1 - p)
    # consecutive elements are not correlated (a hash of the index, not a short-period stream)
    d = (out == 0).float()
    corr = float(((d[1:] - p) * (d[:-1] - p)).mean()) / (p * (1 - p))
    assert abs(corr) < 5 / x.numel() ** 0.5


def test_dropout_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(1)
    x = torch.randn(4, 37, 64, requires_grad=True)
    out = fused.dropout(x, 0.1, True)
    grad = torch.randn_like(out)
    out.backward(grad)
    keep = out.detach() != 0
    scale = np.float32(fused._keep_scale(fused.drop_threshold(0.1)))
    assert torch.equal(x.grad, torch.where(keep, grad * scale, torch.zeros(())))
    assert torch.equal(out.detach(), torch.where(keep, x.detach() * scale, torch.zeros(())))


def test_dropout_masks_follow_torch_manual_seed():
    x = torch.randn(10_000)
    torch.manual_seed(5)
    a = fused.dropout(x, 0.2, True)
    torch.manual_seed(5)
    b = fused.dropout(x, 0.2, True)
    c = fused.dropout(x, 0.2, True)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_dropout_defers_to_pytorch_where_it_does_not_apply():
    x = torch.randn(100)
    assert torch.equal(fused.dropout(x, 0.5, False), x)
    assert torch.equal(fused.dropout(x, 0.0, True), x)
    assert torch.equal(fused.dropout(x, 1.0, True), torch.zeros_like(x))
    x64 = x.double()
    torch.manual_seed(0)
    expected = F.dropout(x64, 0.5, True)
    torch.manual_seed(0)
    assert torch.equal(fused.dropout(x64, 0.5, True), expected)


def test_teacher_eval_forward_has_no_dropout_and_training_forward_does():
    torch.manual_seed(0)
    teacher = build_teacher("transformer", n_mels=40, n_frames=101, n_classes=5)
    x = torch.randn(3, 101, 40)
    teacher.eval()
    assert torch.equal(teacher(x), teacher(x))
    teacher.train()
    assert not torch.equal(teacher(x), teacher(x))


# ---- BatchNorm + ReLU ----------------------------------------------------------------------------

def _bn_pair(channels: int, momentum: float | None = 0.1, track: bool = True) -> tuple[nn.BatchNorm2d, nn.BatchNorm2d]:
    torch.manual_seed(channels)
    bn = nn.BatchNorm2d(channels, momentum=momentum, track_running_stats=track)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        if track:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    twin = nn.BatchNorm2d(channels, momentum=momentum, track_running_stats=track)
    twin.load_state_dict(bn.state_dict())
    return bn, twin


def _assert_near(fast: torch.Tensor, aten: torch.Tensor, exact: torch.Tensor, what: str) -> None:
    """``fast`` within ATEN_ERROR_FACTOR x ATen's own float32 error (plus EPS_STEPS float32 steps of
    the values' size) of the float64 computation ``exact``."""
    exact32 = exact.float()
    bound = ATEN_ERROR_FACTOR * (aten - exact32).abs().max() + EPS_STEPS * EPS32 * exact32.abs().max()
    err = (fast - exact32).abs().max()
    assert err <= bound, f"{what}: error {float(err):.3g} > bound {float(bound):.3g}"


@pytest.mark.parametrize("shape", [(64, 64, 38, 10), (3, 5, 7, 2), (2, 17, 1, 1)])
@pytest.mark.parametrize("track", [True, False])
def test_batch_norm_relu_matches_pytorch(shape, track):
    bn, twin = _bn_pair(shape[1], track=track)
    exact_bn = nn.BatchNorm2d(shape[1], track_running_stats=track).double()
    exact_bn.load_state_dict(bn.state_dict())
    torch.manual_seed(7)
    x = (torch.randn(shape) * 3 + 1).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape)
    outs = []
    for module, dtype in ((bn, torch.float32), (twin, torch.float32), (exact_bn, torch.float64)):
        xi = x.detach().clone().to(dtype).requires_grad_()
        y = fused.batch_norm_relu(xi, module) if module is bn else torch.relu(module(xi))
        y.backward(grad.to(dtype))
        outs.append((y.detach(), xi.grad, module))
    (y, dx, _), (y_aten, dx_aten, _), (y_exact, dx_exact, _) = outs
    assert fused.fused_batch_norm_relu_declined(x, bn) is None
    _assert_near(y, y_aten, y_exact, "output")
    _assert_near(dx, dx_aten, dx_exact, "input gradient")
    for name in ("weight", "bias"):
        _assert_near(getattr(bn, name).grad, getattr(twin, name).grad, getattr(exact_bn, name).grad, name)
    if track:
        for name in ("running_mean", "running_var"):
            _assert_near(getattr(bn, name), getattr(twin, name), getattr(exact_bn, name), name)
        assert int(bn.num_batches_tracked) == int(twin.num_batches_tracked) == 1


def test_batch_norm_relu_backward_drops_what_relu_cuts_even_if_not_finite():
    """The backward kernels load the gradient before the ReLU mask picks it (a select, not a
    masked load): a NaN or inf gradient where the ReLU output is zero must still count as zero,
    as in PyTorch's ReLU backward, and the compiled kernels must equal their Python semantics."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 16)).astype(np.float32)
    grad = rng.standard_normal(x.shape).astype(np.float32)
    a, b, mean = (rng.standard_normal(16).astype(np.float32) for _ in range(3))
    cut = x * a + b <= 0
    rows, cols = np.nonzero(cut)
    grad[rows[0], cols[0]], grad[rows[1], cols[1]], grad[rows[2], cols[2]] = np.nan, np.inf, -np.inf
    g = np.where(cut, np.float32(0), grad)
    sums = []
    for kernel in (fused._grad_sums, fused._grad_sums.py_func):
        sg, sgx = np.zeros(16), np.zeros(16)
        kernel(x, grad, a, b, mean, sg, sgx)
        sums.append((sg, sgx))
    np.testing.assert_array_equal(sums[0][0], sums[1][0])
    np.testing.assert_array_equal(sums[0][1], sums[1][1])
    np.testing.assert_allclose(sums[0][0], g.astype(np.float64).sum(0), rtol=1e-12)
    np.testing.assert_allclose(sums[0][1], (g.astype(np.float64) * (x - mean).astype(np.float64)).sum(0), rtol=1e-12)
    ga, gb, gc = (rng.standard_normal(16).astype(np.float32) for _ in range(3))
    dxs = []
    for kernel in (fused._grad_input, fused._grad_input.py_func):
        dx = np.empty_like(x)
        kernel(x, grad, a, b, mean, ga, gb, gc, dx)
        dxs.append(dx)
    assert np.isfinite(dxs[0]).all()
    np.testing.assert_array_equal(dxs[0], dxs[1])


def test_batch_norm_relu_declines_what_it_does_not_handle():
    bn, twin = _bn_pair(4)
    x = torch.randn(2, 4, 5, 3)  # contiguous, not channels-last
    assert "channels-last" in fused.fused_batch_norm_relu_declined(x, bn)
    assert torch.equal(fused.batch_norm_relu(x, bn), torch.relu(twin(x)))
    bn.eval()
    assert fused.fused_batch_norm_relu_declined(x.contiguous(memory_format=torch.channels_last), bn) == "eval mode"
    cumulative, _ = _bn_pair(4, momentum=None)
    assert "cumulative" in fused.fused_batch_norm_relu_declined(x.contiguous(memory_format=torch.channels_last),
                                                                cumulative)


@pytest.mark.parametrize("name", ["dscnn", "crnn"])
def test_students_train_through_the_fused_pairs_as_through_their_modules(name, monkeypatch):
    """A training step through the fused pairs against the same model run module by module, in
    float32 (PyTorch's rounding) and float64 (the reference both are held to)."""
    torch.manual_seed(0)
    models = [build_student(name, n_mels=40, n_frames=101, n_classes=5) for _ in range(3)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    models[2].double()
    x = torch.randn(8, 101, 40)
    feats = []
    for i, m in enumerate(models):
        m.to(memory_format=torch.channels_last).train()
        for module in m.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        with monkeypatch.context() as patch:
            if i:  # the twins' conv bodies as plain nn.Sequential
                patch.setattr(students, "run_sequential", lambda seq, inp: seq(inp))
            y = m.temporal_features(x.to(torch.float64 if i == 2 else torch.float32))
        y.sum().backward()
        feats.append(y.detach())
    _assert_near(*feats, "temporal features")
    for (pname, p), (_, q), (_, r) in zip(*(m.named_parameters() for m in models)):
        if r.grad is not None:
            _assert_near(p.grad, q.grad, r.grad, pname)
    models[1].load_state_dict(models[0].state_dict())  # the running statistics differ by rounding
    for m in models[:2]:
        m.eval()
    assert torch.equal(models[0](x), models[1](x))  # inference runs PyTorch's modules
