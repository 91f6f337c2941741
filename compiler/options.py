"""Backend options and the layer-selection policy shared by the backend and the eager oracle.

Options reach the backend as ``torch.compile(model, backend="fp4", options={...})``
(torch hands a named backend the ``options`` mapping) or through a configured
backend object ``fp4.backend.configure(**options)``; both go through
:meth:`Options.from_mapping`, which rejects unknown keys and bad values.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from .core import (  # noqa: F401  (the selection and seed policies, re-exported with the options)
    AUTO,
    DEFAULT_EXCLUDE,
    DEFAULT_RECIPE,
    MODEL_DTYPES,
    RECIPE_FORMATS,
    RECIPES,
    default_layer_filter,
    is_bool_or_auto,
    keep_last_reason,
    layer_name,
    name_matches,
    seed_salt,
    skip_reason,
)

FORMATS = ("mxfp4", "nvfp4")
"""The storage formats; each recipe has one (``RECIPE_FORMATS``)."""
BACKWARD_ROUNDINGS = ("sr", "rtn")
LAUNCHES = ("plan", "inductor")
"""How a compiled graph launches the fp4 kernels (option ``launch``)."""

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


def _patterns(value, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"fp4 option {key!r} takes a pattern string or a list of patterns, got {value!r}")


@dataclass(frozen=True)
class Options:
    """What the fp4 backend does.

    ``recipe``             ``"quartet"`` (MXFP4, the default), ``"quartet2"`` (Quartet II) or ``"nvfp4"`` (NVIDIA's
                           recipe): how each GEMM operand is rotated, scaled, rounded and saved (docs/recipes.md)
    ``format``             the FP4 format, implied by the recipe (``"mxfp4"`` for quartet, ``"nvfp4"`` for the others);
                           given, it must agree with the recipe
    ``keep_last_layers``   the last N linear layers the recipe would rewrite (in forward order) stay in the model
                           dtype, as NVIDIA's recipe keeps its final layers in BF16
    ``include``/``exclude`` fnmatch patterns on module names (``model.layers.0.mlp.up_proj``)
                           choosing the linear layers to rewrite; default every linear layer but the head
    ``backward_rounding``  ``"sr"`` (stochastic rounding, the algorithm) or ``"rtn"`` (round to nearest, a variant)
    ``rotate``             Hadamard rotations on (the algorithm) or off (a variant)
    ``inductor``           compile the surrounding graph with Inductor (``False``: run the FX graphs as they are)
    ``dump_dir``           write every stage, the partitioned graphs, the report and an SVG here
    ``passes``             the pass pipeline (default :data:`DEFAULT_PIPELINE`)
    ``verify``             check every pass's output graph (shapes/dtypes re-derived), slower
    ``measure_saved``      partition the unrewritten graph too, to report the saved-activation bytes before/after
                           (a second partition of the joint graph in every compile: off by default, on in
                           ``fp4 inspect`` / :func:`fp4.inspect.inspect_model`)
    ``target``             ``"cpu"``/``"sm_90"``/...; default: the device of the inputs
    ``cudagraphs``         run the compiled forward and backward as CUDA graphs (Inductor's CUDA-graph trees);
                           needs ``inductor=True``.  ``mode="reduce-overhead"`` sets it too.
    ``compile_ahead``      on a GPU, compile every kernel of a graph right after the passes, all at once on a
                           thread pool and beside Inductor's own compile (:mod:`fp4.runtime.warmup`), instead
                           of one kernel after another inside the first step (the results are the same)
    ``fold_backward``      on Hopper, the backward quantizers write the FP8 fold too, so the backward runs no
                           fold kernel (``use-fp8-fold{backward=true}``); off by default until measured on a GPU
    ``requantize_weights_in_backward``
                           ``True``: save no FP4 weight copies for the backward, re-quantize the weight there
                           (bit-exact: the QuEST weight quantizer is deterministic); ``"auto"``: when the
                           graph's weights are FSDP-managed (re-gathered for the backward anyway)
    ``rank_seeds``         fold the process rank into every drawn layer seed (salt ``rank + 1``), so data-parallel
                           ranks seeded alike draw independent rounding noise; ``"auto"``: under an initialized
                           ``torch.distributed`` process group.  The eager oracle does the same.
    ``launch``             ``"plan"``: Inductor's code calls each fp4 op, whose CUDA implementation launches the
                           kernel through its launch plan (:mod:`fp4.runtime.plans`); ``"inductor"``: the ops are
                           decomposed into their Triton kernel launches (``torch.library.triton_op``), which
                           Inductor writes into its wrapper code (:mod:`fp4.runtime.inductor_launch`, which lists
                           what stays on plans and why); needs ``inductor=True``
    """

    recipe: str = DEFAULT_RECIPE
    format: str | None = None
    keep_last_layers: int = 0
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    backward_rounding: str = "sr"
    rotate: bool = True
    inductor: bool = True
    dump_dir: str | None = None
    passes: tuple[str, ...] = DEFAULT_PIPELINE
    verify: bool = False
    measure_saved: bool = False
    target: str | None = None
    cudagraphs: bool = False
    compile_ahead: bool = True
    fold_backward: bool = False
    requantize_weights_in_backward: bool | str = AUTO
    rank_seeds: bool | str = AUTO
    launch: str = "plan"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        # Normalise what may be given in several forms, then check every value: a bad option is an error
        # that names it and what it takes, never a raw TypeError later or a silently different meaning.
        set_ = lambda key, value: object.__setattr__(self, key, value)
        if not isinstance(self.recipe, str) or self.recipe.lower() not in RECIPES:
            raise ValueError(f"fp4 option 'recipe' takes one of {RECIPES}, got {self.recipe!r}")
        set_("recipe", self.recipe.lower())
        recipe_format = RECIPE_FORMATS[self.recipe]
        if self.format is None:
            set_("format", recipe_format)
        if not isinstance(self.format, str):
            raise ValueError(f"fp4 option 'format' takes one of {FORMATS}, got {self.format!r}")
        if self.format.lower() not in FORMATS:
            raise NotImplementedError(f"fp4: format {self.format!r} is not implemented; available: {FORMATS}")
        set_("format", self.format.lower())
        if self.format != recipe_format:
            recipes = [name for name, fmt in RECIPE_FORMATS.items() if fmt == self.format]
            raise ValueError(
                f"fp4: format {self.format!r} does not go with recipe {self.recipe!r} ({recipe_format}); "
                f"the recipes in {self.format} are {recipes}: set option 'recipe'"
            )
        if not isinstance(self.keep_last_layers, int) or isinstance(self.keep_last_layers, bool):
            raise ValueError(f"fp4 option 'keep_last_layers' takes a count >= 0, got {self.keep_last_layers!r}")
        if self.keep_last_layers < 0:
            raise ValueError(f"fp4 option 'keep_last_layers' takes a count >= 0, got {self.keep_last_layers}")
        set_("include", _patterns(self.include, "include"))
        set_("exclude", _patterns(self.exclude, "exclude"))
        for key in ("requantize_weights_in_backward", "rank_seeds"):
            if not is_bool_or_auto(getattr(self, key)):
                raise ValueError(f"fp4 option {key!r} must be True, False or {AUTO!r}, got {getattr(self, key)!r}")
        if self.backward_rounding not in BACKWARD_ROUNDINGS:
            raise ValueError(
                f"fp4: backward_rounding must be one of {BACKWARD_ROUNDINGS}, got {self.backward_rounding!r}"
            )
        for key in ("rotate", "inductor", "verify", "measure_saved", "cudagraphs", "compile_ahead", "fold_backward"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"fp4 option {key!r} must be True or False, got {getattr(self, key)!r}")
        if self.recipe != DEFAULT_RECIPE:
            for key, default in (("rotate", True), ("backward_rounding", "sr"), ("fold_backward", False)):
                if getattr(self, key) != default:
                    raise ValueError(
                        f"fp4 option {key!r}={getattr(self, key)!r} is a variant of the quartet recipe; "
                        f"recipe {self.recipe!r} defines its own rotations and rounding (docs/recipes.md)"
                    )
        if self.cudagraphs and not self.inductor:
            raise ValueError("fp4: cudagraphs=True needs inductor=True (Inductor's CUDA-graph trees run the graphs)")
        if self.launch not in LAUNCHES:
            raise ValueError(f"fp4 option 'launch' takes one of {LAUNCHES}, got {self.launch!r}")
        if self.launch == "inductor" and not self.inductor:
            raise ValueError("fp4: launch='inductor' needs inductor=True (Inductor's code launches the kernels)")
        if self.dump_dir is not None:
            if not isinstance(self.dump_dir, (str, os.PathLike)) or not os.fspath(self.dump_dir):
                raise ValueError(
                    f"fp4 option 'dump_dir' takes a directory path (str or os.PathLike), got {self.dump_dir!r}"
                )
            set_("dump_dir", str(os.fspath(self.dump_dir)))
        set_("passes", _pipeline(self.passes))
        if self.target is not None:
            from .target import Target

            try:
                set_("target", Target.parse(self.target).name)
            except ValueError as error:
                raise ValueError(f"fp4 option 'target': {error}") from None

    def selects(self, name: str) -> bool:
        return name_matches(name, self.include) and not name_matches(name, self.exclude)

    @property
    def is_default_algorithm(self) -> bool:
        """Whether the options compute exactly the recipe of the eager oracle (no quartet variant)."""
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
        return cls(**values)

    def pipeline_text(self) -> str:
        """The passes to run; Inductor also gets the activations left unfused decomposed for it."""
        passes = list(self.passes)
        if self.inductor and not any(p.startswith(INDUCTOR_ONLY_PASS) for p in passes):
            passes.append(INDUCTOR_ONLY_PASS)
        return ",".join(passes)


def _pipeline(value) -> tuple[str, ...]:
    """The ``passes`` option as a tuple of pass specs, each checked against the pass registry."""
    if isinstance(value, str):
        value = tuple(p.strip() for p in _split_pipeline(value))
    elif isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        value = tuple(p.strip() for p in value)
    else:
        raise ValueError(
            f"fp4 option 'passes' takes a pipeline string such as 'quartet-linear,dce' or a list of pass specs, "
            f"got {value!r}"
        )
    from .passes.registry import parse_pipeline

    try:
        parse_pipeline(",".join(value))
    except (KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) else str(error)
        raise ValueError(f"fp4 option 'passes': {message}") from None
    return value


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
