"""``use-fp8-fold``: on Hopper, quantize forward GEMM operands straight into the FP8 fold the GEMM runs on.

Hopper (sm_90, ``Target.gemm_lowering == "fp8_fold"``) has no FP4 tensor
cores; it runs an MXFP4 GEMM on its FP8 ones by folding each operand into
E4M3 values and one fp32 scale per row (:mod:`fp4.runtime.fold`).  Left
alone, ``mxfp4_gemm`` folds its operands itself, one extra pass over each.
This pass makes the forward's quantizer write the fold too, in the same
kernel: each forward ``mxfp4_gemm`` whose two operands are the codes and
scales of ``quest_quantize`` results is rewritten to ``fp8_fold_gemm`` on the
fold outputs of ``quest_quantize_fold``, with every other GEMM argument
(alpha, fused epilogue, ``out_dtype``) unchanged.  The codes, scales and clip
mask keep their users (getitems 0/1/2 of the new node), so the backward still
receives MXFP4 codes and masks.  With ``backward=true`` the backward GEMMs
are rewritten the same way: ``sr_quantize`` / ``requantize_sr`` become
``sr_quantize_fold`` / ``requantize_sr_fold`` (the same codes and scales, plus
the fold) and their ``mxfp4_gemm`` an ``fp8_fold_gemm``, so no separate fold
kernel runs in the backward either; off by default until it has been timed and
checked on a GPU.  A quantizer shared by several GEMMs (``q``/``k``/``v``
reading one ``x``) is replaced once.

The pass reads ``ctx.target`` and does nothing unless the target lowers
MXFP4 GEMMs to the FP8 fold, so a pipeline that names it stays correct on
every target; the backend adds it to its default pipeline (after the fusion
passes, which it keeps intact) only for such targets (``fp4.capture``).

Values: ``fp8_fold_gemm`` equals ``mxfp4_gemm`` on the same operands, up to
groups more than ``FOLD_EXACT_BINADES`` below their row's largest group,
which round to E4M3 in the fold (see :mod:`fp4.runtime.fold`).

Before::

    quest_quantize = fp4.quest_quantize(x, True)
    x_codes = getitem(quest_quantize, 0);  x_scales = getitem(quest_quantize, 1)
    x_mask = getitem(quest_quantize, 2)                                  # read by the backward
    quest_quantize_1 = fp4.quest_quantize(w, True)                       # w_codes, w_scales likewise
    y = fp4.mxfp4_gemm(x_codes, x_scales, w_codes, w_scales, 1.0, bias, 'none', None, None, None, False, bf16)

After::

    quest_quantize_fold = fp4.quest_quantize_fold(x, True)
    x_codes = getitem(quest_quantize_fold, 0);  x_scales = getitem(quest_quantize_fold, 1)
    x_mask = getitem(quest_quantize_fold, 2)
    x_fold = getitem(quest_quantize_fold, 3);  x_row_scales = getitem(quest_quantize_fold, 4)
    quest_quantize_fold_1 = fp4.quest_quantize_fold(w, True)             # w_fold, w_row_scales likewise
    y = fp4.fp8_fold_gemm(x_fold, x_row_scales, w_fold, w_row_scales, 1.0, bias, 'none', None, None, None,
                          False, bf16)
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx

from .fx_tools import Builder, provenance, shape, tangent_closure
from .registry import GraphPass, PassContext, PassResult, register_pass

fp4 = torch.ops.fp4

FOLD_LOWERING = "fp8_fold"
"""The ``Target.gemm_lowering`` this pass serves."""

FOLDED = {
    fp4.quest_quantize.default: (fp4.quest_quantize_fold.default, 3),
    fp4.sr_quantize.default: (fp4.sr_quantize_fold.default, 2),
    fp4.requantize_sr.default: (fp4.requantize_sr_fold.default, 2),
}
"""Quantizer -> (its variant that also writes the fold, the output index of the fold's E4M3 values)."""
FOLD_INDEX = {**{fused: index for fused, index in FOLDED.values()}, **{q: i for q, (_, i) in FOLDED.items()}}
FORWARD = (fp4.quest_quantize.default, fp4.quest_quantize_fold.default)
BACKWARD = (fp4.sr_quantize.default, fp4.sr_quantize_fold.default, fp4.requantize_sr.default,
            fp4.requantize_sr_fold.default)  # fmt: skip


def _quantizer_of(codes, scales, quantizers) -> torch.fx.Node | None:
    """The quantizer node (one of ``quantizers``) whose outputs 0, 1 are ``codes``, ``scales``."""
    if not all(
        isinstance(n, torch.fx.Node) and n.op == "call_function" and n.target is operator.getitem
        for n in (codes, scales)
    ):
        return None
    (quantizer, codes_index), (other, scales_index) = codes.args, scales.args
    if quantizer is not other or (codes_index, scales_index) != (0, 1):
        return None
    if not isinstance(quantizer, torch.fx.Node) or quantizer.target not in quantizers:
        return None
    if len(shape(quantizer.args[0])) != 2:  # the fused quantize+fold takes 2-D inputs (quartet-linear's [T, K])
        return None
    return quantizer


@register_pass
@dataclass(frozen=True)
class UseFp8Fold(GraphPass):
    """Options: ``backward`` (bool) also folds the backward GEMMs' quantizers (default off)."""

    name = "use-fp8-fold"
    backward: bool = False

    def apply(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        if ctx.target.gemm_lowering != FOLD_LOWERING:
            return PassResult(gm, False)
        graph = gm.graph
        backward = tangent_closure(graph)
        folded: dict[torch.fx.Node, tuple[torch.fx.Node, torch.fx.Node]] = {}  # quantizer -> (fold, row scales)
        modified = False
        for gemm in list(graph.nodes):
            if gemm.op != "call_function" or gemm.target is not fp4.mxfp4_gemm.default:
                continue
            if gemm in backward and not self.backward:
                continue
            quantizers = BACKWARD if gemm in backward else FORWARD
            lhs = _quantizer_of(*gemm.args[0:2], quantizers)
            rhs = _quantizer_of(*gemm.args[2:4], quantizers)
            if lhs is None or rhs is None:
                continue
            operands = []
            for quantizer in (lhs, rhs):
                if quantizer.target not in FOLDED and quantizer not in folded:
                    folded[quantizer] = self._fold_outputs(quantizer)
                if quantizer not in folded:
                    fused = self._fold(quantizer)
                    folded[fused] = folded[quantizer] = self._fold_outputs(fused)
                    ctx.counters["use-fp8-fold.quantizers"] += 1
                operands.extend(folded[quantizer])
            with graph.inserting_before(gemm):
                new = Builder(graph, provenance(gemm)).call(fp4.fp8_fold_gemm.default, *operands, *gemm.args[4:])
            gemm.replace_all_uses_with(new)
            graph.erase_node(gemm)
            ctx.counters["use-fp8-fold.rewritten"] += 1
            modified = True
        if modified:
            gm.recompile()
        return PassResult(gm, modified)

    @staticmethod
    def _fold(quantizer: torch.fx.Node) -> torch.fx.Node:
        """Replace a quantizer by its variant that also writes the fold (same arguments, same first outputs)."""
        graph = quantizer.graph
        # the fused op stands where the quantizer stood: the same provenance and partitioner placement
        placement = {key: quantizer.meta[key] for key in ("partitioner_tag",) if key in quantizer.meta}
        with graph.inserting_before(quantizer):
            builder = Builder(graph, {**provenance(quantizer), **placement})
            fused = builder.call(FOLDED[quantizer.target][0], *quantizer.args, **quantizer.kwargs)
        # codes, scales (and the mask) keep their getitems: the fused op's first outputs are the quantizer's
        quantizer.replace_all_uses_with(fused)
        graph.erase_node(quantizer)
        return fused

    @staticmethod
    def _fold_outputs(fused: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node]:
        """The getitems of a fused quantizer's fold and row scales (existing ones reused)."""
        values_index = FOLD_INDEX[fused.target]
        existing = {user.args[1]: user for user in fused.users if user.target is operator.getitem}
        if values_index in existing and values_index + 1 in existing:
            return existing[values_index], existing[values_index + 1]
        graph = fused.graph
        builder = Builder(graph, provenance(fused))
        # the new getitems go after the existing ones, so the outputs read in order 0..4
        anchor = fused
        while anchor.next.target is operator.getitem and anchor.next.args[0] is fused:
            anchor = anchor.next
        with graph.inserting_after(anchor):
            row_scales = builder.call(operator.getitem, fused, values_index + 1)
        with graph.inserting_after(anchor):
            values = builder.call(operator.getitem, fused, values_index)
        return values, row_scales
