"""Straight-line Triton code for one 32-element group at a time, in the reference's rounding order.

A tile of ``G`` groups is a ``[G, 32]`` tensor.  The emitters here split it
into 32 *lane* tensors of shape ``[G]`` (lane ``i`` holds element ``i`` of
every group), so that every step of the reference can be written out with its
exact order of operations:

* the Walsh-Hadamard butterfly, stage by stage (strides 16, 8, 4, 2, 1), one
  addition or subtraction per element per stage, then one multiplication by
  ``1/sqrt(32)`` (:mod:`fp4.runtime.hadamard`);
* pairwise tree sums, halves first (:func:`fp4.runtime.reference.tree_sum_32`);
* round to nearest even onto the E2M1 grid, and stochastic rounding against
  the exact fractional position between grid points (both in units of the
  grid step, so both reduce to integer rounding of an exactly scaled value);
* E8M0 scales read off the float32 exponent bits.

Splitting is ``tl.split`` on a trailing axis of size 2 (even/odd lanes), five
times; joining is the inverse.  Both are register renames once a group's
lanes sit in one thread, which the compiler arranges with one layout
conversion after the load.
"""

from __future__ import annotations

from fp4 import core
from fp4.core import E8M0_BIAS, E8M0_NAN, GROUP_SIZE, HADAMARD_NORM
from fp4.core import HADAMARD_STAGE_STRIDES as _STAGE_STRIDES

from .source import SourceWriter

LANES = GROUP_SIZE


def lane(prefix: str, index: int) -> str:
    return f"{prefix}{index:02d}"


def lanes(prefix: str, count: int = LANES) -> list[str]:
    return [lane(prefix, i) for i in range(count)]


def split_lanes(w: SourceWriter, tile: str, groups: str, prefix: str, members: list[int] | None = None) -> list[str]:
    """Split ``tile`` ``[groups, len(members)]`` into lane tensors ``prefix<i>`` (``[groups]`` each).

    ``members`` are the lane numbers of the tile's columns (default: all 32).
    """
    members = list(range(LANES)) if members is None else members
    w.comment(f"Deinterleave lanes {members[0]}..{members[-1]} of each group (even/odd splits), one tensor per lane.")

    def split(name: str, members: list[int]) -> None:
        if len(members) == 2:
            w.line(f"{lane(prefix, members[0])}, {lane(prefix, members[1])} = tl.split({name})")
            return
        even, odd = f"{name}_e", f"{name}_o"
        w.line(f"{even}, {odd} = tl.split(tl.reshape({name}, [{groups}, {len(members) // 2}, 2]))")
        split(even, members[0::2])
        split(odd, members[1::2])

    split(tile, members)
    return [lane(prefix, i) for i in members]


def join_lanes(w: SourceWriter, names: list[str], groups: str, out: str) -> None:
    """``out = [groups, len(names)]`` with ``names[i]`` in column ``i`` (the inverse of :func:`split_lanes`)."""

    counter = [0]

    def join(members: list[str]) -> str:
        if len(members) == 1:
            return members[0]
        even, odd = join(members[0::2]), join(members[1::2])
        counter[0] += 1
        name = f"{out}_{counter[0]}"
        joined = f"tl.join({even}, {odd})"
        w.line(
            f"{name} = {joined}" if len(members) == 2 else f"{name} = tl.reshape({joined}, [{groups}, {len(members)}])"
        )
        return name

    w.line(f"{out} = {join(names)}")


def butterfly(w: SourceWriter, names: list[str], normalize: bool = True) -> None:
    """Walsh-Hadamard transform of the lanes in place (stage order of fp4.runtime.hadamard), then ``* 1/sqrt(32)``."""
    for stride in _STAGE_STRIDES:
        w.comment(f"butterfly stage, stride {stride}")
        for base in range(0, LANES, 2 * stride):
            for i in range(base, base + stride):
                lo, hi = names[i], names[i + stride]
                w.line(f"{lo}, {hi} = {lo} + {hi}, {lo} - {hi}")
    if normalize:
        w.comment("one rounding to 1/sqrt(32) in float32")
        for name in names:
            w.line(f"{name} = {name} * {HADAMARD_NORM!r}")


def tree_sum(w: SourceWriter, terms: list[str], out: str) -> None:
    """``out = sum(terms)`` as a pairwise tree, halves first (reference.tree_sum_32)."""
    level = list(terms)
    depth = 0
    while len(level) > 1:
        half = len(level) // 2
        depth += 1
        nxt = [f"{out}_{depth}_{i:02d}" if half > 1 else out for i in range(half)]
        for i in range(half):
            w.line(f"{nxt[i]} = {level[i]} + {level[i + half]}")
        level = nxt


def exponent_byte(value: str) -> str:
    """The biased exponent field of float32 ``value`` (int32 0..255): the E8M0 floor of its magnitude."""
    return f"(({value}).to(tl.int32, bitcast=True) >> 23) & 0xFF"


def emit_inverse_scale(w: SourceWriter, scale_byte: str, out: str) -> None:
    """``out = 2 ** (127 - b)`` in float32, exactly, for E8M0 bytes ``b`` (subnormal for b >= 254)."""
    bias = E8M0_BIAS
    w.comment(f"2**({bias} - b) from the float32 bit pattern; b = 254, 255 give the subnormals 2**-127, 2**-128")
    w.line(
        f"{out} = tl.where({scale_byte} <= {2 * bias - 1}, ({2 * bias} - {scale_byte}) << 23, "
        f"1 << ({22 + 2 * bias} - {scale_byte})).to(tl.float32, bitcast=True)"
    )


def emit_e8m0_value(w: SourceWriter, scale_byte: str, out: str) -> None:
    """``out = 2 ** (b - 127)`` in float32 (b = 0 gives the subnormal 2**-127, b = 255 NaN)."""
    w.line(
        f"{out} = tl.where({scale_byte} == {E8M0_NAN}, 0x7FC00000, "
        f"tl.where({scale_byte} == 0, 1 << 22, {scale_byte} << 23)).to(tl.float32, bitcast=True)"
    )


def emit_sign_bit(value: str) -> str:
    """Bit 3 of the E2M1 code: 8 where float32 ``value`` has its sign bit set and is not NaN, else 0.

    As int32, the negative non-NaN bit patterns are those below -0x7FFFFF (-0.0 is the
    smallest int32, -inf is -0x800000); negative NaNs lie in [-0x7FFFFF, -1].
    """
    return f"tl.where(({value}).to(tl.int32, bitcast=True) < -0x7FFFFF, 8, 0)"


def code_parts(code: str) -> tuple[str, str]:
    """The magnitude (0..7) and sign bit (0 or 8) that :func:`emit_rne_code` and :func:`emit_sr_code` define
    next to ``code``, their sum (packing them apart lets the compiler add each into the word)."""
    return f"{code}_mag", f"{code}_sign"


ROUND_TO_INTEGER_MAGIC = 1.5 * 2.0**23
"""Adding 1.5 * 2**23 rounds a float32 in [0, 2**22) to an integer (nearest, ties to even): the ulp there is 1."""
ROUND_TO_INTEGER_MAGIC_BITS = 0x4B400000
"""The float32 bits of :data:`ROUND_TO_INTEGER_MAGIC`: the sum's bits less these are the integer."""

_F32_MANTISSA_BITS = 23
_F32_EXPONENT_MASK = 0x7F800000
_F32_BIAS = E8M0_BIAS
"""E8M0 bytes are float32 exponent fields: both biased by 127."""
_E2M1_MANTISSA_BITS = 1
_E2M1_SIGN_BIT = 3
_E2M1_MAX_CODE = len(core.E2M1_GRID) - 1
_MAGIC_SHIFT = _F32_MANTISSA_BITS - _E2M1_MANTISSA_BITS
"""2**(p + 22) has ulp 2**(p - 1): the E2M1 step in the binade [2**p, 2**(p + 1)), p >= 0 (0.5 below 1, as at p = 0)."""

RNE_MAGIC_FLOOR_BITS = (_F32_BIAS + _MAGIC_SHIFT) << _F32_MANTISSA_BITS
"""The float32 bits of 2**22, the smallest magic of :func:`emit_rne_code` (the step 0.5 below 2)."""

UNIFORM_BITS = 24
"""Stochastic rounding compares the uniform ``(word >> 8) * 2**-24`` of each element's Philox word
(fp4.runtime.philox.to_uniform24)."""


def _emit_signed_code(w: SourceWriter, scaled: str, out: str) -> None:
    """``out`` = ``out_mag`` plus the sign bit of ``scaled`` (:func:`code_parts`)."""
    magnitude, sign = code_parts(out)
    w.line(f"{sign} = {emit_sign_bit(scaled)}")
    w.line(f"{out} = {magnitude} + {sign}")


def emit_rne_code(w: SourceWriter, scaled: str, out: str) -> None:
    """E2M1 code of ``scaled`` rounded to nearest even, saturating at 6, NaN -> 0 (reference formats.encode_e2m1).

    One float32 addition does the rounding.  For ``m = |scaled|`` in the binade
    ``[2**p, 2**(p + 1))`` the grid step is ``2**(p - 1)`` (0.5 below 1, as for
    p = 0), and the magic ``2**(p + 22)`` has exactly that ulp, so ``m + magic``
    is the magic plus ``k`` steps, ``k`` = m / step rounded to nearest, ties to
    even.  The magic is m's exponent bits plus 22, at least those of 2**22.  The
    code is ``k + 2 * p`` (two codes per binade; ``k`` is even where the code
    is), capped at 7, and ``magic >> 22`` is twice the magic's biased exponent,
    which supplies the ``2 * p``.

    ``maximum`` returns the number, not NaN (maxnum, as on the GPU), so NaN takes
    the code of 0; the sign comes from :func:`emit_sign_bit`.  From 2**106 on the
    magic's exponent leaves the float32 range: its bits are infinity's (the sum
    is infinite) or wrap to a negative int32 (Triton's integer arithmetic
    wraps) that loses the ``maximum`` to 2**22; the code saturates either way.
    """
    w.comment(f"{out}: nearest even on the E2M1 grid: m plus a magic whose ulp is the grid step, in float32")
    w.line(f"{out}_m = tl.maximum(tl.abs({scaled}), 0.0)")
    w.line(
        f"{out}_magic = tl.maximum(({out}_m.to(tl.int32, bitcast=True) & {_F32_EXPONENT_MASK:#x}) "
        f"+ {_MAGIC_SHIFT << _F32_MANTISSA_BITS:#x}, {RNE_MAGIC_FLOOR_BITS:#x})"
    )
    w.line(f"{out}_sum = ({out}_m + {out}_magic.to(tl.float32, bitcast=True)).to(tl.int32, bitcast=True)")
    offset = 2 * (_F32_BIAS + _MAGIC_SHIFT)
    magnitude = code_parts(out)[0]
    w.line(
        f"{magnitude} = tl.minimum({out}_sum - {out}_magic + ({out}_magic >> {_MAGIC_SHIFT}) - {offset}, "
        f"{_E2M1_MAX_CODE})"
    )
    _emit_signed_code(w, scaled, out)


HARDWARE_E2M1_ASM = " ".join(
    [
        "{ .reg .b8 lo0, lo1, lo2, lo3;",
        *(f"cvt.rn.satfinite.e2m1x2.f32 lo{k}, ${2 * k + 2}, ${2 * k + 1};" for k in range(4)),
        "mov.b32 $0, {lo0, lo1, lo2, lo3}; }",
    ]
)
"""Eight float32 values -> one word of eight E2M1 codes, element ``k`` in nibble ``k`` (the format's packing).

``cvt.rn.satfinite.e2m1x2.f32 d, a, b`` puts ``a`` in the high nibble of ``d`` and ``b`` in the low one; it
rounds to nearest even and saturates at +-6 (infinities too), keeping the sign, as the reference does."""


def emit_hardware_rne_words(w: SourceWriter, scaled: list[str], prefix: str) -> list[str]:
    """Packed code words ``prefix00..`` of the lanes ``scaled`` by Blackwell's E2M1 conversion (8 lanes a word).

    The reference encodes NaN as code 0 (+0); the conversion has no NaN, so NaN lanes become +0.0 first.
    """
    names = lanes(prefix, len(scaled) // 8)
    w.comment("NaN encodes as +0 (the reference); the hardware conversion rounds the rest, two codes per instruction")
    for word, name in enumerate(names):
        group = scaled[8 * word : 8 * word + 8]
        sanitized = ", ".join(f"tl.where({value} != {value}, 0.0, {value})" for value in group)
        constraints = "=r," + ",".join(["f"] * 8)
        w.line(
            f"{name} = tl.inline_asm_elementwise({HARDWARE_E2M1_ASM!r}, {constraints!r}, [{sanitized}], "
            "dtype=tl.int32, is_pure=True, pack=1)"
        )
    return names


def emit_sr_code(w: SourceWriter, scaled: str, word: str, out: str) -> None:
    """E2M1 code of ``scaled``, rounded up with probability = its position (reference.stochastic_round_e2m1).

    ``word`` is the element's Philox word (uint32); the reference's uniform is
    ``U * 2**-24`` with ``U = word >> 8``, and it rounds up when that is below
    the exact position between the two neighbouring grid points.  The magnitude
    ``m`` is clamped to [0, 6] first: NaN gives 0 (``maximum`` returns the
    number), and from 6 on the reference always rounds up to 6, as 6 does.

    From 1 on (binade ``[2**p, 2**(p + 1))``, step ``2**(p - 1)``) the position
    is m's low 22 mantissa bits over 2**22, so U < position * 2**24 holds exactly
    when ``mantissa22 + (2**22 - 1 - (U >> 2))`` carries; in [0.5, 1) (step 0.5)
    it is the 23-bit mantissa against ``U >> 1``.  One uint32 sum gives both
    carries: ``a + max(a, bits(1.0)) + 2**23 - 1 - (word >> 9)`` for m's bits
    ``a``, shifted down 23, less 252, is the code (from 1 on the sum is
    ``2 * a + ...``, which moves the 22-bit carry up to bit 23; below 1 the
    exponent of 1.0 stands in for the second ``a``).  Below 0.5 (position
    ``2 * m``, of any length) it rounds up where ``U * 2**-25 < m``, compared
    exactly in float32; there the integer code is at most that, and from 0.5 on
    at least 1, so the larger of the two is the code everywhere.
    """
    one_bits = _F32_BIAS << _F32_MANTISSA_BITS
    carry = (1 << _F32_MANTISSA_BITS) - 1
    uniform_shift = 32 - UNIFORM_BITS
    w.comment(f"{out}: stochastic rounding on the E2M1 grid: integer carries from 0.5 on, a float compare below")
    w.line(f"{out}_m = tl.minimum(tl.maximum(tl.abs({scaled}), 0.0), {core.E2M1_MAX!r})")
    w.line(f"{out}_a = {out}_m.to(tl.uint32, bitcast=True)")
    w.line(
        f"{out}_sum = {out}_a + tl.maximum({out}_a + {carry:#x}, {one_bits + carry:#x}) "
        f"- ({word} >> {uniform_shift + 1})"
    )
    w.line(f"{out}_low = ({word} >> {uniform_shift}).to(tl.float32) < {out}_m * {2.0 ** (UNIFORM_BITS + 1)!r}")
    offset = 2 * (_F32_BIAS - 1)
    w.line(
        f"{code_parts(out)[0]} = tl.maximum(({out}_sum >> {_F32_MANTISSA_BITS}).to(tl.int32) - {offset}, "
        f"{out}_low.to(tl.int32))"
    )
    _emit_signed_code(w, scaled, out)


E2M1_SUBNORMAL_SCALE = 2.0 ** (_F32_BIAS - 1)
"""An E2M1 code's bits placed at float32 bits 22-24 (and 31) read as its value times 2**-126."""

_E2M1_VALUE_MASK = (7 << _MAGIC_SHIFT) - 0x80000000
"""Float32 bit 31 and bits 22-24, as an int32 literal."""


def e2m1_bits(nibbles: str, high: bool = False) -> str:
    """Float32 bits of ``value * 2**-126`` for E2M1 codes held in int32 ``nibbles``.

    The magnitude bits (0-2) land in bits 22-24, where exponent 0 makes code 1
    the subnormal 2**-127 and codes 2..7 the normals 1, 1.5, .., 6 times 2**-126;
    the sign bit (3) lands in bit 31.  ``high=False``: the code in bits 0-3
    (higher bits ignored; an arithmetic right shift copies bit 3 through bit 31).
    ``high=True``: the code in bits 4-7 of a sign-extended byte (bits 8-31 are
    copies of bit 7, so one left shift puts the sign in bit 31).
    """
    top = 31 - _E2M1_SIGN_BIT
    if high:
        return f"(({nibbles} << {_MAGIC_SHIFT - 4}) & {_E2M1_VALUE_MASK})"
    return f"((({nibbles} << {top}) >> {top - _MAGIC_SHIFT}) & {_E2M1_VALUE_MASK})"


def emit_e2m1_decode(w: SourceWriter, code: str, out: str) -> None:
    """Float32 value of E2M1 codes (int32 0..15), negative zero kept (reference formats.decode_e2m1).

    Built from the bits (:func:`e2m1_bits`) and one exact multiplication by 2**126.
    """
    w.line(f"{out} = {e2m1_bits(code)}.to(tl.float32, bitcast=True) * {E2M1_SUBNORMAL_SCALE!r}")


def emit_e2m1_decode_bytes(w: SourceWriter, packed: str, shape: str, out: str, positive_zero: bool = False) -> None:
    """``out`` (float32 ``shape``): the values of the codes in uint8 tile ``packed``, two per byte, low nibble first.

    The bytes are sign-extended to int32, so each nibble's bits take two or three
    integer operations (:func:`e2m1_bits`) and one exact multiplication by 2**126.
    ``positive_zero``: the negative zero code decodes to +0 as well, at no cost: the multiplication becomes one
    fused multiply-add of +0 (exact products, so the same values; -0 + +0 = +0 under round to nearest).
    """
    w.line(f"{out}_bytes = {packed}.to(tl.int8, bitcast=True).to(tl.int32)")
    bits = (
        f"tl.reshape(tl.join({e2m1_bits(out + '_bytes')}, {e2m1_bits(out + '_bytes', high=True)}), {shape})"
        ".to(tl.float32, bitcast=True)"
    )
    if positive_zero:
        w.line(f"{out} = tl.fma({bits}, {E2M1_SUBNORMAL_SCALE!r}, 0.0)")
    else:
        w.line(f"{out} = {bits} * {E2M1_SUBNORMAL_SCALE!r}")


def pack_words(w: SourceWriter, values: list, bits: int, prefix: str) -> list[str]:
    """Little-endian int32 words ``prefix00..`` of ``bits``-wide fields: ``values[k]`` at bit ``bits * k`` of its word.

    Codes (4 bits) give the nibble layout of the format (lower index in the low
    nibble of each byte), mask bits (1 bit) the bit layout; storing whole words
    keeps every store 4-byte wide.  A field may be a tuple of parts with no bit
    in common (:func:`code_parts`).  No two fields or parts share a bit, so a
    word is their sum, which the compiler turns into shift-and-add instructions.
    """
    per_word = 32 // bits
    names = lanes(prefix, len(values) // per_word)
    for word, name in enumerate(names):
        fields = values[word * per_word : (word + 1) * per_word]
        parts = []
        for k, field in enumerate(fields):
            for part in field if isinstance(field, tuple) else (field,):
                parts.append(f"({part} << {bits * k})" if k else part)
        w.line(f"{name} = {' + '.join(parts)}")
    return names


# Philox 4x32-10 (fp4.runtime.philox), written out in 32-bit words: each 32x32 -> 64-bit product is one
# widening multiply whose halves are the high and low words, and each new counter word one three-way XOR.
PHILOX_KEY_A, PHILOX_KEY_B = core.PHILOX_KEY_A, core.PHILOX_KEY_B
PHILOX_ROUND_A, PHILOX_ROUND_B = core.PHILOX_ROUND_A, core.PHILOX_ROUND_B
PHILOX_ROUNDS = core.PHILOX_ROUNDS
_MASK32 = 0xFFFFFFFF


def emit_philox_keys(w: SourceWriter, seed: str, prefix: str) -> None:
    """Scalars ``prefix_k0_<r>``, ``prefix_k1_<r>``: the Philox key of round r for an unsigned 64-bit ``seed``.

    Also the two round multipliers as uint32 scalars ``prefix_ma``, ``prefix_mb``.
    """
    w.line(f"{prefix}_ma = tl.full([], {PHILOX_ROUND_A:#x}, tl.uint32)")
    w.line(f"{prefix}_mb = tl.full([], {PHILOX_ROUND_B:#x}, tl.uint32)")
    w.line(f"{prefix}_seed = {seed}.to(tl.uint64)")
    w.line(f"{prefix}_k0_0 = ({prefix}_seed & {_MASK32:#x}).to(tl.uint32)")
    w.line(f"{prefix}_k1_0 = ({prefix}_seed >> 32).to(tl.uint32)")
    for r in range(1, PHILOX_ROUNDS):
        w.line(f"{prefix}_k0_{r} = {prefix}_k0_0 + tl.full([], {(r * PHILOX_KEY_A) & _MASK32:#x}, tl.uint32)")
        w.line(f"{prefix}_k1_{r} = {prefix}_k1_0 + tl.full([], {(r * PHILOX_KEY_B) & _MASK32:#x}, tl.uint32)")


def stream_addend(stream: int) -> list[int]:
    """``(stream + 1) * STREAM_MULTIPLIER mod 2**64`` as two kernel arguments, its low and high 32-bit words,
    each as a signed (two's-complement) int32 value.

    Every launcher types an integer in int32's range alike (Triton's by value, Inductor's as int32 wherever it
    fits), and Inductor cannot type a constant integer argument above int32's maximum at all (torch 2.11), so
    no word goes past it; the kernel keeps each word's low 32 bits (:func:`emit_stream_seed`)."""
    addend = ((stream + 1) * core.STREAM_MULTIPLIER) % (1 << 64)
    return [_signed32(addend & 0xFFFFFFFF), _signed32(addend >> 32)]


def _signed32(word: int) -> int:
    return word - (1 << 32) if word >= 1 << 31 else word


def addend_parameters(name: str) -> dict:
    """The kernel parameters :func:`stream_addend` fills, for a signature: ``<name>_lo``, ``<name>_hi``."""
    return {f"{name}_lo": "i64", f"{name}_hi": "i64"}


def emit_stream_seed(w: SourceWriter, layer_seed: str, addend: str, out: str) -> None:
    """``out`` (uint64 scalar) = ``stream_seed(layer seed, stream)`` for the words ``addend_lo``, ``addend_hi`` of
    :func:`stream_addend` (typed int32 or int64 by the launcher: only their low 32 bits count).

    The layer seed is read on the device, so the host never looks at it (CUDA-graph replays draw new seeds).
    """
    # tl.cast, not .to: a launcher may pass a word as a constant (Inductor's analysis of a kernel's writes does)
    lo, hi = (f"(tl.cast({addend}_{part}, tl.int64) & 0xFFFFFFFF).to(tl.uint64)" for part in ("lo", "hi"))
    w.line(f"{out} = {layer_seed} + (({hi} << 32) | {lo})")
    w.line(f"{out} = {out} ^ ({out} >> 29)")
    w.comment("seeds are below 2**63 (they travel as int64)")
    w.line(f"{out} = ({out} << 1) >> 1")


def emit_sign_mask(w: SourceWriter, seed: str, out: str) -> None:
    """``out`` (int32 scalar) = ``fp4.runtime.philox.sign_mask(seed)``: bit i is the top bit of element word i.

    Element ``i`` of the first 32 takes word ``i % 4`` of Philox counter ``i // 4`` (eight calls).
    """
    emit_philox_keys(w, seed, f"{out}_key")
    w.line(f"{out}_counter = tl.arange(0, 8).to(tl.uint32)")
    words = emit_philox(w, f"{out}_key", f"{out}_counter", None, f"{out}_rand", words=4)
    terms = " | ".join(f"(({word} >> 31) << ({out}_counter * 4 + {k}))" for k, word in enumerate(words))
    w.line(f"{out}_bits = ({terms}).to(tl.int64)")
    w.comment("the bits are disjoint, so their sum is their OR")
    w.line(f"{out} = tl.sum({out}_bits, axis=0).to(tl.int32)")


def emit_philox(
    w: SourceWriter, keys: str, counter_lo: str, counter_hi: str | None, out: str, words: int = 1
) -> list[str]:
    """Philox4x32-10 at counter (lo, hi, 0, 0): ``tl.randint4x`` / ``philox.randint4x``; returns the word names.

    ``words=1`` computes only the first word (``out``, as ``tl.randint``);
    ``words=4`` all four (``out_w0`` .. ``out_w3``).  Zero counter words are
    tracked symbolically, so the first rounds skip the products by zero, and
    the last round computes only the words asked for.
    """
    if words not in (1, 4):
        raise ValueError(f"a Philox call yields its first word or all four, not {words}")
    c = [counter_lo, counter_hi, None, None]

    def xor(*terms):
        present = [t for t in terms if t is not None]
        return " ^ ".join(present)

    for r in range(PHILOX_ROUNDS):
        k0, k1 = f"{keys}_k0_{r}", f"{keys}_k1_{r}"
        last = r == PHILOX_ROUNDS - 1
        if c[2] is not None:
            w.line(f"{out}_pb = {c[2]}.to(tl.uint64) * {keys}_mb.to(tl.uint64)")
            hi_b, lo_b = f"({out}_pb >> 32).to(tl.uint32)", f"{out}_pb.to(tl.uint32)"
        else:
            hi_b = lo_b = None
        new0 = xor(hi_b, c[1], k0)
        if last and words == 1:
            w.line(f"{out} = {new0}")
            return [out]
        w.line(f"{out}_pa = {c[0]}.to(tl.uint64) * {keys}_ma.to(tl.uint64)")
        hi_a, lo_a = f"({out}_pa >> 32).to(tl.uint32)", f"{out}_pa.to(tl.uint32)"
        names = [f"{out}_w{i}" for i in range(4)] if last else [f"{out}_c{i}" for i in range(4)]
        if lo_b is None and last:
            lo_b = f"tl.zeros_like({c[0]})"
        assigned = [(names[0], new0), (names[1], lo_b), (names[2], xor(hi_a, c[3], k1)), (names[3], lo_a)]
        assigned = [(name, value) for name, value in assigned if value is not None]
        # one tuple assignment: every right-hand side reads the previous round's words
        w.line(", ".join(name for name, _ in assigned) + " = " + ", ".join(value for _, value in assigned))
        c = [names[0], names[1] if lo_b is not None else None, names[2], names[3]]
    return c
