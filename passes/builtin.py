"""Imports every pass module so that its passes register themselves.

Add new pass modules here.
"""

from . import (  # noqa: F401
    dce,
    decompose_activations,
    fuse_activation,
    fuse_bias,
    fuse_bias_grad,
    fuse_clip_mask,
    fuse_gate,
    fuse_inverse_rotation,
    fuse_output_cast,
    fuse_residual,
    quartet_linear,
    use_fp8_fold,
)
