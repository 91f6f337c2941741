"""How the Hopper FP8 GEMM's main loop waits for its tensor-core MMAs, from the PTX and SASS, without a GPU.

    python benchmarks/gemm_waits.py [--tile 128x256x128] [--warps 8]

The fold GEMM promotes every K tile's product into an fp32 accumulator (``acc += tl.dot(a, b.T)``), as cuBLAS
does, because the FP8 tensor core's own adder keeps fewer bits.  Triton makes a ``wgmma`` asynchronous only when
its accumulator is the loop-carried one (``acc = tl.dot(a, b.T, acc)``): then the loop waits with
``wgmma.wait_group 1`` and the next tile's MMA overlaps this one's.  A product that is consumed in the same
iteration gets ``wait_group 0``: the tensor cores idle while the add runs.  This prints, for the kernel as
generated and for rewrites of its loop that keep the same sums in the same order, the ``wait_group`` counts inside
the loop and whether Triton's warp specialization took (``setmaxnreg`` appears once it splits producer and consumer
warps).  Every rewrite keeps the result bit for bit; what they show is which ones Triton can overlap.

The PTX is not the last word: ``ptxas`` serializes a ``wgmma`` whose accumulator registers are read before it is
waited for.  So each case also prints the waits of the machine code (``WARPGROUP.DEPBAR.LE gsb0, N`` inside the
main loop, from the ``cuobjdump`` that ships with Triton): the MMA overlaps the next tile's only where no wait in the
loop is 0.  Triton's own promotion (``tl.dot(..., max_num_imprecise_acc=BLOCK_K)``) is such a case: its PTX waits
with 1 and adds the in-flight product, and ``ptxas`` puts a wait for 0 in front of the adds.  Last, where this
Triton has Gluon, the one-tile-late schedule written by hand (``benchmarks/gluon_one_tile_late.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
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
    # Triton's promotion: the compiler adds a partial accumulator into acc every max_num_imprecise_acc of K
    "max_num_imprecise_acc=BLOCK_K": LOOP.replace(
        "acc += tl.dot(a, b.T)", "acc = tl.dot(a, b.T, acc, max_num_imprecise_acc=BLOCK_K)"
    ),
    "warp-specialized loop": LOOP.replace(
        "in range(0, tl.cdiv(K, BLOCK_K)):", "in tl.range(0, tl.cdiv(K, BLOCK_K), warp_specialize=True):"
    ),
}


def ptx_waits(ptx: str) -> list[int]:
    """The ``wgmma.wait_group`` counts in ``ptx``, in order."""
    return [int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned (\d+);", ptx)]


def loop_waits(ptx: str) -> list[int]:
    """The ``wgmma.wait_group`` counts inside the first loop body of the PTX."""
    start = ptx.find("Loop Header")
    return ptx_waits(ptx[start : ptx.find("_crit_edge", start)])


def sass_loop_waits(cubin: bytes) -> list[int] | None:
    """The ``WARPGROUP.DEPBAR.LE gsb0, N`` counts inside the main loop of the machine code (the span a backward
    branch closes that holds the ``QGMMA``/``HGMMA`` instructions); None where Triton ships no ``cuobjdump``."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        Path(path).write_bytes(cubin)
        sass = subprocess.run([str(tool), "-sass", path], capture_output=True, text=True, check=True).stdout
    code = [(int(a, 16), i) for a, i in re.findall(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", sass, flags=re.M)]
    for address, instruction in code:
        branch = re.search(r"BRA (0x[0-9a-f]+)$", instruction)
        target = int(branch.group(1), 16) if branch else address
        body = [i for a, i in code if target <= a <= address]
        if target < address and any("GMMA." in i for i in body):
            return [int(n, 16) for i in body for n in re.findall(r"DEPBAR\.LE gsb0, (0x[0-9a-f]+)", i)]
    return []


def verdict(sass: list[int] | None) -> str:
    """Whether the loop's MMA overlaps the next one: only where no machine-code wait in the loop is for 0."""
    return "?" if sass is None else ("overlaps" if sass and min(sass) > 0 else "serialized")


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
    print(f"sm_90a, tile {args.tile}, {args.warps} warps: waits for the tensor cores in the main loop, PTX / SASS")
    for name, source in cases.items():
        cache = KernelCache(Path(tempfile.mkdtemp()))
        try:
            kernel = compile_ahead_of_time(source, 90, tile, num_warps=args.warps, cache=cache)
        except Exception as error:  # noqa: BLE001  (a rewrite Triton cannot compile is a finding too)
            print(f"  {name:30s} does not compile: {str(error).splitlines()[-1][:100]}")
            continue
        ptx = kernel.asm["ptx"]
        specialized = "warps specialized" if "setmaxnreg" in ptx else "one warp role"
        sass = sass_loop_waits(kernel.asm["cubin"])
        print(f"  {name:30s} PTX {loop_waits(ptx)}  SASS {sass}  {verdict(sass)}  ({specialized})")
    try:  # the one-tile-late schedule written by hand, where this Triton has Gluon
        from gluon_one_tile_late import compile_for_sm90
    except ImportError as error:
        print(f"  Gluon one tile late: not compiled ({error})")
        return
    import triton

    try:
        kernel = compile_for_sm90(block_k=block_k, num_warps=args.warps)
    except Exception as error:  # noqa: BLE001  (Gluon's API moves between Triton releases; written for 3.6)
        print(f"  Gluon one tile late: does not compile with Triton {triton.__version__} ({type(error).__name__})")
        return
    sass = sass_loop_waits(kernel.asm["cubin"])
    name, waits = "Gluon one tile late 128x128", ptx_waits(kernel.asm["ptx"])
    print(f"  {name:30s} PTX {waits}  SASS {sass}  {verdict(sass)}  (every wait in the kernel)")


if __name__ == "__main__":
    main()
