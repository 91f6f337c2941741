"""What the ``fuse-*`` passes share: reading and editing a GEMM node's epilogue.

The GEMMs are ``fp4::mxfp4_gemm`` (the quartet recipe) and ``fp4::nvfp4_gemm``
(the NVFP4 recipes, whose tensor scales take ``alpha``'s place and which have
no clip mask or inverse rotation); their epilogue arguments have the same
names, listed per op in :data:`GEMM_SIGNATURES`.

The epilogue of :func:`fp4.runtime.reference.mxfp4_gemm` runs in a fixed order::

    acc = alpha * acc (+ bias) (* clip_mask) (rotate^-1)   float32
    out = acc.to(out_dtype)                                 the output cast
    out = activation(out);  out = out * gate;  out = out + residual

A step can be folded into a GEMM only if no later step is already folded;
steps before the cast also need ``out_dtype == float32`` (the unfused graph
applies them to the float32 accumulator).  The op applied to the GEMM's result
must be its single user (through single-user views for elementwise steps), so
no other node, the backward included, needs the intermediate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx

from .fx_tools import (
    VIEW_OPS,
    Builder,
    aten,
    checkpoint_region,
    fake_mode_of,
    fake_value,
    is_contiguous,
    shape,
    single_user,
)
from .registry import GraphPass, PassContext, PassResult

GEMM = torch.ops.fp4.mxfp4_gemm.default
GEMM_ARGS = (
    "a", "a_scales", "b", "b_scales", "alpha", "bias", "activation", "gate", "residual", "clip_mask",
    "inverse_rotate", "out_dtype",
)  # fmt: skip
NVFP4_GEMM = torch.ops.fp4.nvfp4_gemm.default
NVFP4_GEMM_ARGS = (
    "a", "a_scales", "a_decode", "b", "b_scales", "b_decode", "bias", "activation", "gate", "residual", "out_dtype",
)  # fmt: skip
GEMM_SIGNATURES = {GEMM: GEMM_ARGS, NVFP4_GEMM: NVFP4_GEMM_ARGS}
"""The GEMM ops whose epilogue the fusion passes fold into, with their argument names in order."""


def is_gemm(node) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in GEMM_SIGNATURES


# Epilogue steps in the order the reference applies them.
STEPS = ("bias", "clip_mask", "inverse_rotate", "cast", "activation", "gate", "residual")


def gemm_args(node: torch.fx.Node) -> dict:
    """The GEMM node's arguments by name (positional or keyword)."""
    args = dict(zip(GEMM_SIGNATURES[node.target], node.args))
    args.update(node.kwargs)
    return args


def folded_steps(args: dict) -> set[str]:
    steps = set()
    if args["bias"] is not None:
        steps.add("bias")
    if args.get("clip_mask") is not None:
        steps.add("clip_mask")
    if args.get("inverse_rotate"):
        steps.add("inverse_rotate")
    if args["out_dtype"] != torch.float32:
        steps.add("cast")
    if args["activation"] != "none":
        steps.add("activation")
    if args["gate"] is not None:
        steps.add("gate")
    if args["residual"] is not None:
        steps.add("residual")
    return steps


def can_fold(gemm: torch.fx.Node, step: str) -> bool:
    """Whether ``step`` may still be folded into ``gemm`` (no later step folded, float32 before the cast)."""
    if not is_gemm(gemm):
        return False
    args = gemm_args(gemm)
    if step in ("clip_mask", "inverse_rotate") and step not in args:
        return False  # the NVFP4 GEMM has no such step
    later = STEPS[STEPS.index(step) :]
    if folded_steps(args) & set(later):
        return False
    if STEPS.index(step) < STEPS.index("cast") and args["out_dtype"] != torch.float32:
        return False
    return True


def set_gemm_args(gemm: torch.fx.Node, **changes) -> None:
    """Rewrite the GEMM's arguments (all positional) and recompute its ``meta['val']``."""
    args = gemm_args(gemm)
    args.update(changes)
    gemm.args = tuple(args[name] for name in GEMM_SIGNATURES[gemm.target])
    gemm.kwargs = {}
    refresh(gemm)


def refresh(node: torch.fx.Node) -> None:
    node.meta["val"] = fake_value(node.target, node.args, node.kwargs, fake_mode_of(node.graph))


def gemm_through_views(operand, consumer: torch.fx.Node) -> tuple[torch.fx.Node | None, list[torch.fx.Node]]:
    """``consumer(view(view(gemm)))`` -> ``(gemm, [view, view])`` when each link's only user is the next link.

    ``operand`` is the argument of ``consumer`` to follow; ``(None, [])`` if it is not such a chain.
    """
    views: list[torch.fx.Node] = []
    node, user = operand, consumer
    while isinstance(node, torch.fx.Node) and node.op == "call_function":
        if single_user(node) is not user:
            return None, []
        if node.target in GEMM_SIGNATURES:
            return node, views
        if node.target not in VIEW_OPS:
            return None, []
        views.insert(0, node)
        node, user = node.args[0], node
    return None, []


def sole_consumer(gemm: torch.fx.Node) -> torch.fx.Node | None:
    """The one node that consumes the GEMM's result (None if it has several users or is a graph output)."""
    user = single_user(gemm)
    if user is None or user.op == "output":
        return None
    return user


def replace_with_chain(op_node: torch.fx.Node, gemm: torch.fx.Node, views: list[torch.fx.Node]) -> None:
    """Replace ``op_node`` (now folded into ``gemm``) by the end of ``gemm``'s view chain."""
    for view in views:
        refresh(view)
    end = views[-1] if views else gemm
    op_node.replace_all_uses_with(end)
    op_node.graph.erase_node(op_node)


def as_gemm_operand(
    other: torch.fx.Node, gemm: torch.fx.Node, views: list[torch.fx.Node], op_node: torch.fx.Node
) -> torch.fx.Node | None:
    """``other`` reshaped to the GEMM's 2-D result shape, or None if that is not a plain view.

    ``other`` must have exactly the shape the view chain ends with (no broadcasting).  If
    ``other`` is computed after the GEMM, the GEMM and its views move down to just before
    ``op_node`` (legal: their inputs all come before their old place).
    """
    target_shape = shape(views[-1]) if views else shape(gemm)
    if shape(other) != target_shape or not isinstance(other, torch.fx.Node):
        return None
    if views and not is_contiguous(other):
        return None
    if not comes_before(other, gemm):
        for node in [gemm, *views]:
            op_node.prepend(node)
    if not views:
        return other
    with gemm.graph.inserting_before(gemm):
        return Builder(gemm.graph).call(aten.view.default, other, [-1, shape(gemm)[-1]])


def comes_before(a: torch.fx.Node, b: torch.fx.Node) -> bool:
    """Whether ``a`` is defined before ``b`` in graph order."""
    for node in a.graph.nodes:
        if node is a:
            return True
        if node is b:
            return False
    return False


@dataclass
class Fold:
    """One epilogue step a fusion pass found: set ``updates`` on ``gemm``, drop ``consumer``.

    ``views`` is the chain of views between the GEMM and ``consumer``; the
    consumer's users read the end of that chain afterwards.
    """

    gemm: torch.fx.Node
    consumer: torch.fx.Node
    updates: dict
    views: list[torch.fx.Node] = field(default_factory=list)


@dataclass(frozen=True)
class EpilogueFusion(GraphPass):
    """Base of the ``fuse-*`` passes: each node is offered to ``match``; every Fold it returns is applied.

    Subclasses implement ``match(node) -> Fold | None`` (the legality checks
    live there); this class edits the graph and counts ``<pass>.fused``.
    """

    def match(self, node: torch.fx.Node) -> Fold | None:  # pragma: no cover
        raise NotImplementedError

    def apply(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        erased: set[torch.fx.Node] = set()
        for node in list(gm.graph.nodes):
            if node in erased or node.op != "call_function":
                continue
            fold = self.match(node)
            if fold is None or checkpoint_region(fold.consumer) != checkpoint_region(fold.gemm):
                # A step outside the GEMM's checkpointed region (or inside another) stays a separate node:
                # folded, it would be recomputed in the backward with the region, or make the region's
                # recomputed GEMM an op the region never had.
                continue
            set_gemm_args(fold.gemm, **fold.updates)
            replace_with_chain(fold.consumer, fold.gemm, fold.views)
            erased.add(fold.consumer)
            ctx.counters[f"{self.name}.fused"] += 1
            modified = True
        if modified:
            gm.recompile()
        return PassResult(gm, modified)


def unfused_gemm(b: Builder, op, args) -> list[torch.fx.Node]:
    """``op(*args)``, a GEMM of :data:`GEMM_SIGNATURES`, with its epilogue as separate nodes (undoing the fusions).

    A float32 GEMM without epilogue, then ``+ bias``, ``fp4::apply_clip_mask``,
    ``fp4::inverse_rotate`` and the cast to ``out_dtype``, each where its
    ``fuse-*`` pass finds it; the reference applies them in that order and
    rounds where these nodes do, so folding them back is exact.  (Activation,
    gate and residual are not recipe steps: the fusions find them in the model.)
    Returns the nodes inserted, the GEMM first and the result last.
    """
    names = GEMM_SIGNATURES[op]
    epilogue = dict(zip(names, args))
    if epilogue["activation"] != "none" or epilogue["gate"] is not None or epilogue["residual"] is not None:
        raise ValueError(f"{op}: only bias, clip mask, inverse rotation and the cast are emitted unfused")
    plain = {**epilogue, "bias": None, "out_dtype": torch.float32}
    if "clip_mask" in names:
        plain.update(clip_mask=None, inverse_rotate=False)
    nodes = [b.call(op, *(plain[name] for name in names))]
    if epilogue["bias"] is not None:
        nodes.append(b.call(aten.add.Tensor, nodes[-1], epilogue["bias"]))
    if epilogue.get("clip_mask") is not None:
        nodes.append(b.call(torch.ops.fp4.apply_clip_mask.default, nodes[-1], epilogue["clip_mask"]))
    if epilogue.get("inverse_rotate"):
        nodes.append(b.call(torch.ops.fp4.inverse_rotate.default, nodes[-1]))
    cast = b.cast(nodes[-1], epilogue["out_dtype"])
    return nodes if cast is nodes[-1] else [*nodes, cast]
