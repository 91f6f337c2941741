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


def tiny_llama():
    """A 2-layer ``LlamaForCausalLM`` (hidden 256, vocab 512) in bf16 on the GPU, seeded."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=512, max_position_embeddings=128, attn_implementation="sdpa", use_cache=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to("cuda", torch.bfloat16)
