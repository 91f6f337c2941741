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
    """Bit 3 of the E2M1 code: the float32 sign bit moved down to bit 3."""
    return f"((({value}).to(tl.int32, bitcast=True) >> 28) & 8)"


def _emit_binade_step(w: SourceWriter, magnitude: str, out: str) -> None:
    """``out_t = magnitude / step`` and ``out_base``, the code of the grid point 0, 2 or 4 that starts the range.

    The E2M1 grid has step 0.5 below 2, 1 in [2, 4) and 2 from 4 on; in units
    of the step the grid points are consecutive integers, so rounding onto the
    grid is rounding ``t`` to an integer and adding the code where the range
    starts (0, 2 or 4).  Dividing by a power of two is exact.
    """
    w.line(f"{out}_lo = {magnitude} < 2.0")
    w.line(f"{out}_mid = {magnitude} < 4.0")
    w.line(f"{out}_t = {magnitude} * tl.where({out}_lo, 2.0, tl.where({out}_mid, 1.0, 0.5))")
    w.line(f"{out}_base = tl.where({out}_lo, 0, tl.where({out}_mid, 2, 4))")


ROUND_TO_INTEGER_MAGIC = 1.5 * 2.0**23
"""Adding 1.5 * 2**23 rounds a float32 in [0, 2**22) to an integer (nearest, ties to even): the ulp there is 1."""


def emit_rne_code(w: SourceWriter, scaled: str, out: str) -> None:
    """E2M1 code of ``scaled`` rounded to nearest even, saturating at 6, NaN -> 0 (reference formats.encode_e2m1).

    Ties go to the even integer ``t``, which is the even code, as the midpoint
    table of the reference does; ``t`` is capped at 4 (code 8 > 7 saturates).
    """
    m = f"{out}_abs"
    w.line(f"{m} = tl.abs({scaled})")
    _emit_binade_step(w, m, out)
    magic = ROUND_TO_INTEGER_MAGIC
    magic_bits = 0x4B400000
    w.line(
        f"{out}_near = (tl.minimum({out}_t, 4.0) + {magic!r}).to(tl.int32, bitcast=True) - {magic_bits:#x} + {out}_base"
    )
    w.line(f"{out} = tl.where({scaled} != {scaled}, 0, tl.minimum({out}_near, 7) | {emit_sign_bit(scaled)})")


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


def emit_sr_code(w: SourceWriter, scaled: str, uniform: str, out: str) -> None:
    """E2M1 code of ``scaled`` in [-6, 6], rounded up with probability = its position (reference.stochastic_round_e2m1).

    ``t - floor(t)`` is the reference's exact fractional position between the
    two neighbouring grid points; it rounds up when ``uniform`` is below it.
    """
    m = f"{out}_abs"
    w.line(f"{m} = tl.abs({scaled})")
    _emit_binade_step(w, m, out)
    w.line(f"{out}_floor = tl.floor({out}_t)")
    w.line(f"{out}_up = ({uniform} < {out}_t - {out}_floor).to(tl.int32)")
    w.line(f"{out}_code = {out}_floor.to(tl.int32) + {out}_base + {out}_up")
    w.line(f"{out} = tl.where({scaled} != {scaled}, 0, {out}_code | {emit_sign_bit(scaled)})")


def emit_e2m1_decode(w: SourceWriter, code: str, out: str) -> None:
    """Float32 value of E2M1 codes (int32 0..15), negative zero kept (reference formats.decode_e2m1)."""
    w.line(f"{out}_mag = {code} & 7")
    w.comment("twice the magnitude: 0, 1, 2, 3, 4, 6, 8, 12")
    w.line(f"{out}_twice = tl.where({out}_mag < 2, {out}_mag, (2 + ({out}_mag & 1)) << (({out}_mag >> 1) - 1))")
    w.line(f"{out} = {out}_twice.to(tl.float32) * 0.5")
    w.line(f"{out} = tl.where(({code} & 8) != 0, -{out}, {out})")


def pack_words(w: SourceWriter, values: list[str], bits: int, prefix: str) -> list[str]:
    """Little-endian int32 words ``prefix00..`` of ``bits``-wide fields: ``values[k]`` at bit ``bits * k`` of its word.

    Codes (4 bits) give the nibble layout of the format (lower index in the low
    nibble of each byte), mask bits (1 bit) the bit layout; storing whole words
    keeps every store 4-byte wide.
    """
    per_word = 32 // bits
    names = lanes(prefix, len(values) // per_word)
    for word, name in enumerate(names):
        fields = values[word * per_word : (word + 1) * per_word]
        terms = " | ".join(f"({value} << {bits * k})" if k else value for k, value in enumerate(fields))
        w.line(f"{name} = {terms}")
    return names


# Philox 4x32-10 (fp4.runtime.philox), written out in 32-bit words: each 32x32 -> 64-bit product is a
# high-word and a low-word multiply, and each new counter word one three-way XOR.
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


def stream_addend(stream: int) -> int:
    """``(stream + 1) * STREAM_MULTIPLIER mod 2**64`` as a signed 64-bit kernel argument (its two's complement)."""
    addend = ((stream + 1) * core.STREAM_MULTIPLIER) % (1 << 64)
    return addend - (1 << 64) if addend >= 1 << 63 else addend


def emit_stream_seed(w: SourceWriter, layer_seed: str, addend: str, out: str) -> None:
    """``out`` (uint64 scalar) = ``stream_seed(layer seed, stream)`` for ``addend = stream_addend(stream)``.

    The layer seed is read on the device, so the host never looks at it (CUDA-graph replays draw new seeds).
    """
    w.line(f"{out} = {layer_seed} + {addend}.to(tl.uint64, bitcast=True)")
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
            hi_b, lo_b = f"tl.umulhi({c[2]}, {keys}_mb)", f"{c[2]} * {keys}_mb"
        else:
            hi_b = lo_b = None
        new0 = xor(hi_b, c[1], k0)
        if last and words == 1:
            w.line(f"{out} = {new0}")
            return [out]
        hi_a, lo_a = f"tl.umulhi({c[0]}, {keys}_ma)", f"{c[0]} * {keys}_ma"
        names = [f"{out}_w{i}" for i in range(4)] if last else [f"{out}_c{i}" for i in range(4)]
        if lo_b is None and last:
            lo_b = f"tl.zeros_like({c[0]})"
        assigned = [(names[0], new0), (names[1], lo_b), (names[2], xor(hi_a, c[3], k1)), (names[3], lo_a)]
        assigned = [(name, value) for name, value in assigned if value is not None]
        # one tuple assignment: every right-hand side reads the previous round's words
        w.line(", ".join(name for name, _ in assigned) + " = " + ", ".join(value for _, value in assigned))
        c = [names[0], names[1] if lo_b is not None else None, names[2], names[3]]
    return c
