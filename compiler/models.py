"""A small Llama-style decoder in plain PyTorch, byte-level text from the package, and a training loop.

Used by ``examples/train.py`` and ``fp4 train`` to compare the fp4 backend
with BF16 on any machine (a CPU runs the fp4 ops through their reference),
and by the tests as a model with every structure the backend must handle:
RMSNorm, rotary attention with SDPA, a SwiGLU MLP, residual adds, a tied-free
output head and an embedding.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 256  # bytes
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    hidden_dim: int = 256
    max_seq_len: int = 256
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in float32, as Llama does, then return to the model dtype.
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


def rotary_tables(head_dim: int, seq_len: int, theta: float, device=None):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return torch.cos(angles), torch.sin(angles)


def apply_rotary(x, cos, sin):
    """Rotate pairs (first half, second half) of each head by the position angle."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim = config.dim // config.n_heads
        self.q_proj = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)

    def forward(self, x, cos, sin):
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        repeat = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class FeedForward(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.down_proj = nn.Linear(config.hidden_dim, config.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = FeedForward(config)

    def forward(self, x, cos, sin):
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class TinyLlama(nn.Module):
    """Embedding, decoder blocks, final norm, output head (``lm_head``, kept in the model dtype by fp4)."""

    def __init__(self, config: LlamaConfig = LlamaConfig()):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        cos, sin = rotary_tables(config.dim // config.n_heads, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens, targets=None):
        seq = tokens.shape[1]
        x = self.embed_tokens(tokens)
        cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        for layer in self.layers:
            x = layer(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


# ----------------------------------------------------------------------------
# data


def corpus_text() -> str:
    """The few KB of English text shipped with the package (offline training data)."""
    return resources.files("fp4").joinpath("data/corpus.txt").read_text(encoding="utf-8")


def corpus_tokens() -> torch.Tensor:
    """The corpus as byte tokens (vocabulary 256)."""
    return torch.tensor(list(corpus_text().encode("utf-8")), dtype=torch.long)


def batches(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """Endless random windows ``(inputs, targets)`` of ``seq_len`` tokens, targets shifted by one."""
    while True:
        starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch_size,), generator=generator)
        window = torch.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]


# ----------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    label: str
    losses: list
    seconds: float
    compile_seconds: float


def train(
    model: nn.Module,
    backend: str | object = "inductor",
    steps: int = 30,
    batch_size: int = 8,
    seq_len: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    label: str | None = None,
    compile_options: dict | None = None,
) -> TrainResult:
    """Train ``model`` with AdamW on the built-in corpus under ``torch.compile(backend=...)``."""
    torch.manual_seed(seed)
    model = model.to(device)
    compiled = torch.compile(model, backend=backend, options=compile_options) if backend else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    data = batches(corpus_tokens(), batch_size, seq_len, torch.Generator().manual_seed(seed))
    losses, start, compile_seconds = [], time.perf_counter(), 0.0
    for step in range(steps):
        inputs, targets = next(data)
        step_start = time.perf_counter()
        loss = compiled(inputs.to(device), targets.to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step == 0:
            compile_seconds = time.perf_counter() - step_start
    return TrainResult(label or str(backend), losses, time.perf_counter() - start, compile_seconds)


def model_for_training(config: LlamaConfig = LlamaConfig(), dtype=torch.bfloat16, seed: int = 0) -> TinyLlama:
    torch.manual_seed(seed)
    return TinyLlama(config).to(dtype)


def compare_with_bf16(
    steps: int = 30, batch_size: int = 8, seq_len: int = 64, config: LlamaConfig = LlamaConfig(), device=None,
    fp4_options: dict | None = None, out=print,
) -> tuple[TrainResult, TrainResult]:  # fmt: skip
    """Train the same initial model with ``backend="fp4"`` and with BF16 Inductor; print both loss curves."""
    from . import report

    if steps < 1:
        raise ValueError(f"compare_with_bf16 needs at least one step to compare, got steps={steps}")

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    report.clear_reports()
    out(
        f"fp4 vs bf16: TinyLlama {config.n_layers} layers, dim {config.dim}, {steps} steps, "
        f"batch {batch_size}x{seq_len}, device {device}"
    )
    fp4_run = train(
        model_for_training(config), "fp4", steps, batch_size, seq_len, device=device, label="fp4",
        compile_options=fp4_options,
    )  # fmt: skip
    bf16_run = train(model_for_training(config), "inductor", steps, batch_size, seq_len, device=device, label="bf16")
    out(report.summarize([r for r in report.reports() if r.kind == "training"][:1]))
    out(format_curves(fp4_run, bf16_run))
    return fp4_run, bf16_run


def format_curves(*runs: TrainResult) -> str:
    header = "step " + "".join(f"{run.label:>10}" for run in runs)
    lines = [header]
    for step in range(max(len(run.losses) for run in runs)):
        values = "".join(f"{run.losses[step]:>10.4f}" if step < len(run.losses) else " " * 10 for run in runs)
        lines.append(f"{step:>4} {values}")
    lines.append(
        "time " + "".join(f"{run.seconds:>9.1f}s" for run in runs) + "   (first step incl. compile: "
        + ", ".join(f"{run.label} {run.compile_seconds:.1f}s" for run in runs) + ")"
    )  # fmt: skip
    finals = [sum(run.losses[-5:]) / len(run.losses[-5:]) for run in runs]
    lines.append("mean of last 5 losses: " + ", ".join(f"{run.label} {v:.4f}" for run, v in zip(runs, finals)))
    if any(math.isnan(v) for v in finals):
        lines.append("warning: a loss is NaN")
    return "\n".join(lines)
