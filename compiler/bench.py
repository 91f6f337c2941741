"""``fp4 bench``: time the kernels against cuBLAS and the copy bandwidth, baselines in the same run.

Sections (``--sections gemm,quantize,linear,compiled,model``, or ``distributed`` on its own):

* ``gemm``: the MXFP4 GEMM at square sizes and Llama-7B/70B linear shapes, against
  bf16 cuBLAS (``torch.matmul``) and FP8 cuBLAS with row-wise scales
  (``torch._scaled_mm``) on the same folded operands.  Every variant the
  runtime may pick is timed; "ours" is what the runtime picks for the shape.
* ``quantize``: each rotate + quantize kernel in TB/s of bytes read + written,
  against a device-to-device copy of the input.
* ``linear``: one linear layer's forward + backward at the Llama-7B MLP shape,
  Quartet on the kernels against bf16 eager.
* ``compiled``: a training step (forward + backward) of a Llama-7B SwiGLU block
  under ``torch.compile(block, backend="fp4")`` against the same block in bf16,
  eager and compiled by Inductor.
* ``model``: whole ``LlamaForCausalLM`` training steps (:mod:`fp4.bench_model`): bf16 eager,
  bf16 Inductor, ``backend="fp4"`` with and without CUDA graphs, per configuration
  (``--models``); written to ``bench_model_<card>.json`` as well.

* ``distributed``: DDP and FSDP2 training of ``LlamaForCausalLM`` on N GPUs, fp4 against bf16
  (:mod:`fp4.bench_distributed`, which has its own options and starts its own ranks):
  ``fp4 bench --sections distributed --gpus 2 --scaling --check``.

``--recipes quartet,quartet2,nvfp4`` adds the recipe axis (:mod:`fp4.bench_recipes`): the GEMM
section times each recipe's GEMM and forward quantizers per shape, the model section runs every
fp4 mode once per recipe.

Writes ``bench.json``, ``results.md`` and ``gemm_tflops.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

from .bench_model import card_slug, utc_date

SQUARE_SIZES = (2048, 4096, 8192, 16384)
TOKENS = 8192
LLAMA_SHAPES = {
    # name: (M tokens, N out features, K in features)
    "llama7b.qkv_o": (TOKENS, 4096, 4096),
    "llama7b.up_gate": (TOKENS, 11008, 4096),
    "llama7b.down": (TOKENS, 4096, 11008),
    "llama70b.o": (TOKENS, 8192, 8192),
    "llama70b.up_gate": (TOKENS, 28672, 8192),
    "llama70b.down": (TOKENS, 8192, 28672),
}


def _median_ms(fn, warmup_ms=25, rep_ms=100, graph=False) -> float:
    """Median time of ``fn`` in ms (device events); ``graph`` replays a CUDA graph to leave launch overhead out."""
    import triton.testing

    fn()  # compile and autotune outside the timing
    if graph:
        try:
            return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
        except Exception:  # noqa: BLE001  (a launcher that cannot be captured is timed without a graph)
            pass
    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def _tflops(M, N, K, ms):
    return 2.0 * M * N * K / (ms * 1e-3) / 1e12


def bench_gemm(shapes, log, variants=True):
    import torch

    rows = []
    for name, (M, N, K) in shapes.items():
        sweep = variants == "all" or (variants == "square" and name.startswith("square"))
        rows.append(_bench_gemm_shape(name, M, N, K, log, sweep))
        torch.cuda.empty_cache()
    return rows


def _bench_gemm_shape(name, M, N, K, log, variants):
    import torch
    from fp4.codegen.spec import EpilogueSpec, GemmSpec
    from fp4.runtime import autotune, launch
    from fp4.runtime.lowering import LOWERINGS

    fold_lowering = LOWERINGS["fp8_fold"]

    generator = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, K, device="cuda", generator=generator, dtype=torch.bfloat16)
    w = (torch.randn(N, K, device="cuda", generator=generator) * 0.02).to(torch.bfloat16)
    row = {"name": name, "M": M, "N": N, "K": K}
    row["bf16_cublas_ms"] = _median_ms(lambda: torch.matmul(x, w.t()), graph=True)
    xc, xs, _ = torch.ops.fp4.quest_quantize(x, True)
    wc, ws, _ = torch.ops.fp4.quest_quantize(w, True)
    xf, xfs = launch.launch_fold(xc, xs)
    wf, wfs = launch.launch_fold(wc, ws)
    scale_a, scale_b = xfs[:, None].contiguous(), wfs[None, :].contiguous()
    row["fp8_cublas_ms"] = _median_ms(
        lambda: torch._scaled_mm(xf, wf.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16),
        graph=True,
    )
    row["fp8_cublas_fast_ms"] = _median_ms(
        lambda: torch._scaled_mm(
            xf, wf.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16, use_fast_accum=True
        ),
        graph=True,
    )
    if variants:
        best = {}
        sweeps = [
            (True, variant, config)
            for variant in ("tma", "tma_persistent")
            for config in fold_lowering.configs(GemmSpec("fp8_fold", EpilogueSpec(), promote=True))
        ]
        fast = autotune.Config.make(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, SPLIT_N=2)
        sweeps += [(False, variant, fast) for variant in ("tma", "tma_persistent")]  # fmt: skip
        for promote, variant, config in sweeps:
            fold_lowering.promote = promote
            cfg = autotune.Config(config.params, config.num_warps, config.num_stages, variant)
            kind = variant + ("" if promote else "+fast_accum")
            try:
                ms = _median_ms(lambda cfg=cfg: launch.launch_fold_gemm(xf, xfs, wf, wfs, config=cfg), graph=True)
            except Exception as error:  # a config that does not fit is reported, not fatal
                log(f"  {name} {kind} {cfg.label()}: failed ({type(error).__name__}: {str(error)[:120]})")
                continue
            row.setdefault("candidates", {})[f"{kind}:{cfg.label()}"] = ms
            if ms < best.get(kind, (math.inf,))[0]:
                best[kind] = (ms, cfg.label())
        fold_lowering.promote = True
        row["triton_best"] = {k: {"ms": v[0], "config": v[1]} for k, v in best.items()}
        precise = [v[0] for k, v in best.items() if "fast_accum" not in k]
        fast_ms = [v[0] for k, v in best.items() if "fast_accum" in k]
        row["triton_best_ms"] = min(precise) if precise else math.nan
        row["triton_fast_accum_best_ms"] = min(fast_ms) if fast_ms else math.nan
    row["ours_ms"] = _median_ms(lambda: launch.launch_fold_gemm(xf, xfs, wf, wfs), graph=True)
    row["ours_choice"] = _chosen_label(M, N, K)
    row["ours_from_codes_ms"] = _median_ms(
        lambda: torch.ops.fp4.mxfp4_gemm(xc, xs, wc, ws, 1.0, None, "none", None, None, None, False, torch.bfloat16),
        graph=True,
    )
    for key in ("bf16_cublas", "fp8_cublas", "fp8_cublas_fast", "triton_best", "triton_fast_accum_best", "ours",
                "ours_from_codes"):  # fmt: skip
        if f"{key}_ms" in row:
            row[f"{key}_tflops"] = _tflops(M, N, K, row[f"{key}_ms"])
    row["ours_vs_bf16"] = row["bf16_cublas_ms"] / row["ours_ms"]
    row["ours_vs_fp8"] = row["fp8_cublas_ms"] / row["ours_ms"]
    if "triton_best_ms" in row:
        row["triton_vs_fp8"] = row["fp8_cublas_ms"] / row["triton_best_ms"]
    log(
        f"{name:18s} {M}x{N}x{K}: bf16 {row['bf16_cublas_tflops']:7.1f}  fp8 {row['fp8_cublas_tflops']:7.1f}  "
        f"(fast {row['fp8_cublas_fast_tflops']:7.1f})  triton {row.get('triton_best_tflops', math.nan):7.1f} "
        f"(fast {row.get('triton_fast_accum_best_tflops', math.nan):7.1f})  ours {row['ours_tflops']:7.1f} "
        f"({row['ours_choice']})  from codes {row['ours_from_codes_tflops']:7.1f}  "
        f"x bf16 {row['ours_vs_bf16']:.2f}  x fp8 {row['ours_vs_fp8']:.2f}"
    )
    return row


def _chosen_label(M, N, K):
    from fp4.runtime import autotune

    for key, config in autotune.AUTOTUNER._chosen.items():
        if key[-1] == autotune.bucket(M, N, K):
            return (config.name or "plain") + ":" + (config.label() if config.params else "")
    return ""


def bench_quantize(rows_cols, log):
    results = []
    for rows, cols in rows_cols:
        results += _bench_quantize_shape(rows, cols, log)
    return results


def _bench_quantize_shape(rows, cols, log):
    import torch

    fp4 = torch.ops.fp4
    x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
    copy_target = torch.empty_like(x)
    n = rows * cols
    copy_ms = _median_ms(lambda: copy_target.copy_(x))
    copy_tbs = 2 * n * 2 / (copy_ms * 1e-3) / 1e12
    codes, scales, _ = fp4.quest_quantize(x, True)
    seed = torch.tensor(7, device="cuda")
    packed = n // 2 + n // 32  # codes + scales
    # the ops as a compiled graph calls them (their launch plans), streams as for an input-grad GEMM
    cases = {
        "quest_quantize (rotate, last dim)": (lambda: fp4.quest_quantize(x, True), 2 * n + packed + n // 8),
        "quest_quantize + FP8 fold": (lambda: fp4.quest_quantize_fold(x, True), 2 * n + packed + n // 8 + n + 4 * rows),
        "sr_quantize (D.H, last dim)": (lambda: fp4.sr_quantize(x, seed, 0, 2, False), 2 * n + packed),
        "sr_quantize (D.H, first dim)": (lambda: fp4.sr_quantize(x, seed, 0, 2, True), 2 * n + packed),
        "requantize_sr (MXFP4 -> transposed)": (lambda: fp4.requantize_sr(codes, scales, seed, 0, 3), 2 * packed),
        "fold_fp8 (MXFP4 -> E4M3 + row scale)": (lambda: fp4.fold_fp8(codes, scales), packed + n + 4 * rows),
        "bias_grad (column sums)": (lambda: fp4.bias_grad(x, torch.bfloat16), 2 * n + 2 * cols),
    }  # fmt: skip
    results = []
    for name, (fn, nbytes) in cases.items():
        ms = _median_ms(fn)
        tbs = nbytes / (ms * 1e-3) / 1e12
        results.append(
            {"kernel": name, "rows": rows, "cols": cols, "ms": ms, "bytes": nbytes, "tb_s": tbs,
             "copy_tb_s": copy_tbs, "fraction_of_copy": tbs / copy_tbs}
        )  # fmt: skip
        log(f"{name:40s} {rows}x{cols}: {ms:7.3f} ms {tbs:5.2f} TB/s = {tbs / copy_tbs:5.1%} of copy ({copy_tbs:.2f})")
    return results


def linear_steps(tokens=TOKENS, in_features=4096, out_features=11008) -> dict:
    """Forward + backward of one linear layer on CUDA: ``{"bf16_eager": step, "quartet": step}``.

    ``quartet`` is the eager oracle ``quartet_linear`` with every op on its CUDA kernel.
    """
    import torch
    from fp4.runtime.oracle import quartet_linear

    x = torch.randn(tokens, in_features, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(out_features, in_features, device="cuda") * 0.02).to(torch.bfloat16).requires_grad_()
    grad = torch.randn(tokens, out_features, device="cuda", dtype=torch.bfloat16)
    seed = torch.tensor(5, device="cuda")

    def bf16_step():
        y = torch.nn.functional.linear(x, w)
        y.backward(grad)

    def quartet_step():
        y = quartet_linear(x, w, None, seed)
        y.backward(grad)

    return {"bf16_eager": bf16_step, "quartet": quartet_step}


def block_steps(tokens=TOKENS, dim=4096, hidden=11008) -> dict:
    """A training step (forward + backward) of a Llama-7B SwiGLU block on CUDA, per way of running it.

    ``{"bf16_eager": step, "bf16_inductor": step, "fp4": step}``; the compiled
    forms compile on their first call.
    """
    import torch

    from .models import FeedForward, LlamaConfig

    torch.manual_seed(0)
    block = FeedForward(LlamaConfig(dim=dim, hidden_dim=hidden)).to("cuda", torch.bfloat16)
    x = torch.randn(tokens, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(tokens, dim, device="cuda", dtype=torch.bfloat16)

    def step(module):
        def run():
            module(x).backward(grad)
            block.zero_grad(set_to_none=True)
            x.grad = None

        return run

    return {
        "bf16_eager": step(block),
        "bf16_inductor": step(torch.compile(block)),
        "fp4": step(torch.compile(block, backend="fp4")),
    }


def bench_linear(log, tokens=TOKENS, in_features=4096, out_features=11008):
    steps = linear_steps(tokens, in_features, out_features)
    bf16_ms = _median_ms(steps["bf16_eager"])
    quartet_ms = _median_ms(steps["quartet"])  # _median_ms compiles and autotunes outside the timing
    result = {"shape": [tokens, out_features, in_features], "bf16_eager_ms": bf16_ms, "quartet_ms": quartet_ms,
              "speedup": bf16_ms / quartet_ms}  # fmt: skip
    log(f"linear fwd+bwd {tokens}x{out_features}x{in_features}: bf16 eager {bf16_ms:.3f} ms, "
        f"Quartet kernels {quartet_ms:.3f} ms, x{result['speedup']:.2f}")  # fmt: skip
    return result


def bench_compiled(log, tokens=TOKENS, dim=4096, hidden=11008):
    """Time :func:`block_steps`: bf16 eager, bf16 Inductor and ``backend="fp4"``."""
    result = {"shape": [tokens, dim, hidden]}
    for name, step in block_steps(tokens, dim, hidden).items():
        result[f"{name}_ms"] = _median_ms(step)
    result["fp4_vs_eager"] = result["bf16_eager_ms"] / result["fp4_ms"]
    result["fp4_vs_inductor"] = result["bf16_inductor_ms"] / result["fp4_ms"]
    log(f"SwiGLU block fwd+bwd {tokens}x{dim}x{hidden}: bf16 eager {result['bf16_eager_ms']:.3f} ms, "
        f"bf16 Inductor {result['bf16_inductor_ms']:.3f} ms, fp4 {result['fp4_ms']:.3f} ms")  # fmt: skip
    return result


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    square = [r for r in rows if r["name"].startswith("square")]
    if not square:
        return
    sizes = [r["M"] for r in square]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, label in (("bf16_cublas", "bf16 cuBLAS"), ("fp8_cublas", "FP8 cuBLAS (row scales)"),
                       ("triton_best", "MXFP4 Triton (fold)"), ("ours", "MXFP4 fp4 runtime")):  # fmt: skip
        if f"{key}_tflops" in square[0]:
            ax.plot(sizes, [r[f"{key}_tflops"] for r in square], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("M = N = K")
    ax.set_ylabel("TFLOP/s")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(info, gemm_rows, quant_rows, linear, compiled=None, models=None, recipes=None):
    lines = [f"Card: {info['card']}; {info['date']}; torch {info['torch']}, Triton {info['triton']}.",
             f"Command: `{info['command']}`", ""]  # fmt: skip
    if gemm_rows:
        header = "| shape | M×N×K | bf16 cuBLAS | FP8 cuBLAS | FP8 cuBLAS fast | MXFP4 Triton | MXFP4 Triton fast |"
        lines += [header + " MXFP4 ours | ours ÷ bf16 | ours ÷ FP8 | runtime's choice |", "|---" * 11 + "|"]
        for r in gemm_rows:
            cells = [r["name"], f"{r['M']}×{r['N']}×{r['K']}"]
            for key in (
                "bf16_cublas",
                "fp8_cublas",
                "fp8_cublas_fast",
                "triton_best",
                "triton_fast_accum_best",
                "ours",
            ):
                cells.append(f"{r.get(key + '_tflops', math.nan):.0f}")
            cells += [f"{r['ours_vs_bf16']:.2f}", f"{r['ours_vs_fp8']:.2f}", r["ours_choice"]]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "TFLOP/s; each row's baselines timed in the same run on the same card (CUDA-graph replays, median).",
            "FP8 cuBLAS: `torch._scaled_mm` with row-wise scales on the folded operands",
            "(default: precise accumulation);",
            "'fast': `use_fast_accum=True` / accumulation inside the tensor core.  MXFP4 Triton: the best generated",
            "kernel with fp32 promotion of each K tile (the default numerics); ours: what the runtime picks.",
            "",
        ]
    if quant_rows:
        lines += ["| kernel | shape | ms | TB/s | % of copy |", "|---|---|---|---|---|"]
        for r in quant_rows:
            lines.append(f"| {r['kernel']} | {r['rows']}×{r['cols']} | {r['ms']:.3f} | {r['tb_s']:.2f} "
                         f"| {r['fraction_of_copy']:.0%} |")  # fmt: skip
        lines += [
            "",
            f"Copy bandwidth (read + write) measured in the same run: {quant_rows[0]['copy_tb_s']:.2f} TB/s.",
            "",
        ]
    if linear:
        lines.append(
            f"Linear layer forward + backward, {linear['shape']}: bf16 eager {linear['bf16_eager_ms']:.2f} ms, "
            f"Quartet on the kernels {linear['quartet_ms']:.2f} ms: ×{linear['speedup']:.2f}."
        )
    if compiled:
        lines.append(
            f"SwiGLU block training step, {compiled['shape']}: bf16 eager {compiled['bf16_eager_ms']:.2f} ms, "
            f"bf16 Inductor {compiled['bf16_inductor_ms']:.2f} ms, backend='fp4' {compiled['fp4_ms']:.2f} ms: "
            f"×{compiled['fp4_vs_eager']:.2f} vs eager, ×{compiled['fp4_vs_inductor']:.2f} vs Inductor."
        )
    if recipes:
        from .bench_recipes import markdown as recipe_markdown

        lines += ["", *recipe_markdown(recipes), ""]
    if models:
        from .bench_model import markdown as model_markdown

        lines += ["", *model_markdown(models), ""]
    return "\n".join(lines) + "\n"


def _section_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--sections", default="gemm,quantize,linear")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sections, _ = _section_parser().parse_known_args(argv)
    if "distributed" in sections.sections.split(","):
        from .bench_distributed import main as bench_distributed

        return bench_distributed(argv)  # its own options; it rejects other sections beside it
    parser = argparse.ArgumentParser(prog="fp4 bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="gemm,quantize,linear")
    parser.add_argument("--sizes", default=",".join(map(str, SQUARE_SIZES)), help="square GEMM sizes")
    parser.add_argument("--llama", action=argparse.BooleanOptionalAction, default=True, help="Llama linear shapes")
    parser.add_argument("--variants", default="square",
                        help="which GEMM shapes also time every kernel variant: all, square or none")  # fmt: skip
    parser.add_argument("--quantize-shapes", default="8192x8192,8192x11008")
    parser.add_argument("--models", default="llama7b-8l,llama1b-8l,small-6l", help="model configurations")
    parser.add_argument("--modes", default="bf16_eager,bf16_inductor,fp4,fp4_cudagraphs", help="model modes")
    parser.add_argument("--steps", type=int, default=8, help="training steps per model and mode")
    parser.add_argument("--recipes", default="quartet",
                        help="recipes to time in the gemm and model sections (quartet, quartet2, nvfp4)")  # fmt: skip
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    from .bench_recipes import check_recipes

    recipes = check_recipes([r.strip() for r in args.recipes.split(",") if r.strip()])

    import torch

    if not torch.cuda.is_available():
        print("fp4 bench needs a CUDA GPU", file=sys.stderr)
        return 2
    import fp4.runtime.calls  # noqa: F401  (the kernels as the CUDA implementations of the ops)
    import triton

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "card": torch.cuda.get_device_name(),
        "date": utc_date(),
        "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
        "command": "fp4 bench " + " ".join(argv),
    }  # fmt: skip
    log_lines = []

    def log(text):
        print(text, flush=True)
        log_lines.append(text)

    log(f"{info['card']}  torch {info['torch']}  triton {info['triton']}")
    sections = set(args.sections.split(","))
    gemm_rows, quant_rows, linear, compiled, models, recipe_rows = [], [], None, None, [], []
    started = time.time()
    if "quantize" in sections:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.quantize_shapes.split(",") if s]
        quant_rows = bench_quantize(shapes, log)
    if "gemm" in sections:
        shapes = {f"square{s}": (s, s, s) for s in (int(v) for v in args.sizes.split(",") if v)}
        if args.llama:
            shapes.update(LLAMA_SHAPES)
        gemm_rows = bench_gemm(shapes, log, variants=args.variants)
        if recipes != ["quartet"]:
            from .bench_recipes import bench_recipe_gemm

            recipe_rows = bench_recipe_gemm(shapes, recipes, log, _median_ms)
    if "linear" in sections:
        linear = bench_linear(log)
    if "compiled" in sections:
        compiled = bench_compiled(log)
    if "model" in sections:
        from .bench_model import bench_models
        from .bench_recipes import recipe_modes

        partial = out / "bench_model_records.jsonl"

        def keep(config, record):
            with partial.open("a") as stream:
                stream.write(json.dumps({"card": info["card"], "config": config, **record}) + "\n")

        modes = recipe_modes(args.modes.split(","), recipes)
        models = bench_models(args.models.split(","), log, modes=modes, steps=args.steps, on_record=keep)
        (out / f"bench_model_{card_slug(info['card'])}.json").write_text(
            json.dumps([{"card": info["card"], "date": info["date"], "command": info["command"], **row}
                        for row in models], indent=1)
        )  # fmt: skip
    info["seconds"] = time.time() - started
    results = {"info": info, "gemm": gemm_rows, "quantize": quant_rows, "linear": linear, "compiled": compiled,
               "model": models, "recipes": recipe_rows}  # fmt: skip
    (out / "bench.json").write_text(json.dumps(results, indent=1))
    report = markdown(info, gemm_rows, quant_rows, linear, compiled, models, recipe_rows)
    (out / "results.md").write_text(report)
    if gemm_rows:
        plot(gemm_rows, out / "gemm_tflops.png")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
