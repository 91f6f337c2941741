"""The promoted FP8 GEMM loop with the "one tile late" schedule, in Gluon (Triton's lower-level language, Hopper).

Each K tile's product goes to its own registers (``warpgroup_mma(..., use_acc=False, is_async=True)``); after
issuing tile ``t`` the loop waits until one MMA is outstanding (``warpgroup_mma_wait(1)``), so tile ``t - 1`` is
done, and adds that product to the fp32 accumulator while tile ``t`` runs.  Tiles go in pairs, so each of the two
products keeps its registers across the loop's back edge (no copy of a product whose MMA is still running).  The
same sums in the same order as the generated kernel's ``acc += tl.dot(a, b.T)``; the store is a plain fp32 one.

This is a probe of what ``ptxas`` does with the schedule, not a kernel of the package: ``benchmarks/gemm_waits.py``
compiles it for sm_90a (no GPU) beside the generated kernel and prints the waits of its machine code.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)


@gluon.jit
def _load(a_desc, b_desc, a_smem, b_smem, ready, t, off_m, off_n, STAGES: gl.constexpr):
    slot = t % STAGES
    block_k: gl.constexpr = a_desc.block_type.shape[1]
    mbarrier.expect(ready.index(slot), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(a_desc, [off_m, t * block_k], ready.index(slot), a_smem.index(slot))
    tma.async_copy_global_to_shared(b_desc, [off_n, t * block_k], ready.index(slot), b_smem.index(slot))


@gluon.jit
def _issue(a_smem, b_smem, ready, t, zeros, STAGES: gl.constexpr):
    slot = t % STAGES
    mbarrier.wait(ready.index(slot), (t // STAGES) & 1)
    return warpgroup_mma(a_smem.index(slot), b_smem.index(slot).permute((1, 0)), zeros, use_acc=False, is_async=True)


@gluon.jit
def one_tile_late_gemm(a_desc, b_desc, c_ptr, M, N, K, stride_cm, STAGES: gl.constexpr, num_warps: gl.constexpr):
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
    pid = gl.program_id(0)
    off_m = (pid // gl.cdiv(N, BLOCK_N)) * BLOCK_M
    off_n = (pid % gl.cdiv(N, BLOCK_N)) * BLOCK_N
    a_smem = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
    b_smem = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], b_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for q in gl.static_range(STAGES):
        mbarrier.init(ready.index(q), count=1)
    layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 32]
    )
    # a tile past K reads zeros (TMA) and adds +0: the pairs may run one tile over
    tiles = 2 * gl.cdiv(gl.cdiv(K, BLOCK_K), 2)
    for q in gl.static_range(STAGES - 1):
        if q < tiles:
            _load(a_desc, b_desc, a_smem, b_smem, ready, q, off_m, off_n, STAGES)
    zeros = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout)
    acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout)
    odd = warpgroup_mma_init(zeros)
    for t in range(0, tiles, 2):
        even = _issue(a_smem, b_smem, ready, t, zeros, STAGES)
        acc = acc + warpgroup_mma_wait(num_outstanding=1, deps=(odd,))  # tile t - 1, done while tile t runs
        if t + STAGES - 1 < tiles:
            _load(a_desc, b_desc, a_smem, b_smem, ready, t + STAGES - 1, off_m, off_n, STAGES)
        odd = _issue(a_smem, b_smem, ready, t + 1, zeros, STAGES)
        acc = acc + warpgroup_mma_wait(num_outstanding=1, deps=(even,))  # tile t, done while tile t + 1 runs
        if t + STAGES < tiles:
            _load(a_desc, b_desc, a_smem, b_smem, ready, t + STAGES, off_m, off_n, STAGES)
    acc = acc + warpgroup_mma_wait(num_outstanding=0, deps=(odd,))
    for q in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(q))
    rows = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
    cols = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
    ptrs = c_ptr + rows[:, None].to(gl.int64) * stride_cm + cols[None, :]
    gl.store(ptrs, acc, mask=(rows[:, None] < M) & (cols[None, :] < N))


def compile_for_sm90(block_m=128, block_n=128, block_k=128, stages=4, num_warps=8):
    """Compile :func:`one_tile_late_gemm` for sm_90a without a GPU (FP8 E4M3 operands, 16-byte aligned output)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    def descriptor(rows):
        layout = gl.NVMMASharedLayout.get_default_for([rows, block_k], gl.float8e4nv)
        return f"tensordesc<fp8e4nv[{rows}, {block_k}],{layout!r}>"

    signature = {
        "a_desc": descriptor(block_m), "b_desc": descriptor(block_n), "c_ptr": "*fp32",
        "M": "i32", "N": "i32", "K": "i32", "stride_cm": "i32", "STAGES": "constexpr", "num_warps": "constexpr",
    }  # fmt: skip
    constexprs = {"STAGES": stages, "num_warps": num_warps}
    source = GluonASTSource(one_tile_late_gemm, signature, constexprs, attrs={(2,): [["tt.divisibility", 16]]})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))
