"""Emit the NVFP4 recipes' kernels (docs/recipes.md) as Triton source: quantizers in two passes, and the GEMM.

An NVFP4 tensor scale depends on the whole tensor's largest magnitude, so each
quantizer is two kernels over the same tiles: the ``amax`` pass loads (and
rotates) every tile and raises one float32 maximum with an atomic max on its
bits; the quantize pass reads that maximum, derives the tensor scale exactly
as the reference does, and writes codes, E4M3 scale bytes and (program 0) the
tensor's decode scale.  Both are CUDA-graph capturable (no host reads).

A program owns a ``BLOCK_ROWS x BLOCK_COLS`` tile of the (transposed, padded)
result.  The steps follow :mod:`fp4.runtime.nvfp4` and :mod:`fp4.runtime.quartet2`
operation by operation, so the kernels match them bit for bit:

* loads: a dense tensor along its last dimension or (``axis="first"``) its
  first, transposed in registers; or a saved NVFP4 operand (``source="nvfp4"``),
  dequantized as ``(e2m1 * e4m3) * decode`` and transposed;
* the Hadamard butterfly in the stage order of :mod:`fp4.runtime.hadamard`
  (strides ``size/2 .. 1``, then one multiplication by ``1/sqrt(size)``), after
  TE's fixed signs (16) or the layer's random signs (128, from the device seed);
* IEEE divisions (``tl.div_rn``) where the reference divides; sums as pairwise
  trees, halves first; maxima with NaN propagated;
* E4M3 encoding from the float32 bits (round to nearest even, saturating at
  448), not a cast: Triton's interpreter rounds fp32 -> fp8 casts differently;
* E2M1 rounding and stochastic rounding by :mod:`fp4.codegen.lanes`' emitters,
  with the Philox words of :mod:`fp4.runtime.philox` (element or scale ``n``
  takes word ``n % 4`` of counter ``n // 4``).

The GEMM computes ``epilogue(a_decode * b_decode * (e2m1 * e4m3)_A @ (e2m1 * e4m3)_B^T)``:
``dot_scaled`` feeds codes and E4M3 scales (16 per scale) to ``tl.dot_scaled``,
the block-scaled FP4 MMA of Blackwell (``kind::mxf4nvf4.block_scale.scale_vec::4X``);
``dequant_bf16`` dequantizes both tiles in registers to bf16, which holds every
NVFP4 block value exactly (at most 6 significant bits), and multiplies with bf16
tensor cores: exact products, fp32 accumulation, but not fast.  On Hopper this
is the NVFP4 GEMM: there is no FP8 re-expression of NVFP4 (an element times its
E4M3 scale needs up to 6 significant bits, E4M3 has 4), so NVFP4 on Hopper is
for numerics, not speed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fp4 import core
from fp4.core import (
    E2M1_MAX,
    E4M3_MAX,
    E4M3_MAX_BYTE,
    FLOAT32_MAX,
    NVFP4_GROUP_SIZE,
    NVFP4_HADAMARD_SIGNS,
    QUARTET2_BACKWARD_VALUE_MAX,
    QUARTET2_EDEN_SCALE_MAX,
    QUARTET2_FOUR_OVER_SIX_RATIO,
    QUARTET2_FOUR_OVER_SIX_SCALE_MAX,
    hadamard_norm,
)

from . import lanes as L
from .gemm import (
    emit_block_scaled_loop,
    emit_dequantized_tiles,
    emit_grouped_order,
    emit_rounded_tail,
    epilogue_signature,
    scalar_signature,
)
from .quantize import NO_FUSION, UNIFORM_24_BITS, row_tile_function, row_tile_kernel
from .source import KernelSource, SourceWriter, header
from .spec import DTYPES, ELEMENT_TYPES, POINTER_TYPES, EpilogueSpec

METHODS = ("amax", "rtn", "sr", "rtn_2d", "four_over_six", "eden")
"""``amax``: the first pass of every quantizer; ``rtn``/``sr``: the nvfp4 recipe's 1x16 operands (TE's formulas,
nearest or stochastic elements); ``rtn_2d``: its 16x16 weight blocks; ``four_over_six``: Quartet II's forward;
``eden``: Quartet II's backward (MS-EDEN)."""

NVFP4_GEMM_LOWERINGS = ("dot_scaled", "dequant_bf16")

TENSOR_SCALE_NUMERATOR = E4M3_MAX * E2M1_MAX  # 2688: TE's global encode scale is 2688 / amax
ONE_SIXTH = core.float32(1.0 / E2M1_MAX)


def _check_choice(what, value, choices):
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class NVFP4QuantizeSpec:
    """One pass of an NVFP4 quantizer.

    * ``method``: see :data:`METHODS`.
    * ``source``: ``"dense"`` (a bf16/fp16/fp32 tensor) or ``"nvfp4"`` (a saved
      operand's codes, scales and decode scale: Quartet II's re-quantization).
    * ``axis``: quantize along the ``"last"`` dimension, or the ``"first"``
      (the result is the transpose).  The quantized dimension is padded with
      zeros to a multiple of 16 (of 128 with a 128-point transform).
    * ``hadamard``: 0 (none), 16 (TE's transform, fixed signs) or 128 (Quartet
      II's, random signs drawn from the layer seed).
    """

    method: str = "rtn"
    source: str = "dense"
    axis: str = "last"
    hadamard: int = 0
    input_dtype: str = "bf16"

    def __post_init__(self):
        _check_choice("method", self.method, METHODS)
        _check_choice("source", self.source, ("dense", "nvfp4"))
        _check_choice("axis", self.axis, ("last", "first"))
        _check_choice("hadamard", self.hadamard, (0, 16, 128))
        _check_choice("input_dtype", self.input_dtype, DTYPES + ("u8",))
        if (self.source == "nvfp4") != (self.input_dtype == "u8"):
            raise ValueError("an NVFP4 source has input_dtype 'u8', a dense one a floating dtype")
        if self.source == "nvfp4" and (self.axis != "first" or self.hadamard != 128):
            raise ValueError("an NVFP4 source is re-quantized along its first dimension after the 128-point transform")
        plain = (self.axis, self.hadamard, self.source) == ("last", 0, "dense")
        if self.method in ("rtn_2d", "four_over_six") and not plain:
            raise ValueError(f"{self.method} quantizes a dense tensor along its last dimension, unrotated")
        if self.method == "eden" and self.hadamard != 128:
            raise ValueError("MS-EDEN quantizes after the 128-point transform")
        if self.method in ("rtn", "sr") and self.hadamard == 128:
            raise ValueError("the nvfp4 recipe's transform is 16 points")

    @property
    def width_multiple(self) -> int:
        """The quantized dimension is padded to a multiple of this (and a tile's columns are a multiple of it)."""
        return max(NVFP4_GROUP_SIZE, self.hadamard)

    @property
    def uses_seed(self) -> bool:
        return self.method in ("sr", "eden") or self.hadamard == 128

    @property
    def kernel_name(self) -> str:
        parts = ["nvfp4"]
        if self.source == "nvfp4":
            parts.append("requantize")
        if self.hadamard:
            parts.append(f"rotate{self.hadamard}")
        parts.append({"amax": "amax", "rtn": "rtn_quantize", "sr": "sr_quantize", "rtn_2d": "rtn_quantize_2d",
                      "four_over_six": "four_over_six_quantize", "eden": "eden_quantize"}[self.method])  # fmt: skip
        parts += [self.axis, "nvfp4" if self.source == "nvfp4" else self.input_dtype]
        return "_".join(parts)

    def describe(self) -> list[str]:
        return [f"{f.name} = {getattr(self, f.name)!r}" for f in dataclasses.fields(self)]


@dataclass(frozen=True)
class NVFP4GemmSpec:
    """``out = epilogue(a_decode * b_decode * deq(A) @ deq(B)^T)`` for NVFP4 A [M, K], B [N, K], lowered one way."""

    lowering: str = "dot_scaled"
    epilogue: EpilogueSpec = EpilogueSpec()

    def __post_init__(self):
        _check_choice("lowering", self.lowering, NVFP4_GEMM_LOWERINGS)
        if self.epilogue.clip_mask or self.epilogue.inverse_rotate or self.epilogue.alpha:
            raise ValueError("the NVFP4 GEMM's epilogue has no alpha, clip mask or inverse rotation")

    @property
    def kernel_name(self) -> str:
        return f"nvfp4_gemm_{self.lowering}_{self.epilogue.name}"

    def describe(self) -> list[str]:
        e = self.epilogue
        return [f"lowering = {self.lowering!r}"] + [
            f"epilogue.{f.name} = {getattr(e, f.name)!r}" for f in dataclasses.fields(e)
        ]


# ----------------------------------------------------------------------------------------------------------
# element-wise pieces


def emit_e4m3_byte(w: SourceWriter, value: str, out: str) -> None:
    """``out`` (int32): the E4M3 byte of non-negative float32 ``value`` rounded to nearest even, 448 at most, NaN 0x7F.

    Normal results round the float32 significand at its bit 20 (ties to even:
    add 0x7FFFF plus the kept bit's lowest bit); below ``2**-6`` the result is
    ``k * 2**-9`` with ``k = rne(value * 512)`` (exact scaling; ``k = 8`` is
    the byte of ``2**-6``).
    """
    w.line(f"{out}_v = tl.where({value} > {E4M3_MAX!r}, {E4M3_MAX!r}, {value})")
    w.line(f"{out}_bits = {out}_v.to(tl.int32, bitcast=True)")
    w.line(f"{out}_round = {out}_bits + 0x7FFFF + (({out}_bits >> 20) & 1)")
    w.line(f"{out}_normal = ((({out}_round >> 23) - 120) << 3) | (({out}_round >> 20) & 7)")
    magic, magic_bits = L.ROUND_TO_INTEGER_MAGIC, L.ROUND_TO_INTEGER_MAGIC_BITS
    w.line(f"{out}_sub = (({out}_v * 512.0) + {magic!r}).to(tl.int32, bitcast=True) - {magic_bits:#x}")
    w.line(f"{out} = tl.where({out}_v < {2.0**-6!r}, {out}_sub, {out}_normal)")
    w.line(f"{out} = tl.where({value} != {value}, 0x7F, {out})")


def emit_e4m3_value(w: SourceWriter, byte: str, out: str) -> None:
    """``out``: the float32 value of E4M3 bytes ``byte`` (int32, 0..0x7F; 0x7F is NaN)."""
    w.line(f"{out}_e = ({byte} >> 3) & 15")
    w.line(f"{out}_m = {byte} & 7")
    w.line(f"{out}_n = ((({out}_e + 120) << 23) | ({out}_m << 20)).to(tl.float32, bitcast=True)")
    w.line(f"{out} = tl.where({out}_e == 0, {out}_m.to(tl.float32) * {2.0**-9!r}, {out}_n)")
    w.line(f"{out} = tl.where(({byte} & 0x7F) == 0x7F, float('nan'), {out})")


def _emit_tree_sum(w: SourceWriter, tile: str, rows: str, width: int, out: str) -> None:
    """``out [rows]``: the sum of each row of ``tile [rows, width]`` as a pairwise tree, halves first."""
    w.line(f"{out} = {tile}")
    while width > 1:
        w.line(f"{out} = tl.sum(tl.reshape({out}, [{rows}, 2, {width // 2}]), axis=1)")
        width //= 2
    w.line(f"{out} = tl.reshape({out}, [{rows}])")


def _emit_hadamard(w: SourceWriter, tile: str, rows: str, size: int) -> None:
    """Rotate ``tile [rows, size]`` in place: butterfly stages with strides size/2 .. 1, then ``* 1/sqrt(size)``."""
    stride = size // 2
    while stride:
        w.comment(f"butterfly stage, stride {stride}: (lo, hi) -> (lo + hi, lo - hi)")
        w.line(
            f"{tile}_p = tl.permute(tl.reshape({tile}, [{rows}, {size // (2 * stride)}, 2, {stride}]), [0, 1, 3, 2])"
        )
        w.line(f"{tile}_lo, {tile}_hi = tl.split({tile}_p)")
        w.line(
            f"{tile} = tl.reshape(tl.permute(tl.join({tile}_lo + {tile}_hi, {tile}_lo - {tile}_hi), [0, 1, 3, 2]), "
            f"[{rows}, {size}])"
        )
        stride //= 2
    w.line(f"{tile} = {tile} * {hadamard_norm(size)!r}")


def _emit_words_tile(w: SourceWriter, keys: str, first_index: str, rows: str, quads: str, out: str) -> None:
    """``out [rows, quads * 4]`` uint32: the Philox words of consecutive indices ``first_index [rows, quads]`` (x4).

    Index ``n`` takes word ``n % 4`` of counter ``n // 4`` (each quad of four
    consecutive indices one Philox call); 64-bit counters.
    """
    w.line(f"{out}_counter = {first_index} >> 2")
    words = L.emit_philox(
        w, keys, f"{out}_counter.to(tl.uint32)", f"({out}_counter >> 32).to(tl.uint32)", f"{out}_rand", words=4
    )
    w.comment("words 0..3 of each call in order: join(join(w0, w2), join(w1, w3)) lays them out w0 w1 w2 w3")
    w.line(
        f"{out} = tl.reshape(tl.join(tl.join({words[0]}, {words[2]}), tl.join({words[1]}, {words[3]})), "
        f"[{rows}, {quads} * 4])"
    )


# ----------------------------------------------------------------------------------------------------------
# the quantizer kernels


def _signature(spec: NVFP4QuantizeSpec) -> dict:
    sig = {}
    if spec.source == "dense":
        sig["x_ptr"] = POINTER_TYPES[spec.input_dtype]
    else:
        sig.update(x_codes_ptr="*u8", x_scales_ptr="*u8", x_decode_ptr="*fp32")
    sig["amax_ptr"] = "*fp32"
    if spec.method != "amax":
        sig.update(codes_ptr="*u8", scales_ptr="*u8", decode_ptr="*fp32")
    sig.update(rows="i32", cols="i32", stride_x="i32")
    if spec.source == "nvfp4":
        sig["stride_x_scales"] = "i32"
    sig["out_width"] = "i32"
    if spec.uses_seed:
        sig["seed_ptr"] = "*i64"
    if spec.method in ("sr", "eden"):
        sig.update(L.addend_parameters("stream_addend"))
    if spec.hadamard == 128:
        sig.update(L.addend_parameters("sign_addend"))
    return sig


def _emit_load(w: SourceWriter, spec: NVFP4QuantizeSpec) -> None:
    """``x [BLOCK_ROWS, BLOCK_COLS]`` float32: this program's tile of the result's values (zeros past the input)."""
    if spec.source == "nvfp4":
        w.comment("the saved operand S [rows, cols]: S rows = result columns, S columns = result rows")
        w.line("s_rows64 = out_cols[:, None].to(tl.int64)")
        w.line("s_ok = out_cols[:, None] < rows")
        w.line("byte_cols = r0 // 2 + tl.arange(0, BLOCK_ROWS // 2)")
        w.line(
            "packed = tl.load(x_codes_ptr + s_rows64 * stride_x + byte_cols[None, :], "
            "mask=s_ok & (byte_cols[None, :] < cols // 2), other=0)"
        )
        w.line("scale_cols = r0 // 16 + tl.arange(0, BLOCK_ROWS // 16)")
        w.line(
            "in_scale = tl.load(x_scales_ptr + s_rows64 * stride_x_scales + scale_cols[None, :], "
            "mask=s_ok & (scale_cols[None, :] < cols // 16), other=0).to(tl.int32)"
        )
        L.emit_e2m1_decode_bytes(w, "packed", "[BLOCK_COLS, BLOCK_ROWS]", "in_value")
        emit_e4m3_value(w, "in_scale", "in_scale_value")
        w.line(
            "in_scale_value = tl.reshape(tl.broadcast_to(in_scale_value[:, :, None], "
            "[BLOCK_COLS, BLOCK_ROWS // 16, 16]), [BLOCK_COLS, BLOCK_ROWS])"
        )
        w.comment("(e2m1 * e4m3) is exact; one rounding times the tensor's decode scale")
        w.line("x = tl.trans((in_value * in_scale_value) * tl.load(x_decode_ptr))")
    elif spec.axis == "last":
        w.line("ok = (out_rows[:, None] < rows) & (out_cols[None, :] < cols)")
        w.line(
            "x = tl.load(x_ptr + out_rows64[:, None] * stride_x + out_cols[None, :], mask=ok, other=0.0).to(tl.float32)"
        )
    else:
        w.comment("along the first dimension: load the [BLOCK_COLS, BLOCK_ROWS] input tile and transpose it")
        w.line("ok = (out_cols[:, None] < rows) & (out_rows[None, :] < cols)")
        w.line(
            "xt = tl.load(x_ptr + out_cols[:, None].to(tl.int64) * stride_x + out_rows[None, :], mask=ok, other=0.0)"
        )
        w.line("x = tl.trans(xt.to(tl.float32))")


def _emit_rotation(w: SourceWriter, spec: NVFP4QuantizeSpec) -> None:
    size = spec.hadamard
    chunks = f"BLOCK_ROWS * BLOCK_COLS // {size}"
    w.line(f"x = tl.reshape(x, [{chunks}, {size}])")
    if size == 16:
        mask = sum(1 << i for i, s in enumerate(NVFP4_HADAMARD_SIGNS) if s < 0)
        w.comment("TE's fixed signs D (bit i of the mask: sign i is -1); x -> (x * D) @ H16 / 4")
        w.line(f"x = x * tl.where((({mask:#x} >> tl.arange(0, 16)) & 1) != 0, -1.0, 1.0)[None, :]")
    else:
        w.comment("the step's 128 random signs: sign i is the top bit of word i of the sign stream")
        L.emit_stream_seed(w, "layer_seed", "sign_addend", "sign_seed")
        L.emit_philox_keys(w, "sign_seed", "sign_key")
        w.line("sign_first = tl.arange(0, 32)[None, :].to(tl.int64) * 4")
        _emit_words_tile(w, "sign_key", "sign_first", "1", "32", "sign_words")
        w.line("signs = tl.where((tl.reshape(sign_words, [128]) >> 31) != 0, -1.0, 1.0)")
        w.line("x = x * signs[None, :]")
    _emit_hadamard(w, "x", chunks, size)
    w.line("x = tl.reshape(x, [BLOCK_ROWS, BLOCK_COLS])")


def _emit_max_combine(w: SourceWriter) -> None:
    w.line("@triton.jit")
    with w.block("def _max_nan(a, b):"):
        w.line('"""The larger of two values; NaN wins (as torch.amax)."""')
        w.line("return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)")
    w.line("")
    w.line("")


def _emit_tensor_scale(w: SourceWriter, spec: NVFP4QuantizeSpec) -> str:
    """The tensor's decode scale from the amax pass (name of the scalar); also whatever the method needs with it."""
    w.line("amax = tl.load(amax_ptr)")
    if spec.method in ("rtn", "sr", "rtn_2d"):
        w.comment("TE: encode = min(2688 / amax, FLT_MAX), 1 for amax 0 (or an encode that underflows)")
        w.line(f"encode = tl.div_rn({TENSOR_SCALE_NUMERATOR!r}, amax)")
        w.line(f"encode = tl.where(encode > {FLOAT32_MAX!r}, {FLOAT32_MAX!r}, encode)")
        w.line("encode = tl.where((amax == 0.0) | (encode == 0.0), 1.0, encode)")
        w.line("decode = tl.div_rn(1.0, encode)")
        return "decode"
    scale_max, value_max = {
        "four_over_six": (QUARTET2_FOUR_OVER_SIX_SCALE_MAX, E2M1_MAX),
        "eden": (core.float32(QUARTET2_EDEN_SCALE_MAX), QUARTET2_BACKWARD_VALUE_MAX),
    }[spec.method]
    w.comment(f"Quartet II: s_t = amax / {scale_max!r} / {value_max!r}, 1 for amax 0")
    w.line(f"tensor_scale = tl.div_rn(tl.div_rn(amax, {scale_max!r}), {value_max!r})")
    w.line("tensor_scale = tl.where(amax == 0.0, 1.0, tensor_scale)")
    return "tensor_scale"


def _emit_block_scale_quartet2(w: SourceWriter, base: str, out: str) -> None:
    """``out``: ``e4m3(base / s_t)`` as float32, 1 where it rounds to 0; ``out_byte`` its byte."""
    w.line(f"{out}_raw = tl.div_rn({base}, tensor_scale)")
    emit_e4m3_byte(w, f"{out}_raw", f"{out}_rounded")
    emit_e4m3_value(w, f"{out}_rounded", out)
    w.line(f"{out} = tl.where({out} == 0.0, 1.0, {out})")


def _emit_quantize_body(w: SourceWriter, spec: NVFP4QuantizeSpec) -> tuple[str, str]:
    """Codes and scale bytes of the tile's blocks (returns their names).

    Codes are ``[NB, 16]`` per 16-block (``[BLOCK_ROWS // 16, 16, BLOCK_COLS // 16, 16]`` for ``rtn_2d``), scale
    bytes ``[NB]`` (``[BLOCK_ROWS // 16, BLOCK_COLS // 16]``, one per 16 x 16 tile, for ``rtn_2d``); both reshape
    row-major to the tile.
    """
    nb = "BLOCK_ROWS * BLOCK_COLS // 16"
    if spec.method == "rtn_2d":
        w.comment("16 x 16 tiles as [tile row, row, tile column, column]: one amax per tile, shared by its 16 rows")
        w.comment("(reductions and broadcasts only: no permute, no reshape of a broadcast value)")
        w.line("xb = tl.reshape(x, [BLOCK_ROWS // 16, 16, BLOCK_COLS // 16, 16])")
        w.line("block_amax = tl.reduce(tl.reduce(tl.abs(xb), 3, _max_nan), 1, _max_nan)")
        per_element = "[:, None, :, None]"
    else:
        w.line(f"xb = tl.reshape(x, [{nb}, 16])")
        w.line("block_amax = tl.reduce(tl.abs(xb), 1, _max_nan)")
        per_element = "[:, None]"
    if spec.method in ("rtn", "sr", "rtn_2d"):
        w.comment("TE: block scale e4m3(min(block_amax * (encode * 1/6), 448)); elements x * min(1/(s * decode), max)")
        w.line(f"block_scale = block_amax * (encode * {ONE_SIXTH!r})")
        emit_e4m3_byte(w, "block_scale", "scale_byte")
        emit_e4m3_value(w, "scale_byte", "scale_value")
        w.line("element_scale = tl.div_rn(1.0, scale_value * decode)")
        w.line(f"element_scale = tl.where(element_scale > {FLOAT32_MAX!r}, {FLOAT32_MAX!r}, element_scale)")
        w.line(f"scaled = xb * element_scale{per_element}")
        if spec.method == "sr":
            w.comment("stochastic rounding: element n = row * out_width + col of the padded result")
            w.line("first = out_rows64[:, None] * out_width + (c0 + tl.arange(0, BLOCK_COLS // 4) * 4)[None, :]")
            _emit_words_tile(w, "philox", "first", "BLOCK_ROWS", "BLOCK_COLS // 4", "words")
            w.line(f"scaled = tl.minimum(tl.maximum(scaled, {-E2M1_MAX!r}), {E2M1_MAX!r})")
            L.emit_sr_code(w, "scaled", f"tl.reshape(words, [{nb}, 16])", "code")
        else:
            L.emit_rne_code(w, "scaled", "code")
        return "code", "scale_byte"
    if spec.method == "four_over_six":
        w.line(f"base = tl.div_rn(block_amax, {E2M1_MAX!r})")
        for name, multiplier in (("six", None), ("four", QUARTET2_FOUR_OVER_SIX_RATIO)):
            w.comment(f"candidate map-to-{name}: scale, nearest-even elements, squared error (tree over 16)")
            base = "base" if multiplier is None else f"(base * {multiplier!r})"
            _emit_block_scale_quartet2(w, base, f"{name}_scale")
            w.line(f"{name}_denom = {name}_scale * tensor_scale")
            w.line(f"{name}_scaled = tl.div_rn(xb, {name}_denom[:, None])")
            L.emit_rne_code(w, f"{name}_scaled", f"{name}_code")
            L.emit_e2m1_decode(w, f"{name}_code", f"{name}_q")
            w.line(f"{name}_diff = xb - {name}_q * {name}_denom[:, None]")
            _emit_tree_sum(w, f"{name}_diff * {name}_diff", nb, 16, f"{name}_error")
        w.line("pick_four = four_error < six_error")
        w.line("code = tl.where(pick_four[:, None], four_code, six_code)")
        emit_e4m3_byte(w, "tl.where(pick_four, four_scale, six_scale)", "scale_byte")
        return "code", "scale_byte"
    # eden
    chunks = "BLOCK_ROWS * BLOCK_COLS // 128"
    value_max = QUARTET2_BACKWARD_VALUE_MAX
    w.line(f"base = tl.div_rn(block_amax, {value_max!r})")
    _emit_block_scale_quartet2(w, "base", "block_scale")
    w.line("denom = block_scale * tensor_scale")
    w.line("scaled = tl.div_rn(xb, denom[:, None])")
    L.emit_rne_code(w, "scaled", "code")
    L.emit_e2m1_decode(w, "code", "q")
    w.comment("EDEN: per 128 elements, correction = sum(x'^2) / sum(x' * q) (1 where the second sum is 0)")
    w.line(f"chunk_scaled = tl.reshape(scaled, [{chunks}, 128])")
    _emit_tree_sum(w, "chunk_scaled * chunk_scaled", chunks, 128, "numerator")
    _emit_tree_sum(w, f"chunk_scaled * tl.reshape(q, [{chunks}, 128])", chunks, 128, "denominator")
    w.line("correction = tl.where(denominator == 0.0, 1.0, tl.div_rn(numerator, denominator))")
    w.line(f"corrected = tl.reshape(tl.reshape(block_scale, [{chunks}, 8]) * correction[:, None], [{nb}])")
    w.line(f"corrected = tl.where(corrected > {E4M3_MAX!r}, {E4M3_MAX!r}, corrected)")
    w.comment("stochastic rounding of the scale to E4M3: scale n = row * (out_width / 16) + block")
    w.line("first = out_rows64[:, None] * (out_width // 16) + (c0 // 16 + tl.arange(0, BLOCK_COLS // 64) * 4)[None, :]")
    _emit_words_tile(w, "philox", "first", "BLOCK_ROWS", "BLOCK_COLS // 64", "words")
    w.line(f"u = tl.reshape((words >> 8).to(tl.float32) * {UNIFORM_24_BITS!r}, [{nb}])")
    emit_e4m3_byte(w, "corrected", "nearest")
    emit_e4m3_value(w, "nearest", "nearest_value")
    w.line("down = tl.where(nearest_value > corrected, nearest - 1, nearest)")
    w.line(f"top = down >= {E4M3_MAX_BYTE}")
    w.line("up = tl.where(top, down, down + 1)")
    emit_e4m3_value(w, "down", "low")
    emit_e4m3_value(w, "up", "high")
    w.line("position = tl.where(top, 0.0, tl.div_rn(corrected - low, tl.where(top, 1.0, high - low)))")
    w.line("scale_byte = tl.where(u < position, up, down)")
    w.line("scale_byte = tl.where(corrected != corrected, 0x7F, scale_byte)")
    return "code", "scale_byte"


def _emit_store(w: SourceWriter, spec: NVFP4QuantizeSpec, code: str, scale_byte: str, decode: str) -> None:
    w.comment("codes [out_rows, out_width / 2] (low nibble first), scale bytes [out_rows, out_width / 16]")
    w.line(f"pairs = tl.reshape({code}, [BLOCK_ROWS, BLOCK_COLS // 2, 2])")
    w.line("low, high = tl.split(pairs)")
    w.line("byte_cols = c0 // 2 + tl.arange(0, BLOCK_COLS // 2)")
    w.line("row_ok = out_rows[:, None] < n_out_rows")
    w.line(
        "tl.store(codes_ptr + out_rows64[:, None] * (out_width // 2) + byte_cols[None, :], "
        "(low | (high << 4)).to(tl.uint8), mask=row_ok & (byte_cols[None, :] < out_width // 2))"
    )
    w.line("scale_cols = c0 // 16 + tl.arange(0, BLOCK_COLS // 16)")
    if spec.method == "rtn_2d":
        w.comment("a tile's byte goes to each of its 16 rows: the store broadcasts it over [tile row, row, column]")
        w.line("tile_rows = tl.reshape(out_rows, [BLOCK_ROWS // 16, 16])[:, :, None]")
        w.line(
            "tl.store(scales_ptr + tile_rows.to(tl.int64) * (out_width // 16) + scale_cols[None, None, :], "
            f"{scale_byte}[:, None, :].to(tl.uint8), "
            "mask=(tile_rows < n_out_rows) & (scale_cols[None, None, :] < out_width // 16))"
        )
    else:
        w.line(
            "tl.store(scales_ptr + out_rows64[:, None] * (out_width // 16) + scale_cols[None, :], "
            f"tl.reshape({scale_byte}, [BLOCK_ROWS, BLOCK_COLS // 16]).to(tl.uint8), "
            "mask=row_ok & (scale_cols[None, :] < out_width // 16))"
        )
    with w.block("if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):"):
        w.line(f"tl.store(decode_ptr, {decode})")


def emit_nvfp4_quantize(spec: NVFP4QuantizeSpec) -> KernelSource:
    """Triton source of one pass of an NVFP4 quantizer."""
    name = spec.kernel_name
    what = "largest magnitude (first pass) of" if spec.method == "amax" else "quantize"
    what += " a saved NVFP4 operand, transposed," if spec.source == "nvfp4" else ""
    what += f" after the {spec.hadamard}-point Hadamard transform" if spec.hadamard else ""
    what += " along the " + ("last dimension" if spec.axis == "last" else "first dimension (transposed output)")
    w = SourceWriter()
    w.lines_(header(name, f"NVFP4 {spec.method}: {what}", spec.describe(), NO_FUSION))
    _emit_max_combine(w)
    signature = _signature(spec)
    with row_tile_function(w, name, f"NVFP4 {spec.method}: {what}", signature, "BLOCK_COLS"):
        w.line(f"n_out_rows = {'rows' if spec.axis == 'last' else 'cols'}")
        w.line("r0 = tl.program_id(0) * BLOCK_ROWS")
        w.line("c0 = tl.program_id(1) * BLOCK_COLS")
        w.line("out_rows = r0 + tl.arange(0, BLOCK_ROWS)")
        w.line("out_rows64 = out_rows.to(tl.int64)")
        w.line("out_cols = c0 + tl.arange(0, BLOCK_COLS)")
        if spec.uses_seed:
            w.comment("the layer's seed lives on the device; each stream of it gets its own Philox seed")
            w.line("layer_seed = tl.load(seed_ptr).to(tl.uint64, bitcast=True)")
        if spec.method in ("sr", "eden"):
            L.emit_stream_seed(w, "layer_seed", "stream_addend", "stream")
            L.emit_philox_keys(w, "stream", "philox")
        _emit_load(w, spec)
        if spec.hadamard:
            _emit_rotation(w, spec)
        if spec.method == "amax":
            w.comment("raise the tensor's amax (non-negative floats order as their int32 bits; NaN wins)")
            w.line("tile_max = tl.reduce(tl.reshape(tl.abs(x), [BLOCK_ROWS * BLOCK_COLS]), 0, _max_nan)")
            w.line("tl.atomic_max(amax_ptr.to(tl.pointer_type(tl.int32)), tile_max.to(tl.int32, bitcast=True))")
        else:
            decode = _emit_tensor_scale(w, spec)
            code, scale_byte = _emit_quantize_body(w, spec)
            _emit_store(w, spec, code, scale_byte, decode)
    return row_tile_kernel(name, w, spec, signature, "BLOCK_COLS")


# ----------------------------------------------------------------------------------------------------------
# the GEMM

GEMM_CONSTEXPRS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "EVEN_K", "DOT_FP32")


def gemm_signature(spec: NVFP4GemmSpec) -> dict:
    operands = {
        "a_ptr": "*u8", "a_scale_ptr": "*u8", "a_decode_ptr": "*fp32",
        "b_ptr": "*u8", "b_scale_ptr": "*u8", "b_decode_ptr": "*fp32",
    }  # fmt: skip
    return {**operands, **epilogue_signature(spec.epilogue), **scalar_signature(spec.epilogue)}


def _emit_gemm_loop(w: SourceWriter, lowering: str) -> None:
    w.line("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
    w.comment("rows past M / N are wrapped (always in bounds) and dropped at the store")
    w.line("rows_a = (offs_m % M).to(tl.int64)")
    w.line("rows_b = (offs_n % N).to(tl.int64)")

    def product():
        if lowering == "dot_scaled":
            w.comment("block-scaled FP4 MMA: E2M1 codes, one E4M3 scale per 16 (NVFP4)")
            w.line(
                'acc = tl.dot_scaled(a, a_scale.to(tl.float8e4nv, bitcast=True), "e2m1", b.T, '
                'b_scale.to(tl.float8e4nv, bitcast=True), "e2m1", acc)'
            )
        else:
            w.comment("dequantize both tiles in registers: e2m1 * e4m3 is exact in bf16 (and in fp32)")
            emit_dequantized_tiles(
                w, NVFP4_GROUP_SIZE, emit_e4m3_value, lambda side: f"{side}_block = {side}_value * {side}_scale_value"
            )
            with w.block("if DOT_FP32:"):
                w.comment("(Triton's interpreter multiplies bf16 wrongly: the CPU tests run the fp32 form)")
                w.line('acc = tl.dot(a_block, b_block.T, acc, input_precision="ieee")')
            with w.block("else:"):
                w.line("acc = tl.dot(a_block.to(tl.bfloat16), b_block.to(tl.bfloat16).T, acc)")

    emit_block_scaled_loop(w, NVFP4_GROUP_SIZE, product)


def _emit_gemm_epilogue(w: SourceWriter, e: EpilogueSpec) -> None:
    out_type = ELEMENT_TYPES[e.out_dtype]
    w.line("m_ok = offs_m < M")
    w.line("n_ok = offs_n < N")
    w.comment("the tensor scales: alpha = a_decode * b_decode on the fp32 accumulator (the reference's order)")
    w.line("acc = acc * (tl.load(a_decode_ptr) * tl.load(b_decode_ptr))")
    if e.bias:
        w.line("acc = acc + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0)[None, :]")
    emit_rounded_tail(w, e, out_type)


def emit_nvfp4_gemm(spec: NVFP4GemmSpec) -> KernelSource:
    """Triton source of the NVFP4 GEMM + epilogue kernel described by ``spec``."""
    name = spec.kernel_name
    summary = {
        "dot_scaled": "NVFP4 GEMM on block-scaled FP4 tensor cores (E4M3 scales per 16)",
        "dequant_bf16": "NVFP4 GEMM with operands dequantized to bf16 in registers (exact; for numerics, not speed)",
    }[spec.lowering]
    sig = gemm_signature(spec)
    w = SourceWriter()
    w.lines_(header(name, summary + ", fused epilogue", spec.describe(), NO_FUSION))
    params = ", ".join(list(sig) + [f"{c}: tl.constexpr" for c in GEMM_CONSTEXPRS])
    w.line("@triton.jit")
    with w.block(f"def {name}({params}):"):
        w.line(f'"""{summary}."""')
        w.line("pid = tl.program_id(0)")
        w.line("num_pid_m = tl.cdiv(M, BLOCK_M)")
        w.line("num_pid_n = tl.cdiv(N, BLOCK_N)")
        emit_grouped_order(w)
        w.line("offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)")
        w.line("offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)")
        _emit_gemm_loop(w, spec.lowering)
        _emit_gemm_epilogue(w, spec.epilogue)
    return KernelSource(
        name=name, text=w.text(), spec=spec, signature=sig, constexprs=GEMM_CONSTEXPRS, options=dict(NO_FUSION)
    )
