"""The eager Quartet oracle: a ``torch.autograd.Function`` and an ``nn.Linear`` drop-in.

This computes one linear layer's forward and backward exactly as the
algorithm defines them (QuEST forward quantizer with clip mask, Hadamard
rotations, stochastic-rounding backward), one fp4 op at a time.  Compiled
graphs are compared with it bit for bit, and it is the "eager Quartet"
baseline of the benchmarks.  On a GPU the same ops run the Triton kernels.

Forward ``Y = X W^T`` keeps only the MXFP4 codes, scales and clip masks of
``X`` and ``W`` (plus a seed) for backward::

    dX = rotate^-1(mX * (Q_b(rot_b(dY)) . Q_b(rot_b(W^T))^T) / 9)      contract N
    dW = rotate^-1(mW * (Q_b(rot_b(dY^T)) . Q_b(rot_b(X^T))^T) / 9)    contract T
"""

from __future__ import annotations

import torch

from . import reference as ref

fp4_ops = torch.ops.fp4


def linear_forward(x2d, weight, bias, out_dtype):
    """Forward of one layer on 2-D input; returns ``(y, saved)`` with the MXFP4 state."""
    x_codes, x_scales, x_mask = fp4_ops.quest_quantize(x2d, True)
    w_codes, w_scales, w_mask = fp4_ops.quest_quantize(weight, True)
    y = fp4_ops.mxfp4_gemm(x_codes, x_scales, w_codes, w_scales, 1.0, bias, "none", None, None, None, False, out_dtype)
    return y, (x_codes, x_scales, x_mask, w_codes, w_scales, w_mask)


def linear_input_grad(grad_output, w_codes, w_scales, x_mask, seed, out_dtype):
    grad_codes, grad_scales = fp4_ops.sr_quantize(
        grad_output, seed, ref.STREAM_DGRAD_SIGNS, ref.STREAM_DGRAD_GRAD_OUTPUT, False
    )
    wt_codes, wt_scales = fp4_ops.requantize_sr(
        w_codes, w_scales, seed, ref.STREAM_DGRAD_SIGNS, ref.STREAM_DGRAD_WEIGHT
    )
    return fp4_ops.mxfp4_gemm(
        grad_codes, grad_scales, wt_codes, wt_scales, ref.BACKWARD_ALPHA,
        None, "none", None, None, x_mask, True, out_dtype,
    )  # fmt: skip


def linear_weight_grad(grad_output, x_codes, x_scales, w_mask, seed, out_dtype):
    grad_codes, grad_scales = fp4_ops.sr_quantize(
        grad_output, seed, ref.STREAM_WGRAD_SIGNS, ref.STREAM_WGRAD_GRAD_OUTPUT, True
    )
    xt_codes, xt_scales = fp4_ops.requantize_sr(x_codes, x_scales, seed, ref.STREAM_WGRAD_SIGNS, ref.STREAM_WGRAD_INPUT)
    return fp4_ops.mxfp4_gemm(
        grad_codes, grad_scales, xt_codes, xt_scales, ref.BACKWARD_ALPHA,
        None, "none", None, None, w_mask, True, out_dtype,
    )  # fmt: skip


class QuartetLinearFunction(torch.autograd.Function):
    """``F.linear`` under Quartet: inputs ``(x [..., K], weight [N, K], bias [N] | None, seed)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, seed):
        in_features = weight.shape[1]
        if x.shape[-1] != in_features:
            raise ValueError(f"input has {x.shape[-1]} features, weight expects {in_features}")
        x2d = x.reshape(-1, in_features)
        y, saved = linear_forward(x2d, weight, bias, x.dtype)
        ctx.save_for_backward(*saved, seed)
        ctx.shapes = (x.shape, x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        x_codes, x_scales, x_mask, w_codes, w_scales, w_mask, seed = ctx.saved_tensors
        x_shape, x_dtype, w_dtype, b_dtype = ctx.shapes
        grad_output = grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = linear_input_grad(grad_output, w_codes, w_scales, x_mask, seed, x_dtype).reshape(x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = linear_weight_grad(grad_output, x_codes, x_scales, w_mask, seed, w_dtype)
        if b_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = fp4_ops.bias_grad(grad_output, b_dtype)
        return grad_x, grad_w, grad_b, None


def draw_layer_seed(rank_seeds="auto", device="cpu") -> torch.Tensor:
    """One layer seed from ``device``'s generator, salted with ``rank + 1`` under a process group (``rank_seeds``)."""
    from fp4.core import seed_salt

    salt = seed_salt(rank_seeds)
    return fp4_ops.draw_seeds(1, torch.device(device), salt)[0] if salt else fp4_ops.draw_seeds(1, device)[0]


def quartet_linear(x, weight, bias=None, seed=None, rank_seeds="auto"):
    """Functional Quartet linear; draws a seed (:func:`draw_layer_seed`) when none is given."""
    if seed is None:
        seed = draw_layer_seed(rank_seeds, x.device)
    return QuartetLinearFunction.apply(x, weight, bias, seed)


class QuartetLinear(torch.nn.Linear):
    """``nn.Linear`` whose three GEMMs run in MXFP4 under the Quartet algorithm."""

    rank_seeds = "auto"  # the backend option of the same name

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, rank_seeds="auto") -> QuartetLinear:
        """A Quartet layer sharing ``linear``'s parameters (no copy)."""
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.rank_seeds = rank_seeds
        return layer

    def forward(self, x):
        return quartet_linear(x, self.weight, self.bias, rank_seeds=self.rank_seeds)


def quartetize(model: torch.nn.Module, select=None, rank_seeds="auto") -> torch.nn.Module:
    """Replace (in place) every ``nn.Linear`` that ``select(name, module)`` accepts by a QuartetLinear.

    ``select`` defaults to the backend's layer policy (every linear layer but
    the output head); ``rank_seeds`` is the backend option of that name.
    Returns ``model``.
    """
    if select is None:
        from fp4.core import default_layer_filter

        select = default_layer_filter
    replacements = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and select(name, module)
    ]
    for name, module in replacements:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuartetLinear.from_linear(module, rank_seeds))
    return model
