"""``fp4 study``: held-out loss of the same Llama-style models trained in bf16 and in FP4, on real text.

::

    fp4 study prepare --corpus python-docs --out corpus.fp4pack     # tokenize once (needs the corpus installed)
    fp4 study --pack corpus.fp4pack --preset tiny --out study-out    # train and evaluate (a GPU machine, offline)
    fp4 study --quick --out study-quick                              # minutes on a CPU (CI)

For every model size and every precision (``bf16``: ``torch.compile(model)``;
``fp4``: ``backend="fp4"``; ``fp4:<recipe>``: ``options={"recipe": ...}``)
the run starts from the same initial weights, sees the same batches in the same
order under the same seed, and is evaluated on the same held-out tokens
(documents the training never saw, ``fp4.corpus.split_documents``).  Parameters
are float32 master weights; the forward and backward run under
``torch.autocast(bfloat16)``; AdamW; linear warm-up then cosine decay.

Written to the output directory: ``results.json`` (everything: corpus name,
version, license and SHA-256, split, machine, date, command, every curve),
``results.md`` (the table with the gap to bf16 beside Quartet's published
gaps, and the command that reproduces each row), ``loss_curves.png``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import corpus as corpora


@dataclass(frozen=True)
class ModelSize:
    name: str
    layers: int
    dim: int
    heads: int
    hidden: int  # SwiGLU width

    def config(self, vocab_size: int, seq_len: int):
        from .models import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size, dim=self.dim, n_layers=self.layers, n_heads=self.heads, n_kv_heads=self.heads,
            hidden_dim=self.hidden, max_seq_len=seq_len,
        )  # fmt: skip

    def non_embedding_params(self) -> int:
        """Decoder blocks and final norm: what the Quartet paper's sizes count (not the embedding, not the head)."""
        attention = 4 * self.dim * self.dim
        mlp = 3 * self.dim * self.hidden
        norms = 2 * self.dim
        return self.layers * (attention + mlp + norms) + self.dim


SIZES = {
    size.name: size
    for size in (
        ModelSize("quick-a", layers=1, dim=32, heads=1, hidden=64),
        ModelSize("quick-b", layers=1, dim=64, heads=2, hidden=128),
        ModelSize("tiny-s", layers=4, dim=128, heads=4, hidden=352),
        ModelSize("tiny-m", layers=4, dim=256, heads=4, hidden=704),
        ModelSize("q10m", layers=6, dim=384, heads=3, hidden=1024),
        ModelSize("q30m", layers=6, dim=640, heads=5, hidden=1792),  # Quartet's 30M shape (Llama's 256-multiple)
    )
}


@dataclass(frozen=True)
class Preset:
    sizes: tuple[str, ...]
    seq_len: int
    batch: int  # sequences per step
    lr: float
    tokens_per_param: float | None = 20.0  # of the smallest size; every size trains on the same tokens
    tokens: int | None = None  # or a fixed number of training tokens
    evals: int = 10
    eval_tokens: int = 1 << 20
    vocab: int = 8192
    valid_fraction: float = 0.05
    description: str = ""


PRESETS = {
    "quick": Preset(
        sizes=("quick-a", "quick-b"),
        seq_len=32,
        batch=4,
        lr=3e-3,
        tokens_per_param=None,
        tokens=8 * 4 * 32,
        evals=2,
        eval_tokens=4 * 32 * 2,
        vocab=512,
        valid_fraction=0.2,
        description="CPU, a few steps of two one-layer models on the shipped excerpt (keeps the code alive in CI)",
    ),
    "tiny": Preset(
        sizes=("tiny-s", "tiny-m"),
        seq_len=256,
        batch=128,
        lr=2e-3,
        description="a pair of small models for a few minutes of one H100: 20 tokens per parameter for the smaller",
    ),
    "quartet-30m": Preset(
        sizes=("q10m", "q30m"),
        seq_len=512,
        batch=128,
        lr=1.2e-3,
        description="Quartet's 30M shape (6 layers, width 640, 5 heads, seq 512, lr 1.2e-3) and a narrower one",
    ),
}

# Quartet (Castro et al., 2025), C4 validation loss of Llama-2-style models (docs/accuracy.md, ANCHORS.md).
QUARTET_ANCHORS = (
    # params, tokens per parameter, BF16, Quartet
    ("30M", "98", 3.208, 3.299),
    ("30M", "394", 3.099, 3.205),
    ("100M", "~100", 2.886, 2.972),
    ("800M", "~100", 2.461, 2.526),
)


@dataclass(frozen=True)
class Precision:
    """``bf16``, ``fp4`` (the backend's default recipe) or ``fp4:<recipe>``."""

    label: str
    backend: str  # "bf16" or "fp4"
    recipe: str | None = None

    @classmethod
    def parse(cls, text: str) -> Precision:
        text = text.strip()
        name, _, recipe = text.partition(":")
        if name not in ("bf16", "fp4") or (name == "bf16" and recipe) or (recipe == "" and ":" in text):
            raise ValueError(f"precision {text!r}: expected bf16, fp4 or fp4:<recipe> (e.g. fp4:quartet2)")
        return cls(text, name, recipe or None)

    def compile(self, model, fp4_options: dict, inductor: bool = True):
        if self.backend == "bf16":
            return torch.compile(model) if inductor else torch.compile(model, backend="aot_eager")
        options = dict(fp4_options)
        if self.recipe:
            options["recipe"] = self.recipe
        if not inductor:
            options["inductor"] = False
        return torch.compile(model, backend="fp4", options=options or None)


@dataclass
class RunResult:
    size: str
    precision: str
    steps: int
    train_tokens: int
    heldout_loss: float
    tokens_per_second: float
    compile_seconds: float
    total_seconds: float
    train_curve: list = field(default_factory=list)  # (step, tokens seen, loss)
    heldout_curve: list = field(default_factory=list)  # (step, tokens seen, held-out loss)
    error: str | None = None


# ----------------------------------------------------------------------------
# data order


def window_count(stream: torch.Tensor, seq_len: int) -> int:
    return (stream.numel() - 1) // seq_len


def train_order(stream: torch.Tensor, seq_len: int, batch: int, steps: int, seed: int) -> torch.Tensor:
    """Start offsets [steps, batch] of the training windows: each epoch a seeded permutation of all windows.

    Windows are the non-overlapping stretches ``stream[i*seq : i*seq + seq + 1]`` (inputs and shifted targets).
    The order depends on the stream, the shape and the seed only, so every precision sees the same batches.
    """
    n = window_count(stream, seq_len)
    if n < batch:
        raise ValueError(f"the training split has {n} windows of {seq_len} tokens, fewer than one batch of {batch}")
    needed, orders, epoch = steps * batch, [], 0
    while sum(o.numel() for o in orders) < needed:
        orders.append(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)))
        epoch += 1
    return (torch.cat(orders)[:needed] * seq_len).view(steps, batch)


def heldout_starts(stream: torch.Tensor, seq_len: int, batch: int, max_tokens: int) -> torch.Tensor:
    """Start offsets [batches, batch] of the held-out windows, in order: the same tokens for every run."""
    n = window_count(stream, seq_len)
    batches = min(n // batch, max(1, max_tokens // (batch * seq_len)))
    if batches < 1:
        raise ValueError(
            f"the held-out split has {n} windows of {seq_len} tokens, fewer than one batch of {batch}: "
            "raise --valid-fraction or lower --batch/--seq"
        )
    return (torch.arange(batches * batch) * seq_len).view(batches, batch)


def gather(stream: torch.Tensor, starts: torch.Tensor, seq_len: int):
    window = stream[starts.unsqueeze(-1) + torch.arange(seq_len + 1, device=stream.device)]
    return window[..., :-1], window[..., 1:]


def lr_at(step: int, steps: int, peak: float, warmup_fraction: float = 0.1, final_fraction: float = 0.1) -> float:
    """Linear warm-up over the first 10 % of steps, then cosine decay to 10 % of the peak."""
    warmup = max(1, round(warmup_fraction * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------
# one run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(compiled, stream, starts, seq_len, device) -> float:
    """Mean held-out loss over the windows of ``starts`` (every batch the same size, so a token mean).

    The batches go through the compiled training graph (same shapes, gradients on, no backward): the held-out
    loss is exactly the training forward of that precision, and evaluation compiles nothing more.
    """
    total = torch.zeros((), device=device, dtype=torch.float64)
    for batch_starts in starts:
        inputs, targets = gather(stream, batch_starts.to(device), seq_len)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            total += compiled(inputs, targets).detach().double()
    return float(total) / len(starts)


def evaluation_steps(steps: int, evals: int) -> list[int]:
    """The 0-based steps after which a run evaluates on the held-out tokens: ``evals`` of them, evenly spread,
    the last step always among them."""
    return sorted({max(0, round(steps * k / evals) - 1) for k in range(1, evals + 1)})


def train_one(
    initial, size: ModelSize, precision: Precision, data: dict, cfg: dict, device: torch.device, out=print
) -> RunResult:
    torch._dynamo.reset()
    model = copy.deepcopy(initial).to(device)
    compiled = precision.compile(model, cfg["fp4_options"], inductor=cfg["inductor"])
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": cfg["weight_decay"]}, {"params": vectors, "weight_decay": 0.0}],
        lr=cfg["lr"], betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda",
    )  # fmt: skip
    order, steps, seq = data["order"], data["order"].shape[0], cfg["seq_len"]
    batch_tokens = order.shape[1] * seq
    eval_steps = evaluation_steps(steps, cfg["evals"])
    losses = torch.zeros(steps, device=device)
    heldout_curve, eval_seconds = [], 0.0
    skip = min(3, steps - 1)  # steps that compile, left out of tokens/s
    torch.manual_seed(cfg["seed"])  # the fp4 stochastic rounding draws from it
    start = time.perf_counter()
    compile_seconds, timed_start = None, start  # with a single step, that step is timed
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, cfg["lr"])
        inputs, targets = gather(data["train"], order[step].to(device), seq)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = compiled(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses[step] = loss.detach()
        if step == 0:
            _sync(device)
            compile_seconds = time.perf_counter() - start
        if step == skip - 1:
            _sync(device)
            timed_start, eval_seconds = time.perf_counter(), 0.0
        if step in eval_steps:
            _sync(device)
            if not bool(torch.isfinite(losses[: step + 1]).all()):  # a diverged run: stop, keep its curve
                out(f"  {size.name:>8} {precision.label:<12} step {step + 1:>6}/{steps}  training loss not finite: "
                    "stopped")  # fmt: skip
                heldout_curve.append((step + 1, (step + 1) * batch_tokens, float("nan")))
                break
            eval_start = time.perf_counter()
            heldout = evaluate(compiled, data["valid"], data["heldout"], seq, device)
            _sync(device)
            eval_seconds += time.perf_counter() - eval_start
            heldout_curve.append((step + 1, (step + 1) * batch_tokens, heldout))
            out(f"  {size.name:>8} {precision.label:<12} step {step + 1:>6}/{steps}  train {float(loss.detach()):.4f}  "
                f"held-out {heldout:.4f}  ({time.perf_counter() - start:.0f}s)")  # fmt: skip
    _sync(device)
    end = time.perf_counter()
    done = step + 1  # fewer than steps where a diverged run stopped
    timed_steps = max(0, done - skip)
    timed = end - timed_start - eval_seconds
    train_curve = [(i + 1, (i + 1) * batch_tokens, v) for i, v in enumerate(losses[:done].tolist())]
    return RunResult(
        size=size.name, precision=precision.label, steps=steps, train_tokens=done * batch_tokens,
        heldout_loss=heldout_curve[-1][2], tokens_per_second=timed_steps * batch_tokens / timed if timed > 0 else 0.0,
        compile_seconds=compile_seconds, total_seconds=end - start, train_curve=train_curve,
        heldout_curve=heldout_curve,
    )  # fmt: skip


# ----------------------------------------------------------------------------
# the study


def machine() -> dict:
    info = {
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "fp4_commit": _git_commit(),
    }  # fmt: skip
    if torch.cuda.is_available():
        info["card"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        info["card"] = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    return info


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_study(pack: corpora.Pack, cfg: dict, out_dir: Path, argv: list[str], out=print) -> dict:
    device = torch.device(cfg["device"])
    sizes = [SIZES[name] for name in cfg["sizes"]]
    precisions = [Precision.parse(p) for p in cfg["precisions"]]
    seq, batch = cfg["seq_len"], cfg["batch"]
    smallest = min(size.non_embedding_params() for size in sizes)
    tokens = cfg["tokens"] or int(cfg["tokens_per_param"] * smallest)
    steps = max(1, math.ceil(tokens / (batch * seq)))
    data = {
        "train": pack.train.to(device),
        "valid": pack.valid.to(device),
        "order": train_order(pack.train, seq, batch, steps, cfg["seed"]),
        "heldout": heldout_starts(pack.valid, seq, batch, cfg["eval_tokens"]),
    }
    epochs = steps * batch / window_count(pack.train, seq)
    out(f"fp4 study: corpus {pack.meta['corpus']['name']} ({pack.meta['tokens']['train']} training tokens, "
        f"{pack.meta['tokens']['valid']} held-out), {steps} steps of {batch}x{seq} tokens per run "
        f"({epochs:.2f} epochs), held-out {data['heldout'].numel() * seq} tokens, device {device}")  # fmt: skip
    runs: list[RunResult] = []

    def result_so_far() -> dict:
        return {
            "study": "fp4 study", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": _env_prefix() + shlex.join(["fp4", "study", *argv]), "machine": machine(),
            "data": corpora.summary(pack),
            "config": {**cfg, "steps": steps, "train_tokens": steps * batch * seq, "epochs": epochs,
                       "heldout_tokens": int(data["heldout"].numel() * seq)},
            "sizes": {s.name: {**asdict(s), "non_embedding_params": s.non_embedding_params(),
                               "tokens_per_param": steps * batch * seq / s.non_embedding_params()} for s in sizes},
            "runs": [asdict(run) for run in runs],
            "row_commands": {f"{s.name} {p.label}": _env_prefix() + row_command(argv, s.name, p.label)
                             for s in sizes for p in precisions},
            "quartet_anchors": [dict(zip(("params", "tokens_per_param", "bf16", "quartet"), a))
                                for a in QUARTET_ANCHORS],
        }  # fmt: skip

    for size in sizes:
        torch.manual_seed(cfg["seed"])
        initial = _build_model(size, pack.vocab_size, seq)
        for precision in precisions:
            try:
                runs.append(train_one(initial, size, precision, data, cfg, device, out))
            except Exception as error:  # a recipe the backend does not know, a kernel that fails: say so, go on
                out(f"  {size.name} {precision.label}: failed: {type(error).__name__}: {error}")
                runs.append(RunResult(size.name, precision.label, steps, 0, float("nan"), 0.0, 0.0, 0.0,
                                      error=f"{type(error).__name__}: {error}"))  # fmt: skip
            if len(runs) < len(sizes) * len(precisions):  # a study cut short keeps the runs it finished
                try:
                    write_outputs(result_so_far(), out_dir, lambda *_: None)
                except Exception as error:  # noqa: BLE001  (the final write reports for real)
                    out(f"  (partial results not written: {type(error).__name__}: {error})")
    result = result_so_far()
    write_outputs(result, out_dir, out)
    return result


# Environment variables that change how the fp4 kernels are chosen; recorded in front of every command.
RECORDED_ENV = ("FP4_AUTOTUNE", "FP4_COMPILE_THREADS")


def _env_prefix() -> str:
    return "".join(f"{name}={shlex.quote(os.environ[name])} " for name in RECORDED_ENV if name in os.environ)


def _build_model(size: ModelSize, vocab_size: int, seq_len: int):
    from .models import TinyLlama

    return TinyLlama(size.config(vocab_size, seq_len))  # float32: the master weights


def row_command(argv: list[str], size: str, precision: str) -> str:
    """The command that reproduces one row: the study's own arguments, one size, bf16 and that precision."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--sizes", "--precisions", "--out"):
            skip = "=" not in arg
            continue
        kept.append(arg)
    precisions = "bf16" if precision == "bf16" else f"bf16,{precision}"
    return shlex.join(["fp4", "study", *kept, "--sizes", size, "--precisions", precisions, "--out", f"study-{size}"])


# ----------------------------------------------------------------------------
# outputs


def gaps(result: dict) -> dict:
    """(size, precision) -> relative gap of the held-out loss to bf16's, in percent (None without a bf16 run)."""
    base = {r["size"]: r["heldout_loss"] for r in result["runs"] if r["precision"] == "bf16"}
    return {
        (r["size"], r["precision"]): 100.0 * (r["heldout_loss"] / base[r["size"]] - 1.0) if r["size"] in base else None
        for r in result["runs"]
    }


def nonfinite_step(run: dict) -> int | None:
    """The first training step whose loss is not finite (NaN or infinite), or None."""
    return next((point[0] for point in run["train_curve"] if not math.isfinite(point[2])), None)


def markdown(result: dict) -> str:
    cfg, data, sizes, gap = result["config"], result["data"], result["sizes"], gaps(result)
    corpus = data["corpus"]
    sources = "; ".join(
        f"{s['name']} ({s.get('package') or 'files'} {s.get('version') or ''}, {s.get('license')})".replace(" ,", ",")
        for s in corpus["sources"]
    )
    lines = [
        f"# fp4 study: held-out loss, bf16 and FP4 ({result['date']})",
        "",
        f"- machine: {result['machine']['card']}, torch {result['machine']['torch']}, "
        f"fp4 {result['machine'].get('fp4_commit') or 'unknown'}",
        f"- command: `{result['command']}`",
        f"- corpus: {sources}; {corpus['documents']} documents, {corpus['bytes']} bytes, sha256 `{corpus['sha256']}`",
        f"- split by document (SHA-256 of the id, salt `{data['split']['salt']}`): "
        f"{data['split']['train']['n_documents']} training / {data['split']['valid']['n_documents']} held-out "
        "documents; "
        f"{data['tokens']['train']} / {data['tokens']['valid']} tokens; pack sha256 `{data['pack']['sha256']}`",
        f"- tokenizer: {data['tokenizer']['kind']}, vocabulary {data['tokenizer']['vocab_size']}",
        f"- training: {cfg['steps']} steps of {cfg['batch']}x{cfg['seq_len']} tokens ({cfg['train_tokens']} tokens, "
        f"{cfg['epochs']:.2f} epochs of the training split), AdamW lr {cfg['lr']} (warm-up 10 %, cosine to 10 %), "
        f"seed {cfg['seed']}; held-out loss on the same {cfg['heldout_tokens']} tokens for every run",
        "",
        "| size | non-embedding params | tokens/param | precision | held-out loss | gap to bf16 | tokens/s | "
        "reproduce |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for run in result["runs"]:
        size = sizes[run["size"]]
        g, diverged = gap[(run["size"], run["precision"])], nonfinite_step(run)
        gap_text = "" if g is None or run["precision"] == "bf16" or not math.isfinite(g) else f"{g:+.2f} %"
        loss = "failed" if run["error"] else f"{run['heldout_loss']:.4f}"
        if diverged is not None and not run["error"]:
            loss = f"{loss} (training loss not finite from step {diverged})"
        lines.append(
            f"| {run['size']} ({size['layers']} layers, width {size['dim']}, {size['heads']} heads) "
            f"| {size['non_embedding_params'] / 1e6:.2f}M | {size['tokens_per_param']:.1f} | {run['precision']} "
            f"| {loss} | {gap_text} | {run['tokens_per_second']:,.0f} "
            f"| `{result['row_commands'][run['size'] + ' ' + run['precision']]}` |"
        )
    lines += [
        "",
        "Quartet's published gaps (C4 validation loss, Llama-2-style, 262k tokens per step):",
        "",
        "| params | tokens/param | BF16 | Quartet | gap |",
        "|---|---|---|---|---|",
    ]
    for anchor in result["quartet_anchors"]:
        g = 100.0 * (anchor["quartet"] / anchor["bf16"] - 1.0)
        lines.append(
            f"| {anchor['params']} | {anchor['tokens_per_param']} | {anchor['bf16']} | {anchor['quartet']} | "
            f"+{g:.1f} % |"
        )
    failed = [r for r in result["runs"] if r["error"]]
    for run in failed:
        lines.append(f"\n{run['size']} {run['precision']} failed: {run['error']}")
    for run in result["runs"]:
        step = None if run["error"] else nonfinite_step(run)
        if step is not None:
            lines.append(
                f"\n{run['size']} {run['precision']}: the training loss is not finite from step {step} of "
                f"{run['steps']} on; its held-out loss and gap are not a measure of accuracy."
            )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    """Train (smoothed) and held-out loss against tokens, one column per size; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = list(result["sizes"])
    figure, axes = plt.subplots(2, len(sizes), figsize=(5.5 * len(sizes), 7), squeeze=False)
    for column, size in enumerate(sizes):
        for run in (r for r in result["runs"] if r["size"] == size and not r["error"]):
            tokens = [point[1] / 1e6 for point in run["train_curve"]]
            values = [point[2] for point in run["train_curve"]]
            window = max(1, len(values) // 50)
            smooth = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
                      for i in range(len(values))]  # fmt: skip
            axes[0][column].plot(tokens, smooth, label=run["precision"], linewidth=1.2)
            held = run["heldout_curve"]
            axes[1][column].plot([p[1] / 1e6 for p in held], [p[2] for p in held], "o-", label=run["precision"])
        info = result["sizes"][size]
        axes[0][column].set_title(f"{size}: {info['non_embedding_params'] / 1e6:.2f}M params, "
                                  f"{info['tokens_per_param']:.3g} tokens/param")  # fmt: skip
        axes[0][column].set_ylabel(f"train loss (moving mean of {window})")
        axes[1][column].set_ylabel("held-out loss")
        for row in (0, 1):
            axes[row][column].set_xlabel("training tokens (M)")
            axes[row][column].grid(alpha=0.3)
            axes[row][column].legend()
    figure.suptitle(f"fp4 study on {result['data']['corpus']['name']} ({result['machine']['card']}, "
                    f"{result['date'][:10]})")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_outputs(result: dict, out_dir: Path, out=print) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    table = markdown(result)
    (out_dir / "results.md").write_text(table)
    plotted = plot(result, out_dir / "loss_curves.png")
    out(table)
    out(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.md'}"
        + (f", {out_dir / 'loss_curves.png'}" if plotted else " (no matplotlib: no loss_curves.png)"))  # fmt: skip


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# ----------------------------------------------------------------------------
# command line


def _add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", default=None,
                        help=f"named corpora, comma-separated: {', '.join([*corpora.SOURCES, 'python-docs-excerpt'])} "
                        "(default python-docs)")  # fmt: skip
    parser.add_argument("--data", nargs="+", metavar="PATH", help="your own text files or directories instead")
    parser.add_argument("--separator", help="cut each --data file into documents at this string (default: per file)")
    parser.add_argument("--vocab", type=int, default=None, help="BPE vocabulary size (default: the preset's, 8192)")
    parser.add_argument("--valid-fraction", type=float, default=None, help="share of documents held out (0.05)")
    parser.add_argument("--salt", default=corpora.DEFAULT_SALT, help="salt of the split's document hash")


def _prepare_pack(args, preset: Preset) -> corpora.Pack:
    names = args.corpus.split(",") if args.corpus else None
    corpus = corpora.load_corpus(names, args.data, args.separator)
    return corpora.prepare(corpus, args.vocab or preset.vocab, args.valid_fraction or preset.valid_fraction, args.salt)


def prepare_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fp4 study prepare", description="Split a corpus by document, train the tokenizer, write a .fp4pack."
    )
    _add_corpus_arguments(parser)
    parser.add_argument("--out", required=True, help="the .fp4pack file to write")
    args = parser.parse_args(argv)
    try:
        pack = _prepare_pack(args, PRESETS["tiny"])
    except corpora.CorpusUnavailable as error:
        print(f"fp4 study prepare: {error}", file=sys.stderr)
        return 2
    digest = corpora.write_pack(pack, args.out)
    meta = pack.meta
    print(f"{args.out}: {meta['corpus']['name']}, {meta['corpus']['documents']} documents "
          f"({len(meta['split']['valid']['documents'])} held out), {meta['tokens']['train']} + "
          f"{meta['tokens']['valid']} tokens, vocabulary {pack.vocab_size}; {os.path.getsize(args.out)} bytes, "
          f"sha256 {digest}")  # fmt: skip
    print(f"corpus sha256 {meta['corpus']['sha256']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "prepare":
        return prepare_main(argv[1:])
    parser = argparse.ArgumentParser(prog="fp4 study", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="presets:\n" + "\n".join(f"  {name}: {p.description}; sizes "
                                                                     f"{', '.join(p.sizes)}" for name, p in
                                                                     PRESETS.items()))  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="preset quick on the shipped excerpt, on the CPU, fp4 through its reference")  # fmt: skip
    parser.add_argument("--preset", choices=PRESETS, default=None, help="sizes and budget (default tiny)")
    parser.add_argument("--pack", help="a .fp4pack written by 'fp4 study prepare' (else the corpus is prepared here)")
    _add_corpus_arguments(parser)
    parser.add_argument("--sizes", help=f"comma-separated, from {', '.join(SIZES)} (default: the preset's)")
    parser.add_argument("--precisions", default="bf16,fp4",
                        help="comma-separated: bf16, fp4, fp4:<recipe> (e.g. fp4:quartet2,fp4:nvfp4)")  # fmt: skip
    parser.add_argument("--fp4-options", default="{}", help="JSON options of every fp4 run: '{\"cudagraphs\": true}'")
    parser.add_argument("--tokens", type=int, help="training tokens per run (default: tokens-per-param x smallest)")
    parser.add_argument("--tokens-per-param", type=float, help="of the smallest size (default 20)")
    parser.add_argument("--seq", type=int, help="sequence length")
    parser.add_argument("--batch", type=int, help="sequences per step")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--evals", type=int, help="held-out evaluations per run")
    parser.add_argument("--eval-tokens", type=int, help="at most this many held-out tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--no-inductor", action="store_true",
                        help="bf16 through aot_eager, fp4 with inductor=False (as --quick does)")  # fmt: skip
    parser.add_argument("--out", default="study-out", help="output directory")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset or ("quick" if args.quick else "tiny")]
    if args.quick and not (args.pack or args.data or args.corpus):
        args.corpus = "python-docs-excerpt"
    cfg = {
        "preset": args.preset or ("quick" if args.quick else "tiny"),
        "sizes": args.sizes.split(",") if args.sizes else list(preset.sizes),
        "precisions": [p.strip() for p in args.precisions.split(",") if p.strip()],
        "seq_len": args.seq or preset.seq_len, "batch": args.batch or preset.batch, "lr": args.lr or preset.lr,
        "tokens": args.tokens if args.tokens is not None else (None if args.tokens_per_param else preset.tokens),
        "tokens_per_param": args.tokens_per_param or preset.tokens_per_param,
        "evals": args.evals or preset.evals, "eval_tokens": args.eval_tokens or preset.eval_tokens,
        "seed": args.seed, "device": args.device or ("cpu" if args.quick or not torch.cuda.is_available() else "cuda"),
        "inductor": not (args.no_inductor or args.quick), "fp4_options": json.loads(args.fp4_options),
        "weight_decay": 0.1, "grad_clip": 1.0,
    }  # fmt: skip
    unknown = [s for s in cfg["sizes"] if s not in SIZES]
    if unknown:
        parser.error(f"unknown size {unknown[0]!r}; known: {', '.join(SIZES)}")
    try:
        for p in cfg["precisions"]:
            Precision.parse(p)
    except ValueError as error:
        parser.error(str(error))
    if not cfg["tokens"] and not cfg["tokens_per_param"]:
        parser.error("give --tokens or --tokens-per-param")

    out_dir = Path(args.out)
    if args.pack:
        pack = corpora.load_pack(args.pack)
    else:
        try:
            pack = _prepare_pack(args, preset)
        except corpora.CorpusUnavailable as error:
            print(f"fp4 study: {error}", file=sys.stderr)
            return 2
        corpora.write_pack(pack, out_dir / "corpus.fp4pack")
    run_study(pack, cfg, out_dir, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
