"""The Inductor launch path without a GPU: the option, the ``fp4_triton`` twins and the graphs they trace into.

Fake CUDA tensors stand for the GPU's: a twin traced under functionalization
becomes the plan's kernel launch (``triton_kernel_wrapper_functional`` with the
plan's kernel, grid, tile sizes and arguments), and the signatures that cannot
go this way stay fp4 ops, counted with their reason.  The target is set by
hand and autotuning is off, so each kernel runs its catalogue's first
configuration.  That the launches give the plan's bits is checked on a GPU
(``tests/gpu/test_inductor_launch_gpu.py``).
"""

from __future__ import annotations

import copy

import pytest
import torch
from fp4 import bench_launch
from fp4.codegen.lanes import stream_addend
from fp4.codegen.spec import QuantizeSpec
from fp4.core import STREAM_MULTIPLIER, Target
from fp4.options import Options
from fp4.runtime import inductor_launch, kernels, launch
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table, triton_kernel_wrapper_functional
from torch._subclasses.fake_tensor import FakeTensorMode
from torch._subclasses.functional_tensor import dispatch_functionalize
from torch.fx.experimental.proxy_tensor import make_fx

fp4 = torch.ops.fp4


@pytest.fixture
def on_target(monkeypatch, tmp_path):
    """Fake CUDA tensors on the given target, autotuning off, Triton's FP contraction default off."""
    monkeypatch.setenv("FP4_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FP4_AUTOTUNE", "0")
    monkeypatch.setenv(inductor_launch.FP_FUSION_ENV, "0")

    def use(name: str) -> FakeTensorMode:
        monkeypatch.setattr(launch, "_device_target", lambda index: Target.parse(name))
        return FakeTensorMode()

    return use


def _graph(mode, function, *shapes):
    """``function`` traced on fake CUDA tensors of ``shapes`` (``(shape, dtype)`` pairs) with its fp4 ops whole."""
    with mode:
        values = [torch.empty(shape, dtype=dtype, device="cuda") for shape, dtype in shapes]
        return make_fx(function)(*values)


def _fp4_ops(gm) -> list[str]:
    return [
        n.target._schema.name.partition("::")[2]
        for n in gm.graph.nodes
        if getattr(n.target, "namespace", None) == "fp4"
    ]


def _launches(gm) -> list[tuple]:
    """``(kernel name, grid, kwargs, configs)`` of every kernel launch in ``gm``."""
    found = []
    for node in gm.graph.nodes:
        if node.target is triton_kernel_wrapper_functional:
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            configs = getattr(kernel, "configs", [])
            function = getattr(kernel, "fn", kernel)
            kwargs = {**kernel_side_table.get_constant_args(node.kwargs["constant_args_idx"]), **node.kwargs["kwargs"]}
            found.append((function.__name__, node.kwargs["grid"], kwargs, configs))
    return found


def _output_values(gm) -> list:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    flat = torch.fx.node.map_aggregate(output.args[0], lambda n: n.meta["val"] if isinstance(n, torch.fx.Node) else n)
    return torch.utils._pytree.tree_leaves(flat)


def _same_values(before, after) -> None:
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        assert (a.shape, a.stride(), a.dtype, a.device) == (b.shape, b.stride(), b.dtype, b.device)


def test_launch_option():
    assert Options().launch == "plan"
    assert Options.from_mapping({"launch": "inductor"}).launch == "inductor"
    with pytest.raises(ValueError, match="'launch' takes one of"):
        Options(launch="triton")
    with pytest.raises(ValueError, match="needs inductor=True"):
        Options(launch="inductor", inductor=False)


def test_every_twin_has_its_fp4_ops_schema():
    assert set(inductor_launch.TWINS) == set(inductor_launch.FP4_OPS.values())
    for op, twin in inductor_launch.TWINS.items():
        assert twin.namespace == inductor_launch.NAMESPACE
        want = str(op._schema).replace("fp4::", f"{inductor_launch.NAMESPACE}::", 1)
        assert str(twin._schema) == want


def test_quantizers_and_gemm_trace_into_the_plans_kernel_launches(on_target):
    mode = on_target("sm_80")  # the bf16 dequantize GEMM: a pointer kernel

    def step(x, w, grad, seed):
        xc, xs, xm = fp4.quest_quantize(x, True)
        wc, ws, _ = fp4.quest_quantize(w, True)
        xc, xs = xc.flatten(0, 1), xs.flatten(0, 1)
        y = fp4.mxfp4_gemm(xc, xs, wc, ws, 0.5, None, "none", None, None, None, False, torch.bfloat16)
        gc, gs = fp4.sr_quantize(grad, seed, 1, 2, True)  # stream 2: its addend's 64-bit value is negative
        rc, rs = fp4.requantize_sr(wc, ws, seed, 1, 3)
        return y, xm, gc, gs, rc, rs

    bf16, u8 = torch.bfloat16, torch.uint8
    gm = _graph(mode, step, ((4, 64, 512), bf16), ((384, 512), bf16), ((256, 384), bf16), ((), torch.int64))
    before = _output_values(gm)
    counts = inductor_launch.decompose(gm)
    assert counts == {
        "inductor.quest_quantize": 2, "inductor.mxfp4_gemm": 1, "inductor.sr_quantize": 1,
        "inductor.requantize_sr": 1,
    }  # fmt: skip
    assert _fp4_ops(gm) == []
    _same_values(before, _output_values(gm))

    launches = _launches(gm)
    specs = [
        QuantizeSpec("quest", "dense", "last", True, False, "bf16"),
        QuantizeSpec("quest", "dense", "last", True, False, "bf16"),
        None,  # the GEMM
        QuantizeSpec("sr", "dense", "first", True, True, "bf16"),
        QuantizeSpec("sr", "mxfp4", "first", True, True, "u8"),
    ]
    assert len(launches) == len(specs)
    rows = (256, 384)  # the flattened activation, the weight
    for index, spec in enumerate(specs[:2]):
        name, grid, kwargs, configs = launches[index]
        config = kernels.quantize_configs(spec)[0]
        assert name == kernels.quantize_source(spec).name
        assert tuple(grid[0]) == (-(-rows[index] // config.kwargs["BLOCK_ROWS"]), 1, 1)
        assert {k: kwargs[k] for k in config.kwargs} == config.kwargs
        assert (configs[0].num_warps, configs[0].num_stages) == (config.num_warps, config.num_stages)
        assert (kwargs["rows"], kwargs["cols"], kwargs["out_width"]) == (rows[index], 512, 512)
    name, grid, kwargs, configs = launches[2]
    gemm = launch.LOWERINGS["dequant_bf16"]
    config = gemm.configs(gemm.variant("", launch.Epilogue(0.5).spec()))[0]
    assert name.startswith("mxfp4_gemm_dequant_bf16")
    assert (kwargs["M"], kwargs["N"], kwargs["K"], kwargs["alpha"]) == (256, 384, 512, 0.5)
    assert {k: kwargs[k] for k in config.kwargs} == config.kwargs and kwargs["EVEN_K"] is True
    # transposed outputs: [384, pad(256)] of the gradient, [512, pad(384)] of the weight; 64 x 2 groups a program
    for (name, grid, kwargs, _), spec, want in zip(launches[3:], specs[3:], ((6, 4, 1), (8, 6, 1)), strict=True):
        assert name == kernels.quantize_source(spec).name and tuple(grid[0]) == want
        assert {"seed_ptr", "stream_addend_lo", "stream_addend_hi", "sign_addend_lo", "sign_addend_hi"} <= set(kwargs)
        # the 64-bit addends travel as signed 32-bit words, which Inductor passes intact
        assert all(-(2**31) <= kwargs[k] < 2**31 for k in kwargs if "_addend_" in k)
    # the stochastic-rounding launches read the layer's seed tensor (on the device) themselves
    seed = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.meta["val"].dtype == torch.int64)
    assert [kwargs["seed_ptr"] for _, _, kwargs, _ in launches[3:]] == [seed, seed]
    assert [v.dtype for v in _output_values(gm)[2:]] == [u8] * 4


def test_hopper_folds_launch_from_inductor_and_tma_gemms_stay_on_plans(on_target):
    mode = on_target("sm_90")

    def forward(x, w):
        xf = fp4.quest_quantize_fold(x, True)
        wf = fp4.quest_quantize_fold(w, True)
        y = fp4.fp8_fold_gemm(xf[3], xf[4], wf[3], wf[4], 1.0, None, "none", None, None, None, False, torch.bfloat16)
        return (
            y,
            fp4.fold_fp8(xf[0], xf[1]),
            fp4.mxfp4_gemm(xf[0], xf[1], wf[0], wf[1], 1.0, None, "none", None, None, None, False, torch.bfloat16),
        )

    gm = _graph(mode, forward, ((128, 256), torch.bfloat16), ((256, 256), torch.bfloat16))
    before = _output_values(gm)
    counts = inductor_launch.decompose(gm)
    assert counts["inductor.quest_quantize_fold"] == 2 and counts["inductor.fold_fp8"] == 1
    # without autotuning the first candidate runs: a TMA variant, which a traced launch cannot pass descriptors to
    tma = [key for key in counts if key.startswith("plan.") and "TMA tensor descriptors" in key]
    assert sorted(key.split(".")[1] for key in tma) == ["fp8_fold_gemm", "mxfp4_gemm"]
    assert sorted(_fp4_ops(gm)) == ["fp8_fold_gemm", "mxfp4_gemm"]
    _same_values(before, _output_values(gm))
    names = [name for name, *_ in _launches(gm)]
    assert names.count(kernels.quantize_source(QuantizeSpec("quest", fold=True)).name) == 2
    assert names.count(kernels.fold_source().name) == 1


def test_a_gemm_given_to_cublas_product_and_the_epilogue_kernel_stays_on_its_plan(on_target, monkeypatch):
    """A backward GEMM whose chosen variant finishes cuBLAS's product keeps its plan launch, with the reason: the
    product is no Triton kernel to emit."""
    from fp4.runtime import autotune

    mode = on_target("sm_90")
    choose_product = lambda source, target, bucket, candidates, run, compile=None: next(  # noqa: E731
        config for config in candidates if config.name == "cublas_epilogue"
    )
    monkeypatch.setattr(autotune.AUTOTUNER, "choose", choose_product)
    monkeypatch.setattr(launch.LOWERINGS["fp8_fold"], "cublas_product", True)  # a candidate (FP4_CUBLAS_PRODUCT)

    def backward(a, a_scales, b, b_scales, mask):
        return fp4.fp8_fold_gemm(a, a_scales, b, b_scales, 0.5, None, "none", None, None, mask, True, torch.bfloat16)

    e4m3, f32 = torch.float8_e4m3fn, torch.float32
    shapes = ((160, 256), e4m3), ((160,), f32), ((224, 256), e4m3), ((224,), f32), ((160, 224 // 8), torch.uint8)
    gm = _graph(mode, backward, *shapes)
    (reason,) = inductor_launch.decompose(gm)
    assert reason.startswith("plan.fp8_fold_gemm.") and "'cublas_epilogue'" in reason and "_scaled_mm" in reason
    assert _fp4_ops(gm) == ["fp8_fold_gemm"] and _launches(gm) == []


def test_signatures_the_kernels_do_not_cover_stay_fp4_ops_with_their_reason(on_target, monkeypatch):
    mode = on_target("sm_80")
    gm = _graph(mode, lambda x: fp4.quest_quantize(x, True), ((64, 128), torch.float64))
    counts = inductor_launch.decompose(gm)
    assert counts == {"plan.quest_quantize.the plan runs the reference (input dtype torch.float64)": 1}
    assert _fp4_ops(gm) == ["quest_quantize"]

    # Inductor would cut an integer argument below int32's minimum to int32, and fails on a constant above its
    # maximum: a launch with either stays on its plan
    class Kernel:
        class function:
            arg_names = ["x_ptr", "rows", "offset"]

    for value in (-(2**40), 2**31):
        assert inductor_launch._arguments_reason(Kernel, [None, 64, value]) == (
            f"its integer argument offset={value} is outside int32's range, which Inductor does not pass intact"
        )
    assert inductor_launch._arguments_reason(Kernel, [None, 64, -(2**31)]) is None
    assert inductor_launch._arguments_reason(Kernel, [None, 64, 2**31 - 1]) is None
    # the Philox streams' addends are in range for every stream
    for stream in (0, 1, 5, 2**20):
        words = stream_addend(stream)
        assert all(-(2**31) <= word < 2**31 for word in words)
        assert ((words[1] & 0xFFFFFFFF) << 32 | (words[0] & 0xFFFFFFFF)) == (stream + 1) * STREAM_MULTIPLIER % 2**64
    # Inductor compiles a user kernel with Triton's default FP contraction; the plans compile without it
    monkeypatch.setenv(inductor_launch.FP_FUSION_ENV, "1")
    gm = _graph(mode, lambda x: fp4.quest_quantize(x, True), ((64, 128), torch.bfloat16))
    (reason,) = inductor_launch.decompose(gm)
    assert reason.startswith("plan.quest_quantize.") and f"set {inductor_launch.FP_FUSION_ENV}=0" in reason
    assert _fp4_ops(gm) == ["quest_quantize"]


def test_the_twin_is_one_op_in_a_graph_and_its_kernel_under_functionalization(on_target):
    mode = on_target("sm_100")
    twin = torch.ops.fp4_triton.sr_quantize
    with mode:
        x = torch.empty(64, 256, dtype=torch.bfloat16, device="cuda")
        seed = torch.empty((), dtype=torch.int64, device="cuda")
        whole = make_fx(lambda x, seed: twin(x, seed, 1, 4, False))(x, seed)
        traced = make_fx(dispatch_functionalize(lambda x, seed: twin(x, seed, 1, 4, False)))(x, seed)
        codes, scales = twin(x, seed, 1, 4, False)  # the fake implementation: the fp4 op's shapes
        want = fp4.sr_quantize(x, seed, 1, 4, False)
    assert [n.target for n in whole.graph.nodes if n.op == "call_function"][0] is twin.default
    (found,) = _launches(traced)
    assert found[0] == kernels.quantize_source(QuantizeSpec("sr", signs=True)).name
    assert [(t.shape, t.dtype) for t in (codes, scales)] == [(t.shape, t.dtype) for t in want]


def test_the_backend_option_decomposes_each_compiled_graph():
    """On CPU tensors no op has a kernel to launch: every fp4 op of the forward and backward graphs is offered to
    the Inductor launch path, keeps its plan (the reference) with the reason, and the step gives the same bits."""
    from fp4.backend import configure

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 96).to(torch.bfloat16)
    x = torch.randn(32, 64, dtype=torch.bfloat16)
    results = {}
    for launch_option in ("plan", "inductor"):
        backend = configure(inductor=True, exclude=[], launch=launch_option)
        layer = copy.deepcopy(model)
        torch._dynamo.reset()
        torch.manual_seed(1)  # the layer seeds
        out = torch.compile(layer, backend=backend)(x.clone().requires_grad_())
        out.float().square().sum().backward()
        results[launch_option] = [out.detach(), layer.weight.grad, layer.bias.grad], backend.reports[0].counters
    for got, want in zip(results["inductor"][0], results["plan"][0], strict=True):
        assert torch.equal(got, want)
    counters = results["inductor"][1]
    kept = {key.split(".")[2] for key in counters if key.startswith("launch.plan.") and "tensors on ['cpu']" in key}
    assert {"quest_quantize", "sr_quantize", "requantize_sr", "mxfp4_gemm"} <= kept, sorted(counters)
    assert not any(key.startswith("launch.") for key in results["plan"][1])


def test_the_launch_comparison_calls_only_ops_with_twins_and_compares_bits():
    """The op table shared by ``host_overhead.py --compare-launch`` and the GPU tests (``fp4.bench_launch``)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 64, dtype=torch.bfloat16, generator=generator)
    w = torch.randn(96, 64, dtype=torch.bfloat16, generator=generator)
    dy = torch.randn(64, 96, dtype=torch.bfloat16, generator=generator)
    bias = torch.randn(96, dtype=torch.bfloat16, generator=generator)
    seed = fp4.draw_seeds(1, x.device)[0]
    cases = bench_launch.launch_cases(x, w, dy, seed, bias)
    assert set(bench_launch.LAUNCH_OPS) <= set(cases)
    for name, (function, inputs) in cases.items():
        called = _fp4_ops(make_fx(function)(*inputs))
        assert called == [name.split()[0]], name
        assert f"fp4::{called[0]}" in inductor_launch.FP4_OPS, name
        assert bench_launch.outputs_differ(function(*inputs), function(*inputs)) is None, name  # the reference
    codes, scales, mask = cases["quest_quantize"][0](x)
    assert bench_launch.outputs_differ((codes, scales), (codes, scales, mask)) == "2 outputs against 3"
    assert bench_launch.outputs_differ(codes, codes ^ 1) == "output 0: values differ"
    flat = codes.flatten(0, 1)
    assert bench_launch.outputs_differ(flat, flat.t()).startswith("output 0: (64, 32) torch.uint8 against (32, 64)")
