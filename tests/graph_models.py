"""Forward and backward aten graphs of small models, captured with AOTAutograd, for the graph tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch._functorch.aot_autograd import aot_function, make_boxed_func
from torch.fx.experimental.proxy_tensor import make_fx


class MLP(nn.Module):
    def __init__(self, width=32, hidden=64):
        super().__init__()
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class DecoderBlock(nn.Module):
    """A Llama-style block: RMSNorm, causal attention (SDPA or explicit softmax), SwiGLU MLP."""

    def __init__(self, width=32, heads=4, hidden=64, sdpa=True):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.attention_norm = nn.RMSNorm(width)
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)
        self.mlp_norm = nn.RMSNorm(width)
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def attention(self, q, k, v):
        if self.sdpa:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        length = q.shape[-2]
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    def forward(self, x):
        batch, length, width = x.shape
        h = self.attention_norm(x)

        def heads(t):
            return t.view(batch, length, self.heads, -1).transpose(1, 2)

        a = self.attention(heads(self.q_proj(h)), heads(self.k_proj(h)), heads(self.v_proj(h)))
        x = x + self.o_proj(a.transpose(1, 2).reshape(batch, length, width))
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


def capture_forward_backward(module: nn.Module, *inputs: torch.Tensor):
    """``(forward_gm, backward_gm)`` of ``module(*inputs)`` as AOTAutograd captures them."""
    graphs = {}

    def keep(kind):
        def compiler(gm, example_inputs):
            graphs[kind] = gm
            return make_boxed_func(gm.forward)

        return compiler

    names = [name for name, _ in module.named_parameters()]

    def functional(*args):
        params = dict(zip(names, args[len(inputs) :]))
        return (torch.func.functional_call(module, params, args[: len(inputs)]),)

    compiled = aot_function(functional, fw_compiler=keep("forward"), bw_compiler=keep("backward"))
    (out,) = compiled(*inputs, *module.parameters())
    out.sum().backward()
    return graphs["forward"], graphs["backward"]


def model_graphs():
    """name -> (forward, backward) graph modules of the models the round trip is tested on."""
    torch.manual_seed(0)
    x2 = torch.randn(8, 32, requires_grad=True)
    x3 = torch.randn(2, 8, 32, requires_grad=True)
    return {
        "linear": capture_forward_backward(nn.Linear(32, 16), x2),
        "mlp": capture_forward_backward(MLP(), x2),
        "llama_block_sdpa": capture_forward_backward(DecoderBlock(sdpa=True), x3),
        "llama_block_softmax": capture_forward_backward(DecoderBlock(sdpa=False), x3),
    }


def quartet_linear_graph(tokens=8, in_features=64, out_features=32, bias=True):
    """make_fx of one Quartet linear layer's forward and backward (the oracle): a graph of fp4 ops."""
    from fp4.runtime.oracle import QuartetLinearFunction

    def step(x, weight, b, seed, grad_y):
        x = x.detach().requires_grad_()
        weight = weight.detach().requires_grad_()
        b = b.detach().requires_grad_()
        y = QuartetLinearFunction.apply(x, weight, b if bias else None, seed)
        grads = torch.autograd.grad(y, (x, weight, b) if bias else (x, weight), grad_y)
        return (y, *grads)

    inputs = (
        torch.randn(tokens, in_features),
        torch.randn(out_features, in_features),
        torch.randn(out_features),
        torch.tensor(1234, dtype=torch.int64),
        torch.randn(tokens, out_features),
    )
    return make_fx(step)(*inputs), inputs


def random_inputs(gm: torch.fx.GraphModule, seed: int = 0):
    """Random real tensors matching the placeholders' ``meta['val']``."""
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for node in gm.graph.find_nodes(op="placeholder"):
        value = node.meta["val"]
        if value.dtype.is_floating_point:
            inputs.append(torch.randn(value.shape, dtype=value.dtype, generator=generator))
        elif value.dtype == torch.bool:
            inputs.append(torch.rand(value.shape, generator=generator) < 0.5)
        else:
            inputs.append(torch.randint(0, 100, value.shape, dtype=value.dtype, generator=generator))
    return inputs
