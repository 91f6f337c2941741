"""Kernel cases run in Triton's CPU interpreter, in a child process: what the interpreter test files share.

Triton's own jit helpers (``tl.cdiv``, reductions) run in the interpreter only
when ``TRITON_INTERPRET=1`` is set before Triton is imported, so a test file
runs its cases by executing itself as a script with that variable set
(:func:`run_cases`); the script computes every case and prints the results as JSON
(:func:`report`), and each test checks one case of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile


def run_cases(test_file: str, timeout: int) -> dict:
    """The results ``test_file``, executed as a script in the interpreter, printed on its last line."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    completed = subprocess.run(
        [sys.executable, test_file], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def report(cases) -> None:
    """The script's side: compute ``cases()`` with a kernel cache of its own and print the results as JSON."""
    os.environ.setdefault("FP4_CACHE_DIR", os.path.join(tempfile.mkdtemp(), "fp4-cache"))
    print(json.dumps(cases()))


def interpreted_kernel(name: str, text: str):
    """The ``@triton.jit`` function ``name`` of generated module ``text``, run by the interpreter; loaded through
    the kernel cache (``fp4.runtime.cache``), as the runtime loads its kernels."""
    from fp4.codegen.source import KernelSource
    from fp4.runtime.cache import default_cache

    return default_cache().load(KernelSource(name, text, spec=None), "interpreter", interpret=True)


def assert_bitwise(results: dict, case: str) -> None:
    """Every output of ``case`` equal to the reference's (``record`` wrote the mismatch count of each)."""
    assert case in results, f"case {case} did not run"
    assert results[case]["mismatches"] == [0] * len(results[case]["mismatches"])
