"""Philox 4x32-10 counter-based random numbers, bit-exact with Triton's ``tl.randint``.

Stochastic rounding and the random rotation signs draw their bits from here
on the CPU and from the same Philox rounds written out in the GPU kernels
(bit-exact with ``tl.randint`` / ``tl.randint4x``); both give the same words
for the same ``(seed, counter)``, so a quantization is reproducible bit for
bit on any device.

One Philox call yields four 32-bit words.  Stochastic rounding uses all of
them: element ``n`` of a quantized tensor (its row-major index) takes word
``n % 4`` of counter ``n // 4`` (:func:`element_uniform24`), so each call
serves four consecutive elements.

Arithmetic is carried out on int64 tensors holding unsigned 32-bit values
(PyTorch has no shifts on uint32).
"""

from __future__ import annotations

import functools

import torch
from fp4.core import PHILOX_KEY_A as KEY_A
from fp4.core import PHILOX_KEY_B as KEY_B
from fp4.core import PHILOX_ROUND_A as ROUND_A
from fp4.core import PHILOX_ROUND_B as ROUND_B
from fp4.core import PHILOX_ROUNDS as ROUNDS
from fp4.core import SEED_MODULUS, STREAM_MULTIPLIER

_MASK32 = 0xFFFFFFFF


def stream_seed(seed: int, stream: int) -> int:
    """Independent seed for sub-stream ``stream`` of a layer's ``seed`` (host-side integer math)."""
    mixed = (seed + (stream + 1) * STREAM_MULTIPLIER) % (1 << 64)
    mixed ^= mixed >> 29
    return mixed % SEED_MODULUS


def salt_seeds(seeds: torch.Tensor, salt: int) -> torch.Tensor:
    """``stream_seed(seed, salt)`` of every int64 seed, as tensor arithmetic on the seeds' device.

    int64 arithmetic wraps like the unsigned 64-bit sum of :func:`stream_seed`; the
    logical shift is an arithmetic shift with the sign-extended bits masked off.
    """
    addend = ((salt + 1) * STREAM_MULTIPLIER) % (1 << 64)
    mixed = seeds + (addend - (1 << 64) if addend >= 1 << 63 else addend)
    mixed = mixed ^ ((mixed >> 29) & ((1 << 35) - 1))
    return mixed & (SEED_MODULUS - 1)


def salted_seed(seed, salt: int):
    """A drawn seed with ``salt`` mixed in (``stream_seed(seed, salt)``); ``salt=0`` leaves it unchanged.

    The fp4 backend and the eager oracle salt every drawn layer seed with
    ``rank + 1`` under a process group (option ``rank_seeds``), so ranks that
    seeded torch alike still draw different rounding noise.  ``seed`` is a
    Python integer or an int64 tensor of seeds (:func:`salt_seeds`).
    """
    if not salt:
        return seed
    if isinstance(seed, torch.Tensor):
        return salt_seeds(seed, salt)
    return stream_seed(seed, salt)


def _mulhi_lo(a: int, b):
    """High and low 32-bit words of ``a * b`` (a: uint32 constant, b: uint32 values as int64 tensor or int).

    The product of two 32-bit values needs 64 bits; int64 tensor multiplication
    keeps exactly those 64 bits (two's-complement wrap-around), so an arithmetic
    shift and a mask recover the unsigned high word; Python integers are exact.
    The Philox known-answer tests pin this down.
    """
    product = a * b
    return (product >> 32) & _MASK32, product & _MASK32


def _key(seed: int) -> tuple[int, int]:
    if not 0 <= seed < (1 << 64):
        raise ValueError(f"Philox seed must be an unsigned 64-bit integer, got {seed}")
    return seed & _MASK32, (seed >> 32) & _MASK32


def _rounds(c0, c1, c2, c3, key: tuple[int, int]):
    """The ten Philox rounds on counter words given as int64 tensors or Python integers."""
    k0, k1 = key
    for _ in range(ROUNDS):
        hi_b, lo_b = _mulhi_lo(ROUND_B, c2)
        hi_a, lo_a = _mulhi_lo(ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + KEY_A) & _MASK32
        k1 = (k1 + KEY_B) & _MASK32
    return c0, c1, c2, c3


def randint4x(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """All four Philox output words for each offset: int64 values in [0, 2**32), shape ``offsets.shape + (4,)``.

    Matches ``tl.randint4x(seed, offsets)`` for 32-bit offsets: key = (seed
    low word, seed high word), counter = (offset low word, offset high word, 0, 0).
    """
    key = _key(seed)
    offsets = offsets.to(torch.int64)
    c0 = offsets & _MASK32
    zero = torch.zeros_like(c0)
    return torch.stack(_rounds(c0, (offsets >> 32) & _MASK32, zero, zero, key), dim=-1)


def randint32(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """First Philox output word for each offset (``tl.randint(seed, offsets)``), int64 values in [0, 2**32)."""
    return randint4x(seed, offsets)[..., 0]


def to_uniform24(words: torch.Tensor) -> torch.Tensor:
    """Uniform float32 in [0, 1) with 24 random bits: ``(word >> 8) * 2**-24`` (exact)."""
    return (words >> 8).to(torch.float32) * (2.0**-24)


def element_words(seed: int, count: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The word of elements ``0 .. count - 1``: element ``n`` takes word ``n % 4`` of counter ``n // 4``."""
    if count % 4:
        raise ValueError(f"element_words draws whole Philox calls; count must be a multiple of 4, got {count}")
    return randint4x(seed, torch.arange(count // 4, device=device)).flatten()


def element_uniform24(seed: int, count: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``to_uniform24`` of :func:`element_words`: the stochastic-rounding uniforms of ``count`` elements."""
    return to_uniform24(element_words(seed, count, device))


@functools.lru_cache(maxsize=1024)
def sign_mask(seed: int) -> int:
    """The 32 top bits of :func:`element_words` ``(seed, 32)`` as one word: bit ``i`` set means sign ``i`` is -1.

    Host-side integer arithmetic, so a kernel receives the random diagonal
    ``D`` of ``H_b = D @ H`` as one 32-bit argument instead of drawing it.
    """
    key = _key(seed)
    mask = 0
    for counter in range(8):
        for word_index, word in enumerate(_rounds(counter, 0, 0, 0, key)):
            mask |= (word >> 31) << (4 * counter + word_index)
    return mask
