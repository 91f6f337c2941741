"""fp4.core: the leaf every layer imports: the target and every constant of the algorithm.

It imports nothing of the project, and everything else may import it, so
``codegen``, ``runtime``, ``passes`` and the compiler agree on one value of
each constant without importing each other (``tests/test_layers.py`` checks
the layering: core <- codegen <- runtime <- passes <- compiler).

* :class:`Target`: where compiled code runs.  Passes and code generators
  never look at the machine: they receive a frozen ``Target``; only the
  backend boundary (``Target.detect``) asks which device is present.
* The formats (``docs/QUARTET.md``): MXFP4 group size, the E2M1 grid, E8M0.
* The algorithm: the QuEST scale, the backward alpha, the rotation, the
  Philox streams of a layer's seed, the Philox constants, the FP8 fold.
* The layer-selection policy shared by the backend and the eager oracle.
"""

from __future__ import annotations

import fnmatch
import math
import re
import struct
from dataclasses import dataclass

import torch

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
    def has_e2m1_convert(self) -> bool:
        """``cvt.rn.satfinite.e2m1x2.f32``: float32 to E2M1 in one instruction (the same Blackwell parts)."""
        return self.has_fp4_mma

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

    @property
    def nvfp4_gemm_lowering(self) -> str:
        """How an NVFP4 GEMM is executed: ``dot_scaled`` (Blackwell), ``dequant_bf16`` (every other CUDA GPU:
        exact, for numerics not speed; no FP8 re-expression of NVFP4 exists) or ``reference`` (the CPU)."""
        if self.has_fp4_mma:
            return "dot_scaled"
        return "dequant_bf16" if self.is_cuda else "reference"

    def __str__(self) -> str:
        return self.name


# ----------------------------------------------------------------------------------------------------------
# formats

GROUP_SIZE = 32
"""Elements that share one E8M0 scale, along the contraction dimension."""

E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
"""Magnitudes of the E2M1 codes 0..7."""

E2M1_MAX = 6.0
E8M0_BIAS = 127
E8M0_NAN = 255

NVFP4_GROUP_SIZE = 16
"""Elements that share one E4M3 block scale in NVFP4, along the contraction dimension."""

E4M3_MAX = 448.0
"""The largest finite FP8 E4M3 (``e4m3fn``) value; NVFP4 block scales saturate there."""

E4M3_MAX_BYTE = 0x7E
"""The E4M3 byte of 448 (``0x7F`` is NaN): positive E4M3 bytes count up the values, so ``byte + 1`` is the next."""

# ----------------------------------------------------------------------------------------------------------
# the algorithm

QUEST_SCALE_FACTOR = 0.48707976
"""``2.92247856 / 6``: ratio of the QuEST clipping range to the largest E2M1 value."""

QUEST_EPSILON = 1e-8

QUEST_HUGE_GROUP = 2.0**60
"""A group whose largest magnitude reaches this has its statistics computed at :data:`QUEST_HUGE_SCALE` times it.

Its sum of squares could otherwise overflow float32 (``32 * amax**2 >= 2**128``
from ``amax >= 2**61.5``), turning the scale, and so the layer's output, into NaN."""
QUEST_HUGE_SCALE = 2.0**-96

FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32 (a magnitude above it is infinite)."""
BACKWARD_ALPHA = 1.0 / 9.0
"""Each backward operand dequantizes as ``code * 2**e / 3``; the two thirds meet in alpha."""

ACTIVATIONS = ("none", "gelu", "gelu_tanh", "silu", "relu")
"""Activations a GEMM epilogue applies."""

HADAMARD_NORM = struct.unpack("f", struct.pack("f", 1.0 / math.sqrt(GROUP_SIZE)))[0]
"""``1/sqrt(32)`` rounded to float32: the one rounding step of the rotation."""

HADAMARD_STAGE_STRIDES = (16, 8, 4, 2, 1)
"""The butterfly stages of the 32-wide fast Walsh-Hadamard transform, in order."""

# Streams of a layer's seed: one per random draw of its backward step.
STREAM_DGRAD_SIGNS = 0
STREAM_WGRAD_SIGNS = 1
STREAM_DGRAD_GRAD_OUTPUT = 2
STREAM_DGRAD_WEIGHT = 3
STREAM_WGRAD_GRAD_OUTPUT = 4
STREAM_WGRAD_INPUT = 5

PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_ROUNDS = 10
"""Philox 4x32-10's key increments, round multipliers and round count (the reference and the kernels)."""

SEED_MODULUS = 1 << 63
"""Seeds are non-negative integers below 2**63 (they travel as int64)."""

STREAM_MULTIPLIER = 0x9E3779B97F4A7C15
"""``stream_seed`` adds ``(stream + 1)`` times this (mod 2**64) to a layer's seed."""

FOLD_HEADROOM = 6
"""The FP8 fold's row exponent is the largest group exponent minus this: 6 * 2**6 = 384 <= 448, the largest E4M3."""

FOLD_EXACT_BINADES = 14
"""Groups within this many binades of the row's largest fold exactly (E4M3 subnormals end at 2**-9)."""

# ----------------------------------------------------------------------------------------------------------
# recipes (docs/recipes.md): how each operand of each GEMM is rotated, scaled, rounded and saved

RECIPES = ("quartet", "quartet2", "nvfp4")
"""``quartet``: MXFP4, QuEST forward, 32-wide rotations, SR backward (docs/QUARTET.md; the default).
``quartet2``: Quartet II (IST Austria): NVFP4, four-over-six forward, 128-point RHT and MS-EDEN backward.
``nvfp4``: NVIDIA's NVFP4 recipe (TransformerEngine ``NVFP4BlockScaling``): 2-D weight blocks, 16-point RHT on
the weight-gradient inputs, SR for gradients."""

DEFAULT_RECIPE = "quartet"

RECIPE_FORMATS = {"quartet": "mxfp4", "quartet2": "nvfp4", "nvfp4": "nvfp4"}
"""The storage format of each recipe's operands."""

RECIPE_CONTRACTION_MULTIPLE = {"quartet": GROUP_SIZE, "quartet2": NVFP4_GROUP_SIZE, "nvfp4": NVFP4_GROUP_SIZE}
"""A layer's contraction size K must be a multiple of its forward block (T and N are zero-padded in the backward)."""


def hadamard_norm(size: int) -> float:
    """``1/sqrt(size)`` rounded to float32: the one rounding step of a ``size``-point rotation."""
    return struct.unpack("f", struct.pack("f", 1.0 / math.sqrt(size)))[0]


def float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (as a Python float)."""
    return struct.unpack("f", struct.pack("f", value))[0]


# nvfp4 (TransformerEngine NVFP4BlockScaling; paper arXiv 2509.25149)
NVFP4_HADAMARD_SIZE = 16
"""The random Hadamard transform of the weight-gradient inputs is 16 wide (TE ``get_hadamard_matrix``: 16 only)."""

NVFP4_HADAMARD_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)
"""The fixed random signs ``D`` of the 16-point transform ``x -> (x * D) @ H`` (TE ``pytorch/tensor/nvfp4_tensor.py``,
``get_wgrad_sign_vector``, also ``custom_recipes/reference_nvfp4.py``): TE draws them once, not every step."""

NVFP4_HADAMARD_NORM = hadamard_norm(NVFP4_HADAMARD_SIZE)
"""``1/4``: exact, so TE's bf16 transform matrix holds it exactly too."""

# quartet2 (IST-DASLab/Quartet-II src/models/quantization/schemes/quartet_2.py; CloverLM quartet2/)
QUARTET2_HADAMARD_SIZE = 128
"""The backward's randomized Hadamard transform is 128 wide (``get_hadamard_matrix(128, ...)`` in quartet2/linear.py;
``HADAMARD_DIM=128`` in scripts/quartetv2_sweep.sh); MS-EDEN's correction is taken per 128 rotated elements."""

QUARTET2_HADAMARD_NORM = hadamard_norm(QUARTET2_HADAMARD_SIZE)

QUARTET2_FOUR_OVER_SIX_SCALE_MAX = 256.0
"""Forward tensor scale ``amax / 256 / 6`` with four-over-six (``scales_max = 256.00 if four_over_six`` in
nvfp4_triton.py ``rtn_1x16s_fp4_kernel``; ``1.f / 256.f`` with two candidates in round_four_six.cu): the 1.5 times
larger scale of the map-to-4 candidate stays below 448."""

QUARTET2_FOUR_OVER_SIX_RATIO = 1.5
"""The map-to-4 candidate's block scale is the map-to-6 one times 6/4 (``get_alt_scales``: ``s_dec_b * (6/4)``)."""

QUARTET2_EDEN_SCALE_MAX = 255.99
"""Backward tensor scale ``amax / 255.99 / val_max`` (``scales_max = 255.99`` in quartet_2.py ``eden_1x16s_fp4_kernel``:
"eden needs space to rescale up a bit sometimes after the correction")."""

QUARTET2_BACKWARD_SCALE_OVERRIDE = (17 / 16) * 0.93
"""``Quartet_II_fn.backward_scale_override`` (quartet_2.py; ``backward_scale_override`` in CloverLM
quartet2/linear.py): ``val_max = 6 / scale_override``."""

QUARTET2_BACKWARD_VALUE_MAX = float32(E2M1_MAX / QUARTET2_BACKWARD_SCALE_OVERRIDE)
"""``val_max = 6.0 / scale_override`` (a constexpr of the Triton kernel, so rounded once to float32): 6.0721..."""

QUARTET2_SIGN_STREAM = STREAM_DGRAD_SIGNS
"""The 128 random signs of a layer's backward step (one draw for both backward GEMMs, as quartet2/linear.py
re-randomizes ``had`` once per backward call)."""

# ----------------------------------------------------------------------------------------------------------
# which linear layers

DEFAULT_EXCLUDE = ("lm_head", "*.lm_head", "output", "*.output", "head", "*.head", "embed_out", "*.embed_out")
"""Linear layers whose qualified name matches one of these stay in the model dtype by default."""


def name_matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def default_layer_filter(name: str, module=None) -> bool:
    """Every linear layer except the output head (embeddings are not linear layers)."""
    return not name_matches(name, DEFAULT_EXCLUDE)


AUTO = "auto"
"""Options that default to ``"auto"`` decide from the graph or the environment (a process group, FSDP)."""


def is_bool_or_auto(value) -> bool:
    return isinstance(value, bool) or value == AUTO


def seed_salt(rank_seeds: bool | str = AUTO) -> int:
    """The salt mixed into drawn layer seeds: ``rank + 1`` when ``rank_seeds`` is on under a process group, else 0."""
    if not is_bool_or_auto(rank_seeds):
        raise ValueError(f"rank_seeds must be True, False or {AUTO!r}, got {rank_seeds!r}")
    if rank_seeds is False:
        return 0
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank() + 1


def keep_last_reason(count: int) -> str:
    """The report's reason for a layer kept in the model dtype by the option ``keep_last_layers``."""
    return f"one of the last {count} linear layers (keep_last_layers={count}): stays in the model dtype"


MODEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
"""Input dtypes a rewritten layer may have (the model dtypes the fp4 ops take)."""


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


def skip_reason(options, name: str, in_features: int, input_dtype=None, head: str | None = None):
    """Why a linear layer stays in the model dtype, or None when it is rewritten.

    The one selection rule of the backend (``quartet-linear``, on the graph)
    and the eager oracle (:func:`fp4.quartetize`, on modules): the name
    patterns, the output head (``head`` says how the caller identified it),
    a contraction size K that is a multiple of the MXFP4 group, and a floating
    model dtype for the input (``None``: not known yet, e.g. before the call).
    """
    if not name_matches(name, options.include):
        return f"not matched by include patterns {list(options.include)}"
    matched = next((p for p in options.exclude if name_matches(name, (p,))), None)
    if matched is not None:
        return f"excluded by pattern {matched!r} (stays in the model dtype)"
    if head:
        return f"output head: {head} (stays in the model dtype)"
    recipe = getattr(options, "recipe", DEFAULT_RECIPE)
    multiple = RECIPE_CONTRACTION_MULTIPLE[recipe]
    if in_features % multiple:
        return f"contraction dim K={in_features} is not a multiple of {multiple}" + (
            "" if recipe == DEFAULT_RECIPE else f" (recipe {recipe!r})"
        )
    if input_dtype is not None and input_dtype not in MODEL_DTYPES:
        return f"input dtype {input_dtype} is not a floating model dtype"
    return None
