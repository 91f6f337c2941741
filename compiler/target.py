"""Compilation targets.

Passes and code generators never look at the machine: they receive a frozen
:class:`Target`.  Only the backend boundary (``Target.detect``) asks which
device is present, so every pass and every emitted kernel can be tested on a
CPU against a stub target such as ``Target.parse("sm_100")``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KNOWN_TARGETS = ("cpu", "sm_80", "sm_89", "sm_90", "sm_100", "sm_103", "sm_120", "sm_121")
"""The targets a user may name; ``sm_90`` and later also as their architecture-specific ``a`` form (``sm_100a``)."""

ARCH_SPECIFIC_FROM = 90
"""The first capability with an ``a`` (architecture-specific) form."""

_NAMED_ARCHITECTURES = {"ampere": "sm_80", "ada": "sm_89", "hopper": "sm_90", "blackwell": "sm_100"}
_SM = re.compile(r"^sm_?(\d+)(a?)$")


def _accepted() -> str:
    arch_specific = [f"{t}a" for t in KNOWN_TARGETS if t != "cpu" and int(t[3:]) >= ARCH_SPECIFIC_FROM]
    return ", ".join(repr(t) for t in KNOWN_TARGETS + tuple(arch_specific))


@dataclass(frozen=True)
class Target:
    """Where compiled code runs: ``cpu`` or a CUDA architecture ``sm_<major><minor>``.

    :meth:`parse` takes the targets a user may name (:data:`KNOWN_TARGETS`); :meth:`detect` returns
    whatever architecture the device reports.
    """

    name: str

    KNOWN = KNOWN_TARGETS

    def __post_init__(self):
        if self.name != "cpu" and not (self.name.startswith("sm_") and self.name[3:].isdigit()):
            raise ValueError(f"unknown target {self.name!r}; expected one of {_accepted()}")

    @classmethod
    def parse(cls, text) -> Target:
        """A target a user named: one of :data:`KNOWN_TARGETS` (or its ``a`` form), with a clear error otherwise."""
        if not isinstance(text, str):
            raise ValueError(f"a target is a string such as 'sm_90' or 'cpu', got {text!r} ({type(text).__name__})")
        name = text.strip().lower()
        if name in KNOWN_TARGETS:
            return cls(name)
        match = _SM.match(name)
        if match:
            number, arch_specific = match.groups()
            base = f"sm_{number}"
            if base in KNOWN_TARGETS:
                if arch_specific and int(number) < ARCH_SPECIFIC_FROM:
                    raise ValueError(f"unknown target {text!r}: {base} has no 'a' form; use {base!r}")
                if name == base + arch_specific:
                    return cls(base)
                raise ValueError(f"unknown target {text!r}; did you mean {base + arch_specific!r}?")
            raise ValueError(f"unknown target {text!r}: not a supported architecture; expected one of {_accepted()}")
        if name in _NAMED_ARCHITECTURES:
            raise ValueError(
                f"unknown target {text!r}: name the architecture, e.g. {_NAMED_ARCHITECTURES[name]!r}; "
                f"expected one of {_accepted()}"
            )
        if name.split(":")[0] in ("cuda", "gpu"):
            raise ValueError(
                f"unknown target {text!r}: a target is an architecture, not a device; leave the target unset to "
                f"compile for the inputs' device, or name one of {_accepted()}"
            )
        raise ValueError(f"unknown target {text!r}; expected one of {_accepted()}")

    @classmethod
    def detect(cls, device=None) -> Target:
        """The target of ``device`` (default: the current CUDA device, else the CPU)."""
        import torch

        if device is not None:
            device = torch.device(device)
        if device is None or device.type == "cuda":
            if not torch.cuda.is_available():
                return cls("cpu")
            major, minor = torch.cuda.get_device_capability(device)
            return cls(f"sm_{major}{minor}")
        return cls("cpu")

    @property
    def is_cuda(self) -> bool:
        return self.name != "cpu"

    @property
    def capability(self) -> int:
        """Compute capability as an integer (90, 100, 120); 0 for the CPU."""
        return int(self.name[3:]) if self.is_cuda else 0

    @property
    def has_fp4_mma(self) -> bool:
        """Native block-scaled FP4 tensor cores (Blackwell: sm_100/sm_103/sm_120)."""
        return self.capability in (100, 103, 110, 120, 121)

    @property
    def has_fp8_mma(self) -> bool:
        """FP8 (E4M3) tensor cores: Ada, Hopper and later."""
        return self.capability >= 89

    @property
    def gemm_lowering(self) -> str:
        """How an MXFP4 GEMM is executed: ``dot_scaled``, ``fp8_fold``, ``dequant_bf16`` or ``reference``."""
        if self.has_fp4_mma:
            return "dot_scaled"
        if self.capability == 90:
            return "fp8_fold"
        if self.is_cuda:
            return "dequant_bf16"
        return "reference"

    def __str__(self) -> str:
        return self.name
