"""Recipes as data: how each operand of each GEMM of a linear layer is rotated, scaled, rounded and saved.

A linear layer ``Y = X W^T`` has three GEMMs (forward, input grad
``dX = dY W``, weight grad ``dW = dY^T X``) and a bias gradient.  A recipe
says, for each, which fp4 ops quantize its two operands and which GEMM
multiplies them.  It is written once, as a small program over the fp4 ops,
and run two ways:

* eagerly by the oracle (:mod:`fp4.runtime.oracle`), one op at a time;
* symbolically by the ``quartet-linear`` pass, which hands the program a
  ``call`` that inserts graph nodes instead of running ops.

So the compiled graph and the oracle compose exactly the same ops with the
same arguments, and agree bit for bit.  ``call(op, *args)`` returns the op's
result (a sequence for ops with several outputs).  A program asks each GEMM
for its whole epilogue (bias, clip mask, inverse rotation, output dtype): the
oracle runs the GEMM so, and the pass emits the GEMM in float32 with each
epilogue step as its own node (the ``fuse-*`` passes fold them back, bit for
bit).  Two things a program does not see: the pass's ``call`` treats
``fp4::quest_quantize`` of a weight FSDP gathered as MXFP4 as that weight's
gathered codes, scales and mask (as :class:`fp4.runtime.gathered.MXFP4Weight`
answers it eagerly), and it recomputes a recipe's deterministic weight
quantizer in the backward when the weights are re-quantized there.

Recipes: ``quartet`` (MXFP4, docs/QUARTET.md, with its variants ``rotate`` and
``rounding``), ``quartet2`` and ``nvfp4``.  docs/recipes.md has the contracts,
the sources and every constant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from fp4.core import (
    BACKWARD_ALPHA,
    QUARTET2_SIGN_STREAM,
    RECIPE_CONTRACTION_MULTIPLE,
    RECIPE_FORMATS,
    STREAM_DGRAD_GRAD_OUTPUT,
    STREAM_DGRAD_SIGNS,
    STREAM_DGRAD_WEIGHT,
    STREAM_WGRAD_GRAD_OUTPUT,
    STREAM_WGRAD_INPUT,
    STREAM_WGRAD_SIGNS,
)

from . import ops, recipe_ops, variants  # noqa: F401  (register the ops the programs call)

fp4 = torch.ops.fp4


@dataclass(frozen=True)
class Recipe:
    """One recipe: its name, storage format, the contraction multiple it needs, its weight quantizer (the op that
    quantizes the weight in the forward, deterministic, so the backward may recompute it) and its program.

    The program, in every recipe (``x`` [T, K], ``weight`` [N, K], ``grad`` [T, N]; each GEMM rounds its result
    to ``out_dtype`` after its epilogue)::

        forward(call, x, weight, bias, out_dtype) -> (y [T, N], saved: dict of quantized operands)
        input_grad(call, grad, saved, seed, out_dtype) -> dX [T, K]
        weight_grad(call, grad, saved, seed, out_dtype) -> dW [N, K]
        bias_grad(call, grad, bias_dtype) -> dB [N]
    """

    name: str
    summary: str

    @property
    def format(self) -> str:
        return RECIPE_FORMATS[self.name]

    @property
    def contraction_multiple(self) -> int:
        return RECIPE_CONTRACTION_MULTIPLE[self.name]

    def variant(self, rotate: bool = True, rounding: str = "sr") -> Recipe:
        """The recipe under the Quartet variants (docs/backend.md); only the quartet recipe has any."""
        if not rotate or rounding != "sr":
            raise ValueError(
                f"rotate={rotate}, rounding={rounding!r} are variants of the quartet recipe; recipe {self.name!r} "
                "defines its own rotations and rounding"
            )
        return self

    def bias_grad(self, call, grad, bias_dtype):
        """``sum(dY, 0)`` in float32, rounded to the bias dtype: the same in every recipe."""
        return call(fp4.bias_grad.default, grad, bias_dtype)


@dataclass(frozen=True)
class Quartet(Recipe):
    """MXFP4 with QuEST forward, 32-wide rotations and SR backward; ``rotate``/``rounding`` select its variants."""

    name: str = "quartet"
    summary: str = "MXFP4; QuEST forward with clip mask; 32-point rotations; absmax + SR backward (docs/QUARTET.md)"
    rotate: bool = True  # False: no rotation forward or backward (a variant)
    rounding: str = "sr"  # "rtn": the backward quantizers round to nearest even (a variant)

    def variant(self, rotate: bool = True, rounding: str = "sr") -> Quartet:
        return dataclasses.replace(self, rotate=rotate, rounding=rounding)

    @property
    def weight_quantizer(self):
        return fp4.quest_quantize.default

    def forward(self, call, x, weight, bias, out_dtype):
        x_q = call(fp4.quest_quantize.default, x, self.rotate)
        w_q = call(fp4.quest_quantize.default, weight, self.rotate)
        y = call(fp4.mxfp4_gemm.default, x_q[0], x_q[1], w_q[0], w_q[1], 1.0, bias, "none", None, None, None,
                 False, out_dtype)  # fmt: skip
        return y, {"x": tuple(x_q), "w": tuple(w_q)}

    def _backward(self, call, grad, transposed, operand, mask, seed, streams, out_dtype):
        """``rotate^-1(mask * Q_b(rot_b(dY)) . Q_b(rot_b(saved^T))^T / 9)``: one backward GEMM of Quartet."""
        signs, grad_stream, saved_stream = streams
        if self.rotate and self.rounding == "sr":
            grad_q = call(fp4.sr_quantize.default, grad, seed, signs, grad_stream, transposed)
            saved_q = call(fp4.requantize_sr.default, operand[0], operand[1], seed, signs, saved_stream)
        else:  # the variants' quantizers (runtime/variants.py)
            grad_q = call(fp4.quantize_grad.default, grad, seed, signs, grad_stream, transposed, self.rotate,
                          self.rounding)  # fmt: skip
            saved_q = call(fp4.requantize_grad.default, operand[0], operand[1], seed, signs, saved_stream,
                           self.rotate, self.rounding)  # fmt: skip
        return call(fp4.mxfp4_gemm.default, grad_q[0], grad_q[1], saved_q[0], saved_q[1], BACKWARD_ALPHA, None,
                    "none", None, None, mask, self.rotate, out_dtype)  # fmt: skip

    def input_grad(self, call, grad, saved, seed, out_dtype):
        # dX = dY . W: contract N; W's saved codes requantized along N; x's clip mask.
        streams = (STREAM_DGRAD_SIGNS, STREAM_DGRAD_GRAD_OUTPUT, STREAM_DGRAD_WEIGHT)
        return self._backward(call, grad, False, saved["w"], saved["x"][2], seed, streams, out_dtype)

    def weight_grad(self, call, grad, saved, seed, out_dtype):
        # dW = dY^T . X: contract T; dY quantized along T, x's saved codes requantized along T; w's clip mask.
        streams = (STREAM_WGRAD_SIGNS, STREAM_WGRAD_GRAD_OUTPUT, STREAM_WGRAD_INPUT)
        return self._backward(call, grad, True, saved["x"], saved["w"][2], seed, streams, out_dtype)


def _gemm(call, a, b, bias, out_dtype):
    """The NVFP4 GEMM ``a @ b^T (+ bias)`` of two quantized operands (codes, scales, decode), cast to ``out_dtype``."""
    return call(fp4.nvfp4_gemm.default, *a, *b, bias, "none", None, None, out_dtype)


@dataclass(frozen=True)
class Quartet2(Recipe):
    """Quartet II: four-over-six forward; 128-point RHT + MS-EDEN re-quantization of the saved operands backward."""

    name: str = "quartet2"
    summary: str = "NVFP4; four-over-six RTN forward, no rotation; 128-point RHT + MS-EDEN backward"

    @property
    def weight_quantizer(self):
        return fp4.four_over_six_quantize.default

    def forward(self, call, x, weight, bias, out_dtype):
        x_q = call(fp4.four_over_six_quantize.default, x)
        w_q = call(fp4.four_over_six_quantize.default, weight)
        return _gemm(call, x_q, w_q, bias, out_dtype), {"x": tuple(x_q), "w": tuple(w_q)}

    def input_grad(self, call, grad, saved, seed, out_dtype):
        # dX = dY . W: contract N; dY and the saved W (transposed) rotated along N by the same random signs.
        grad_q = call(fp4.eden_quantize.default, grad, seed, QUARTET2_SIGN_STREAM, STREAM_DGRAD_GRAD_OUTPUT, False)
        weight_t = call(fp4.eden_requantize.default, *saved["w"], seed, QUARTET2_SIGN_STREAM, STREAM_DGRAD_WEIGHT)
        return _gemm(call, grad_q, weight_t, None, out_dtype)

    def weight_grad(self, call, grad, saved, seed, out_dtype):
        # dW = dY^T . X: contract T; dY^T and the saved X (transposed) rotated along T.
        grad_q = call(fp4.eden_quantize.default, grad, seed, QUARTET2_SIGN_STREAM, STREAM_WGRAD_GRAD_OUTPUT, True)
        input_t = call(fp4.eden_requantize.default, *saved["x"], seed, QUARTET2_SIGN_STREAM, STREAM_WGRAD_INPUT)
        return _gemm(call, grad_q, input_t, None, out_dtype)


@dataclass(frozen=True)
class NVFP4(Recipe):
    """NVIDIA's NVFP4 recipe (TE ``NVFP4BlockScaling``): 1x16 inputs and gradients, 16x16 weights, RHT16 on wgrad."""

    name: str = "nvfp4"
    summary: str = "NVFP4; 1x16 X and dY, 16x16 W (W and W^T share scales); 16-point RHT on wgrad inputs; SR on dY"

    @property
    def weight_quantizer(self):
        return fp4.nvfp4_quantize_2d.default

    def forward(self, call, x, weight, bias, out_dtype):
        x_q = call(fp4.nvfp4_quantize.default, x, False, False, None, 0)
        w_q = call(fp4.nvfp4_quantize_2d.default, weight)
        # The weight-gradient operand X^T: along T, after the 16-point transform, from the high-precision X (TE
        # quantizes the columnwise copy in the forward and saves it instead of X).
        input_t = call(fp4.nvfp4_quantize.default, x, True, True, None, 0)
        return _gemm(call, x_q, w_q, bias, out_dtype), {"x_t": tuple(input_t), "w": tuple(w_q)}

    def input_grad(self, call, grad, saved, seed, out_dtype):
        # dX = dY . W: dY along N, stochastic rounding, no transform; W^T is W's 16x16 quantization transposed.
        grad_q = call(fp4.nvfp4_quantize.default, grad, False, False, seed, STREAM_DGRAD_GRAD_OUTPUT)
        codes, scales, decode = saved["w"]
        weight_t = call(fp4.nvfp4_transpose_2d.default, codes, scales)
        return _gemm(call, grad_q, (*weight_t, decode), None, out_dtype)

    def weight_grad(self, call, grad, saved, seed, out_dtype):
        # dW = dY^T . X: dY^T along T after the 16-point transform, stochastic rounding.
        grad_q = call(fp4.nvfp4_quantize.default, grad, True, True, seed, STREAM_WGRAD_GRAD_OUTPUT)
        return _gemm(call, grad_q, saved["x_t"], None, out_dtype)


RECIPES = {recipe.name: recipe for recipe in (Quartet(), Quartet2(), NVFP4())}
"""Every recipe by its name (the backend option ``recipe``)."""


def eager_call(op, *args):
    """The ``call`` of an eager run: the op itself."""
    return op(*args)
