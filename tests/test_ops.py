"""The torch.ops.fp4 op set: opcheck, fake implementations against real ones, agreement with the reference."""

from __future__ import annotations

import itertools

import fp4.runtime as fp4_runtime
import pytest
import torch
from fp4.runtime import fold, gathered, nvfp4, ops, philox, quartet2, recipe_ops, variants
from fp4.runtime import reference as ref
from torch._subclasses.fake_tensor import FakeTensorMode

fp4 = torch.ops.fp4
SEED = torch.tensor(20240601, dtype=torch.int64)
CPU = torch.device("cpu")


def quantized(rows, k, seed=0):
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed))
    return fp4.quest_quantize(x, True)


def _cases():
    """(op name, args) covering several shapes, dtypes, optional arguments and every variant of every op."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=generator).to(dtype)

    a, sa, amask = quantized(16, 64, 1)
    b, sb, _ = quantized(32, 64, 2)
    fa, fsa = fold.fold_reference(a, sa)
    fb, fsb = fold.fold_reference(b, sb)
    cases = [
        ("quest_quantize", (randn(8, 32), True)),
        ("quest_quantize", (randn(2, 3, 64, dtype=torch.bfloat16), False)),
        ("quest_quantize", (randn(4, 96, dtype=torch.float16), True)),
        ("quest_quantize", (randn(8, 64), False)),
        ("sr_quantize", (randn(8, 64), SEED, 0, 2, False)),
        ("sr_quantize", (randn(40, 32, dtype=torch.bfloat16), SEED, ops.NO_SIGNS, 4, True)),
        ("sr_quantize", (randn(8, 40), SEED, 1, 5, False)),
        ("sr_quantize", (randn(32, 64), SEED, 1, 4, True)),
        ("requantize_sr", (a, sa, SEED, 0, 3)),
        ("requantize_sr", (*quantized(40, 32, 3)[:2], SEED, ops.NO_SIGNS, 5)),
        ("requantize_sr", (b, sb, SEED, 1, 5)),
        ("mxfp4_gemm", (a, sa, b, sb, 1.0, None, "none", None, None, None, False, torch.float32)),
        (
            "mxfp4_gemm",
            (
                a,
                sa,
                b,
                sb,
                0.5,
                randn(32, dtype=torch.bfloat16),
                "gelu_tanh",
                randn(16, 32, dtype=torch.bfloat16),
                randn(16, 32, dtype=torch.bfloat16),
                None,
                False,
                torch.bfloat16,
            ),
        ),  # fmt: skip
        ("mxfp4_gemm", (a, sa, b, sb, 1 / 9, None, "silu", None, None, amask[:, :4], True, torch.float16)),
        ("dequantize", (a, sa, 1.0, torch.float32)),
        ("dequantize", (b, sb, 1 / 3, torch.bfloat16)),
        ("bias_grad", (randn(24, 32), torch.float32)),
        ("bias_grad", (randn(24, 16, dtype=torch.bfloat16), torch.bfloat16)),
        ("apply_clip_mask", (randn(16, 64), amask)),
        ("apply_clip_mask", (randn(16, 32, dtype=torch.bfloat16), amask[:, :4])),
        ("inverse_rotate", (randn(16, 64),)),
        ("inverse_rotate", (randn(2, 4, 32, dtype=torch.bfloat16),)),
        ("fold_fp8", (a, sa)),
        ("fold_fp8", (b, sb)),
        ("quest_quantize_fold", (randn(8, 64), True)),
        ("quest_quantize_fold", (randn(8, 32, dtype=torch.bfloat16), False)),
        ("sr_quantize_fold", (randn(40, 64), SEED, 0, 2, False)),
        ("sr_quantize_fold", (randn(40, 64, dtype=torch.bfloat16), SEED, -1, 4, True)),
        ("requantize_sr_fold", (a, sa, SEED, 1, 5)),
        ("fp8_fold_gemm", (fa, fsa, fb, fsb, 1.0, None, "none", None, None, None, False, torch.float32)),
        (
            "fp8_fold_gemm",
            (fa, fsa, fb, fsb, 1 / 9, randn(32), "gelu", None, randn(16, 32), amask[:, :4], True, torch.bfloat16),
        ),
    ]
    # Every variant of the backward quantizers: rotation on/off, stochastic/nearest rounding, both
    # orientations, a quantized dimension that is (64, 32) and is not (40) a multiple of 32.
    for rotate, rounding, transpose in itertools.product((True, False), variants.ROUNDINGS, (False, True)):
        for rows, columns in ((64, 32), (40, 64)):
            cases.append(("quantize_grad", (randn(rows, columns), SEED, 0, 2, transpose, rotate, rounding)))
    for rotate, rounding in itertools.product((True, False), variants.ROUNDINGS):
        cases.append(("requantize_grad", (a, sa, SEED, 0, 3, rotate, rounding)))
        cases.append(("requantize_grad", (b, sb, SEED, ops.NO_SIGNS, 5, rotate, rounding)))
    for transpose in (False, True):
        cases.append(("sr_quantize_with_bias_grad", (randn(64, 32), SEED, 1, 4, transpose, torch.bfloat16)))
        cases.append(("sr_quantize_with_bias_grad", (randn(40, 32), SEED, 0, 2, transpose, torch.float32)))
    # The NVFP4 recipes' ops: both orientations, transform on/off, nearest and stochastic, a quantized dimension
    # that is (48, 128) and is not (40, 72) a multiple of 16 or 128.
    for transpose, hadamard, seed in itertools.product((False, True), (False, True), (None, SEED)):
        rows, columns = (40, 48) if transpose else (24, 48)
        cases.append(("nvfp4_quantize", (randn(rows, columns, dtype=torch.bfloat16), transpose, hadamard, seed, 2)))
    cases.append(("nvfp4_quantize", (randn(16, 32), True, True, SEED, 4)))
    w_codes, w_scales, w_decode = nvfp4.quantize_2d(randn(40, 64))
    cases += [
        ("nvfp4_quantize_2d", (randn(40, 64, dtype=torch.bfloat16),)),
        ("nvfp4_quantize_2d", (randn(32, 16),)),
        ("nvfp4_transpose_2d", (w_codes, w_scales)),
        ("nvfp4_transpose_2d", tuple(nvfp4.quantize_2d(randn(32, 48))[:2])),
        ("four_over_six_quantize", (randn(24, 64, dtype=torch.bfloat16),)),
        ("four_over_six_quantize", (randn(8, 16),)),
    ]
    x_codes, x_scales, x_decode = quartet2.four_over_six_quantize(randn(72, 64))
    for transpose in (False, True):
        cases.append(("eden_quantize", (randn(40, 128, dtype=torch.bfloat16), SEED, 0, 2, transpose)))
        cases.append(("eden_quantize", (randn(72, 256), SEED, 0, 4, transpose)))
    cases.append(("eden_requantize", (x_codes, x_scales, x_decode, SEED, 0, 5)))
    cases.append(("eden_requantize", (w_codes, w_scales, w_decode, SEED, 0, 3)))
    g_codes, g_scales, g_decode = nvfp4.quantize(randn(24, 64))
    cases.append(
        ("nvfp4_gemm", (g_codes, g_scales, g_decode, w_codes, w_scales, w_decode, None, "none", None, None,
                        torch.float32))
    )  # fmt: skip
    cases.append(
        ("nvfp4_gemm", (g_codes, g_scales, g_decode, w_codes, w_scales, w_decode, randn(40, dtype=torch.bfloat16),
                        "silu", randn(24, 40, dtype=torch.bfloat16), randn(24, 40, dtype=torch.bfloat16),
                        torch.bfloat16))
    )  # fmt: skip
    return cases


CASES = _cases()
CASE_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]
ALL_OPS = fp4_runtime.OPS


def _has_fp8(args) -> bool:
    return any(isinstance(arg, torch.Tensor) and arg.dtype == fold.FP8_DTYPE for arg in args)


@pytest.mark.parametrize(("name", "args"), CASES, ids=CASE_IDS)
def test_opcheck(name, args):
    op = getattr(fp4, name).default
    if not _has_fp8(args):
        torch.library.opcheck(op, args)
        return
    # opcheck's schema check compares the inputs with torch.allclose, which float8 lacks on the CPU:
    # run the other checks, and check what the schema check would (no input mutated) bit for bit.
    torch.library.opcheck(
        op, args, test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    )
    before = [arg.clone() for arg in args if isinstance(arg, torch.Tensor)]
    op(*args)
    after = [arg for arg in args if isinstance(arg, torch.Tensor)]
    assert all(torch.equal(x.view(torch.uint8), y.view(torch.uint8)) for x, y in zip(before, after))
    assert not any(argument.is_write for argument in op._schema.arguments if argument.alias_info is not None)


def test_opcheck_draw_seeds():
    # draw_seeds is random: the AOT-dispatch check would compare two different draws.
    for n in (0, 1, 5):
        torch.library.opcheck(
            fp4.draw_seeds.default,
            (n, CPU),
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
        )


def _describe(value):
    """Everything a fake promises about a result: shape, dtype, device and strides."""
    if isinstance(value, (tuple, list)):
        return [_describe(item) for item in value]
    return (tuple(value.shape), value.dtype, value.device.type, value.stride())


def _column_major(arg):
    """The same values with a transposed memory layout (a 2-D tensor's stride is then (1, rows))."""
    if isinstance(arg, torch.Tensor) and arg.dim() == 2 and arg.shape[0] > 1 and arg.shape[1] > 1:
        return arg.t().contiguous().t()
    return arg


@pytest.mark.parametrize("layout", ["row-major", "column-major"])
@pytest.mark.parametrize(("name", "args"), CASES, ids=CASE_IDS)
def test_fake_matches_real(name, args, layout):
    """The fake describes exactly what the real op returns, strides included, whatever the inputs' layout.

    Inductor lays out buffers by the fake: a real result with other strides fails its stride assertions
    (or is read wrongly) in the compiled graph.
    """
    if layout == "column-major":
        args = tuple(_column_major(arg) for arg in args)
    op = getattr(fp4, name).default
    real = op(*args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(arg) if isinstance(arg, torch.Tensor) else arg for arg in args]
        fake = op(*fake_args)
    assert _describe(fake) == _describe(real)


@pytest.mark.gpu
@pytest.mark.parametrize(("name", "args"), CASES, ids=CASE_IDS)
def test_fake_matches_real_on_cuda(name, args):
    """The CUDA implementations (the kernels, or their reference fallback) return what the fakes promise."""
    args = tuple(arg.cuda() if isinstance(arg, torch.Tensor) and arg.dim() else arg for arg in args)
    op = getattr(fp4, name).default
    real = op(*args)
    with FakeTensorMode() as mode:
        fake = op(*[mode.from_tensor(arg) if isinstance(arg, torch.Tensor) else arg for arg in args])
    assert _describe(fake) == _describe(real)


def test_fake_draw_seeds():
    with FakeTensorMode():
        fake = fp4.draw_seeds(3, CPU)
    assert _describe(fake) == _describe(fp4.draw_seeds(3, CPU))


def test_draw_seeds_is_governed_by_manual_seed():
    torch.manual_seed(5)
    together = fp4.draw_seeds(4, CPU)
    torch.manual_seed(5)
    one_by_one = torch.cat([fp4.draw_seeds(1, CPU) for _ in range(4)])
    assert torch.equal(together, one_by_one)
    assert together.dtype == torch.int64 and together.device.type == "cpu"
    assert bool(((together >= 0) & (together < 2**62)).all()) and len(set(together.tolist())) == 4
    torch.manual_seed(6)
    assert not torch.equal(fp4.draw_seeds(4, CPU), together)
    assert fp4.draw_seeds(0, CPU).shape == (0,)
    assert torch.Tag.nondeterministic_seeded in fp4.draw_seeds.default.tags


def test_draw_seeds_salt_mixes_like_stream_seed():
    torch.manual_seed(5)
    plain = fp4.draw_seeds(4, CPU)
    torch.manual_seed(5)
    salted = fp4.draw_seeds(4, CPU, 3)
    assert salted.tolist() == [philox.stream_seed(seed, 3) for seed in plain.tolist()]
    assert not torch.equal(salted, plain)


def test_ops_dispatch_without_python_autograd_layer():
    # Plain schemas: the dispatcher reaches the kernel without a Python autograd kernel in between.
    for name in ops.OPS:
        qualname = f"fp4::{name}"
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Autograd"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CompositeExplicitAutograd"), name


def test_ops_compute_the_reference():
    x = torch.randn(40, 64, generator=torch.Generator().manual_seed(7))
    seed = int(SEED)
    assert all(torch.equal(a, b) for a, b in zip(fp4.quest_quantize(x, True), ref.quest_quantize(x, True)))
    signs = ref.rotation_signs(seed, 1)
    got = fp4.sr_quantize(x, SEED, 1, 4, True)
    assert all(torch.equal(a, b) for a, b in zip(got, ref.sr_quantize(x, signs, seed, 4, True)))
    no_signs = fp4.sr_quantize(x, SEED, ops.NO_SIGNS, 4, False)
    assert all(torch.equal(a, b) for a, b in zip(no_signs, ref.sr_quantize(x, None, seed, 4, False)))
    codes, scales, _ = ref.quest_quantize(x, True)
    got = fp4.requantize_sr(codes, scales, SEED, 0, 3)
    expected = ref.sr_quantize(ref.dequantize(codes, scales), ref.rotation_signs(seed, 0), seed, 3, transpose=True)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert torch.equal(fp4.dequantize(codes, scales, 1.0, torch.bfloat16), ref.dequantize(codes, scales).bfloat16())


def test_op_errors():
    with pytest.raises(ValueError, match="not a multiple of 32"):
        fp4.quest_quantize(torch.randn(4, 48), True)
    with pytest.raises(ValueError, match="seed must be a one-element int64 tensor"):
        fp4.sr_quantize(torch.randn(4, 32), torch.tensor(1.0), 0, 2, False)
    with pytest.raises(ValueError, match="2-D"):
        fp4.sr_quantize(torch.randn(2, 4, 32), SEED, 0, 2, False)
    a, sa, _ = quantized(8, 64)
    b, sb, _ = quantized(8, 32)
    with FakeTensorMode() as mode:
        fa, fsa, fb, fsb = (mode.from_tensor(t) for t in (a, sa, b, sb))
        with pytest.raises(ValueError, match="contraction sizes differ"):
            fp4.mxfp4_gemm(fa, fsa, fb, fsb, 1.0, None, "none", None, None, None, False, torch.float32)
        with pytest.raises(ValueError, match="unknown activation"):
            fp4.mxfp4_gemm(fa, fsa, fa, fsa, 1.0, None, "tanh", None, None, None, False, torch.float32)


def test_gathered_weight_is_a_marker_with_a_fake():
    """``fp4::gathered_weight`` stands for a weight known only by its codes: a shape in graphs, never a value."""
    codes, scales, mask = quantized(8, 64)
    with FakeTensorMode() as mode:
        weight = fp4.gathered_weight(*(mode.from_tensor(t) for t in (codes, scales, mask)), True, torch.bfloat16)
        assert (tuple(weight.shape), weight.dtype) == ((8, 64), torch.bfloat16)
    with pytest.raises(RuntimeError, match="cannot be computed: a weight gathered as MXFP4 codes"):
        fp4.gathered_weight(codes, scales, mask, True, torch.float32)


def test_every_op_is_covered():
    """Every registered fp4 op has cases (and so an opcheck and a fake-vs-real check)."""
    covered = {name for name, _ in CASES} | {"draw_seeds", "gathered_weight"}  # own tests: random, a marker
    assert ALL_OPS == {**ops.OPS, **fold.OPS, **variants.OPS, **gathered.OPS, **recipe_ops.OPS}
    assert covered == set(ALL_OPS)
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("fp4::")}
    assert registered == set(ALL_OPS)


def test_importing_the_runtime_registers_every_op():
    """The op set is registered in one place, ``import fp4.runtime``: no pass module needs importing first."""
    import subprocess
    import sys

    code = (
        "import sys, torch, fp4.runtime\n"
        "names = {n.split('::')[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith('fp4::')}\n"
        "print(sorted(names) == sorted(fp4.runtime.OPS), len(names), 'fp4.passes' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", str(len(ALL_OPS)), "False"]
