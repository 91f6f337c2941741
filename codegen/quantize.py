"""Emit rotate + quantize kernels (and the MXFP4 -> FP8 fold) as Triton source.

One program quantizes a tile of ``BLOCK_ROWS`` output rows x ``BLOCK_GROUPS``
32-element groups.  The tile is loaded (from a dense tensor along either
dimension, or from saved MXFP4 codes that are dequantized in registers),
viewed as ``[G, 32]`` groups, split into 32 lane tensors, and every step after
that is straight-line code in the reference's order of operations
(:mod:`fp4.codegen.lanes`).  Codes, scales and clip masks are stored in the
layouts of :mod:`fp4.runtime.formats`.

With ``fold`` the program owns whole output rows: a first loop quantizes the
row chunk by chunk and tracks the largest group exponent, a second loop reads
the codes back (they are still in L2) and writes the E4M3 fold with one fp32
scale per row (:mod:`fp4.runtime.fold`), so Hopper's FP8 GEMM gets its
operands without another pass over the input.
"""

from __future__ import annotations

import contextlib

from fp4.core import (
    E2M1_MAX,
    E8M0_NAN,
    FLOAT32_MAX,
    FOLD_HEADROOM,
    GROUP_SIZE,
    QUEST_EPSILON,
    QUEST_HUGE_GROUP,
    QUEST_HUGE_SCALE,
    QUEST_SCALE_FACTOR,
)

from . import lanes as L
from .source import KernelSource, SourceWriter, header
from .spec import POINTER_TYPES, FoldSpec, QuantizeSpec

NO_FUSION = {"enable_fp_fusion": False}
FOLD_SCALE_GROUPS = 256
"""Group scales the standalone fold reads at a time for a row's exponent (8 192 elements of the row)."""
UNIFORM_24_BITS = 2.0**-L.UNIFORM_BITS
_SLICE_BYTES = 16
_ITEM_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def _widen(loaded: str, dtype: str, sign_bits: str | None) -> str:
    """``loaded`` (a ``dtype`` tile) as float32, its sign flipped where ``sign_bits`` (uint32) holds 0x80000000.

    Flipping the sign bit is the reference's multiplication by -1 (exact, -0.0 and
    infinities included; NaN stays NaN).  A bf16 value widens by a 16-bit shift,
    so adding the sign bit (mod 2**32, an XOR of bit 31) joins that one operation.
    """
    if dtype == "bf16":
        bits = f"({loaded}.to(tl.uint16, bitcast=True).to(tl.uint32) << 16)"
        if sign_bits is not None:
            bits = f"({bits} + {sign_bits})"
    elif sign_bits is None:
        return f"{loaded}.to(tl.float32)"
    else:
        bits = f"({loaded}.to(tl.float32).to(tl.uint32, bitcast=True) ^ {sign_bits})"
    return f"{bits}.to(tl.float32, bitcast=True)"


def _emit_load_dense_last(w: SourceWriter, spec: QuantizeSpec) -> list[str]:
    """Load the groups in 16-byte column slices, one [GROUPS, slice] tile each, and split them into lanes.

    A 16-byte slice per thread is one vector load and puts a group's lanes in
    one thread without a shared-memory re-layout.
    """
    width = _SLICE_BYTES // _ITEM_BYTES[spec.input_dtype]
    w.comment("group g of the tile: row g // BLOCK_GROUPS, group column g % BLOCK_GROUPS (in row-major tile order)")
    w.line("tile_index = tl.arange(0, GROUPS)")
    w.line("tile_rows = (pid_row * BLOCK_ROWS + tile_index // BLOCK_GROUPS).to(tl.int64)")
    w.line("tile_cols = (group0 + tile_index % BLOCK_GROUPS) * 32")
    w.line("tile_ptrs = x_ptr + tile_rows * stride_x + tile_cols")
    w.line("tile_ok = tile_rows < rows")
    names = []
    for first in range(0, GROUP_SIZE, width):
        w.line(f"slice_cols = tile_cols[:, None] + ({first} + tl.arange(0, {width}))[None, :]")
        loaded = (
            f"tl.load(tile_ptrs[:, None] + ({first} + tl.arange(0, {width}))[None, :], "
            "mask=tile_ok[:, None] & (slice_cols < cols), other=0.0)"
        )
        w.line(f"x{first:02d} = {_widen(loaded, spec.input_dtype, None)}")
        if spec.signs:
            w.line(f"x{first:02d} = x{first:02d} * sign_row{first:02d}[None, :]")
        names += L.split_lanes(w, f"x{first:02d}", "GROUPS", "v", list(range(first, first + width)))
    return names


def _emit_load_dense_first(w: SourceWriter, spec: QuantizeSpec) -> None:
    w.comment("groups run down the columns: load [32 * BLOCK_GROUPS, BLOCK_ROWS] and transpose in registers")
    w.line("in_rows = group0 * 32 + tl.arange(0, BLOCK_GROUPS * 32)")
    w.line("valid = (in_rows[:, None] < rows) & (out_rows[None, :] < cols)")
    w.line("xt = tl.load(x_ptr + in_rows[:, None].to(tl.int64) * stride_x + out_rows[None, :], mask=valid, other=0.0)")
    signs = None
    if spec.signs:
        w.comment("the signs go on before the transpose: element i of a group is row i of its 32 rows here")
        w.line(f"sign_bits = {_lane_sign_set(_GROUP_ROW_LANES)}.to(tl.uint32) << 31")
        signs = "sign_bits[:, None]"
    w.line(f"x = tl.reshape(tl.trans({_widen('xt', spec.input_dtype, signs)}), [GROUPS, 32])")


_GROUP_ROW_LANES = "tl.arange(0, BLOCK_GROUPS * 32) % 32"
"""The lane (element of its group) of each row of a tile whose groups run down 32 rows."""


def _lane_sign_set(lanes: str) -> str:
    """1 where the rotation sign of lane(s) ``lanes`` is -1 (bit ``lane`` of ``sign_mask``), else 0."""
    return f"((sign_mask >> ({lanes})) & 1)"


def _lane_sign(lanes: str) -> str:
    """The rotation sign (-1.0 or 1.0) of lane(s) ``lanes``."""
    return f"tl.where({_lane_sign_set(lanes)} != 0, -1.0, 1.0)"


def _emit_load_mxfp4_first(w: SourceWriter, spec: QuantizeSpec) -> None:
    w.comment("dequantize the saved operand [rows, cols] tile (codes * 2**(scale - 127), exact), then transpose")
    w.line("in_rows = group0 * 32 + tl.arange(0, BLOCK_GROUPS * 32)")
    w.line("in_rows64 = in_rows[:, None].to(tl.int64)")
    w.line("byte_cols = pid_row * (BLOCK_ROWS // 2) + tl.arange(0, BLOCK_ROWS // 2)")
    w.line("scale_cols = pid_row * (BLOCK_ROWS // 32) + tl.arange(0, BLOCK_ROWS // 32)")
    w.line("row_ok = in_rows[:, None] < rows")
    w.line(
        "packed = tl.load(x_codes_ptr + in_rows64 * stride_x + byte_cols[None, :], "
        "mask=row_ok & (byte_cols[None, :] < cols // 2), other=0)"
    )
    w.line(
        "in_scale = tl.load(x_scales_ptr + in_rows64 * stride_x_scales + scale_cols[None, :], "
        "mask=row_ok & (scale_cols[None, :] < cols // 32), other=0).to(tl.int32)"
    )
    L.emit_e2m1_decode_bytes(w, "packed", "[BLOCK_GROUPS * 32, BLOCK_ROWS]", "in_value")
    L.emit_e8m0_value(w, "in_scale", "in_scale_value")
    if spec.signs:
        w.comment("the rotation's sign of element i of a group (row i of its 32 rows here) rides on the scale")
        w.line(f"in_scale_value = in_scale_value * {_lane_sign(_GROUP_ROW_LANES)}[:, None]")
    w.line(
        "in_scale_value = tl.reshape(tl.broadcast_to(in_scale_value[:, :, None], "
        "[BLOCK_GROUPS * 32, BLOCK_ROWS // 32, 32]), [BLOCK_GROUPS * 32, BLOCK_ROWS])"
    )
    w.line("x = tl.reshape(tl.trans(in_value * in_scale_value), [GROUPS, 32])")


def _emit_quest(w: SourceWriter, v: list[str], hardware_e2m1: bool = False) -> tuple[list[str], list[str]]:
    """QuEST scale, RNE codes and clip-mask bits of the lanes ``v``; returns (packed code words, keep bits)."""
    w.comment("QuEST scale: 2**floor(log2(0.48707976 * std + 1e-8)), std from pairwise tree sums")
    _emit_absmax(w, v)
    w.comment(f"a finite group reaching {QUEST_HUGE_GROUP!r} takes its statistics at {QUEST_HUGE_SCALE!r} times")
    w.comment("its values (the sum of squares would overflow); every other group at exactly 1 times")
    w.line(f"huge = (amax >= {QUEST_HUGE_GROUP!r}) & (amax <= {FLOAT32_MAX!r})")
    w.line(f"stat_scale = tl.where(huge, {QUEST_HUGE_SCALE!r}, 1.0)")
    stats = L.lanes("st")
    for name, value in zip(stats, v):
        w.line(f"{name} = {value} * stat_scale")
    L.tree_sum(w, stats, "group_sum")
    squares = L.lanes("sq")
    for name, value in zip(squares, stats):
        w.line(f"{name} = {value} * {value}")
    L.tree_sum(w, squares, "group_square_sum")
    inverse_group = 1.0 / GROUP_SIZE
    w.line(f"mean = group_sum * {inverse_group!r}")
    w.line(f"mean_square = group_square_sum * {inverse_group!r}")
    w.line("variance = mean_square - mean * mean")
    w.comment("clamp tiny negative variances at zero (NaN stays NaN)")
    w.line("variance = tl.where(variance < 0.0, 0.0, variance)")
    w.line(f"std = tl.sqrt_rn(variance) * tl.where(huge, {1.0 / QUEST_HUGE_SCALE!r}, 1.0)")
    w.line(f"spread = std * {QUEST_SCALE_FACTOR!r} + {QUEST_EPSILON!r}")
    w.line(f"scale_byte = {L.exponent_byte('spread')}")
    L.emit_inverse_scale(w, "scale_byte", "inv_scale")
    codes, keeps = L.lanes("c"), L.lanes("k")
    w.comment(f"round to nearest even on the E2M1 grid; the clip mask keeps |x/s| < {E2M1_MAX}")
    for value, code, keep in zip(v, codes, keeps):
        w.line(f"{value} = {value} * inv_scale")
        if not hardware_e2m1:
            L.emit_rne_code(w, value, code)
        w.line(f"{keep} = (tl.abs({value}) < {E2M1_MAX!r}).to(tl.int32)")
    if hardware_e2m1:
        return L.emit_hardware_rne_words(w, v, "code_word"), keeps
    return L.pack_words(w, [L.code_parts(code) for code in codes], 4, "code_word"), keeps


def _emit_absmax(w: SourceWriter, v: list[str]) -> None:
    """``amax``: the largest magnitude of the lanes ``v`` (a pairwise tree; NaN propagates)."""
    level = [f"tl.abs({name})" for name in v]
    depth = 0
    while len(level) > 1:
        depth += 1
        half = len(level) // 2
        names = [f"amax_{depth}_{i:02d}" if half > 1 else "amax" for i in range(half)]
        for i in range(half):
            w.line(f"{names[i]} = tl.maximum({level[i]}, {level[i + half]}, propagate_nan=tl.PropagateNan.ALL)")
        level = names


def _emit_sr(w: SourceWriter, v: list[str], wide_offsets: bool) -> list[str]:
    """Absmax scale and stochastically rounded codes of the lanes ``v`` (reference.sr_quantize).

    Returns the four packed code words of each group (see :func:`_emit_store`).
    """
    w.comment("absmax scale 2**floor(log2(max|g|)); NaN propagates into the scale byte")
    _emit_absmax(w, v)
    w.line(f"scale_byte = {L.exponent_byte('amax')}")
    L.emit_inverse_scale(w, "scale_byte", "inv_scale")
    w.comment("element n = row * out_width + col of the padded result takes word n % 4 of Philox counter n // 4")
    w.line("philox_base = tl.reshape(out_rows64[:, None] * out_width + groups[None, :] * 32, [GROUPS]) >> 2")
    w.comment("a group's 8 counters share the high word (the base is a multiple of 8)")
    w.line("philox_lo = philox_base.to(tl.uint32)")
    if wide_offsets:
        w.line("philox_hi = (philox_base >> 32).to(tl.uint32)")
    L.emit_philox_keys(w, "seed", "philox")
    codes, packed = L.lanes("c"), []
    for call in range(GROUP_SIZE // 4):
        counter = f"(philox_lo | {call})" if call else "philox_lo"
        words = L.emit_philox(w, "philox", counter, "philox_hi" if wide_offsets else None, f"rand{call}", words=4)
        for k, word in enumerate(words):
            i = 4 * call + k
            w.line(f"{v[i]} = ({v[i]} * 3.0) * inv_scale")
            L.emit_sr_code(w, v[i], word, codes[i])
        if call % 2:
            w.comment("pack the eight codes done so far into their word (fewer values live at once)")
            done = [L.code_parts(code) for code in codes[4 * call - 4 : 4 * call + 4]]
            (word_name,) = L.pack_words(w, done, 4, f"code_word{call // 2}_")
            packed.append(word_name)
    return packed


def _emit_store(w: SourceWriter, spec: QuantizeSpec, words: list[str], keeps: list[str] | None) -> None:
    """Store a tile's codes (``words``: four packed words per group), scales and, with ``keeps``, clip-mask bits."""
    w.comment("store codes [rows, width/2] as 4 little-endian words per group, scales [rows, width/32] as bytes")
    L.join_lanes(w, words, "GROUPS", "code_tile")
    w.line("row_ok = out_rows[:, None] < n_out_rows")
    w.line("word_cols = group0 * 4 + tl.arange(0, BLOCK_GROUPS * 4)")
    w.line(
        "tl.store(codes_ptr.to(tl.pointer_type(tl.int32)) + out_rows64[:, None] * (out_width // 8) "
        "+ word_cols[None, :], tl.reshape(code_tile, [BLOCK_ROWS, BLOCK_GROUPS * 4]), "
        "mask=row_ok & (word_cols[None, :] < out_width // 8))"
    )
    w.line("group_ok = groups[None, :] < n_groups")
    w.line("row_scale_bytes = tl.reshape(scale_byte, [BLOCK_ROWS, BLOCK_GROUPS])")
    w.line(
        "tl.store(scales_ptr + out_rows64[:, None] * n_groups + groups[None, :], "
        "row_scale_bytes.to(tl.uint8), mask=row_ok & group_ok)"
    )
    if keeps is not None:
        w.comment("clip mask [rows, width/8]: one word per group, bit i for element i")
        (mask_word,) = L.pack_words(w, keeps, 1, "mask_word")
        w.line(
            "tl.store(mask_ptr.to(tl.pointer_type(tl.int32)) + out_rows64[:, None] * n_groups + groups[None, :], "
            f"tl.reshape({mask_word}, [BLOCK_ROWS, BLOCK_GROUPS]), mask=row_ok & group_ok)"
        )


def _emit_fold_track_start(w: SourceWriter) -> None:
    """Before a fold's pass over its rows' group scales (:func:`_emit_fold_track`)."""
    w.comment(f"the rows' largest scale byte (NaN: {E8M0_NAN}) and largest of byte + 1 wrapped to 8 bits: the")
    w.comment("NaN scale wraps to 0 and each finite exponent e to e + 1, so no select per byte")
    w.line("top = tl.zeros([BLOCK_ROWS], dtype=tl.int32)")
    w.line("finite_top = tl.zeros([BLOCK_ROWS], dtype=tl.int32)")


def _emit_fold_track(w: SourceWriter, scale_bytes: str) -> None:
    """Take one int32 tile of the rows' group scale bytes (``scale_bytes``, 0 where masked) into the two maxima."""
    w.line(f"top = tl.maximum(top, tl.max({scale_bytes}, axis=1))")
    w.line(f"finite_top = tl.maximum(finite_top, tl.max(({scale_bytes} + 1) & 255, axis=1))")


def _emit_fold_row_scale(w: SourceWriter, when: str | None = None) -> None:
    """A fold's row scale from the row's largest group exponent; stored by the programs where ``when`` holds."""
    w.line(f"has_nan = (top == {E8M0_NAN}).to(tl.int32)")
    w.line("exp_max = tl.maximum(finite_top - 1, 0)")
    w.comment(f"fold: row exponent = largest finite group exponent - {FOLD_HEADROOM} (at least 2**-126 as a scale)")
    w.line(f"ref = tl.maximum(exp_max - {FOLD_HEADROOM}, 1)")
    w.line("row_scale = tl.where(has_nan != 0, 0x7FC00000, ref << 23).to(tl.float32, bitcast=True)")
    with w.block(f"if {when}:") if when else contextlib.nullcontext():
        w.line("tl.store(fold_scales_ptr + out_rows, row_scale, mask=out_rows < n_out_rows)")


def _emit_fold_columns(w: SourceWriter) -> None:
    """Codes + scales of the groups ``group0 ...`` of this program's rows -> E4M3 values (``ref`` in hand)."""
    w.line("groups = group0 + tl.arange(0, BLOCK_GROUPS)")
    w.line("row_ok = out_rows[:, None] < n_out_rows")
    w.line("group_ok = groups[None, :] < n_groups")
    w.line("byte_cols = group0 * 16 + tl.arange(0, BLOCK_GROUPS * 16)")
    w.line(
        "packed = tl.load(codes_ptr + out_rows64[:, None] * (out_width // 2) + byte_cols[None, :], "
        "mask=row_ok & (byte_cols[None, :] < out_width // 2), other=0)"
    )
    w.comment("zero codes fold to +0 (the sign of a zero carries nothing into a product)")
    L.emit_e2m1_decode_bytes(w, "packed", "[BLOCK_ROWS, BLOCK_GROUPS * 32]", "fold_value", positive_zero=True)
    w.line(
        "fold_byte = tl.load(scales_ptr + out_rows64[:, None] * n_groups + groups[None, :], "
        "mask=row_ok & group_ok, other=0).to(tl.int32)"
    )
    w.comment("2**(group exponent - row exponent): exact down to 2**-126, zero below (E4M3 ends at 2**-9)")
    w.line("shift = fold_byte - ref[:, None]")
    w.line(
        f"fold_mult = tl.where(fold_byte == {E8M0_NAN}, 1.0, tl.where(shift < -126, 0.0, "
        "((shift + 127) << 23).to(tl.float32, bitcast=True)))"
    )
    w.line(
        "fold_mult = tl.reshape(tl.broadcast_to(fold_mult[:, :, None], [BLOCK_ROWS, BLOCK_GROUPS, 32]), "
        "[BLOCK_ROWS, BLOCK_GROUPS * 32])"
    )
    w.line("value_cols = group0 * 32 + tl.arange(0, BLOCK_GROUPS * 32)")
    w.line("fold_value = fold_value * fold_mult")
    w.line(
        "tl.store(fold_ptr + out_rows64[:, None] * out_width + value_cols[None, :], "
        "fold_value.to(tl.float8e4nv), mask=row_ok & (value_cols[None, :] < out_width))"
    )


def _emit_fold_rows(w: SourceWriter) -> None:
    """Second pass of a quantizer that folds: codes + scales of this program's whole rows -> E4M3 values and the
    row scale."""
    _emit_fold_row_scale(w)
    with w.block("for group0 in range(0, n_groups, BLOCK_GROUPS):"):
        _emit_fold_columns(w)


def _signature(spec: QuantizeSpec) -> dict:
    sig = {}
    if spec.source == "dense":
        sig["x_ptr"] = POINTER_TYPES[spec.input_dtype]
    else:
        sig.update(x_codes_ptr="*u8", x_scales_ptr="*u8")
    sig.update(codes_ptr="*u8", scales_ptr="*u8")
    if spec.writes_mask:
        sig["mask_ptr"] = "*u8"
    if spec.fold:
        sig.update(fold_ptr="*fp8e4nv", fold_scales_ptr="*fp32")
    sig.update(rows="i32", cols="i32", stride_x="i32")
    if spec.source == "mxfp4":
        sig["stride_x_scales"] = "i32"
    sig["out_width"] = "i32"
    if spec.uses_philox:
        sig["seed_ptr"] = "*i64"
    if spec.method == "sr":
        sig.update(L.addend_parameters("stream_addend"))
    if spec.signs:
        sig.update(L.addend_parameters("sign_addend"))
    return sig


@contextlib.contextmanager
def row_tile_function(w: SourceWriter, name: str, what: str, signature: dict, columns: str = "BLOCK_GROUPS"):
    """``@triton.jit def name(<signature>, BLOCK_ROWS, <columns>)`` with its docstring; the body goes inside.

    Every quantizer kernel (MXFP4 and NVFP4) is tiled by rows and by groups (or columns) of a row."""
    params = ", ".join(list(signature) + ["BLOCK_ROWS: tl.constexpr", f"{columns}: tl.constexpr"])
    w.line("@triton.jit")
    with w.block(f"def {name}({params}):"):
        w.line(f'"""{what[0].upper() + what[1:]}."""')
        yield


def row_tile_kernel(name: str, w: SourceWriter, spec, signature: dict, columns: str = "BLOCK_GROUPS") -> KernelSource:
    """The finished source of a kernel tiled by ``BLOCK_ROWS`` x ``columns`` (compiled without FMA fusion)."""
    return KernelSource(
        name=name,
        text=w.text(),
        spec=spec,
        signature=signature,
        constexprs=("BLOCK_ROWS", columns),
        options=dict(NO_FUSION),
    )


def emit_quantize(spec: QuantizeSpec) -> KernelSource:
    """Triton source of the kernel described by ``spec``."""
    name = spec.kernel_name
    what = "rotate + " if spec.rotate else ""
    what += "QuEST quantize" if spec.method == "quest" else "absmax quantize with stochastic rounding"
    what += " along the " + ("last dimension" if spec.axis == "last" else "first dimension (transposed output)")
    if spec.source == "mxfp4":
        what = "dequantize saved MXFP4, " + what
    if spec.fold:
        what += ", plus the FP8 fold"
    w = SourceWriter()
    w.lines_(header(name, what, spec.describe(), NO_FUSION))
    signature = _signature(spec)
    with row_tile_function(w, name, what, signature):
        w.line("GROUPS: tl.constexpr = BLOCK_ROWS * BLOCK_GROUPS")
        w.line("pid_row = tl.program_id(0)")
        w.line("out_rows = pid_row * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)")
        w.line("out_rows64 = out_rows.to(tl.int64)")
        w.line(f"n_out_rows = {'rows' if spec.axis == 'last' else 'cols'}")
        w.line("n_groups = out_width // 32")
        if spec.uses_philox:
            w.comment("the layer's seed lives on the device; each stream of it gets its own Philox seed")
            w.line("layer_seed = tl.load(seed_ptr).to(tl.uint64, bitcast=True)")
        if spec.method == "sr":
            L.emit_stream_seed(w, "layer_seed", "stream_addend", "seed")
        if spec.signs:
            L.emit_stream_seed(w, "layer_seed", "sign_addend", "sign_seed")
            L.emit_sign_mask(w, "sign_seed", "sign_mask")
            w.comment("random +-1 diagonal D of H_b = D.H: bit i of sign_mask set means sign i is -1")
            if spec.source == "dense" and spec.axis == "last":
                width = _SLICE_BYTES // _ITEM_BYTES[spec.input_dtype]
                for first in range(0, GROUP_SIZE, width):
                    w.line(f"sign_row{first:02d} = {_lane_sign(f'{first} + tl.arange(0, {width})')}")
        if spec.fold:
            _emit_fold_track_start(w)
            loop = w.block("for group0 in range(0, n_groups, BLOCK_GROUPS):")
        else:
            w.line("group0 = tl.program_id(1) * BLOCK_GROUPS")
            loop = None
        if loop is not None:
            loop.__enter__()
        w.line("groups = group0 + tl.arange(0, BLOCK_GROUPS)")
        if (spec.source, spec.axis) == ("dense", "last"):
            v = _emit_load_dense_last(w, spec)
        else:
            if spec.source == "mxfp4":
                _emit_load_mxfp4_first(w, spec)
            else:
                _emit_load_dense_first(w, spec)
            v = L.split_lanes(w, "x", "GROUPS", "v")
        if spec.rotate:
            L.butterfly(w, v)
        if spec.method == "quest":
            words, keeps = _emit_quest(w, v, spec.hardware_e2m1)
        else:
            words, keeps = _emit_sr(w, v, spec.wide_offsets), None
        _emit_store(w, spec, words, keeps)
        if spec.fold:
            _emit_fold_track(w, "tl.where(row_ok & group_ok, row_scale_bytes, 0)")
            loop.__exit__(None, None, None)
            w.comment("the second pass reads back what this program's threads just stored")
            w.line("tl.debug_barrier()")
            _emit_fold_rows(w)
    return row_tile_kernel(name, w, spec, signature)


def emit_fold(spec: FoldSpec | None = None) -> KernelSource:
    """Triton source of the standalone MXFP4 -> FP8 fold (codes + scales -> E4M3 + fp32 row scales).

    Tiled like the quantizers, ``BLOCK_ROWS`` rows by ``BLOCK_GROUPS`` groups a program: each program first reads
    its rows' group scales (1/16 of the codes' bytes, ``FOLD_SCALE_GROUPS`` at a time) for the row exponent, then
    folds only its own groups, so a long row is spread over many programs instead of walked by one."""
    spec = spec or FoldSpec()
    name = spec.kernel_name
    what = "fold MXFP4 rows into E4M3 values with one fp32 scale per row"
    w = SourceWriter()
    w.lines_(header(name, what, spec.describe(), NO_FUSION))
    signature = {
        "codes_ptr": "*u8",
        "scales_ptr": "*u8",
        "fold_ptr": "*fp8e4nv",
        "fold_scales_ptr": "*fp32",
        "rows": "i32",
        "out_width": "i32",
        "n_groups": "i32",
    }
    with row_tile_function(w, name, what, signature):
        w.line(f"SCALE_GROUPS: tl.constexpr = {FOLD_SCALE_GROUPS}")
        w.line("pid_row = tl.program_id(0)")
        w.line("out_rows = pid_row * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)")
        w.line("out_rows64 = out_rows.to(tl.int64)")
        w.line("n_out_rows = rows")
        w.comment("n_groups = out_width // 32, an argument of its own: where it is a multiple of 16 (Triton")
        w.comment("specializes that), each thread loads its scale bytes 16 at a time")
        _emit_fold_track_start(w)
        with w.block("for scale0 in range(0, n_groups, SCALE_GROUPS):"):
            w.line("scale_groups = scale0 + tl.arange(0, SCALE_GROUPS)")
            w.line(
                "row_scale_bytes = tl.load(scales_ptr + out_rows64[:, None] * n_groups + scale_groups[None, :], "
                "mask=(out_rows[:, None] < n_out_rows) & (scale_groups[None, :] < n_groups), other=0).to(tl.int32)"
            )
            _emit_fold_track(w, "row_scale_bytes")  # loaded as 0 where masked
        w.line("group0 = tl.program_id(1) * BLOCK_GROUPS")
        w.comment("every program of a row finds the same row scale; the first of them stores it")
        _emit_fold_row_scale(w, "group0 == 0")
        _emit_fold_columns(w)
    return row_tile_kernel(name, w, spec, signature)
