"""How the Hopper FP8 GEMM's main loop waits for its tensor-core MMAs, from the PTX, without a GPU.

    python benchmarks/gemm_waits.py [--tile 128x256x128] [--warps 8]

The fold GEMM promotes every K tile's product into an fp32 accumulator (``acc += tl.dot(a, b.T)``), as cuBLAS
does, because the FP8 tensor core's own adder keeps fewer bits.  Triton makes a ``wgmma`` asynchronous only when
its accumulator is the loop-carried one (``acc = tl.dot(a, b.T, acc)``): then the loop waits with
``wgmma.wait_group 1`` and the next tile's MMA overlaps this one's.  A product that is consumed in the same
iteration gets ``wait_group 0``: the tensor cores idle while the add runs.  This prints, for the kernel as
generated and for rewrites of its loop that keep the same sums in the same order, the ``wait_group`` counts inside
the loop and whether Triton's warp specialization took (``setmaxnreg`` appears once it splits producer and consumer
warps).  Every rewrite keeps the result bit for bit; what they show is which ones Triton can overlap.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import tempfile
from pathlib import Path

from fp4.codegen.gemm import emit_gemm
from fp4.codegen.spec import EpilogueSpec, GemmSpec
from fp4.runtime.cache import KernelCache, compile_ahead_of_time

BACKWARD = EpilogueSpec(alpha=True, clip_mask=True, inverse_rotate=True)
LOOP = """    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = a_desc.load([m0, k * BLOCK_K])
        b = b_desc.load([n0, k * BLOCK_K])
        acc += tl.dot(a, b.T)
"""
REWRITES = {
    # the previous tile's product added after this tile's MMA is issued (same sums, same order)
    "add one tile late": """    prev = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = a_desc.load([m0, k * BLOCK_K])
        b = b_desc.load([n0, k * BLOCK_K])
        cur = tl.dot(a, b.T)
        acc += prev
        prev = cur
    acc += prev
""",
    # a loop-carried partial whose accumulator input is zeroed (the shape Triton pipelines, in name only)
    "loop-carried partial": """    part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = a_desc.load([m0, k * BLOCK_K])
        b = b_desc.load([n0, k * BLOCK_K])
        part = tl.dot(a, b.T, part * 0.0)
        acc += part
""",
    "warp-specialized loop": LOOP.replace(
        "in range(0, tl.cdiv(K, BLOCK_K)):", "in tl.range(0, tl.cdiv(K, BLOCK_K), warp_specialize=True):"
    ),
}


def loop_waits(ptx: str) -> list[int]:
    """The ``wgmma.wait_group`` counts inside the first loop body of the PTX."""
    start = ptx.find("Loop Header")
    end = ptx.find("_crit_edge", start)
    return [int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned (\d+);", ptx[start:end])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tile", default="128x256x128", help="BLOCK_M x BLOCK_N x BLOCK_K")
    parser.add_argument("--warps", type=int, default=8)
    args = parser.parse_args()
    block_m, block_n, block_k = (int(v) for v in args.tile.split("x"))
    tile = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8, SPLIT_N=2, EVEN_K=True)
    promoted = emit_gemm(GemmSpec("fp8_fold", BACKWARD, tma=True, promote=True))
    plain = emit_gemm(GemmSpec("fp8_fold", BACKWARD, tma=True, promote=False))
    assert LOOP in promoted.text, "the generated loop changed: update LOOP"
    cases = {"promoted (as generated)": promoted, "not promoted (fewer bits)": plain}
    cases.update({name: dataclasses.replace(promoted, text=promoted.text.replace(LOOP, loop))
                  for name, loop in REWRITES.items()})  # fmt: skip
    print(f"sm_90a, tile {args.tile}, {args.warps} warps: wgmma.wait_group counts in the main loop")
    for name, source in cases.items():
        cache = KernelCache(Path(tempfile.mkdtemp()))
        try:
            ptx = compile_ahead_of_time(source, 90, tile, num_warps=args.warps, cache=cache).asm["ptx"]
        except Exception as error:  # noqa: BLE001  (a rewrite Triton cannot compile is a finding too)
            print(f"  {name:28s} does not compile: {str(error).splitlines()[-1][:100]}")
            continue
        specialized = "warps specialized" if "setmaxnreg" in ptx else "one warp role"
        print(f"  {name:28s} waits {loop_waits(ptx)}  ({specialized})")


if __name__ == "__main__":
    main()
