# RUN: not fp4-opt %s 2>&1 | filecheck %s

# A declared type that disagrees with what the op computes is an error naming the file and line.
# CHECK: fp4-opt: error: {{.*}}roundtrip_errors.fx: line [[# @LINE + 2]]: 'gemm' is declared f32[8, 16] but computes bf16[8, 16]
def wrong_type(a: "u8[8, 32]", sa: "u8[8, 2]", b: "u8[16, 32]", sb: "u8[16, 2]"):
    gemm: "f32[8, 16]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    return gemm
