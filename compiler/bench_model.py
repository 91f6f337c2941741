"""``fp4 bench --sections model``: whole Hugging Face Llama training steps, fp4 against bf16 in the same run.

Each configuration trains ``LlamaForCausalLM`` (random weights, bf16
parameters, ``sdpa`` attention, fused AdamW) for a few steps per mode:

* ``bf16_eager``: the model as it is;
* ``bf16_inductor``: ``torch.compile(model)``;
* ``fp4``: ``torch.compile(model, backend="fp4")``;
* ``fp4_cudagraphs``: the same with ``options={"cudagraphs": True}``;
* ``fp4_cudagraphs_fold_backward``: and the backward quantizers writing the FP8 fold
  (``fold_backward=True``);
* ``fp4_<recipe>...``: an fp4 mode under another recipe (``fp4_quartet2``, ``fp4_nvfp4_cudagraphs``;
  :mod:`fp4.bench_recipes`).

Per mode: the first step (it compiles), the median and the maximum step time
from the third step on, tokens/s, peak memory, and the host time per step
(Python issuing the step, before the closing synchronisation) against the GPU
time per step (the kernels' device time summed by ``torch.profiler`` over one
more step).  A step is forward, loss, backward, optimizer step and
``zero_grad``; the loss is read back once per step, as a training loop logs it.
"""

from __future__ import annotations

import datetime
import gc
import statistics
import time


def utc_date() -> str:
    """The date and time a benchmark run records."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def card_slug(card: str) -> str:
    """The card's short name in result file names: ``NVIDIA H100 80GB HBM3`` -> ``h100``."""
    return card.lower().replace("nvidia", "").strip().split()[0]


CONFIGS = {
    # name: model shape, batch, sequence length
    "llama7b-8l": dict(hidden=4096, intermediate=11008, layers=8, heads=32, vocab=32000, batch=4, seq=2048),
    "llama1b-8l": dict(hidden=2048, intermediate=5632, layers=8, heads=16, vocab=32000, batch=4, seq=2048),
    "small-6l": dict(hidden=512, intermediate=1376, layers=6, heads=8, vocab=256, batch=32, seq=512),
}

FP4_MODES = {
    # mode: the backend's options
    "fp4": {},
    "fp4_cudagraphs": {"cudagraphs": True},
    "fp4_cudagraphs_fold_backward": {"cudagraphs": True, "fold_backward": True},
    "fp4_cudagraphs_compile_ahead": {"cudagraphs": True, "compile_ahead": True},
    "fp4_cudagraphs_at_first_launch": {"cudagraphs": True, "compile_ahead": False},
}
MODES = ("bf16_eager", "bf16_inductor", "fp4", "fp4_cudagraphs")


def _with_recipes():
    from .bench_recipes import fp4_modes

    FP4_MODES.update(fp4_modes(FP4_MODES))  # fp4_quartet2, fp4_nvfp4_cudagraphs, ...: the recipe axis


_with_recipes()


def build_model(shape: dict, device="cuda"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=shape["hidden"], intermediate_size=shape["intermediate"], num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"], num_key_value_heads=shape["heads"], vocab_size=shape["vocab"],
        max_position_embeddings=shape["seq"], attn_implementation="sdpa", use_cache=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16)


def compiled(model, mode: str):
    import torch

    if mode == "bf16_eager":
        return model
    if mode == "bf16_inductor":
        return torch.compile(model)
    if mode not in FP4_MODES:
        raise ValueError(f"unknown mode {mode!r}; known: bf16_eager, bf16_inductor, {', '.join(FP4_MODES)}")
    return torch.compile(model, backend="fp4", options=dict(FP4_MODES[mode]))


def train_steps(shape: dict, mode: str, steps: int = 8, device="cuda", profile: bool = True) -> dict:
    """Train one configuration in one mode; returns the measured record."""
    import torch

    model = build_model(shape, device)
    runner = compiled(model, mode)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    generator = torch.Generator(device=device).manual_seed(1)
    batches = [
        torch.randint(0, shape["vocab"], (shape["batch"], shape["seq"]), device=device, generator=generator)
        for _ in range(2)
    ]
    cuda = device == "cuda"

    def step(i):
        if cuda:
            torch.compiler.cudagraph_mark_step_begin()
        tokens = batches[i % len(batches)]
        loss = runner(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    step_ms, host_ms, losses, gc_ms = [], [], [], []
    before, first_step, later = compile_seconds(), {}, {}
    with GcPauses() as pauses:
        for i in range(steps):
            start = time.perf_counter()
            loss = step(i)
            issued = time.perf_counter()
            losses.append(float(loss))  # the loop's one read-back (a synchronisation)
            done = time.perf_counter()
            step_ms.append((done - start) * 1e3)
            host_ms.append((issued - start) * 1e3)
            gc_ms.append(round(pauses.take(), 3))
            now = compile_seconds()
            grown = growth(now, before)
            if i == 0:
                first_step = grown
            elif grown:  # a later step that compiled, autotuned or built a plan: what, by timer
                later[str(i + 1)] = grown
            before = now
    tokens_per_step = shape["batch"] * shape["seq"]
    steady = steady_steps(step_ms)
    record = {
        "mode": mode,
        "first_step_ms": step_ms[0],
        "median_step_ms": statistics.median(steady),
        "max_step_ms": max(steady),
        "max_over_median": max(steady) / statistics.median(steady),
        "tokens_per_s": tokens_per_step / (statistics.median(steady) * 1e-3),
        "host_ms_per_step": statistics.median(steady_steps(host_ms)),
        "step_ms": step_ms,
        "losses": losses,
        "first_step_seconds": first_step,
        "later_step_seconds": later,
        "gc_ms": gc_ms,
    }
    if cuda:
        record["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if profile and cuda:
        record["gpu_ms_per_step"], record["gpu_kernels"] = _gpu_time_of(lambda: step(steps))
    return record


class GcPauses:
    """``with GcPauses() as pauses:`` adds up the host time Python's garbage collector runs; ``pauses.take()`` returns
    the milliseconds since the last take.  A slow step that compiled nothing may be a full collection of the
    objects a compile left behind."""

    def __init__(self):
        self.ms, self._started = 0.0, None

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.ms += (time.perf_counter() - self._started) * 1e3
            self._started = None

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)

    def take(self) -> float:
        ms, self.ms = self.ms, 0.0
        return ms


FIRST_STEP_COUNTS = (
    "autotune.buckets", "autotune.stored", "autotune.imported", "compile_pool.queued", "compile_pool.compiled",
    "compile_pool.failed", "compile_pool.unserialized",
)  # fmt: skip
"""The entries of ``first_step_seconds`` that are counts, not seconds."""


def compile_seconds(since: dict | None = None) -> dict:
    """Where compile time goes, as wall seconds by what: Dynamo/AOTAutograd/Inductor's own timers
    (``torch._dynamo.utils.compilation_time_metrics``, prefixed ``torch.``), and fp4's
    (:data:`fp4.runtime.autotune.SECONDS`: plan building, the autotuner's compiles and timing, compile-ahead)
    with ``autotune.buckets``, the number of shape buckets timed, ``autotune.stored`` / ``imported`` / ``shipped``,
    the choices taken without timing (this machine's cache, ``FP4_AUTOTUNE_CHOICES``, the package's tables), and
    ``compile_pool.*``, the compiles handed to worker processes (``FP4_COMPILE_PROCESSES``); with ``since``, the
    growth since that snapshot.  The timers nest (Inductor's include the kernels compiled ahead beside them), so
    they do not add up."""
    from fp4.runtime import autotune, compile_pool
    from torch._dynamo.utils import compilation_time_metrics

    now = {f"torch.{name}": sum(times) for name, times in compilation_time_metrics.items()}
    now.update({name: seconds for name, seconds in autotune.SECONDS.items()})
    now["autotune.buckets"] = len(autotune.AUTOTUNER.timings)
    now.update({f"autotune.{origin}": count for origin, count in autotune.CHOICES.items()})
    now.update({f"compile_pool.{what}": count for what, count in compile_pool.STATS.items()})
    return now if since is None else growth(now, since)


def growth(now: dict, since: dict) -> dict:
    """What grew from the snapshot ``since`` to ``now`` (both :func:`compile_seconds`), left out what did not."""
    grown = {name: round(value - since.get(name, 0), 3) for name, value in now.items()}
    # seconds first, largest first; then the counts, so no count reads as a time
    ordered = sorted(grown.items(), key=lambda item: (item[0] in FIRST_STEP_COUNTS, -item[1]))
    return {name: value for name, value in ordered if value > 0}


def steady_steps(times: list) -> list:
    """The steps that count in the medians and maxima: from the third on (steps 1 and 2 compile and warm up), the
    second with two steps, the only one with one."""
    return times[2:] or times[1:] or times


def _release_memory() -> None:
    import torch

    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _gpu_time_of(fn, top: int = 30) -> tuple[float, list]:
    """Device time of the kernels ``fn`` launches, in ms (torch.profiler, summed over kernels), and the ``top``
    kernels by device time as ``[name, ms, calls]``: where a step's GPU time goes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    totals: dict[str, list] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals.setdefault(event.name[:120], [0.0, 0])
            entry[0] += event.device_time / 1e3
            entry[1] += 1
    kernels = sorted(([name, round(ms, 4), calls] for name, (ms, calls) in totals.items()), key=lambda k: -k[1])
    return sum(ms for ms, _ in totals.values()), kernels[:top]


def bench_models(names, log, modes=MODES, steps=8, on_record=None) -> list[dict]:
    """Every configuration in every mode; ratios against ``bf16_inductor`` of the same configuration.

    ``on_record(config, record)`` is called as each mode finishes (the command writes it to disk at once, so a run
    cut short keeps what it measured)."""
    rows = []
    for name in names:
        shape = CONFIGS[name]
        records = {}
        for mode in modes:
            try:
                record = train_steps(shape, mode, steps)
            except Exception as error:  # noqa: BLE001  (one failing mode is reported, the others still run)
                log(f"{name} {mode}: failed ({type(error).__name__}: {str(error)[:300]})")
                records[mode] = {"mode": mode, "error": f"{type(error).__name__}: {error}"[:2000]}
                continue
            finally:
                _release_memory()
            records[mode] = record
            if on_record is not None:
                on_record(name, record)
            log(
                f"{name:12s} {mode:15s} median {record['median_step_ms']:8.2f} ms  max {record['max_step_ms']:8.2f} "
                f"first {record['first_step_ms'] / 1e3:6.1f} s  host {record['host_ms_per_step']:7.2f} ms  "
                f"gpu {record.get('gpu_ms_per_step', float('nan')):7.2f} ms  "
                f"{record['tokens_per_s']:9.0f} tok/s  peak {record.get('peak_memory_gib', 0):5.1f} GiB"
            )
            first = record.get("first_step_seconds", {})
            top = [f"{k} {v:g}" for k, v in first.items() if k not in FIRST_STEP_COUNTS][:6]
            counts = [f"{k} {v:g}" for k, v in first.items() if k in FIRST_STEP_COUNTS]
            log(
                f"{'':12s} first step, seconds by timer: {', '.join(top)}"
                + (f"; counts: {', '.join(counts)}" if counts else "")
            )
            for number, grown in record.get("later_step_seconds", {}).items():
                log(f"{'':12s} step {number} compiled too: {', '.join(f'{k} {v:g}' for k, v in grown.items())}")
            if max(record.get("gc_ms", [0])[1:], default=0) >= 5:
                log(f"{'':12s} garbage collection, ms per step: {record['gc_ms']}")
        baseline = records.get("bf16_inductor", {}).get("median_step_ms")
        for record in records.values():
            row = {"config": name, **shape, **record}
            if baseline and "median_step_ms" in record:
                row["vs_bf16_inductor"] = baseline / record["median_step_ms"]
            rows.append(row)
    return rows


def table_head(columns: list[str]) -> list[str]:
    """A markdown table's header line and rule."""
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def failed_row(cells: list, error: str, columns: int) -> str:
    """The row of a mode that failed: the cells that name it, the error, the other columns empty."""
    return "| " + " | ".join(map(str, cells)) + f" | failed: {error[:100]} |" + " |" * (columns - len(cells) - 1)


MODEL_COLUMNS = ["config", "mode", "median step ms", "max step ms (step ≥ 3)", "first step s", "host ms/step",
                 "GPU ms/step", "tokens/s", "peak GiB", "× bf16 Inductor"]  # fmt: skip


def markdown(rows) -> list[str]:
    lines = table_head(MODEL_COLUMNS)
    for r in rows:
        if "error" in r:
            lines.append(failed_row([r["config"], r["mode"]], r["error"], len(MODEL_COLUMNS)))
            continue
        lines.append(
            f"| {r['config']} | {r['mode']} | {r['median_step_ms']:.2f} | {r['max_step_ms']:.2f} "
            f"| {r['first_step_ms'] / 1e3:.1f} | {r['host_ms_per_step']:.2f} "
            f"| {r.get('gpu_ms_per_step', float('nan')):.2f} "
            f"| {r['tokens_per_s']:.0f} | {r.get('peak_memory_gib', float('nan')):.1f} "
            f"| {r.get('vs_bf16_inductor', float('nan')):.2f} |"
        )
    return lines
