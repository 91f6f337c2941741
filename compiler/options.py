"""Backend options and the layer-selection policy shared by the backend and the eager oracle."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

# Linear layers whose qualified name matches one of these stay in the model dtype by default.
DEFAULT_EXCLUDE = ("lm_head", "*.lm_head", "output", "*.output", "head", "*.head", "embed_out", "*.embed_out")


def name_matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def default_layer_filter(name: str, module=None) -> bool:
    """Every linear layer except the output head (embeddings are not linear layers)."""
    return not name_matches(name, DEFAULT_EXCLUDE)


@dataclass(frozen=True)
class Options:
    """What the fp4 backend does (see ``fp4.backend``)."""

    format: str = "mxfp4"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    backward_rounding: str = "sr"  # "sr" (stochastic) or "rtn"
    rotate: bool = True
    inductor: bool = True
    dump_dir: str | None = None
    target: str | None = None  # None: detect at the backend boundary
    extra: dict = field(default_factory=dict, compare=False)

    def selects(self, name: str) -> bool:
        return name_matches(name, self.include) and not name_matches(name, self.exclude)
