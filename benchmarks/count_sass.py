"""Static SASS size, registers and spills of the rotate + quantize kernels for sm_90a, without a GPU.

    python benchmarks/count_sass.py [--dump DIR]

``--dump DIR`` also writes each kernel's Triton source, PTX and SASS (``DIR/<kernel>.py``, ``.ptx``,
``.sass``) and prints its most frequent SASS opcodes.

The QuEST quantizer is also counted for sm_100a and sm_120a, with the integer rounding of the other targets
and with Blackwell's hardware E2M1 conversion (``QuantizeSpec.hardware_e2m1``).

Each kernel is compiled ahead of time to PTX (as the CI's PTX checks do), assembled with
the ``ptxas`` that ships with Triton and disassembled with its ``cuobjdump``.  The
kernels are straight-line code (one group per thread; the fold's one loop over its rows' group scales runs once for
rows up to 8 192 elements), so
instructions per element = SASS instructions x threads per program / elements per program,
close to what Nsight Compute counts as executed.  The bundled ``ptxas`` may be older than
the PTX ISA version Triton writes into the header; the kernels use nothing newer than
PTX 8.7, so the header is lowered to what ``ptxas`` accepts.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

import triton
from fp4.codegen.spec import FoldSpec, QuantizeSpec
from fp4.runtime import kernels
from fp4.runtime.cache import compile_ahead_of_time

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
CASES = {
    # name: (spec, BLOCK_ROWS, BLOCK_GROUPS, architecture)
    "quest_quantize (last)": (QuantizeSpec("quest", "dense", "last", True, False, "bf16"), 8, 16),
    "quest_quantize + fold": (QuantizeSpec("quest", "dense", "last", True, False, "bf16", fold=True), 4, 32),
    "sr_quantize (last)": (QuantizeSpec("sr", "dense", "last", True, True, "bf16"), 8, 16),
    "sr_quantize (first)": (QuantizeSpec("sr", "dense", "first", True, True, "bf16"), 64, 2),
    "requantize_sr": (QuantizeSpec("sr", "mxfp4", "first", True, True, "u8"), 64, 2),
    "fold_fp8 (tiles)": (FoldSpec(), 4, 32),
}
BLACKWELL_CASES = {
    f"quest_quantize (last), sm_{arch}a{', hardware E2M1' if hardware else ''}": (
        QuantizeSpec("quest", "dense", "last", True, False, "bf16", hardware_e2m1=hardware),
        8,
        16,
        arch,
    )
    for arch in (100, 120)
    for hardware in (False, True)
}
WARPS = 4


def _assemble(ptx: str, directory: str, arch: int = 90) -> tuple[str, str]:
    """``ptxas -v`` report and cubin path; a PTX header newer than ``ptxas`` is lowered to the version it names."""
    ptx_path, cubin = os.path.join(directory, "k.ptx"), os.path.join(directory, "k.cubin")
    for _ in range(2):
        with open(ptx_path, "w") as stream:
            stream.write(ptx)
        run = subprocess.run(
            [os.path.join(BIN, "ptxas"), "--gpu-name", f"sm_{arch}a", "-v", ptx_path, "-o", cubin],
            capture_output=True, text=True,
        )  # fmt: skip
        supported = re.search(r"current version is '(\d+\.\d+)'", run.stderr)
        if run.returncode == 0 or supported is None:
            break
        ptx = re.sub(r"^\.version \d+\.\d+", f".version {supported.group(1)}", ptx, count=1, flags=re.M)
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:])
    return run.stderr, cubin


def _file_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dump", metavar="DIR", help="write each kernel's source, PTX and SASS into DIR")
    args = parser.parse_args()
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    print("| kernel | registers | spill bytes | SASS instructions | per element |\n|---|---|---|---|---|")
    cases = {name: (*case, 90) for name, case in CASES.items()} | BLACKWELL_CASES
    opcodes = {}
    for name, (spec, block_rows, block_groups, arch) in cases.items():
        constexprs = dict(BLOCK_ROWS=block_rows, BLOCK_GROUPS=block_groups)
        aligned = ("rows", "cols", "stride_x", "out_width", "n_groups")
        source = kernels.fold_source(spec) if isinstance(spec, FoldSpec) else kernels.quantize_source(spec)
        compiled = compile_ahead_of_time(source, arch, constexprs, WARPS, aligned=aligned)
        with tempfile.TemporaryDirectory() as directory:
            report, cubin = _assemble(compiled.asm["ptx"], directory, arch)
            sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", cubin], capture_output=True, text=True)
        instructions = re.findall(r"^\s+/\*[0-9a-f]{4}\*/\s+(.*?)\s*;", sass.stdout, flags=re.M)
        count = len(instructions)
        registers = re.search(r"Used (\d+) registers", report).group(1)
        spills = sum(int(b) for b in re.findall(r"(\d+) bytes spill", report))
        per_element = count * WARPS * 32 / (block_rows * block_groups * 32)
        print(f"| {name} | {registers} | {spills} | {count} | {per_element:.1f} |")
        if args.dump:
            stem = os.path.join(args.dump, _file_name(name))
            for suffix, text in ((".py", source.text), (".ptx", compiled.asm["ptx"]), (".sass", sass.stdout)):
                with open(stem + suffix, "w") as stream:
                    stream.write(text)
            # the opcode without its predicate guard or modifiers (``@!P0 IMAD.WIDE.U32`` -> ``IMAD``)
            names = (re.sub(r"^@!?U?P\w+\s+", "", line).split(maxsplit=1)[0].split(".")[0] for line in instructions)
            opcodes[name] = collections.Counter(names).most_common(12)
    for name, common in opcodes.items():
        print(f"\n{name}: " + ", ".join(f"{op} {n}" for op, n in common))


if __name__ == "__main__":
    sys.exit(main())
