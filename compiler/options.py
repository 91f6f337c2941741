"""Backend options and the layer-selection policy shared by the backend and the eager oracle.

Options reach the backend as ``torch.compile(model, backend="fp4", options={...})``
(torch hands a named backend the ``options`` mapping) or through a configured
backend object ``fp4.backend.configure(**options)``; both go through
:meth:`Options.from_mapping`, which rejects unknown keys and bad values.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field

import torch

# Linear layers whose qualified name matches one of these stay in the model dtype by default.
DEFAULT_EXCLUDE = ("lm_head", "*.lm_head", "output", "*.output", "head", "*.head", "embed_out", "*.embed_out")

FORMATS = ("mxfp4",)
BACKWARD_ROUNDINGS = ("sr", "rtn")

DEFAULT_PIPELINE = (
    "quartet-linear",
    "fuse-bias",
    "fuse-clip-mask",
    "fuse-inverse-rotation",
    "fuse-output-cast",
    "fuse-activation",
    "fuse-gate",
    "fuse-residual",
    "fuse-bias-grad",
    "dce",
)
"""The passes the backend runs on every captured graph, in order."""

INDUCTOR_ONLY_PASS = "decompose-activations"


def name_matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def layer_name(module: str | None, weight: str | None) -> str:
    """The name a linear layer goes by (reports, ``include``/``exclude`` patterns), for the backend and the oracle.

    ``module`` is the innermost module the matmul runs in, ``weight`` the
    weight parameter's ``named_parameters`` name.  A weight of that module
    (or of a submodule) names the layer after it, without a trailing
    ``.weight``: ``model.layers.0.mlp.up_proj``, and ``attn.in_proj_weight`` and
    ``attn.out_proj`` for ``nn.MultiheadAttention`` (it calls ``F.linear`` on
    its parameters itself); ``w`` for ``F.linear(x, self.w[:64])`` at the top.
    A weight from elsewhere (tied to an embedding) leaves the module's name.
    """
    if weight is None or (module and not weight.startswith(f"{module}.")):
        return module or weight or "?"
    return weight.removesuffix(".weight") or weight


MODEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
"""Input dtypes a rewritten layer may have (the model dtypes the fp4 ops take)."""


def skip_reason(options: Options, name: str, in_features: int, input_dtype=None, head: str | None = None):
    """Why a linear layer stays in the model dtype, or None when it is rewritten.

    The one selection rule of the backend (``quartet-linear``, on the graph)
    and the eager oracle (:func:`fp4.quartetize`, on modules): the name
    patterns, the output head (``head`` says how the caller identified it),
    a contraction size K that is a multiple of the MXFP4 group, and a floating
    model dtype for the input (``None``: not known yet, e.g. before the call).
    """
    from fp4.runtime.formats import GROUP_SIZE

    if not name_matches(name, options.include):
        return f"not matched by include patterns {list(options.include)}"
    matched = next((p for p in options.exclude if name_matches(name, (p,))), None)
    if matched is not None:
        return f"excluded by pattern {matched!r} (stays in the model dtype)"
    if head:
        return f"output head: {head} (stays in the model dtype)"
    if in_features % GROUP_SIZE:
        return f"contraction dim K={in_features} is not a multiple of {GROUP_SIZE}"
    if input_dtype is not None and input_dtype not in MODEL_DTYPES:
        return f"input dtype {input_dtype} is not a floating model dtype"
    return None


def _patterns(value, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"fp4 option {key!r} takes a pattern string or a list of patterns, got {value!r}")


@dataclass(frozen=True)
class Options:
    """What the fp4 backend does.

    ``format``             the FP4 format; only ``"mxfp4"`` (Quartet) is implemented
    ``include``/``exclude`` fnmatch patterns on module names (``model.layers.0.mlp.up_proj``)
                           choosing the linear layers to rewrite; default every linear layer but the head
    ``backward_rounding``  ``"sr"`` (stochastic rounding, the algorithm) or ``"rtn"`` (round to nearest, a variant)
    ``rotate``             Hadamard rotations on (the algorithm) or off (a variant)
    ``inductor``           compile the surrounding graph with Inductor (``False``: run the FX graphs as they are)
    ``dump_dir``           write every stage, the partitioned graphs, the report and an SVG here
    ``passes``             the pass pipeline (default :data:`DEFAULT_PIPELINE`)
    ``verify``             check every pass's output graph (shapes/dtypes re-derived), slower
    ``measure_saved``      partition the unrewritten graph too, to report the saved-activation bytes before/after
    ``target``             ``"cpu"``/``"sm_90"``/...; default: the device of the inputs
    """

    format: str = "mxfp4"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    backward_rounding: str = "sr"
    rotate: bool = True
    inductor: bool = True
    dump_dir: str | None = None
    passes: tuple[str, ...] = DEFAULT_PIPELINE
    verify: bool = False
    measure_saved: bool = True
    target: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.format not in FORMATS:
            raise NotImplementedError(f"fp4: format {self.format!r} is not implemented; available: {FORMATS}")
        if self.backward_rounding not in BACKWARD_ROUNDINGS:
            raise ValueError(
                f"fp4: backward_rounding must be one of {BACKWARD_ROUNDINGS}, got {self.backward_rounding!r}"
            )

    def selects(self, name: str) -> bool:
        return name_matches(name, self.include) and not name_matches(name, self.exclude)

    @property
    def is_default_algorithm(self) -> bool:
        """Whether the options compute exactly the Quartet algorithm of the eager oracle."""
        return self.rotate and self.backward_rounding == "sr"

    @classmethod
    def from_mapping(cls, mapping=None, **overrides) -> Options:
        """Options from a ``torch.compile(..., options=...)`` mapping; unknown keys are an error."""
        if isinstance(mapping, Options):
            values = dataclasses.asdict(mapping)
        else:
            values = dict(mapping or {})
        values.update(overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"fp4: unknown option(s) {unknown}; known options: {sorted(known - {'extra'})}")
        for key in ("include", "exclude"):
            if key in values:
                values[key] = _patterns(values[key], key)
        if "passes" in values and isinstance(values["passes"], str):
            values["passes"] = tuple(p.strip() for p in _split_pipeline(values["passes"]))
        for key in ("rotate", "inductor", "verify", "measure_saved"):
            if key in values and not isinstance(values[key], bool):
                raise ValueError(f"fp4 option {key!r} must be True or False, got {values[key]!r}")
        return cls(**values)

    def pipeline_text(self) -> str:
        """The passes to run; Inductor also gets the activations left unfused decomposed for it."""
        passes = list(self.passes)
        if self.inductor and not any(p.startswith(INDUCTOR_ONLY_PASS) for p in passes):
            passes.append(INDUCTOR_ONLY_PASS)
        return ",".join(passes)


def _split_pipeline(text: str) -> list[str]:
    """Split ``a,b{x=1,y=2},c`` at the top-level commas."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        current += char
    return [p for p in parts + [current] if p.strip()]
