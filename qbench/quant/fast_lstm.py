"""A fast forward (and straight-through backward) of :class:`~qbench.quant.lstm.QbenchQuantLSTM`
that computes what Brevitas 0.13's ``QuantLSTM`` computes.

Brevitas stays the definition of the quantized LSTM: its quantizers, scales and state dict. Its
own forward (``_QuantLSTMLayer`` with its ``fast_cell``) calls a full quantizer proxy for each of
the 13 quantized tensors of every step, and each call re-derives its scale, bit width and integer
range through a dozen small modules; that bookkeeping, not the arithmetic, is what costs seconds
per batch. Here every quantizer's scale, zero point and range are read once per forward, from the
same Brevitas modules (``scaling_impl``, ``int_scaling_impl``, ``msb_clamp_bit_width_impl``), so
the scales keep their autograd graph to the learned parameters; weights and biases are quantized
by their own proxies, once per forward as in Brevitas; and the recurrence runs the element-wise
fake quantization ``clamp(round(x / s), lo, hi) * s`` on whole gate stacks with a
straight-through backward (:class:`_FakeQuant`) that follows Brevitas' autograd graph formula for
formula (round STE, clamp mask, scale gradient through both the division and the product).

Identity with Brevitas, not closeness, is the contract: the same float32 operations in the same
order. Division, rounding, clamping and products are correctly rounded element by element, so
stacking the four gates into one ``(4, B, H)`` tensor with per-gate scales changes no value;
sigmoid and tanh are not (ATen's vector and scalar paths differ in the last ulp), so they are
applied per gate on contiguous ``(B, H)`` blocks exactly as Brevitas applies them. The gate
products follow Brevitas' arrangement: per gate ``F.linear(x_t, W_i) + F.linear(h, W_h) + b``
with the same shapes, because BLAS rounds a hoisted ``(T*B, F)`` product differently from the
per-step ``(B, F)`` one (measured on MKL: different for most batch sizes). When every product is
exact (power-of-two scales and codes small enough that any summation order is exact in float32,
:func:`_exact_products`) the input projection of all steps is one matrix product before the loop.

The fast path runs whenever it computes the same thing: not while an activation quantizer still
collects runtime statistics in training mode (the number and order of its calls would change its
scale), nor with a quantizer disabled (calibration), in export mode, or with hooks on the
quantizers (observers that expect Brevitas' per-step calls, e.g. ``kernels.conformance``). Then,
and when ``QbenchQuantLSTM.fast_path`` is False, the stock Brevitas forward runs.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from brevitas.core.function_wrapper import FloorSte, RoundSte, RoundToZeroSte
from brevitas.core.function_wrapper.clamp import TensorClamp
from brevitas.core.quant import RescalingIntQuant
from brevitas.core.quant.delay import _NoDelay
from brevitas.core.scaling import ParameterFromRuntimeStatsScaling
from brevitas.core.zero_point import ZeroZeroPoint
from brevitas.quant_tensor import IntQuantTensor, _unpack_quant_tensor
from torch import Tensor, nn

__all__ = ["fast_forward", "why_not_fast"]

_GATES = ("input", "forget", "cell", "output")  # nn.LSTM's row-block order: i, f, g, o
_ROUNDING = {RoundSte: "round", FloorSte: "floor", RoundToZeroSte: "trunc"}  # Brevitas STE -> Tensor method
_ACTIVATION = {  # the activation each cell quantizer applies before quantizing, as the fast loop applies it
    "output_quant": nn.Identity, "cell_state_quant": nn.Identity, "hidden_state_tanh_quant": nn.Tanh,
    **{f"{g}_acc_quant": nn.Identity for g in _GATES},
    "input_sigmoid_quant": nn.Sigmoid, "forget_sigmoid_quant": nn.Sigmoid, "cell_tanh_quant": nn.Tanh,
    "output_sigmoid_quant": nn.Sigmoid,
}
EXACT_FLOAT32_SUM = 1 << 24  # integers below this are exact in float32, so are sums that stay below


# --- when the fast path computes what Brevitas computes ------------------------------------------


def why_not_fast(qlstm: nn.Module) -> str | None:
    """Why the fast path would not reproduce ``qlstm``'s Brevitas forward now, or None when it would."""
    if not getattr(qlstm, "fast_path", True):
        return "fast_path is off"
    if getattr(qlstm, "export_mode", False):
        return "export mode"
    for layer in qlstm.layers:
        if len(layer) != 1:
            return "bidirectional"
        cell = layer[0]
        if cell.export_mode or cell.cifg or cell.reverse_input or not cell.cell.batch_first:
            return "export mode, coupled gates, reversed or time-major input"
        for name, activation in _ACTIVATION.items():
            reason = _why_not_act(getattr(cell.cell, name), activation)
            if reason is not None:
                return f"{name}: {reason}"
        for gate in _GATES:
            params = getattr(cell, f"{gate}_gate_params")
            if not params.input_weight.weight_quant.is_quant_enabled:
                return f"{gate} weight quantizer disabled"
            if params.bias is not None and not params.bias_quant.is_quant_enabled:
                return f"{gate} bias quantizer disabled"
    for module in qlstm.layers.modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return f"hooks on {type(module).__name__}"
        if isinstance(module, ParameterFromRuntimeStatsScaling) and module.training \
                and module.counter < module.collect_stats_steps:
            return "an activation quantizer is collecting statistics"
    return None


def _why_not_act(proxy: nn.Module, activation: type[nn.Module]) -> str | None:
    fused = proxy.fused_activation_quant_proxy
    if fused is None or not proxy.is_quant_enabled or proxy.export_mode:
        return "disabled or exporting"
    impl = fused.activation_impl
    if not isinstance(impl, activation) or type(impl).forward is not activation.forward:
        return f"activation {type(impl).__name__}, expected {activation.__name__}"
    tq = fused.tensor_quant
    if type(tq) is not RescalingIntQuant or tq.observer_only:
        return f"tensor quantizer {type(tq).__name__}"
    iq = tq.int_quant
    if type(iq.float_to_int_impl) not in _ROUNDING or type(iq.tensor_clamp_impl) is not TensorClamp \
            or not isinstance(iq.delay_wrapper.delay_impl, _NoDelay):
        return "rounding, clamp or delay other than Brevitas' defaults"
    if type(tq.zero_point_impl) is not ZeroZeroPoint:
        return "non-zero zero point"
    return None


# --- resolving the quantizers once per forward ------------------------------------------------


Bound = float | Tensor  # a code bound: one number, or (4, 1, 1) for a stack of four gates


@dataclass(frozen=True)
class _Quant:
    """An activation quantizer read for one forward: ``clamp(round(x / scale), lo, hi) * scale``.

    ``scale`` keeps its autograd graph to the learned parameter; it is a scalar, or ``(4, 1, 1)``
    for the four gates' quantizers stacked in gate order.
    """

    scale: Tensor
    lo: Bound
    hi: Bound
    rounding: str


def _resolve(proxies: list[nn.Module], probe: Tensor) -> _Quant:
    """Read ``proxies`` (one, or four stacked) as Brevitas' ``RescalingIntQuant`` computes them."""
    scales, los, his, roundings = [], [], [], set()
    for proxy in proxies:
        tq = proxy.fused_activation_quant_proxy.tensor_quant
        bit_width = tq.msb_clamp_bit_width_impl()
        scales.append(tq.scaling_impl(probe, tq.int_scaling_impl(bit_width)).reshape(()))
        los.append(float(tq.int_quant.min_int(bit_width)))
        his.append(float(tq.int_quant.max_int(bit_width)))
        roundings.add(_ROUNDING[type(tq.int_quant.float_to_int_impl)])
    if len(roundings) != 1:
        raise ValueError("stacked quantizers must share their rounding")
    if len(proxies) == 1:
        return _Quant(scales[0], los[0], his[0], roundings.pop())
    stack = (len(proxies), 1, 1)

    def bound(values: list[float]) -> Bound:
        return values[0] if len(set(values)) == 1 else torch.tensor(values, dtype=probe.dtype).view(stack)

    return _Quant(torch.stack(scales).view(stack), bound(los), bound(his), roundings.pop())


@dataclass(frozen=True)
class _Layer:
    """One layer's fake-quantized parameters (autograd-tracked) and quantizers for a forward."""

    w_ih: Tensor  # (4, H, F_in) gate order i, f, g, o
    w_hh: Tensor  # (4, H, H)
    bias: Tensor  # (4, 1, H), zeros without bias
    acc: _Quant  # the four gate accumulators
    act: _Quant  # sigmoid, sigmoid, tanh, sigmoid of the four gates
    cell: _Quant  # f*c, i*g and c_t
    tanh: _Quant  # tanh(c_t)
    io: _Quant  # h_t
    hoist: bool  # every gate sum is exact (_exact_products): W_ih x for all steps in one product


def _layer(cell: nn.Module, quant_input: IntQuantTensor) -> _Layer:
    c = cell.cell
    w_ih, w_hh, biases, quant_weights = [], [], [], []
    for gate in _GATES:
        qw_ih, qw_hh, qb = cell.gate_params_fwd(getattr(cell, f"{gate}_gate_params"), quant_input)
        quant_weights += [qw_ih, qw_hh]
        w_ih.append(_unpack_quant_tensor(qw_ih))
        w_hh.append(_unpack_quant_tensor(qw_hh))
        biases.append(_unpack_quant_tensor(qb) if qb is not None else quant_input.value.new_zeros(cell.hidden_size))
    probe = quant_input.value
    return _Layer(
        torch.stack(w_ih), torch.stack(w_hh), torch.stack(biases).unsqueeze(1),
        acc=_resolve([getattr(c, f"{g}_acc_quant") for g in _GATES], probe),
        act=_resolve([c.input_sigmoid_quant, c.forget_sigmoid_quant, c.cell_tanh_quant, c.output_sigmoid_quant], probe),
        cell=_resolve([c.cell_state_quant], probe),
        tanh=_resolve([c.hidden_state_tanh_quant], probe),
        io=_resolve([c.output_quant], probe),
        hoist=_exact_products(quant_input, quant_weights, cell.input_size + cell.hidden_size),
    )


def _exact_products(quant_input: IntQuantTensor, weights: list[IntQuantTensor], fan_in: int) -> bool:
    """True when every gate sum ``W_ih x + W_hh h`` is exact in float32 in any summation order.

    With power-of-two scales each product is ``code_w * code_x * 2^k`` and the sum of ``fan_in``
    of them is exact while ``fan_in * max|code_w| * max|code_x|`` stays below 2^24.
    """
    if not all(_is_po2(t.scale) for t in (quant_input, *weights)):
        return False
    x_max = 2.0 ** (float(quant_input.bit_width) - bool(quant_input.signed))  # largest |code|
    w_max = max(2.0 ** (float(w.bit_width) - 1) for w in weights)  # weights are signed
    return fan_in * x_max * w_max < EXACT_FLOAT32_SUM


def _is_po2(t: Tensor) -> bool:
    mantissa, _ = torch.frexp(t.detach().reshape(-1).float())
    return bool(torch.all(mantissa == 0.5))


# --- the forward ----------------------------------------------------------------------------------


def fast_forward(qlstm: nn.Module, inp: Tensor, hx: tuple[Tensor, Tensor] | None = None
                 ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``QbenchQuantLSTM``'s forward after its input division: ``inp`` (B, T, F) float ->
    ``(output (B, T, H), (h_n, c_n) each (L, B, H))``, the values the stock Brevitas forward returns.

    Call only when :func:`why_not_fast` returns None.
    """
    quant_input = qlstm.layers[0][0].maybe_quantize_input(inp)  # the shared io quantizer, whole sequence
    h_last, c_last = [], []
    for index, layer in enumerate(qlstm.layers):
        cell = layer[0]
        p = _layer(cell, quant_input)
        x = quant_input.value
        if hx is None:
            h0 = c0 = x.new_zeros(x.shape[0], cell.hidden_size)  # Brevitas leaves a missing state unquantized
        else:
            h0 = _unpack_quant_tensor(cell.cell.output_quant(hx[0][index]))
            c0 = _unpack_quant_tensor(cell.cell.cell_state_quant(hx[1][index]))
        out, h, c = _LayerFn.apply(x, h0, c0, p.w_ih, p.w_hh, p.bias, p.acc.scale, p.act.scale, p.cell.scale,
                                   p.tanh.scale, p.io.scale, p)
        h_last.append(h)
        c_last.append(c)
        bit_width = cell.cell.output_quant.fused_activation_quant_proxy.tensor_quant.msb_clamp_bit_width_impl()
        quant_input = IntQuantTensor(out, p.io.scale, torch.zeros((), dtype=out.dtype), bit_width, True, cell.training)
    return quant_input.value, (torch.stack(h_last), torch.stack(c_last))


def _scale(q: _Quant) -> Tensor:
    """The scale detached, 0-d when scalar (ATen's cheapest operand, the same float32 value)."""
    return q.scale.detach().reshape(()) if q.scale.numel() == 1 else q.scale.detach()


def _fq(x: Tensor, q: _Quant, s: Tensor, saved: list[Tensor] | None) -> Tensor:
    """Brevitas' ``IntQuant`` with zero point 0 (``y = x / s``, round, clamp, ``* s``); keeps ``y``."""
    y = x / s
    if saved is None:
        code = getattr(y, q.rounding + "_")()
    else:
        saved.append(y)
        code = getattr(y, q.rounding)()
    return _clamp_(code, q).mul_(s)


def _clamp_(code: Tensor, q: _Quant) -> Tensor:
    if isinstance(q.lo, float) and isinstance(q.hi, float):
        return code.clamp_(q.lo, q.hi)
    for k, (lo, hi) in enumerate(zip(q.lo.reshape(-1).tolist(), q.hi.reshape(-1).tolist())):
        code[k].clamp_(lo, hi)  # per-gate bounds: float bounds per block beat a tensor-bound clamp
    return code


def _fq_backward(grad: Tensor, y: Tensor, q: _Quant) -> tuple[Tensor, Tensor]:
    """Straight-through gradient of :func:`_fq` to ``x``, and each element's share of the scale's gradient.

    Brevitas' graph (round STE, clamp, ``x / s`` and ``* s``) gives ``x`` the gradient where the
    rounded code is inside the range, and ``s`` the sum of ``grad * code`` (product) and
    ``-grad * y`` where inside (division): ``grad * (code - y)`` inside, ``grad * code`` outside.
    """
    r = getattr(y, q.rounding)()
    code = _clamp_(r.clone(), q)
    inside = code == r
    return torch.where(inside, grad, 0.0), grad * torch.where(inside, code - y, code)


class _LayerFn(torch.autograd.Function):
    """One quantized LSTM layer over the whole sequence, with Brevitas' straight-through backward.

    Inputs: ``x`` (B, T, F) quantized layer input, ``h0``/``c0`` (B, H) quantized states, the
    stacked fake-quantized ``w_ih`` (4, H, F), ``w_hh`` (4, H, H), ``bias`` (4, 1, H), and the
    scales of the layer's quantizers; outputs ``(B, T, H)`` hidden states, last ``h`` and ``c``.
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, bias, s_acc, s_act, s_cell, s_tanh, s_io, p: _Layer):
        save = any(ctx.needs_input_grad)
        saved: dict[str, list[Tensor]] = {k: [] for k in ("acc", "S", "act", "G", "c", "fc", "ig", "cell", "T", "tanh", "TH", "io")} if save else None
        keep = (lambda k: saved[k]) if save else (lambda k: None)
        s = {name: _scale(getattr(p, name)) for name in ("acc", "act", "cell", "tanh", "io")}
        batch, steps, _ = x.shape
        if p.hoist:  # exact sums: one product for every step, (T, 4, B, H)
            x_proj = torch.matmul(x.transpose(0, 1).unsqueeze(1), w_ih.transpose(1, 2).unsqueeze(0))
            w_hh_t = w_hh.reshape(-1, w_hh.shape[2]).t()  # (H, 4H)
        else:
            steps_in = x.unbind(1)
        h, c, outputs = h0, c0, []
        for t in range(steps):
            if p.hoist:
                gates = torch.add(x_proj[t], torch.mm(h, w_hh_t).view(batch, 4, -1).transpose(0, 1),
                                  out=x.new_empty(x_proj.shape[1:]))
            else:  # Brevitas' arrangement, gate by gate: BLAS rounds other shapes differently
                gates = x.new_empty(4, batch, w_hh.shape[1])
                for k in range(4):
                    torch.add(F.linear(steps_in[t], w_ih[k]), F.linear(h, w_hh[k]), out=gates[k])
            gates = _fq(gates.add_(bias), p.acc, s["acc"], keep("acc"))
            for k, fn in enumerate((Tensor.sigmoid_, Tensor.sigmoid_, Tensor.tanh_, Tensor.sigmoid_)):
                fn(gates[k])  # each gate a contiguous (B, H) block, as Brevitas applies it
            if save:
                saved["S"].append(gates)
                saved["c"].append(c)
            g4 = _fq(gates, p.act, s["act"], keep("act"))
            if save:
                saved["G"].append(g4)
            i, f, g, o = g4.unbind(0)
            c = _fq(_fq(f * c, p.cell, s["cell"], keep("fc")).add_(_fq(i * g, p.cell, s["cell"], keep("ig"))),
                    p.cell, s["cell"], keep("cell"))
            th = torch.tanh(c)
            if save:
                saved["T"].append(th)
            th = _fq(th, p.tanh, s["tanh"], keep("tanh"))
            if save:
                saved["TH"].append(th)
            h = _fq(o * th, p.io, s["io"], keep("io"))
            outputs.append(h)
        out = torch.stack(outputs, 1)
        if save:
            ctx.p, ctx.saved = p, saved
            ctx.save_for_backward(x, h0, w_ih, w_hh, out)
        return out, h, c

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        p, sv = ctx.p, ctx.saved
        x, h0, w_ih, w_hh, out = ctx.saved_tensors
        steps = x.shape[1]
        w_hh_flat = w_hh.reshape(-1, w_hh.shape[2])  # (4H, H)
        names = ("acc", "act", "cell", "tanh", "io")
        terms = {k: None for k in names}  # running sums of each quantizer's scale-gradient shares

        def add(name: str, term: Tensor) -> None:
            terms[name] = term if terms[name] is None else terms[name].add_(term)

        grad_gates = [None] * steps
        dh, dc = grad_h, grad_c
        for t in reversed(range(steps)):
            dh = dh + grad_out[:, t]
            d, term = _fq_backward(dh, sv["io"][t], p.io)
            add("io", term)
            g4, th = sv["G"][t], sv["TH"][t]
            d_o = d * th
            d, term = _fq_backward(d * g4[3], sv["tanh"][t], p.tanh)
            add("tanh", term)
            t0 = sv["T"][t]
            dc = dc + d * (1 - t0 * t0)
            d, term = _fq_backward(dc, sv["cell"][t], p.cell)
            add("cell", term)
            d_ig, term_ig = _fq_backward(d, sv["ig"][t], p.cell)
            d_fc, term_fc = _fq_backward(d, sv["fc"][t], p.cell)
            add("cell", term_ig)
            add("cell", term_fc)
            dg4 = torch.stack([d_ig * g4[2], d_fc * sv["c"][t], d_ig * g4[0], d_o])
            dc = d_fc * g4[1]
            d, term = _fq_backward(dg4, sv["act"][t], p.act)
            add("act", term)
            act = sv["S"][t]
            slope = act * (1 - act)
            slope[2] = 1 - act[2] * act[2]
            d, term = _fq_backward(d * slope, sv["acc"][t], p.acc)
            add("acc", term)
            grad_gates[t] = d
            dh = torch.mm(d.transpose(0, 1).reshape(d.shape[1], -1), w_hh_flat)
        dp = torch.stack(grad_gates)  # (T, 4, B, H)
        h_prev = torch.cat([h0.unsqueeze(1), out[:, :-1]], 1)  # (B, T, H)
        grad_x = torch.einsum("tkbh,khf->btf", dp, w_ih)
        grad_w_ih = torch.einsum("tkbh,btf->khf", dp, x)
        grad_w_hh = torch.einsum("tkbh,btj->khj", dp, h_prev)
        grad_bias = dp.sum((0, 2)).unsqueeze(1)
        grad_scales = [_sum_terms(terms[k], getattr(p, k).scale) for k in names]
        return (grad_x, dh, dc, grad_w_ih, grad_w_hh, grad_bias, *grad_scales, None)


def _sum_terms(total: Tensor, scale: Tensor) -> Tensor:
    """Sum scale-gradient shares to ``scale``'s shape (one per gate when stacked)."""
    return total.sum().reshape(scale.shape) if scale.numel() == 1 else total.sum((1, 2)).reshape(scale.shape)
