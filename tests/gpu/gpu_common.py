"""What the GPU test files share: their marks, the GEMM tolerances and the small Hugging Face Llama they train."""

from __future__ import annotations

import pytest
import torch

GPU_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
GEMM_RTOL = 1e-5
"""Relative Frobenius error of a GEMM that accumulates in fp32, against the float64 product."""
OUTPUT_ROUNDING = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
"""One rounding of the output dtype, relative."""
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def tiny_llama(hidden=256, intermediate=512, layers=2, heads=4):
    """A ``LlamaForCausalLM`` (default: 2 layers, hidden 256; vocab 512) in bf16 on the GPU, seeded."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, vocab_size=512, max_position_embeddings=128, attn_implementation="sdpa",
        use_cache=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to("cuda", torch.bfloat16)


def down_proj_gradient(model) -> torch.Tensor:
    """The gradient of the first layer's down projection."""
    return model.model.layers[0].mlp.down_proj.weight.grad


def train_steps(model, options, steps=4, gradients=down_proj_gradient):
    """``steps`` AdamW steps of ``model`` compiled with ``backend="fp4"`` and ``options`` on one seeded batch:
    ``(losses, gradients)``, one per step; ``gradients(model)`` (a tensor, or a dict of them) is copied after each
    step's backward."""
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="fp4", options=options)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 512, (4, 128), device="cuda", generator=torch.Generator(device="cuda").manual_seed(5))
    torch.manual_seed(11)
    losses, grads = [], []
    for _ in range(steps):
        torch.compiler.cudagraph_mark_step_begin()
        loss = compiled(input_ids=tokens, labels=tokens).loss
        loss.backward()
        grads.append(torch.utils._pytree.tree_map(torch.clone, gradients(model)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().clone())
    return losses, grads
