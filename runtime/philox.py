"""Philox 4x32-10 counter-based random numbers, bit-exact with Triton's ``tl.randint``.

Stochastic rounding and the random rotation signs draw their bits from here
on the CPU and from ``tl.randint(seed, offset)`` in the GPU kernels; both give
the same 32-bit word for the same ``(seed, offset)``, so a quantization is
reproducible bit for bit on any device.

Arithmetic is carried out on int64 tensors holding unsigned 32-bit values
(PyTorch has no shifts on uint32).
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
ROUNDS = 10

SEED_MODULUS = 1 << 63
"""Seeds are non-negative integers below 2**63 (they travel as int64)."""

_STREAM_MULTIPLIER = 0x9E3779B97F4A7C15


def stream_seed(seed: int, stream: int) -> int:
    """Independent seed for sub-stream ``stream`` of a layer's ``seed`` (host-side integer math)."""
    mixed = (seed + (stream + 1) * _STREAM_MULTIPLIER) % (1 << 64)
    mixed ^= mixed >> 29
    return mixed % SEED_MODULUS


def _mulhi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` (a: uint32 constant, b: uint32 values in int64).

    The product of two 32-bit values needs 64 bits; int64 multiplication keeps
    exactly those 64 bits (two's-complement wrap-around), so an arithmetic
    shift and a mask recover the unsigned high word.  The Philox known-answer
    tests pin this down.
    """
    product = a * b
    return (product >> 32) & _MASK32, product & _MASK32


def randint32(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """First Philox output word for each offset, as int64 values in [0, 2**32).

    Matches ``tl.randint(seed, offsets)``: key = (seed low word, seed high
    word), counter = (offset low word, offset high word, 0, 0).
    """
    if not 0 <= seed < (1 << 64):
        raise ValueError(f"Philox seed must be an unsigned 64-bit integer, got {seed}")
    offsets = offsets.to(torch.int64)
    c0 = offsets & _MASK32
    c1 = (offsets >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    for _ in range(ROUNDS):
        hi_b, lo_b = _mulhi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mulhi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0


def uniform24(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """Uniform float32 in [0, 1) with 24 random bits: ``(randint32 >> 8) * 2**-24`` (exact)."""
    return (randint32(seed, offsets) >> 8).to(torch.float32) * (2.0**-24)
