"""Shared pytest setup: GPU tests skip themselves cleanly on machines without CUDA; no AOTAutograd cache hits."""

from __future__ import annotations

import os

import pytest
import torch
import torch._functorch.config

# Tests patch fp4's passes and runtime in this process; a hit in AOTAutograd's cache (keyed on the fp4 sources,
# not on a patch) would skip them.  tests/test_compile_cache.py runs the cache in processes of its own.
torch._functorch.config.enable_autograd_cache = False
# Compiles ahead run on threads unless a test asks for worker processes (tests/test_compile_pool.py and the GPU test
# of the workers set FP4_COMPILE_PROCESSES themselves): the suite does not start a pool per test process.
os.environ.setdefault("FP4_COMPILE_PROCESSES", "0")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
