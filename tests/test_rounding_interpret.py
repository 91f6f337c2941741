"""The quantizers' rounding and decoding code in Triton's CPU interpreter, bit for bit against the reference.

Hopper has no E2M1 conversion, so the quantizer kernels round with integer and
float32 operations on the bit pattern (``fp4.codegen.lanes.emit_rne_code``,
``emit_sr_code``) and decode saved codes by building float32 bits
(``emit_e2m1_decode_bytes``).  The first cases run that emitted code alone on
every float32 sign and exponent (each value of the top 16 bits, with the low 16
bits at their edges): zeros, subnormals, the E2M1 grid points, the midpoints
between them (exact ties) and their neighbours, values from 6 up to infinity,
NaNs of either sign.  Stochastic rounding also gets, for each value, the
uniforms just below, at and just above its rounding threshold; decoding gets
every byte.  The last cases run whole kernels on inputs with such values.
"""

from __future__ import annotations

import pytest
from in_interpreter import assert_bitwise, interpreted_kernel, report, run_cases

# ----------------------------------------------------------------------------------------------------------------
# the child process


def _elementwise_kernel(name: str, emit, dtype: str = "tl.float32", width: int = 1):
    """A kernel ``name(x_ptr, word_ptr, out_ptr, BLOCK)``: ``emit(w)`` computes ``result`` (``width`` per element)
    from ``x`` (``dtype``) and ``word`` (uint32), one element of each per offset."""
    from fp4.codegen.source import SourceWriter, header

    w = SourceWriter()
    w.lines_(header(name, "rounding code under test", [], {}))
    w.line("@triton.jit")
    with w.block(f"def {name}(x_ptr, word_ptr, out_ptr, BLOCK: tl.constexpr):"):
        w.line("offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)")
        w.line(f"x = tl.load(x_ptr + offsets).to({dtype})")
        w.line("word = tl.load(word_ptr + offsets).to(tl.uint32, bitcast=True)")
        emit(w)
        w.line(f"tl.store(out_ptr + tl.program_id(0) * BLOCK * {width} + tl.arange(0, BLOCK * {width}), result)")
    return interpreted_kernel(name, w.text())


def _cases():
    import torch
    from fp4.codegen import lanes
    from fp4.runtime import formats, launch, philox, reference
    from fp4.runtime.autotune import Config

    generator = torch.Generator().manual_seed(20261207)
    results = {}
    block = 1 << 15

    def record(name, got, want):
        mismatches = []
        for g, w in zip(got, want):
            if g.shape != w.shape or g.dtype != w.dtype:
                mismatches.append(-1)
            else:
                same_bits = g.view(torch.int32) == w.view(torch.int32) if g.dtype == torch.float32 else g == w
                mismatches.append(int((~same_bits).sum()))
        results[name] = {"mismatches": mismatches}

    def words32(words):
        """uint32 values (int64) as the int32 tensor the kernels load."""
        return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)

    def run(kernel, x, words, out_dtype=torch.int32):
        pad = (-x.numel()) % block
        x = torch.cat([x, torch.zeros(pad, dtype=x.dtype)])
        words = torch.cat([words, torch.zeros(pad, dtype=words.dtype)])
        out = torch.empty(x.numel(), dtype=out_dtype)
        kernel[(x.numel() // block,)](x, words32(words), out, BLOCK=block)
        return out[: x.numel() - pad]

    # every sign and exponent: each top half-word with the low half-word at its edges
    top = torch.arange(1 << 16, dtype=torch.int64) << 16
    bits = torch.cat([top | low for low in (0, 1, 0x7FFF, 0x8000, 0xFFFF)])
    x = words32(bits).view(torch.float32)
    words = torch.randint(0, 1 << 32, x.shape, generator=generator)

    def rne(w):
        lanes.emit_rne_code(w, "x", "code")
        w.line("result = code")

    def sr(w):
        lanes.emit_sr_code(w, "x", "word", "code")
        w.line("result = code")

    rne_kernel, sr_kernel = _elementwise_kernel("rne_codes", rne), _elementwise_kernel("sr_codes", sr)
    record("rne_every_exponent", [run(rne_kernel, x, words)], [formats.encode_e2m1(x).to(torch.int32)])
    want = reference.stochastic_round_e2m1(x, philox.to_uniform24(words))
    record("sr_every_exponent", [run(sr_kernel, x, words)], [want.to(torch.int32)])

    # stochastic rounding at its threshold: U * 2**-24 < position, U = word >> 8, with U next to position * 2**24
    finite = x[torch.isfinite(x)]
    magnitude = finite.abs().double().clamp(max=formats.E2M1_MAX)
    grid = torch.tensor(formats.E2M1_GRID, dtype=torch.float64)
    lower = (magnitude[:, None] >= grid[1:]).sum(1).clamp(max=len(grid) - 2)
    threshold = (magnitude - grid[lower]) / (grid[lower + 1] - grid[lower]) * 2.0**24
    uniforms = [
        (rounded(threshold) + step).clamp(0, 2**24 - 1) for rounded in (torch.floor, torch.ceil) for step in (-1, 0, 1)
    ]
    u = torch.cat(uniforms).long()
    words = (u << 8) | torch.randint(0, 256, u.shape, generator=generator)
    x_at = finite.repeat(len(uniforms))
    want = reference.stochastic_round_e2m1(x_at, philox.to_uniform24(words))
    record("sr_at_threshold", [run(sr_kernel, x_at, words)], [want.to(torch.int32)])

    # decoding: every byte (two codes each, low nibble first) and every code alone
    def decode_bytes(w):
        lanes.emit_e2m1_decode_bytes(w, "x", "[BLOCK * 2]", "value")
        w.line("result = value")

    byte_kernel = _elementwise_kernel("decode_bytes", decode_bytes, dtype="tl.uint8", width=2)
    packed = torch.arange(256, dtype=torch.uint8).repeat(block // 256)
    out = torch.empty(2 * block, dtype=torch.float32)
    byte_kernel[(1,)](packed, torch.zeros(block, dtype=torch.int32), out, BLOCK=block)
    record("decode_every_byte", [out], [formats.decode_e2m1(formats.unpack_nibbles(packed))])

    def decode_codes(w):
        lanes.emit_e2m1_decode(w, "x", "value")
        w.line("result = value")

    code_kernel = _elementwise_kernel("decode_codes", decode_codes, dtype="tl.int32")
    codes = torch.arange(16, dtype=torch.int32).repeat(block // 16)
    got = run(code_kernel, codes, torch.zeros_like(codes, dtype=torch.int64), torch.float32)
    record("decode_every_code", [got], [formats.decode_e2m1(codes.to(torch.uint8))])

    # the kernels: infinities, NaN, -0.0, values whose triple overflows, subnormal, zero and tie groups
    seed = 2**62 + 977
    seed_tensor = torch.tensor(seed, dtype=torch.int64)
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 2.5e38, -1.5e38, 1e-40, -3e-42])
    x = torch.randn(36, 96, generator=generator)
    x[0] = 0.0
    x[1] = -0.0
    x[2, :32] = torch.randn(32, generator=generator) * 1e-39
    x[3:11, 5] = special
    x[11:19, 40:72] = special[:, None] * torch.rand(8, 32, generator=generator)
    x[20, 64:] = 2.0 ** torch.randint(-126, 127, (32,), generator=generator).float()
    signs = reference.rotation_signs(seed, reference.STREAM_DGRAD_SIGNS)
    configs = {
        "last": Config.make(4, BLOCK_ROWS=8, BLOCK_GROUPS=2),
        "first": Config.make(4, BLOCK_ROWS=32, BLOCK_GROUPS=2),
    }
    for axis, config in configs.items():
        for dtype in (torch.bfloat16, torch.float32):
            xd = x.to(dtype)
            got = launch.launch_quantize_dense(
                xd, "sr", axis, True, seed_tensor, 2, reference.STREAM_DGRAD_SIGNS, interpret=True, config=config
            )
            record(f"sr_specials_{axis}_{dtype}", got, reference.sr_quantize(xd, signs, seed, 2, axis == "first"))

    # QuEST without the rotation on groups scaled by exactly 1 (std in [2.06, 4.1)): every midpoint is a tie
    midpoints = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0])
    ties = torch.cat([midpoints, -midpoints, midpoints.flip(0), -midpoints.flip(0)]).repeat(8, 1)
    ties[4:] = torch.nextafter(ties[4:], torch.where(torch.rand(4, 32, generator=generator) < 0.5, 0.0, 9.0))
    ties = torch.cat([ties, x[:8, :64].reshape(8, 2, 32)[:, 0]], 0)
    assert (reference.quest_quantize(ties[:8], False)[1] == formats.E8M0_BIAS).all(), "tie groups need scale 1"
    last = Config.make(4, BLOCK_ROWS=4, BLOCK_GROUPS=2)
    for rotate in (False, True):
        got = launch.launch_quantize_dense(ties, "quest", "last", rotate, interpret=True, config=last)
        record(f"quest_ties_{rotate}", got, reference.quest_quantize(ties, rotate))

    # re-quantization: every code under the edge scale bytes, and rows of ties
    rows = torch.arange(64)[:, None]
    codes = ((torch.arange(32)[None, :] + 32 * rows) % 256).to(torch.uint8)
    edges = torch.tensor([0, 1, 2, 126, 127, 253, 254, 255])
    scales = edges[(rows + 3 * torch.arange(2)[None, :]) % len(edges)].to(torch.uint8)
    first = Config.make(4, BLOCK_ROWS=32, BLOCK_GROUPS=2)
    got = launch.launch_requantize(codes, scales, seed_tensor, 3, 0, interpret=True, config=first)
    want = reference.requantize_sr(codes, scales, reference.rotation_signs(seed, 0), seed, 3)
    record("requantize_edge_scales", got, want)
    return results


# ----------------------------------------------------------------------------------------------------------------
# the tests


@pytest.fixture(scope="module")
def interpreted():
    return run_cases(__file__, timeout=600)


CASES = ["rne_every_exponent", "sr_every_exponent", "sr_at_threshold", "decode_every_byte", "decode_every_code"]
CASES += [f"sr_specials_{axis}_{dtype}" for axis in ("last", "first") for dtype in ("torch.bfloat16", "torch.float32")]
CASES += ["quest_ties_False", "quest_ties_True", "requantize_edge_scales"]


@pytest.mark.parametrize("case", CASES)
def test_rounding_bitwise_in_interpreter(interpreted, case):
    assert_bitwise(interpreted, case)


if __name__ == "__main__":
    report(_cases)
