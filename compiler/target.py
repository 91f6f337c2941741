"""Compilation targets.

Passes and code generators never look at the machine: they receive a frozen
:class:`Target`.  Only the backend boundary (``Target.detect``) asks which
device is present, so every pass and every emitted kernel can be tested on a
CPU against a stub target such as ``Target.parse("sm_100")``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """Where compiled code runs: ``cpu`` or a CUDA architecture ``sm_<major><minor>``."""

    name: str

    KNOWN = ("cpu", "sm_80", "sm_89", "sm_90", "sm_100", "sm_103", "sm_120")

    def __post_init__(self):
        if self.name != "cpu" and not (self.name.startswith("sm_") and self.name[3:].isdigit()):
            raise ValueError(f"unknown target {self.name!r}; expected 'cpu' or 'sm_<NN>' such as {self.KNOWN}")

    @classmethod
    def parse(cls, text: str) -> Target:
        text = text.strip().lower()
        if text in ("cuda:100", "blackwell"):
            text = "sm_100"
        return cls(text.removesuffix("a"))

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
