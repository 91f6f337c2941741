"""Philox 4x32-10: a published known answer, an independent re-implementation, and ``tl.randint`` / ``randint4x``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from fp4.runtime import philox

MASK = 0xFFFFFFFF


def philox_by_hand(key: tuple[int, int], counter: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Philox4x32-10 as in Salmon et al. (SC'11), plain Python integers."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        product_a, product_b = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (
            (product_b >> 32) ^ c1 ^ k0,
            product_b & MASK,
            (product_a >> 32) ^ c3 ^ k1,
            product_a & MASK,
        )
        k0, k1 = (k0 + 0x9E3779B9) & MASK, (k1 + 0xBB67AE85) & MASK
    return c0, c1, c2, c3


def test_published_known_answer():
    # Random123's known-answer test for philox4x32-10 with zero key and counter.
    assert philox_by_hand((0, 0), (0, 0, 0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox.randint32(0, torch.tensor([0])).tolist() == [0x6627E8D5]


def test_matches_the_independent_implementation():
    generator = torch.Generator().manual_seed(0)
    seeds = [0, 1, 12345, 2**32 - 1, 2**32, 2**62 + 17, 2**63 - 1, 2**64 - 1]
    offsets = torch.cat([torch.arange(8), torch.randint(0, 2**40, (24,), generator=generator), torch.tensor([2**32])])
    for seed in seeds:
        key = (seed & MASK, (seed >> 32) & MASK)
        expected = [philox_by_hand(key, (int(o) & MASK, (int(o) >> 32) & MASK, 0, 0))[0] for o in offsets]
        assert philox.randint32(seed, offsets).tolist() == expected, seed


def test_all_four_words_match_the_independent_implementation():
    generator = torch.Generator().manual_seed(1)
    offsets = torch.cat([torch.arange(4), torch.randint(0, 2**40, (12,), generator=generator)])
    for seed in (0, 99, 2**63 + 5):
        key = (seed & MASK, (seed >> 32) & MASK)
        expected = [list(philox_by_hand(key, (int(o) & MASK, (int(o) >> 32) & MASK, 0, 0))) for o in offsets]
        assert philox.randint4x(seed, offsets).tolist() == expected, seed


def test_element_words_use_every_word_of_a_call_in_order():
    words = philox.element_words(31, 64)
    calls = philox.randint4x(31, torch.arange(16))
    assert torch.equal(words.view(16, 4), calls)
    # element n takes word n % 4 of counter n // 4
    n = torch.tensor([0, 1, 2, 3, 4, 37, 63])
    assert torch.equal(words[n], calls[n // 4, n % 4])
    assert torch.equal(philox.element_uniform24(31, 64), philox.to_uniform24(words))
    with pytest.raises(ValueError, match="multiple of 4"):
        philox.element_words(31, 6)


def test_uniform24_is_exact_and_in_range():
    words = philox.element_words(7, 4096)
    uniform = philox.element_uniform24(7, 4096)
    assert uniform.dtype == torch.float32
    assert torch.equal(uniform.double() * 2**24, (words >> 8).double())
    assert 0.0 <= uniform.min() and uniform.max() < 1.0
    assert abs(uniform.mean().item() - 0.5) < 5 * (1 / 12) ** 0.5 / 64


def test_stream_seeds_are_distinct_and_in_range():
    seeds = {philox.stream_seed(seed, stream) for seed in (0, 1, 2**62) for stream in range(6)}
    assert len(seeds) == 18
    assert all(0 <= s < philox.SEED_MODULUS for s in seeds)


def test_seed_out_of_range():
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        philox.randint32(-1, torch.arange(2))


TRITON_SCRIPT = textwrap.dedent(
    """
    import torch, triton, triton.language as tl
    from fp4.runtime import philox

    @triton.jit
    def draw(out_ptr, seed, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offsets, tl.randint(seed, offsets), mask=offsets < n)

    for seed in (0, 1, 123456789, 2**33 + 5, 2**62 + 3):
        out = torch.empty(256, dtype=torch.int32)
        draw[(2,)](out, seed, 256, BLOCK=128)
        ours = philox.randint32(seed, torch.arange(256))
        assert torch.equal(out.to(torch.int64) & 0xFFFFFFFF, ours), seed
    @triton.jit
    def draw4(out_ptr, seed, BLOCK: tl.constexpr):
        offsets = tl.arange(0, BLOCK)
        w0, w1, w2, w3 = tl.randint4x(seed, offsets)
        tl.store(out_ptr + offsets * 4, w0)
        tl.store(out_ptr + offsets * 4 + 1, w1)
        tl.store(out_ptr + offsets * 4 + 2, w2)
        tl.store(out_ptr + offsets * 4 + 3, w3)

    for seed in (0, 7, 2**40 + 9):
        out = torch.empty(4 * 64, dtype=torch.int32)
        draw4[(1,)](out, seed, BLOCK=64)
        ours = philox.randint4x(seed, torch.arange(64)).flatten()
        assert torch.equal(out.to(torch.int64) & 0xFFFFFFFF, ours), seed
    print("MATCH")
    """
)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_matches_triton_randint_in_the_interpreter():
    # TRITON_INTERPRET is read when kernels are defined, so the check runs in its own process.
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MATCH" in result.stdout


def test_sign_mask_holds_the_rotation_signs():
    from fp4.runtime import reference

    for seed, stream in ((0, 0), (5, 3), (2**62 + 1, 1)):
        mask = philox.sign_mask(philox.stream_seed(seed, stream))
        signs = reference.rotation_signs(seed, stream)
        assert [(mask >> i) & 1 for i in range(32)] == (signs < 0).int().tolist()
        # the top bit of each element word, in element order
        words = philox.element_words(philox.stream_seed(seed, stream), 32)
        assert mask == sum(int(word >> 31) << i for i, word in enumerate(words))
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        philox.sign_mask(-3)
