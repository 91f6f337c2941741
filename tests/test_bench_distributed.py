"""``fp4 bench --sections distributed`` on two gloo ranks on the CPU: every mode's record, the bytes, the check.

The command runs once for the module, as a user runs it (``fp4.bench.main``: it starts its own two ranks), on the
tiny configuration, one step per mode, ``--no-inductor`` (plain graphs: fast, and bit for bit against the
averaged eager run) and ``--check``, in the default modes (DDP and FSDP2, bf16 and fp4, and the FP4 all-gather).
The caller's environment asks for NVLink multicast; every rank must still run with it off.
"""

from __future__ import annotations

import json
import os

import pytest
from distributed_harness import DISTRIBUTED_MARKS
from fp4 import bench_distributed
from fp4.bench_distributed import CHECK_BOUND, CONFIGS, NO_MULTICAST_ENV, RECORD_FIELDS, parse_mode

pytestmark = DISTRIBUTED_MARKS

MODES = ["ddp_bf16", "ddp_fp4", "fsdp_bf16", "fsdp_fp4", "fsdp_fp4_all_gather"]  # the default ones
RANKS = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from fp4 import bench

    out = tmp_path_factory.mktemp("bench_distributed")
    argv = ["--sections", "distributed", "--device", "cpu", "--gpus", str(RANKS), "--models", "tiny-2l",
            "--steps", "1", "--check", "--no-inductor", "--out", str(out)]  # fmt: skip
    asked = {key: "1" if value == "0" else "0" for key, value in NO_MULTICAST_ENV.items()}  # multicast on
    saved = {key: os.environ.get(key) for key in asked}
    os.environ.update(asked)
    try:
        code = bench.main(argv)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    records = json.loads((out / "bench_distributed_cpu.json").read_text())
    return code, {record["mode"]: record for record in records}, records, out


def test_every_mode_has_a_record_with_every_field(run):
    code, by_mode, records, out = run
    assert [r["mode"] for r in records] == MODES
    for record in records:
        assert "error" not in record, record["error"]
        assert [key for key in RECORD_FIELDS if key not in record] == []
        assert record["gpus"] == RANKS and record["backend"] == "gloo" and record["config"] == "tiny-2l"
        assert record["card"].startswith("CPU") and record["date"].endswith("UTC")
        assert record["command"].startswith("fp4 bench --sections distributed")
        assert record["env"] == NO_MULTICAST_ENV  # every rank had multicast off, though the caller asked for it
        assert record["median_step_ms"] > 0 and record["max_step_ms"] >= record["median_step_ms"]
        shape = CONFIGS["tiny-2l"]
        tokens = shape["batch"] * shape["seq"]
        assert record["tokens_per_s_per_gpu"] == pytest.approx(tokens / (record["median_step_ms"] * 1e-3))
        assert record["tokens_per_s"] == pytest.approx(RANKS * record["tokens_per_s_per_gpu"])
        assert record["peak_memory_gib"] is None  # CUDA only
        assert record["scaling_efficiency"] is None  # no 1-rank run asked for
        assert len(record["losses_rank0"]) == 1 and 0 < record["losses_rank0"][0] < 10  # about log(vocab 64)
    assert by_mode["fsdp_bf16"]["vs_bf16"] == 1
    fp4_vs_bf16 = by_mode["fsdp_bf16"]["median_step_ms"] / by_mode["fsdp_fp4_all_gather"]["median_step_ms"]
    assert by_mode["fsdp_fp4_all_gather"]["vs_bf16"] == pytest.approx(fp4_vs_bf16)
    assert by_mode["ddp_bf16"]["vs_bf16"] == 1 and by_mode["ddp_fp4"]["vs_bf16"] > 0
    assert by_mode["ddp_fp4"]["compiler"] == "fp4 (inductor=False)" and by_mode["fsdp_bf16"]["compiler"] == "aot_eager"
    assert by_mode["ddp_fp4"]["ddp_pieces"] == 1  # one DDP bucket: one graph, no split
    for mode in MODES:
        assert by_mode[mode]["compiled_graphs"] == 1, mode  # the whole model, or one graph the blocks share
    assert code == 0
    lines = (out / "bench_distributed.md").read_text().splitlines()
    for mode in MODES:
        row = f"| tiny-2l | {RANKS} | {mode} |"
        assert any(line.startswith(row) and line.endswith("| bitwise |") for line in lines), mode
    assert lines[-1] == f"Runs: {RANKS} ranks: finished"
    assert len((out / "bench_distributed_records.jsonl").read_text().splitlines()) == len(MODES)


def test_fp4_all_gather_sends_fewer_bytes_as_predicted(run):
    """0.66 B per linear-weight element instead of 2 (bf16), measured by counting FSDP's all-gathers."""
    _, by_mode, _, _ = run
    for mode in ("fsdp_bf16", "fsdp_fp4", "fsdp_fp4_all_gather"):
        record = by_mode[mode]
        assert record["all_gather_bytes_per_step"] == record["all_gather_bytes_predicted"] > 0, mode
    for mode in ("ddp_bf16", "ddp_fp4"):
        assert by_mode[mode]["all_gather_bytes_per_step"] is None
    bf16 = by_mode["fsdp_bf16"]["all_gather_bytes_per_step"]
    assert by_mode["fsdp_fp4"]["all_gather_bytes_per_step"] == bf16  # the same bf16 gather
    fp4_gather = by_mode["fsdp_fp4_all_gather"]["all_gather_bytes_per_step"]
    assert fp4_gather < bf16
    shape = CONFIGS["tiny-2l"]
    hidden, intermediate = shape["hidden"], shape["intermediate"]
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate  # q, k, v, o; gate, up, down
    assert by_mode["fsdp_fp4_all_gather"]["fp4_gathered_layers"] == 7 * shape["layers"]
    assert by_mode["fsdp_fp4_all_gather"]["fp4_packed_layers"] == 0  # every layer's rows split over two ranks
    # each layer gathered twice a step (forward, backward), each rank sending its half
    elements = 2 * shape["layers"] * per_layer // RANKS
    assert bf16 - fp4_gather == elements * (2 - 21 / 32)
    print(f"all-gather bytes per step and rank: bf16 {bf16:.0f}, MXFP4 {fp4_gather:.0f} ({fp4_gather / bf16:.3f}x)")


def test_check_passes_bit_for_bit(run):
    _, _, records, _ = run
    for record in records:
        check = record["check"]
        assert check["expected_bitwise"] and check["bitwise"] and check["passed"], (record["mode"], check)
        assert check["max_relative_difference"] == 0 and check["bound"] is None
        # a rank's own gradient in place of the average would be far outside the bound
        assert check["rank_gradient_spread"] > 4 * CHECK_BOUND


# ----------------------------------------------------------------------------
# the pieces, without ranks


def test_modes_parse_and_reject():
    assert parse_mode("fsdp_fp4_all_gather") == bench_distributed.Mode("fsdp_fp4_all_gather", "fsdp", "fp4", True)
    assert parse_mode("ddp_fp4_cudagraphs").fp4_options(inductor=True) == {"cudagraphs": True}
    assert parse_mode("fsdp_fp4").fp4_options(inductor=False) == {"inductor": False}
    assert not parse_mode("ddp_bf16").fp4
    with pytest.raises(ValueError, match="FSDP2 option of an fp4 mode"):
        parse_mode("ddp_fp4_all_gather")
    with pytest.raises(ValueError, match="the quartet recipe only"):
        parse_mode("fsdp_fp4_nvfp4_all_gather")
    with pytest.raises(ValueError, match="unknown mode 'fsdp_fp8'"):
        parse_mode("fsdp_fp8")


def test_gpu_counts_put_the_one_gpu_baseline_last():
    assert bench_distributed.gpu_counts("2,4,8", scaling=True, device="cpu") == [2, 4, 8, 1]
    assert bench_distributed.gpu_counts("1,2", scaling=True, device="cpu") == [1, 2]
    assert bench_distributed.gpu_counts("", scaling=False, device="cpu") == [2]
    for bad in ("two", "0,2", "2,2", ","):
        with pytest.raises(ValueError, match="--gpus"):
            bench_distributed.gpu_counts(bad, scaling=False, device="cpu")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sections", "distributed,gemm"], "runs on its own"),
        (["--models", "tiny-2l,llama13b"], "unknown configuration"),
        (["--modes", "ddp_fp4_all_gather"], "FSDP2 option of an fp4 mode"),
        (["--modes", "ddp_fp4_cudagraphs", "--no-inductor"], "CUDA-graph modes need Inductor"),
        (["--gpus", "2,x"], "expected GPU counts"),
        (["--steps", "0"], "at least 1"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(args, message, capsys, tmp_path):
    from fp4 import bench

    with pytest.raises(SystemExit) as exit_info:  # the last --sections counts
        bench.main(["--sections", "distributed", "--device", "cpu", "--out", str(tmp_path), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before starting any rank or writing anything


def test_predicted_bytes_of_padded_shards_and_one_rank():
    """Three ranks: the 64-row weights are padded to 22 rows a shard and gather packed (1 B per element of the
    padded shard), the 96-row ones split evenly (21/32 B per element), the rest in bf16 (2 B)."""
    import fp4

    shape = CONFIGS["tiny-2l"]
    model = bench_distributed.build_model(shape, "cpu")
    plain = bench_distributed.predicted_all_gather_bytes(model, 3)
    plan = fp4.distributed.enable_fp4_all_gather(model, world_size=3)
    assert len(plan.gathered) == 14 and len(plan.packed) == 10  # q, k, v, o and down in each of two layers
    hidden, intermediate, vocab = shape["hidden"], shape["intermediate"], shape["vocab"]
    assert hidden == vocab == 64 and intermediate == 96
    rows = 22  # ceil(64 / 3)
    root = 2 * (rows * hidden * 2) + rows * 2  # embedding, head, final norm: gathered once
    block_bf16 = 4 * rows * hidden * 2 + rows * intermediate * 2 + 2 * 32 * hidden * 2 + 2 * rows * 2
    block_fp4 = 4 * rows * hidden + rows * intermediate + 2 * 32 * hidden * 21 // 32 + 2 * rows * 2
    assert plain == root + 2 * shape["layers"] * block_bf16  # each block twice: forward, backward
    assert bench_distributed.predicted_all_gather_bytes(model, 3, plan) == root + 2 * shape["layers"] * block_fp4
    assert bench_distributed.predicted_all_gather_bytes(model, 1, plan) == 0  # one rank copies, sends nothing


def _record(mode, gpus, tokens_per_s_per_gpu, **extra):
    wrapper = mode.split("_")[0]
    return {"config": "c", "mode": mode, "wrapper": wrapper, "gpus": gpus, "tokens_per_s_per_gpu":
            tokens_per_s_per_gpu, "tokens_per_s": gpus * tokens_per_s_per_gpu, **extra}  # fmt: skip


def test_ratios_against_bf16_and_one_gpu():
    records = [_record("fsdp_bf16", 4, 900.0), _record("fsdp_fp4", 4, 450.0), _record("fsdp_bf16", 1, 1000.0),
               _record("fsdp_fp4", 2, 1.0, error="boom")]  # fmt: skip
    bench_distributed.add_ratios(records)
    assert records[1]["vs_bf16"] == 0.5 and records[0]["vs_bf16"] == 1
    assert records[0]["scaling_efficiency"] == 0.9 and records[0]["speedup_vs_1_gpu"] == pytest.approx(3.6)
    assert records[1]["scaling_efficiency"] is None  # no 1-GPU fp4 record
    assert records[3]["vs_bf16"] is None


def test_check_verdict_names_why_not_bitwise_and_applies_the_bound():
    mode = parse_mode("ddp_fp4")
    check = {"bitwise": False, "max_relative_difference": 1e-3, "worst_parameter": "w", "rank_gradient_spread": 0.9}
    verdict = bench_distributed._check_verdict(mode, [check, check], world=4, ddp_pieces=3, on_cpu=False)
    assert not verdict["expected_bitwise"] and verdict["bound"] == CHECK_BOUND and verdict["passed"]
    assert "4 ranks" in verdict["why_not_bitwise"] and "3 pieces" in verdict["why_not_bitwise"]
    assert "flash attention" in verdict["why_not_bitwise"]
    far = {**check, "max_relative_difference": 0.5}
    assert not bench_distributed._check_verdict(mode, [check, far], 4, 3, False)["passed"]
    # where the order cannot differ, only bit for bit passes
    exact = bench_distributed._check_verdict(mode, [check, check], world=2, ddp_pieces=1, on_cpu=True)
    assert exact["expected_bitwise"] and not exact["passed"] and exact["bound"] is None


def test_markdown_marks_a_failed_check_and_a_failed_mode():
    info = {"card": "TEST", "date": "d", "torch": "t", "backend": "nccl", "command": "fp4 bench --sections distributed"}
    check = {"bitwise": False, "max_relative_difference": 0.2, "bound": CHECK_BOUND, "passed": False}
    good = _record("fsdp_fp4", 2, 100.0, median_step_ms=10.0, max_step_ms=11.0, vs_bf16=0.8, scaling_efficiency=0.9,
                   peak_memory_gib=12.5, all_gather_bytes_per_step=3 * 2**20, check=check)  # fmt: skip
    failed = _record("ddp_fp4", 2, 0.0, error="RuntimeError: out of memory")
    text = "\n".join(bench_distributed.markdown([good, failed], info))
    row = "| c | 2 | fsdp_fp4 | 10.00 | 11.00 | 100 | 0.80 | 0.90 | 12.5 | 3.00 | **FAILED** (2.0e-01 ≤ 0.0625) |"
    assert row in text
    assert "| c | 2 | ddp_fp4 | failed: RuntimeError: out of memory |" in text
    assert "NCCL_NVLS_ENABLE=0" in text
