"""The gate matrix-vector product of the LSTM kernel, written as explicit SIMD.

``gate_dot(blocks, z, acc)`` computes ``acc[b, r] = sum_k W[r, k] * z[b, k]`` exactly in
int32 for every batch row ``b`` and gate row ``r``. It is a Numba intrinsic: its body is
LLVM IR emitted here, because LLVM's loop vectoriser does not find the good loop on its own
(it reduces each row with 128-bit ``pmaddwd`` and a horizontal sum per row, about 20 GMAC/s
on a 2.1 GHz Sapphire Rapids core; this loop does about 60).

Weight layout (:func:`block_weights`): rows in blocks of ``ROWS_PER_BLOCK`` = 64, inputs in
pairs, ``blocks[n, p, j, 0:2] = W[64 n + j, 2 p : 2 p + 2]`` as int8 codes (zero padded to
whole blocks and pairs). One step of the inner loop loads the 64 rows x 2 inputs of a block
(128 bytes, contiguous), sign-extends them to int16 and multiplies them, pair-wise summed,
with the broadcast input pair ``(z[2p], z[2p+1])``: that is x86's ``pmaddwd``, which adds the
two int16 x int16 products of each int32 lane. No horizontal sums: lane ``j`` of the
accumulators is row ``64 n + j``. Exactness: each product and pair sum fits int32
(``|w| <= 128``, ``|z| <= 2**15``) and the caller bounds the whole sum below 2**31
(:func:`kernels.lstm_arrays.layer_arrays`), so any summation order gives the same int32.

Instruction sets, chosen when Numba compiles (from the CPU it targets; Numba's cache is keyed
by that CPU, so a cached binary never runs on the wrong one):

* ``avx512``: 4 accumulators of 16 lanes per batch row and 4 batch rows per weight load
  (``llvm.x86.avx512.pmaddw.d.512``; LLVM fuses it with the add into ``vpdpwssd`` on VNNI).
* ``avx2``: 8 accumulators of 8 lanes, one batch row at a time (``llvm.x86.avx2.pmadd.wd``).
* ``generic``: the same arithmetic in portable LLVM vector IR (sign extension, 32-bit
  multiply, add; the two products of a pair kept in neighbouring lanes and added once per
  block), which every LLVM target lowers (AArch64 NEON included); level with PyTorch on x86.

``gate_dot_u8`` (at the end) is the same product for unsigned 8-bit inputs in quads of
inputs: one ``vpdpbusd`` (AVX-512 VNNI) adds four u8 x s8 products per int32 lane, 64
multiply-accumulates per instruction against ``vpdpwssd``'s 32, on weights loaded without sign
extension; the LSTM kernel takes it for signed io codes of at most 8 bits (offset by 128).

``gate_dot_add`` / ``gate_dot_u8_add`` add the sums to ``acc`` instead of overwriting it (the
LSTM kernel runs the input projection ahead for many steps, then adds the recurrent product
per step). ``gate_dot`` also takes the pair blocks widened to int16 (``block_weights(w)
.astype(np.int16)``, what the LSTM kernel stores): they go straight into ``pmaddwd`` without a
sign extension per load, which on AVX2 costs a shuffle-port uop per 16 weights.

``QBENCH_KERNEL_ISA=generic`` (or ``avx2``) forces a narrower set, for tests and comparisons;
it is read at compile time, so pair it with a fresh ``NUMBA_CACHE_DIR``.
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

__all__ = ["ISA_ENV", "QUAD_OFFSET", "ROWS_PER_BLOCK", "aligned", "block_weights", "block_weights_u8", "compiled_isa",
           "compiled_u8_product", "gate_dot", "gate_dot_add", "gate_dot_u8", "gate_dot_u8_add", "target_isa",
           "u8_product", "unblock_weights", "unblock_weights_u8"]

ROWS_PER_BLOCK = 64
QUAD_OFFSET = 128  # gate_dot_u8's inputs are signed 8-bit codes + 128
ISA_ENV = "QBENCH_KERNEL_ISA"
_ISAS = ("generic", "avx2", "avx512")  # narrowest first

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)


CACHE_LINE = 64


def aligned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` starting on a 64-byte cache line. NumPy aligns to 16 bytes;
    a vector load that straddles two lines costs twice, and the gate product loads every weight
    as a 32- or 64-byte vector (measured on an AVX2 EPYC: 64->128 at batch 32 took 5.1 ms with
    the weights 16 bytes past a line, 3.6 ms on one)."""
    buf = np.empty(a.nbytes + CACHE_LINE, dtype=np.uint8)
    start = -buf.ctypes.data % CACHE_LINE
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def block_weights(weight: np.ndarray) -> np.ndarray:
    """(R, K) int8 codes -> (ceil(R/64), ceil(K/2), 64, 2) int8 blocks (layout above)."""
    rows, k = weight.shape
    rows_pad = -(-rows // ROWS_PER_BLOCK) * ROWS_PER_BLOCK
    padded = np.zeros((rows_pad, k + k % 2), dtype=np.int8)
    padded[:rows, :k] = weight
    blocks = padded.reshape(rows_pad // ROWS_PER_BLOCK, ROWS_PER_BLOCK, -1, 2).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(blocks)


def unblock_weights(blocks: np.ndarray) -> np.ndarray:
    """The inverse of :func:`block_weights`, padding included: (64 n, 2 p) int8 codes."""
    n_blocks, n_pairs = blocks.shape[:2]
    return blocks.transpose(0, 2, 1, 3).reshape(n_blocks * ROWS_PER_BLOCK, 2 * n_pairs)


def block_weights_u8(weight: np.ndarray) -> np.ndarray:
    """(R, K) int8 codes -> (ceil(R/64), ceil(K/4), 64, 4) int8 blocks: inputs in quads (``vpdpbusd``)."""
    rows, k = weight.shape
    rows_pad = -(-rows // ROWS_PER_BLOCK) * ROWS_PER_BLOCK
    padded = np.zeros((rows_pad, -(-k // 4) * 4), dtype=np.int8)
    padded[:rows, :k] = weight
    blocks = padded.reshape(rows_pad // ROWS_PER_BLOCK, ROWS_PER_BLOCK, -1, 4).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(blocks)


def unblock_weights_u8(blocks: np.ndarray) -> np.ndarray:
    """The inverse of :func:`block_weights_u8`, padding included: (64 n, 4 q) int8 codes."""
    n_blocks, n_quads = blocks.shape[:2]
    return blocks.transpose(0, 2, 1, 3).reshape(n_blocks * ROWS_PER_BLOCK, 4 * n_quads)


def target_isa(features: str) -> str:
    """The instruction set :func:`gate_dot` uses for an LLVM feature string ("+avx2,+avx512bw,...")."""
    flags = set(features.split(","))
    best = "avx512" if "+avx512bw" in flags else ("avx2" if "+avx2" in flags else "generic")
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    if forced:
        if forced not in _ISAS:
            raise ValueError(f"{ISA_ENV}={forced!r}: expected one of {', '.join(_ISAS)}")
        if _ISAS.index(forced) < _ISAS.index(best):
            return forced
    return best


def u8_product(features: str) -> bool:
    """Whether :func:`gate_dot_u8` runs on ``vpdpbusd`` (AVX-512 VNNI) for an LLVM feature string;
    never when :data:`ISA_ENV` narrows the instruction set below AVX-512."""
    return target_isa(features) == "avx512" and "+avx512vnni" in set(features.split(","))


def _codegen_features(context) -> str:
    """The LLVM feature string Numba compiles for (its CPU, or NUMBA_CPU_FEATURES)."""
    return getattr(context.codegen(), "_tm_features", "")  # Numba keeps it private; "" means generic


def compiled_isa() -> str:
    """The instruction set :func:`gate_dot` compiles to in this process (for benchmark records)."""
    from numba.core.registry import cpu_target

    return target_isa(_codegen_features(cpu_target.target_context))


def compiled_u8_product() -> bool:
    """Whether the LSTM kernel uses :func:`gate_dot_u8` in this process (8-bit io codes, VNNI)."""
    from numba.core.registry import cpu_target

    return u8_product(_codegen_features(cpu_target.target_context))


class _Plan:
    """Vector shape of one instruction set: lanes per accumulator, batch rows per weight load."""

    def __init__(self, isa: str) -> None:
        self.isa = isa
        self.lanes = 16 if isa != "avx2" else 8
        self.n_acc = ROWS_PER_BLOCK // self.lanes  # accumulators per batch row
        self.batch_tile = 4 if isa == "avx512" else 1
        # generic: accumulate the two products of a pair in separate lanes (<2L x i32>) and add
        # them once per block at the end, instead of deinterleaving with shuffles every step
        self.paired = isa != "generic"
        self.acc_type = self.vec(_I32) if self.paired else self.vec(_I32, 2)

    def vec(self, t: ir.IntType, scale: int = 1) -> ir.VectorType:
        return ir.VectorType(t, self.lanes * scale)


def _madd(builder: ir.IRBuilder, plan: _Plan, w: ir.Value, z: ir.Value) -> ir.Value:
    """<2L x i16> w, z -> one accumulator's increment.

    x86: <L x i32>, lane j = w[2j] * z[2j] + w[2j+1] * z[2j+1] (``pmaddwd``). Generic:
    <2L x i32> of the products themselves; :func:`_pair_sums` adds the pairs at the end.
    """
    if plan.paired:
        name = "llvm.x86.avx512.pmaddw.d.512" if plan.isa == "avx512" else "llvm.x86.avx2.pmadd.wd"
        fnty = ir.FunctionType(plan.vec(_I32), [plan.vec(_I16, 2), plan.vec(_I16, 2)])
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), [w, z])
    return builder.mul(builder.sext(w, plan.acc_type), builder.sext(z, plan.acc_type))


def _pair_sums(builder: ir.IRBuilder, plan: _Plan, acc: ir.Value) -> ir.Value:
    """An accumulator -> <L x i32> row sums (the generic accumulator adds its lane pairs)."""
    if plan.paired:
        return acc
    even = ir.Constant(plan.vec(_I32), [2 * j for j in range(plan.lanes)])
    odd = ir.Constant(plan.vec(_I32), [2 * j + 1 for j in range(plan.lanes)])
    return builder.add(builder.shuffle_vector(acc, acc, even), builder.shuffle_vector(acc, acc, odd))


def _emit_tile(builder, plan: _Plan, tile: int, w_ptr, z_ptr, acc_ptr, block, n_pairs, b0, z_stride, acc_stride,
               add: bool):
    """Accumulate one 64-row block for batch rows b0 .. b0 + tile - 1 and store the sums (``add``: add them)."""
    accs = [[cgutils.alloca_once(builder, plan.acc_type) for _ in range(plan.n_acc)] for _ in range(tile)]
    for row in accs:
        for a in row:
            builder.store(ir.Constant(plan.acc_type, None), a)
    splat = ir.Constant(plan.vec(_I32), [0] * plan.lanes)
    block_base = builder.mul(block, builder.mul(n_pairs, ir.Constant(_I64, 2 * ROWS_PER_BLOCK)))
    with cgutils.for_range(builder, n_pairs) as pair:
        w_at = builder.add(block_base, builder.mul(pair.index, ir.Constant(_I64, 2 * ROWS_PER_BLOCK)))
        weights = []
        for j in range(plan.n_acc):
            p = builder.gep(w_ptr, [builder.add(w_at, ir.Constant(_I64, 2 * plan.lanes * j))])
            w_type = w_ptr.type.pointee  # i8 codes, sign-extended here, or i16 codes (widened at load)
            w = builder.load(builder.bitcast(p, ir.VectorType(w_type, 2 * plan.lanes).as_pointer()),
                             align=w_type.width // 8)
            weights.append(w if w_type == _I16 else builder.sext(w, plan.vec(_I16, 2)))
        for t in range(tile):
            z_at = builder.add(builder.mul(builder.add(b0, ir.Constant(_I64, t)), z_stride), pair.index)
            zp = builder.load(builder.gep(z_ptr, [z_at]), align=2)  # the pair as one i32
            zv = builder.insert_element(ir.Constant(plan.vec(_I32), ir.Undefined), zp, ir.Constant(_I32, 0))
            zv = builder.bitcast(builder.shuffle_vector(zv, zv, splat), plan.vec(_I16, 2))
            for j, a in enumerate(accs[t]):
                builder.store(builder.add(builder.load(a), _madd(builder, plan, weights[j], zv)), a)
    for t, row in enumerate(accs):
        row_at = builder.add(builder.mul(builder.add(b0, ir.Constant(_I64, t)), acc_stride),
                             builder.mul(block, ir.Constant(_I64, ROWS_PER_BLOCK)))
        for j, a in enumerate(row):
            p = builder.gep(acc_ptr, [builder.add(row_at, ir.Constant(_I64, plan.lanes * j))])
            _store_sums(builder, _pair_sums(builder, plan, builder.load(a)), builder.bitcast(p, plan.vec(_I32).as_pointer()), add)


def _store_sums(builder: ir.IRBuilder, sums: ir.Value, ptr: ir.Value, add: bool) -> None:
    """acc = sums, or acc += sums (int32 lanes, wrapping like the NumPy fallbacks' int32 cast)."""
    if add:
        sums = builder.add(sums, builder.load(ptr, align=4))
    builder.store(sums, ptr, align=4)


def gate_dot(blocks: np.ndarray, z: np.ndarray, acc: np.ndarray) -> None:
    """``acc[b, r] = sum_k W[r, k] z[b, k]`` in int32: ``blocks`` from :func:`block_weights`,
    ``z`` (B, 2P) int16 with P = blocks.shape[1], ``acc`` (B, 64 * blocks.shape[0]) int32, both
    C-contiguous. In Python (a kernel's ``.py_func``) this NumPy version runs; compiled code
    gets the SIMD intrinsic below."""
    acc[:] = (z.astype(np.int64) @ unblock_weights(blocks).T.astype(np.int64)).astype(np.int32)


def gate_dot_add(blocks: np.ndarray, z: np.ndarray, acc: np.ndarray) -> None:
    """:func:`gate_dot` adding to ``acc`` instead of overwriting it (``acc += W z``, int32)."""
    acc[:] = (acc.astype(np.int64) + z.astype(np.int64) @ unblock_weights(blocks).T.astype(np.int64)).astype(np.int32)


@overload(gate_dot, inline="always")
def _gate_dot_overload(blocks, z, acc):
    def impl(blocks, z, acc):
        _gate_dot_simd(blocks, z, acc)
    return impl


@overload(gate_dot_add, inline="always")
def _gate_dot_add_overload(blocks, z, acc):
    def impl(blocks, z, acc):
        _gate_dot_add_simd(blocks, z, acc)
    return impl


def _gate_dot_typing(blocks, z, acc, add: bool):
    """The compiled :func:`gate_dot` (``add``: :func:`gate_dot_add`)."""
    if not (isinstance(blocks, types.Array) and blocks.dtype in (types.int8, types.int16) and blocks.ndim == 4
            and isinstance(z, types.Array) and z.dtype == types.int16 and z.ndim == 2
            and isinstance(acc, types.Array) and acc.dtype == types.int32 and acc.ndim == 2):
        return None
    if not (blocks.layout == z.layout == acc.layout == "C"):
        return None
    sig = types.void(blocks, z, acc)

    def codegen(context, builder, signature, args):
        plan = _Plan(target_isa(_codegen_features(context)))
        w_arr, z_arr, acc_arr = (context.make_array(t)(context, builder, v) for t, v in zip(signature.args, args))
        n_blocks, n_pairs = cgutils.unpack_tuple(builder, w_arr.shape, 4)[:2]
        batch, z_len = cgutils.unpack_tuple(builder, z_arr.shape, 2)
        acc_stride = cgutils.unpack_tuple(builder, acc_arr.shape, 2)[1]
        z_stride = builder.udiv(z_len, ir.Constant(_I64, 2))  # in pairs
        w_ptr = builder.bitcast(w_arr.data, (_I16 if signature.args[0].dtype == types.int16 else _I8).as_pointer())
        z_ptr = builder.bitcast(z_arr.data, _I32.as_pointer())
        acc_ptr = builder.bitcast(acc_arr.data, _I32.as_pointer())
        tile = ir.Constant(_I64, plan.batch_tile)
        n_tiles = builder.udiv(batch, tile)
        with cgutils.for_range(builder, n_blocks) as block:
            with cgutils.for_range(builder, n_tiles) as bt:
                b0 = builder.mul(bt.index, tile)
                _emit_tile(builder, plan, plan.batch_tile, w_ptr, z_ptr, acc_ptr, block.index, n_pairs, b0,
                           z_stride, acc_stride, add)
            if plan.batch_tile > 1:
                with cgutils.for_range_slice(builder, builder.mul(n_tiles, tile), batch, ir.Constant(_I64, 1)) as (b, _):
                    _emit_tile(builder, plan, 1, w_ptr, z_ptr, acc_ptr, block.index, n_pairs, b,
                               z_stride, acc_stride, add)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _gate_dot_simd(typingctx, blocks, z, acc):
    return _gate_dot_typing(blocks, z, acc, False)


@intrinsic
def _gate_dot_add_simd(typingctx, blocks, z, acc):
    return _gate_dot_typing(blocks, z, acc, True)


# ---------------------------------------------------------------- unsigned 8-bit inputs (AVX-512 VNNI)

def gate_dot_u8(blocks: np.ndarray, zu: np.ndarray, acc: np.ndarray) -> None:
    """``acc[b, r] = sum_k W[r, k] zu[b, k]`` in int32 for uint8 ``zu`` (B, 4Q): ``blocks`` from
    :func:`block_weights_u8` (Q = blocks.shape[1]), ``acc`` (B, 64 * blocks.shape[0]).

    The kernel feeds signed 8-bit codes as ``z + QUAD_OFFSET`` and folds ``-QUAD_OFFSET *
    sum_k W[r, k]`` into the bias, so the sum is exact while ``sum_k |W[r, k]| * 255`` stays
    below 2**31. Compiled for AVX-512 VNNI it is one ``vpdpbusd`` per 16 rows x 4 inputs (64
    multiply-accumulates, twice ``vpdpwssd``'s 32, and no sign extension of the weights);
    elsewhere, the same sum in portable vector IR (used only by tests there: the kernel
    takes :func:`gate_dot` when :func:`compiled_u8_product` is false).
    """
    acc[:] = (zu.astype(np.int64) @ unblock_weights_u8(blocks).T.astype(np.int64)).astype(np.int32)


def gate_dot_u8_add(blocks: np.ndarray, zu: np.ndarray, acc: np.ndarray) -> None:
    """:func:`gate_dot_u8` adding to ``acc`` instead of overwriting it (``acc += W zu``, int32)."""
    acc[:] = (acc.astype(np.int64) + zu.astype(np.int64) @ unblock_weights_u8(blocks).T.astype(np.int64)).astype(np.int32)


@overload(gate_dot_u8, inline="always")
def _gate_dot_u8_overload(blocks, zu, acc):
    def impl(blocks, zu, acc):
        _gate_dot_u8_simd(blocks, zu, acc)
    return impl


@overload(gate_dot_u8_add, inline="always")
def _gate_dot_u8_add_overload(blocks, zu, acc):
    def impl(blocks, zu, acc):
        _gate_dot_u8_add_simd(blocks, zu, acc)
    return impl


_U8_LANES = 16  # int32 lanes of a zmm register; each holds one row's 4 products
_U8_TILE = 4  # batch rows per weight load: 4 x 4 accumulators + 4 weight registers of 32


def _quad_madd(builder: ir.IRBuilder, vnni: bool, acc: ir.Value, z: ir.Value, w: ir.Value) -> ir.Value:
    """acc + per lane sum of the 4 products zu[4j+i] * w[4j+i] (u8 x s8), all <16 x i32>."""
    v16 = ir.VectorType(_I32, _U8_LANES)
    if vnni:
        fnty = ir.FunctionType(v16, [v16, v16, v16])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, [acc, z, w])  # second operand unsigned, third signed
    v64 = ir.VectorType(_I32, 4 * _U8_LANES)
    zz = builder.zext(builder.bitcast(z, ir.VectorType(_I8, 4 * _U8_LANES)), v64)
    ww = builder.sext(builder.bitcast(w, ir.VectorType(_I8, 4 * _U8_LANES)), v64)
    prod = builder.mul(zz, ww)
    for i in range(4):
        sel = ir.Constant(v16, [4 * j + i for j in range(_U8_LANES)])
        acc = builder.add(acc, builder.shuffle_vector(prod, prod, sel))
    return acc


def _emit_tile_u8(builder, vnni: bool, tile: int, w_ptr, z_ptr, acc_ptr, block, n_quads, b0, z_stride, acc_stride,
                  add: bool):
    """Accumulate one 64-row block for batch rows b0 .. b0 + tile - 1 and store the sums (``add``: add them)."""
    v16 = ir.VectorType(_I32, _U8_LANES)
    n_acc = ROWS_PER_BLOCK // _U8_LANES
    accs = [[cgutils.alloca_once(builder, v16) for _ in range(n_acc)] for _ in range(tile)]
    for row in accs:
        for a in row:
            builder.store(ir.Constant(v16, None), a)
    splat = ir.Constant(v16, [0] * _U8_LANES)
    block_base = builder.mul(block, builder.mul(n_quads, ir.Constant(_I64, 4 * ROWS_PER_BLOCK)))
    with cgutils.for_range(builder, n_quads) as quad:
        w_at = builder.add(block_base, builder.mul(quad.index, ir.Constant(_I64, 4 * ROWS_PER_BLOCK)))
        weights = []
        for j in range(n_acc):
            p = builder.gep(w_ptr, [builder.add(w_at, ir.Constant(_I64, 4 * _U8_LANES * j))])
            weights.append(builder.load(builder.bitcast(p, v16.as_pointer()), align=1))
        for t in range(tile):
            z_at = builder.add(builder.mul(builder.add(b0, ir.Constant(_I64, t)), z_stride), quad.index)
            zq = builder.load(builder.gep(z_ptr, [z_at]), align=1)  # the quad as one i32
            zv = builder.insert_element(ir.Constant(v16, ir.Undefined), zq, ir.Constant(_I32, 0))
            zv = builder.shuffle_vector(zv, zv, splat)
            for j, a in enumerate(accs[t]):
                builder.store(_quad_madd(builder, vnni, builder.load(a), zv, weights[j]), a)
    for t, row in enumerate(accs):
        row_at = builder.add(builder.mul(builder.add(b0, ir.Constant(_I64, t)), acc_stride),
                             builder.mul(block, ir.Constant(_I64, ROWS_PER_BLOCK)))
        for j, a in enumerate(row):
            p = builder.gep(acc_ptr, [builder.add(row_at, ir.Constant(_I64, _U8_LANES * j))])
            _store_sums(builder, builder.load(a), builder.bitcast(p, v16.as_pointer()), add)


def _gate_dot_u8_typing(blocks, zu, acc, add: bool):
    """The compiled :func:`gate_dot_u8` (``add``: :func:`gate_dot_u8_add`)."""
    if not (isinstance(blocks, types.Array) and blocks.dtype == types.int8 and blocks.ndim == 4
            and isinstance(zu, types.Array) and zu.dtype == types.uint8 and zu.ndim == 2
            and isinstance(acc, types.Array) and acc.dtype == types.int32 and acc.ndim == 2):
        return None
    if not (blocks.layout == zu.layout == acc.layout == "C"):
        return None
    sig = types.void(blocks, zu, acc)

    def codegen(context, builder, signature, args):
        vnni = u8_product(_codegen_features(context))
        w_arr, z_arr, acc_arr = (context.make_array(t)(context, builder, v) for t, v in zip(signature.args, args))
        n_blocks, n_quads = cgutils.unpack_tuple(builder, w_arr.shape, 4)[:2]
        batch, z_len = cgutils.unpack_tuple(builder, z_arr.shape, 2)
        acc_stride = cgutils.unpack_tuple(builder, acc_arr.shape, 2)[1]
        z_stride = builder.udiv(z_len, ir.Constant(_I64, 4))  # in quads
        w_ptr = builder.bitcast(w_arr.data, _I8.as_pointer())
        z_ptr = builder.bitcast(z_arr.data, _I32.as_pointer())
        acc_ptr = builder.bitcast(acc_arr.data, _I32.as_pointer())
        tile = ir.Constant(_I64, _U8_TILE)
        n_tiles = builder.udiv(batch, tile)
        with cgutils.for_range(builder, n_blocks) as block:
            with cgutils.for_range(builder, n_tiles) as bt:
                _emit_tile_u8(builder, vnni, _U8_TILE, w_ptr, z_ptr, acc_ptr, block.index, n_quads,
                              builder.mul(bt.index, tile), z_stride, acc_stride, add)
            with cgutils.for_range_slice(builder, builder.mul(n_tiles, tile), batch, ir.Constant(_I64, 1)) as (b, _):
                _emit_tile_u8(builder, vnni, 1, w_ptr, z_ptr, acc_ptr, block.index, n_quads, b, z_stride, acc_stride,
                              add)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _gate_dot_u8_simd(typingctx, blocks, zu, acc):
    return _gate_dot_u8_typing(blocks, zu, acc, False)


@intrinsic
def _gate_dot_u8_add_simd(typingctx, blocks, zu, acc):
    return _gate_dot_u8_typing(blocks, zu, acc, True)
