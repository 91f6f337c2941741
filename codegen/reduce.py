"""Emit the bias-gradient reduction: column sums of a ``[T, N]`` gradient in fp32.

Program ``(j, c)`` sums columns ``[j * BLOCK_N, (j + 1) * BLOCK_N)`` over the
rows of chunk ``c`` and writes one fp32 partial sum per column; the launcher
adds the partials of the chunks in a fixed order and rounds once to the bias
dtype.  No atomics, so the result is deterministic, and the gradient is read
once, coalesced along ``N``, by enough programs to fill the GPU.
"""

from __future__ import annotations

from .source import KernelSource, SourceWriter, header
from .spec import POINTER_TYPES, BiasGradSpec


def emit_bias_grad(spec: BiasGradSpec) -> KernelSource:
    name = spec.kernel_name
    what = "bias gradient: float32 column sums of the output gradient over one chunk of rows"
    sig = {"grad_ptr": POINTER_TYPES[spec.input_dtype], "partial_ptr": "*fp32", "T": "i32", "N": "i32"}
    sig.update(stride_t="i32", rows_per_chunk="i32")
    w = SourceWriter()
    w.lines_(header(name, what, spec.describe(), {}))
    w.line("@triton.jit")
    with w.block(f"def {name}({', '.join(sig)}, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):"):
        w.line(f'"""{what[0].upper() + what[1:]}."""')
        w.line("cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)")
        w.line("col_ok = cols < N")
        w.line("chunk = tl.program_id(1)")
        w.line("first_row = chunk * rows_per_chunk")
        w.line("last_row = tl.minimum(first_row + rows_per_chunk, T)")
        w.line("total = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)")
        with w.block("for t0 in range(first_row, last_row, BLOCK_T):"):
            w.line("rows = t0 + tl.arange(0, BLOCK_T)")
            w.line(
                "tile = tl.load(grad_ptr + rows[:, None].to(tl.int64) * stride_t + cols[None, :], "
                "mask=(rows[:, None] < last_row) & col_ok[None, :], other=0.0)"
            )
            w.line("total += tile.to(tl.float32)")
        w.line("tl.store(partial_ptr + chunk * N + cols, tl.sum(total, axis=0), mask=col_ok)")
    return KernelSource(name=name, text=w.text(), spec=spec, signature=sig, constexprs=("BLOCK_T", "BLOCK_N"))
