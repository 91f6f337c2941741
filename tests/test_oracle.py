"""The eager Quartet oracle against an independent re-implementation of docs/QUARTET.md's formulas.

The re-implementation uses only the reference building blocks (quantizers, ``dequantize``,
``rotate``) and composes the algorithm itself: dequantized rotated operands for the forward,
stochastic-rounding quantized backward GEMMs with alpha 1/9, and autograd through the rotation
and the clip-masked straight-through estimator for the way back to the unrotated parameters.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fp4.runtime import formats
from fp4.runtime import reference as ref
from fp4.runtime.hadamard import rotate
from fp4.runtime.oracle import QuartetLinear, QuartetLinearFunction, quartet_linear, quartetize

SEED = 987654321


def straight_through(values: torch.Tensor, dequantized: torch.Tensor, mask_bits: torch.Tensor) -> torch.Tensor:
    """Forward: the dequantized rotated operand; backward: rotate^-1(mask * grad), via autograd."""
    rotated = rotate(values, -1)  # differentiable, its adjoint is the inverse rotation
    masked = rotated * mask_bits
    return masked + (dequantized - masked).detach()


def backward_operand(x: torch.Tensor, signs: torch.Tensor, stream: int, transpose: bool) -> torch.Tensor:
    """Q_b(rotate_b(x)) dequantized, times the 1/3 of the absmax scale: [rows, padded contraction]."""
    codes, scales = ref.sr_quantize(x, signs, SEED, stream, transpose)
    return ref.dequantize(codes, scales) / 3.0


def quartet_by_hand(x, weight, bias, grad_y):
    """Forward output and gradients (dX, dW, db) computed from the formulas."""
    in_features = weight.shape[1]
    x2d = x.detach().reshape(-1, in_features)
    tokens = x2d.shape[0]
    x_codes, x_scales, x_mask = ref.quest_quantize(x2d, True)
    w_codes, w_scales, w_mask = ref.quest_quantize(weight.detach(), True)
    x_hat, w_hat = ref.dequantize(x_codes, x_scales), ref.dequantize(w_codes, w_scales)

    x_leaf = x2d.float().requires_grad_()
    w_leaf = weight.detach().float().requires_grad_()
    x_ste = straight_through(x_leaf, x_hat, formats.unpack_bits(x_mask).float())
    w_ste = straight_through(w_leaf, w_hat, formats.unpack_bits(w_mask).float())
    y = x_hat @ w_hat.t()
    if bias is not None:
        y = y + bias.detach().float()

    grad_output = grad_y.reshape(-1, weight.shape[0]).float()
    dgrad_signs = ref.rotation_signs(SEED, ref.STREAM_DGRAD_SIGNS)
    wgrad_signs = ref.rotation_signs(SEED, ref.STREAM_WGRAD_SIGNS)
    # dX_hat = Q_b(rot_b(dY along N)) . Q_b(rot_b(W_hat^T along N))^T       [T, K]
    grad_x_hat = (
        backward_operand(grad_output, dgrad_signs, ref.STREAM_DGRAD_GRAD_OUTPUT, False)
        @ backward_operand(w_hat, dgrad_signs, ref.STREAM_DGRAD_WEIGHT, True).t()
    )
    # dW_hat = Q_b(rot_b(dY^T along T)) . Q_b(rot_b(X_hat^T along T))^T     [N, K]
    grad_w_hat = (
        backward_operand(grad_output, wgrad_signs, ref.STREAM_WGRAD_GRAD_OUTPUT, True)
        @ backward_operand(x_hat, wgrad_signs, ref.STREAM_WGRAD_INPUT, True).t()
    )
    assert grad_x_hat.shape == (tokens, in_features) and grad_w_hat.shape == tuple(weight.shape)
    grad_x, grad_w = torch.autograd.grad((x_ste, w_ste), (x_leaf, w_leaf), (grad_x_hat, grad_w_hat))
    grad_b = grad_output.sum(0)
    return y.reshape(*x.shape[:-1], -1), grad_x.reshape(x.shape), grad_w, grad_b


def run_oracle(x, weight, bias, grad_y):
    y = QuartetLinearFunction.apply(x, weight, bias, torch.tensor(SEED))
    leaves = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
    grads = torch.autograd.grad(y, leaves, grad_y) if leaves else ()
    found = iter(grads)
    return y, *[next(found) if t is not None and t.requires_grad else None for t in (x, weight, bias)]


def make_inputs(shape, out_features=64, bias=True, x_grad=True, w_grad=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator).requires_grad_(x_grad)
    weight = (torch.randn(out_features, shape[-1], generator=generator) / shape[-1] ** 0.5).requires_grad_(w_grad)
    b = torch.randn(out_features, generator=generator).requires_grad_() if bias else None
    grad_y = torch.randn(*shape[:-1], out_features, generator=generator)
    return x, weight, b, grad_y


def close(actual, expected):
    # Same quantized operands; only the float32 summation order of the rotations' adjoints may differ.
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize(
    ("shape", "bias", "x_grad", "w_grad"),
    [
        ((48, 96), True, True, True),  # 48 tokens: the wgrad quantizer pads T to 64
        ((2, 20, 64), True, True, True),  # 3-D input
        ((64, 64), False, True, True),
        ((32, 64), True, False, True),  # input without grad
        ((2, 16, 64), False, True, False),  # frozen weight
    ],
)
def test_oracle_gradients_equal_the_formulas(shape, bias, x_grad, w_grad):
    x, weight, b, grad_y = make_inputs(shape, bias=bias, x_grad=x_grad, w_grad=w_grad)
    y, grad_x, grad_w, grad_b = run_oracle(x, weight, b, grad_y)
    y_ref, grad_x_ref, grad_w_ref, grad_b_ref = quartet_by_hand(x, weight, b, grad_y)
    assert y.shape == (*shape[:-1], weight.shape[0])
    close(y, y_ref)
    assert (grad_x is None) == (not x_grad) and (grad_w is None) == (not w_grad)
    if x_grad:
        assert grad_x.shape == x.shape
        close(grad_x, grad_x_ref)
    if w_grad:
        close(grad_w, grad_w_ref)
    if bias:
        close(grad_b, grad_b_ref)


def test_forward_is_the_dequantized_operand_product():
    x, weight, b, _ = make_inputs((16, 128), seed=1)
    x_hat = ref.dequantize(*ref.quest_quantize(x.detach(), True)[:2])
    w_hat = ref.dequantize(*ref.quest_quantize(weight.detach(), True)[:2])
    y = quartet_linear(x, weight, b, torch.tensor(1))
    assert torch.equal(y, x_hat @ w_hat.t() + b.detach())
    # the rotation cancels: the result approximates the unquantized layer
    cosine = F.cosine_similarity(y.flatten(), F.linear(x, weight, b).flatten(), dim=0)
    assert cosine > 0.98


def test_bf16_layer_matches_the_formulas_loosely():
    x, weight, b, grad_y = make_inputs((32, 64), seed=2)
    x, weight, b = (t.detach().bfloat16().requires_grad_() for t in (x, weight, b))
    y, grad_x, grad_w, grad_b = run_oracle(x, weight, b, grad_y.bfloat16())
    y_ref, grad_x_ref, grad_w_ref, _ = quartet_by_hand(x, weight, b, grad_y.bfloat16())
    assert y.dtype == grad_x.dtype == grad_w.dtype == grad_b.dtype == torch.bfloat16
    for got, want in ((y, y_ref), (grad_x, grad_x_ref), (grad_w, grad_w_ref)):
        torch.testing.assert_close(got.float(), want, rtol=1.6e-2, atol=1e-2 * want.abs().max().item())


def test_gradient_estimates_the_true_gradient():
    x, weight, b, grad_y = make_inputs((128, 256), out_features=128, seed=3)
    _, grad_x, grad_w, grad_b = run_oracle(x, weight, b, grad_y)
    true_x, true_w, true_b = torch.autograd.grad(F.linear(x, weight, b), (x, weight, b), grad_y)
    for got, want in ((grad_x, true_x), (grad_w, true_w)):
        assert F.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.9
    torch.testing.assert_close(grad_b, true_b)


def test_seeded_runs_reproduce_and_seeds_matter():
    x, weight, b, grad_y = make_inputs((32, 64), seed=4)
    layer = QuartetLinear(64, 64)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(b)

    def grads():
        layer.zero_grad()
        layer(x).backward(grad_y)
        return layer.weight.grad.clone()

    torch.manual_seed(10)
    first = grads()
    torch.manual_seed(10)
    assert torch.equal(grads(), first)
    torch.manual_seed(11)
    assert not torch.equal(grads(), first)


def test_quartetize_replaces_every_linear_but_the_head():
    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(32, 64))
    model.add_module("act", torch.nn.GELU())
    model.add_module("lm_head", torch.nn.Linear(64, 32))
    up_weight = model.up.weight
    quartetize(model)
    assert type(model.up) is QuartetLinear and type(model.lm_head) is torch.nn.Linear
    assert model.up.weight is up_weight
    out = model(torch.randn(4, 32))
    assert out.shape == (4, 32)


def test_oracle_rejects_mismatched_features():
    with pytest.raises(ValueError, match="input has 32 features, weight expects 64"):
        quartet_linear(torch.randn(4, 32), torch.randn(16, 64), None, torch.tensor(1))
