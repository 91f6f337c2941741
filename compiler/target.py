"""Compilation targets: :class:`Target` lives in the leaf module :mod:`fp4.core`; this name stays for imports."""

from .core import ARCH_SPECIFIC_FROM, KNOWN_TARGETS, Target

__all__ = ["ARCH_SPECIFIC_FROM", "KNOWN_TARGETS", "Target"]
