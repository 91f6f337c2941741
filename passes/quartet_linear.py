"""``quartet-linear``: rewrite every selected linear layer's GEMMs into the Quartet FP4 algorithm.

Works on a joint forward+backward graph (placeholders ``primals_*`` and
``tangents_*``) or on a forward-only graph (inference).  A linear layer is a
forward ``mm(x, t(w))`` / ``addmm(b, x, t(w))`` whose ``w`` is a graph input
(possibly through dtype casts, views and the all-gather of a sharded parameter:
``fx_tools.trace_weight``); its backward GEMMs are found in the joint
graph through transposes and views:

* input grad  ``mm(dy, w)``           (or ``t(mm(t(w), t(dy)))``)    contract N
* weight grad ``mm(t(dy), x)``        (or ``t(mm(t(x), dy))``)       contract T
* bias grad   ``sum(dy, [0])``

and matched to their forward GEMM by structure plus the autograd sequence
number ``seq_nr`` that AOTAutograd copies onto backward nodes.  All GEMMs of
a layer are rewritten together, sharing the forward's FP4 codes, scales, clip
masks and the layer's seed, exactly as :mod:`fp4.runtime.oracle` composes the
ops.  Layer ``i`` (forward program order) uses seed ``i`` of one
``draw_seeds(n, device)`` at the start of the graph (on the device of the layers' inputs).

The epilogue is emitted unfused (float32 GEMM, then ``+ bias``, clip mask,
inverse rotation and the cast to the model dtype as separate nodes); the
``fuse-*`` passes fold them into the GEMM bit for bit.

Before (one layer, joint graph)::

    t = aten.t(primals_1)
    addmm = aten.addmm(primals_2, x, t)
    ...
    mm_dx = aten.mm(dy, t_t)            # t_t = aten.t(t)
    mm_dw = aten.mm(t_dy, x)            # t_dy = aten.t(dy)
    sum_1 = aten.sum.dim_IntList(dy, [0], True)

After::

    draw_seeds = fp4.draw_seeds(1, torch.device("cpu"));  select = aten.select.int(draw_seeds, 0, 0)
    quest_quantize = fp4.quest_quantize(x, True)             # codes, scales, mask of x
    quest_quantize_1 = fp4.quest_quantize(primals_1, True)   # ... of w
    mxfp4_gemm = fp4.mxfp4_gemm(x_codes, x_scales, w_codes, w_scales, 1.0, None, 'none', None, None, None,
                                False, torch.float32)
    add = aten.add.Tensor(mxfp4_gemm, primals_2);  convert = prims.convert_element_type(add, bf16)
    ...
    sr_quantize = fp4.sr_quantize(dy, select, 0, 2, False)
    requantize_sr = fp4.requantize_sr(w_codes, w_scales, select, 0, 3)
    mxfp4_gemm_1 = fp4.mxfp4_gemm(..., 0.111, None, 'none', None, None, None, False, torch.float32)
    apply_clip_mask = fp4.apply_clip_mask(mxfp4_gemm_1, x_mask)
    inverse_rotate = fp4.inverse_rotate(apply_clip_mask);  convert_1 = prims.convert_element_type(..., bf16)
    ... (weight grad likewise, with streams 1, 4, 5 and w's mask)
    bias_grad = fp4.bias_grad(dy, bf16)

A weight FSDP2 gathered as MXFP4 (``fp4.distributed.enable_fp4_all_gather``)
reaches the graph as its codes, scales and clip mask, read through an
``fp4::gathered_weight`` marker; the layer then uses them instead of
quantizing the weight, and a marker the pass cannot consume is an error::

    w = fp4.gathered_weight(codes, scales, mask, True, bf16);  mm = aten.mm(x, aten.t(w))
    ->  mxfp4_gemm(x_codes, x_scales, codes, scales, ...);  requantize_sr(codes, scales, ...);  mask for dW

Layers the pass leaves alone are recorded with the reason in
``ctx.records["linear_layers"]`` (excluded by name, K not a multiple of 32,
backward GEMMs not matched unambiguously, a weight computed in the graph of an
``nn.Linear`` or after a collective, one of the last ``keep_last_layers``).

Recipes (option ``recipe``, docs/recipes.md).  The matching is the same for
every recipe, and so is the rewrite: each layer runs its recipe's program
(:mod:`fp4.runtime.recipes`, ``quartet`` above, with its variants
``rotate``/``rounding``) with a ``call`` that inserts the nodes, the one the
oracle runs eagerly, so the graph composes exactly the oracle's ops; the
``call`` emits each GEMM's epilogue unfused and reads an MXFP4-gathered
weight's codes for its quantization.  ``recipe=quartet2``, one layer::

    four_over_six_quantize(x) -> (x codes, scales, decode);  ... (w)
    nvfp4_gemm(x..., w..., None, 'none', None, None, torch.float32);  add bias;  cast
    eden_quantize(dY, seed, 0, 2, False);  eden_requantize(w..., seed, 0, 3);  nvfp4_gemm;  cast    (dX)
    eden_quantize(dY, seed, 0, 4, True);   eden_requantize(x..., seed, 0, 5);  nvfp4_gemm;  cast    (dW)

and ``recipe=nvfp4``: ``nvfp4_quantize(x, False, False, None, 0)``, ``nvfp4_quantize_2d(w)`` and
``nvfp4_quantize(x, True, True, None, 0)`` (X^T for the weight gradient) forward;
``nvfp4_quantize(dY, False, False, seed, 2)`` with ``nvfp4_transpose_2d(w codes, scales)`` for dX and
``nvfp4_quantize(dY, True, True, seed, 4)`` with the saved X^T for dW.  No clip mask and no inverse
rotation: the NVFP4 recipes are straight-through, and their rotations cancel inside each GEMM.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field

import torch
import torch.fx
from fp4.core import DEFAULT_RECIPE, RECIPES, keep_last_reason, layer_name, seed_salt, skip_reason
from fp4.runtime import variants
from fp4.runtime.recipes import RECIPES as RECIPE_PROGRAMS
from torch.utils.checkpoint import CheckpointPolicy

from .epilogue import GEMM_SIGNATURES, unfused_gemm
from .fx_tools import (
    BATCHED_MATMUL_OPS,
    CAST_OPS,
    GATHER_OPS,
    MATMUL_OPS,
    VIEW_OPS,
    WEIGHT_PICK_OPS,
    Builder,
    aten,
    is_joint,
    is_transpose_2d,
    module_of,
    peel_transposes,
    provenance,
    same_value,
    shape,
    tangent_closure,
    tensor_bytes,
    trace_weight,
    value,
    weight_source,
)
from .registry import GraphPass, PassContext, PassResult, register_pass

fp4 = torch.ops.fp4

LAYER_KEY = "fp4_layer"
"""``node.meta`` key naming the linear layer an inserted node belongs to (for reports and pictures)."""


@dataclass
class LinearLayer:
    """One linear layer instance of the graph and what happened to its GEMMs (also the report row)."""

    name: str
    module_type: str
    forward: str
    in_features: int
    out_features: int
    has_bias: bool
    status: str = "pending"  # "rewritten" or "skipped"
    reason: str = ""
    seed_index: int | None = None
    gemms: dict = field(default_factory=dict)  # "forward"/"input_grad"/"weight_grad"/"bias_grad" -> node names
    missing: dict = field(default_factory=dict)  # GEMM kind -> why it is absent (e.g. frozen weight)
    input_key: tuple = ()  # identifies the input tensor (layers reading the same x share it)
    input_bytes: int = 0  # bytes of the input x [T, K] in the model dtype (symbolic T at its hint)

    @classmethod
    def at(cls, gemm: torch.fx.Node, weight: str, in_features, out_features, has_bias: bool) -> LinearLayer:
        """The row of the layer whose forward GEMM is ``gemm``, named after the module it runs in and ``weight``
        (the weight parameter's name, :func:`fp4.core.layer_name`)."""
        module = module_of(gemm)
        name = layer_name(module[0] if module else None, weight)
        return cls(name, module[1] if module else "?", gemm.name, int(in_features), int(out_features), has_bias)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Match:
    layer: LinearLayer
    forward: torch.fx.Node
    x: torch.fx.Node
    weight: torch.fx.Node
    bias: torch.fx.Node | None
    seq_nr: int | None
    weight_transposed: bool = False  # ``weight`` is the [K, N] transposed weight (Conv1D), not [N, K]
    grad_output: torch.fx.Node | None = None
    input_grad: torch.fx.Node | None = None
    input_grad_transposed: bool = False
    weight_grad: torch.fx.Node | None = None
    weight_grad_transposed: bool = False
    bias_grad: torch.fx.Node | None = None


def _options(ctx: PassContext):
    if ctx.options is None:
        raise ValueError("quartet-linear reads the backend options: run it with PassContext(options=...)")
    return ctx.options


def _skip(layer: LinearLayer, reason: str) -> LinearLayer:
    layer.status, layer.reason = "skipped", reason
    return layer


@register_pass
@dataclass(frozen=True)
class QuartetLinear(GraphPass):
    """Options: ``recipe``, ``rotate`` (bool), ``rounding`` (``sr``/``rtn``) and ``keep_last`` (int) override the
    backend options when given (``rotate`` and ``rounding`` are variants of the quartet recipe only)."""

    name = "quartet-linear"
    rotate: bool | None = None  # None: the backend option
    rounding: str | None = field(default=None, metadata={"choices": variants.ROUNDINGS})  # None: the backend option
    requantize_weights: bool | None = None  # None: the backend option (requantize_weights_in_backward)
    recipe: str | None = field(default=None, metadata={"choices": RECIPES})  # None: the backend option
    keep_last: int | None = None  # None: the backend option keep_last_layers

    # ------------------------------------------------------------------ matching

    def _find_forward(self, graph, backward, options, layers, input_names, rotate) -> list[_Match]:
        heads = _OutputHeads(graph)
        matches = []
        for node in graph.nodes:
            if node.op == "call_function" and node.target in BATCHED_MATMUL_OPS and node not in backward:
                layer = _batched_weight_layer(node, input_names)
                if layer is not None:
                    layers.append(layer)
                continue
            if node.op != "call_function" or node.target not in MATMUL_OPS:
                continue
            if node in backward:
                continue
            if node.target is aten.addmm.default:
                bias, x, rhs = node.args[:3]
                if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                    continue
            else:
                (x, rhs), bias = node.args[:2], None
            # x @ w^T (nn.Linear: w [N, K]) or x @ w (GPT-2's Conv1D: w [K, N], the transposed weight).
            weight, transposed = peel_transposes(rhs)
            if len(shape(weight)) != 2:
                continue
            fp4_gathered = _is_fp4_gathered(weight)
            source, passed, why = (weight, [], "") if fp4_gathered else trace_weight(weight)
            if source is None:
                # A weight computed in the graph is listed, not rewritten, when it is one: computed from
                # parameters (w * mask, a merged adapter), all-gathered, or the weight of an nn.Linear.
                parameters = _parameters_behind(weight, input_names)
                gathered = _after_gather(weight)
                module = module_of(node)
                if parameters or gathered or (transposed and module is not None and module[1] == "Linear"):
                    weight_name = parameters[0] if parameters else weight.name
                    layer = LinearLayer.at(node, weight_name, *_features(weight, transposed), bias is not None)
                    op = getattr(weight.target, "__name__", str(weight.target))
                    reason = f"weight is computed ({op}) from parameters, not a parameter itself" if parameters else why
                    layers.append(_skip(layer, reason))
                continue  # otherwise an activation matmul (attention scores), left alone
            in_features, out_features = _features(weight, transposed)
            layer = LinearLayer.at(node, input_names.get(source.name) or source.name, in_features, out_features,
                                   bias is not None)  # fmt: skip
            layer.input_key, layer.input_bytes = _value_key(x), tensor_bytes(value(x))
            layers.append(layer)
            reason = skip_reason(options, layer.name, layer.in_features, value(x).dtype, heads.evidence(node, weight))
            if bias is not None and shape(bias) != (out_features,):
                _skip(layer, f"addmm bias has shape {shape(bias)}, not [{out_features}]")
            elif reason:
                _skip(layer, reason)
            elif fp4_gathered and options.recipe != DEFAULT_RECIPE:
                _skip(layer, f"weight gathered as MXFP4 (FP4 all-gather), the layer runs recipe {options.recipe!r}")
            elif fp4_gathered and weight.args[3] != rotate:
                _skip(layer, f"weight gathered as MXFP4 with rotate={weight.args[3]}, the layer runs rotate={rotate}")
            else:
                matches.append(_Match(layer, node, x, weight, bias, node.meta.get("seq_nr"), not transposed))
        return matches

    @staticmethod
    def _same_step(match: _Match, node: torch.fx.Node) -> bool:
        seq = node.meta.get("seq_nr")
        return match.seq_nr is None or seq is None or seq == match.seq_nr

    def _find_backward(self, graph, backward, matches: list[_Match]) -> None:
        mms = [n for n in graph.nodes if n in backward and n.target is aten.mm.default]
        sums = [n for n in graph.nodes if n in backward and n.target is aten.sum.dim_IntList]
        claimed: set[torch.fx.Node] = set()
        for match in matches:
            layer = match.layer
            input_grads, weight_grads = [], []
            for mm in mms:
                if mm in claimed or not self._same_step(match, mm):
                    continue
                lhs, rhs = mm.args[:2]
                lhs_base, lhs_t = peel_transposes(lhs)
                rhs_base, rhs_t = peel_transposes(rhs)
                n, k = layer.out_features, layer.in_features
                rows, columns = shape(mm)
                # dX = dY @ W  [T, K]  or  dX^T = W^T @ dY^T  [K, T]  (W [N, K] is t(weight) for a Conv1D)
                if rhs_base is match.weight and rhs_t == match.weight_transposed and columns == k:
                    input_grads.append((mm, lhs, False))
                elif lhs_base is match.weight and lhs_t != match.weight_transposed and rows == k:
                    input_grads.append((mm, ("t", rhs), True))
                # dW = dY^T @ X  [N, K]  or  dW^T = X^T @ dY  [K, N]
                elif same_value(rhs, match.x) and (rows, columns) == (n, k):
                    weight_grads.append((mm, ("t", lhs), False))
                elif lhs_t and same_value(lhs_base, match.x) and lhs is not match.x and (rows, columns) == (k, n):
                    weight_grads.append((mm, rhs, True))
            if len(input_grads) == 1 and len(weight_grads) > 1:
                # Layers sharing an input (q/k/v) have weight-grad GEMMs with the same x: the
                # output gradient of the layer's own input-grad GEMM tells which one is this layer's.
                weight_grads = [w for w in weight_grads if _same_grad(w[1], input_grads[0][1])]
            if len(input_grads) > 1 or len(weight_grads) > 1:
                _skip(layer, "backward GEMMs could not be matched to this layer unambiguously")
                continue
            grads = [g for _, g, _ in input_grads + weight_grads]
            if len(grads) == 2 and not _same_grad(grads[0], grads[1]):
                _skip(layer, "input-grad and weight-grad GEMMs use different output gradients")
                continue
            if grads:
                if _grad_shape(grads[0])[-1:] != (layer.out_features,):
                    _skip(
                        layer, f"output gradient has shape {_grad_shape(grads[0])}, expected [T, {layer.out_features}]"
                    )
                    continue
                match.grad_output = grads[0]
            if input_grads:
                match.input_grad, _, match.input_grad_transposed = input_grads[0]
                claimed.add(match.input_grad)
            if weight_grads:
                match.weight_grad, _, match.weight_grad_transposed = weight_grads[0]
                claimed.add(match.weight_grad)
            if match.bias is not None:
                for node in sums:
                    if node in claimed or not self._same_step(match, node):
                        continue
                    if list(node.args[1]) not in ([0], [-2]) or len(shape(node.args[0])) != 2:
                        continue
                    if match.grad_output is None:
                        # Only a sequence number can tie a lone reduction to this layer.
                        if match.seq_nr is None or shape(node.args[0])[-1] != layer.out_features:
                            continue
                        match.grad_output = node.args[0]
                    elif not _same_grad(match.grad_output, node.args[0]):
                        continue
                    match.bias_grad = node
                    claimed.add(node)
                    break

    # ------------------------------------------------------------------ rewriting

    def apply(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        options = _options(ctx)
        rotate = options.rotate if self.rotate is None else self.rotate
        rounding = options.backward_rounding if self.rounding is None else self.rounding
        requantize = options.requantize_weights_in_backward is True
        if self.requantize_weights is not None:
            requantize = self.requantize_weights
        recipe = options.recipe if self.recipe is None else self.recipe
        keep_last = options.keep_last_layers if self.keep_last is None else self.keep_last
        try:
            program = RECIPE_PROGRAMS[recipe].variant(rotate, rounding)
        except ValueError as error:
            raise ValueError(f"quartet-linear: {error}") from None
        if keep_last < 0:
            raise ValueError(f"quartet-linear: keep_last takes a count >= 0, got {keep_last}")
        if recipe != options.recipe:
            options = dataclasses.replace(options, recipe=recipe, format=None)
        graph = gm.graph
        joint = is_joint(graph)
        backward = tangent_closure(graph)
        layers: list[LinearLayer] = []
        _merge_fp4_gathered(graph)
        matches = self._find_forward(graph, backward, options, layers, ctx.records.get("input_names", {}), rotate)
        if joint:
            self._find_backward(graph, backward, matches)
            # A layer whose backward GEMMs could not be matched stays whole in the model dtype:
            # an FP4 forward with a model-dtype backward would be neither the algorithm nor the model.
            matches = [m for m in matches if m.layer.status != "skipped"]
        if keep_last:
            # The last layers in forward order stay in the model dtype (NVIDIA's recipe keeps its final layers in BF16).
            for match in matches[-keep_last:]:
                _skip(match.layer, keep_last_reason(keep_last))
            matches = matches[:-keep_last]
        records = ctx.records.setdefault("linear_layers", [])
        records.extend(layers)
        if not matches:
            ctx.counters["quartet-linear.skipped"] += len(layers)
            _check_no_fp4_gathered_left(graph, layers)
            return PassResult(gm, False)

        # One draw for all layers at the start of the forward; layer i uses seed i (the oracle draws
        # one seed per layer call in forward order, from the same generator, which gives the same seeds).
        seed_nodes = [None] * len(matches)
        if joint:
            first_op = next(n for n in graph.nodes if n.op != "placeholder")
            with graph.inserting_before(first_op):
                builder = Builder(graph, {"partitioner_tag": "is_forward"})
                salt = seed_salt(options.rank_seeds)
                device = value(matches[0].x).device
                seed_args = (len(matches), device, salt) if salt else (len(matches), device)
                seeds = builder.call(fp4.draw_seeds.default, *seed_args)
                # Drawn once, in the forward, and saved: never recomputed, even when the first layer sits in
                # a checkpointed region (a redraw would advance the generator and change every seed).
                seeds.meta["recompute"] = CheckpointPolicy.MUST_SAVE
                seed_nodes = [builder.call(aten.select.int, seeds, 0, i) for i in range(len(matches))]
        # A layer's rewrite erases nodes a later layer's match may hold (back to back layers on a 2-D
        # input: layer 1's forward GEMM is layer 2's x, layer 2's input-grad GEMM is layer 1's dY), so
        # every match is resolved through the replacements made so far before it is rewritten.
        replaced: dict[torch.fx.Node, torch.fx.Node] = {}
        for index, match in enumerate(matches):
            match = _resolve(match, replaced)
            self._rewrite(graph, match, seed_nodes[index], index, program, ctx, replaced)
            if joint and requantize and not _is_fp4_gathered(match.weight):
                # (An MXFP4-gathered weight's codes are graph inputs already: nothing to recompute.)
                _recompute_weight_quantization(match, program.weight_quantizer)
                ctx.counters["quartet-linear.weight_requantized_in_backward"] += 1
        for layer in layers:
            ctx.counters[f"quartet-linear.{layer.status}"] += 1
        graph.eliminate_dead_code()
        _check_no_fp4_gathered_left(graph, layers)
        gm.recompile()
        return PassResult(gm, True)

    def _rewrite(self, graph, match: _Match, seed, index, program, ctx, replaced) -> None:
        """Rewrite one layer with its recipe's program (fp4.runtime.recipes); the epilogues stay unfused."""
        layer = match.layer
        layer.status = "rewritten"
        layer.seed_index = index if seed is not None else None
        forward = match.forward
        with graph.inserting_before(forward):
            call = _GraphCall(Builder(graph, {**provenance(forward), LAYER_KEY: layer.name}))
            # [N, K]; a Conv1D's transpose goes in where the weight's quantizer first reads it.
            weight = _Transposed(call.builder, match.weight) if match.weight_transposed else match.weight
            y, saved = program.forward(call, match.x, weight, match.bias, value(forward).dtype)
        _replace(graph, forward, y, replaced)
        layer.gemms["forward"] = call.gemms[-1].name
        ctx.counters["quartet-linear.forward_gemm"] += 1
        if seed is None:
            return
        backward = dict(layer_name=layer.name, grad_spec=match.grad_output, seed=seed, saved=saved, replaced=replaced)
        for kind, node, transposed, step, absent in (
            ("input_grad", match.input_grad, match.input_grad_transposed, program.input_grad,
             "the layer input needs no gradient"),
            ("weight_grad", match.weight_grad, match.weight_grad_transposed, program.weight_grad,
             "the weight needs no gradient (frozen)"),
        ):  # fmt: skip
            if node is None:
                layer.missing[kind] = absent
                continue
            layer.gemms[kind] = self._backward_gemm(graph, node, transposed, step, **backward)
            ctx.counters[f"quartet-linear.{kind}_gemm"] += 1
        if match.bias is not None:
            if match.bias_grad is not None:
                layer.gemms["bias_grad"] = self._bias_grad(graph, match, program, replaced)
                ctx.counters["quartet-linear.bias_grad"] += 1
            else:
                layer.missing["bias_grad"] = "the bias needs no gradient, or its reduction was not found"

    def _backward_gemm(self, graph, node, transposed, step, *, layer_name, grad_spec, seed, saved, replaced) -> str:
        """Replace one backward ``mm`` by a recipe program's step: quantizers, GEMM, unfused epilogue."""
        with graph.inserting_before(node):
            b = Builder(graph, {**provenance(node), "partitioner_tag": "is_backward", LAYER_KEY: layer_name})
            grad = _materialize(b, grad_spec)
            call = _GraphCall(b)
            result = step(call, grad, saved, seed, value(node).dtype)
            # Re-quantizations of saved operands do not read dY; keep them in the backward anyway, where the
            # oracle computes them (the partitioner would otherwise move them to the forward).
            reads_grad = {grad}
            for new in call.created:
                if any(arg in reads_grad for arg in new.all_input_nodes):
                    reads_grad.add(new)
                elif new.target is not operator.getitem:
                    new.meta["partitioner_tag"] = "must_be_in_backward"
            if transposed:
                result = b.transpose(result)
        _replace(graph, node, result, replaced)
        return call.gemms[-1].name

    def _bias_grad(self, graph, match: _Match, program, replaced) -> str:
        node = match.bias_grad
        keepdim = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
        with graph.inserting_before(node):
            b = Builder(graph, {**provenance(node), "partitioner_tag": "is_backward", LAYER_KEY: match.layer.name})
            grad = _materialize(b, match.grad_output)
            reduction = program.bias_grad(_GraphCall(b), grad, value(match.bias).dtype)
            result = b.cast(reduction, value(node).dtype)
            if keepdim:
                result = b.call(aten.view.default, result, [1, match.layer.out_features])
        _replace(graph, node, result, replaced)
        return reduction.name


def _replace(graph: torch.fx.Graph, old: torch.fx.Node, new: torch.fx.Node, replaced: dict) -> None:
    """Replace ``old`` by ``new`` in the graph, erase it, and remember it for the matches not rewritten yet."""
    old.replace_all_uses_with(new)
    graph.erase_node(old)
    replaced[old] = new


def _resolve(match: _Match, replaced: dict) -> _Match:
    """``match`` with every node an earlier rewrite erased replaced by the node that took its place."""

    def current(node):
        if isinstance(node, tuple):  # a gradient spec ("t", node)
            return (node[0], current(node[1]))
        while node in replaced:
            node = replaced[node]
        return node

    nodes = ("forward", "x", "weight", "bias", "grad_output", "input_grad", "weight_grad", "bias_grad")
    return dataclasses.replace(match, **{name: current(getattr(match, name)) for name in nodes})


def _is_fp4_gathered(node) -> bool:
    """Whether ``node`` is the marker of a weight FSDP gathered as MXFP4 (``fp4::gathered_weight``)."""
    return isinstance(node, torch.fx.Node) and node.target is fp4.gathered_weight.default


def _merge_fp4_gathered(graph: torch.fx.Graph) -> None:
    """One ``fp4::gathered_weight`` node per gathered weight.

    Tracing emits one marker per GEMM on the weight (forward and input grad);
    the backward matching finds a layer's input-grad GEMM by its weight node.
    """
    first: dict[tuple, torch.fx.Node] = {}
    for node in list(graph.nodes):
        if not _is_fp4_gathered(node):
            continue
        key = (node.args, tuple(sorted(node.kwargs.items())))
        if key in first:
            node.replace_all_uses_with(first[key])
            graph.erase_node(node)
        else:
            first[key] = node


def _check_no_fp4_gathered_left(graph: torch.fx.Graph, layers: list[LinearLayer]) -> None:
    """Refuse a graph that still reads an MXFP4-gathered weight: it has no dense values to compute with."""
    left = [node for node in graph.nodes if _is_fp4_gathered(node) and node.users]
    if not left:
        return
    skipped = {layer.forward: layer for layer in layers if layer.status == "skipped"}
    reasons = sorted(
        f"{layer.name}: {layer.reason}"
        for node in left
        for user in _consumers(node)
        if (layer := skipped.get(user.name)) is not None
    )
    users = sorted({user.name for node in left for user in _consumers(node)})
    raise ValueError(
        "a weight gathered as MXFP4 codes (fp4.distributed.enable_fp4_all_gather) is used by a GEMM the "
        "quartet-linear pass does not rewrite, and it has no dense values; "
        + ("; ".join(reasons) if reasons else f"used by {users}")
        + ". Select the layer for the backend or leave its weight out of enable_fp4_all_gather."
    )


def _consumers(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The non-view ops reading ``node`` (through transposes and views)."""
    out, frontier = [], list(node.users)
    while frontier:
        user = frontier.pop()
        if user.op == "call_function" and (user.target in VIEW_OPS or is_transpose_2d(user)):
            frontier.extend(user.users)
        else:
            out.append(user)
    return out


def _after_gather(node: torch.fx.Node, depth: int = 8) -> bool:
    """Whether ``node`` is computed from an all-gathered tensor within ``depth`` ops (a sharded weight)."""
    frontier = [node]
    for _ in range(depth):
        frontier = list({arg: None for n in frontier for arg in n.all_input_nodes})
        if any(n.target in GATHER_OPS for n in frontier):
            return True
    return False


class _GraphCall:
    """The ``call`` a recipe program runs with in the pass: each op becomes a node (with its getitems).

    Two rules make the graph compute what the eager run computes:

    * a GEMM's epilogue (bias, clip mask, inverse rotation, output cast) becomes separate nodes after a float32
      GEMM, each where its ``fuse-*`` pass finds it (:func:`fp4.passes.epilogue.unfused_gemm`); the reference
      GEMM applies the steps exactly where those nodes round, so the fusions give back the eager GEMM bit for bit;
    * ``fp4::quest_quantize`` of a weight FSDP gathered as MXFP4 (an ``fp4::gathered_weight`` marker) is the
      gathered codes, scales and mask, as :meth:`fp4.runtime.gathered.MXFP4Weight.quantized` answers it eagerly.
    """

    def __init__(self, builder: Builder):
        self.builder = builder
        self.created: list[torch.fx.Node] = []  # every node inserted, in order
        self.gemms: list[torch.fx.Node] = []  # the GEMM nodes (float32, epilogue unfused)

    def __call__(self, op, *args):
        args = tuple(arg.node() if isinstance(arg, _Transposed) else arg for arg in args)
        if op is fp4.quest_quantize.default and _is_fp4_gathered(args[0]):
            return list(args[0].args[:3])  # (a layer whose rotate differs from the gathering's is skipped)
        if op in GEMM_SIGNATURES:
            nodes = unfused_gemm(self.builder, op, args)
            self.gemms.append(nodes[0])
            self.created.extend(nodes)
            return nodes[-1]
        node = self.builder.call(op, *args)
        outputs = self.builder.unpack(node) if isinstance(node.meta["val"], (tuple, list)) else None
        self.created.extend([node, *(outputs or ())])
        return node if outputs is None else outputs


class _Transposed:
    """The [N, K] weight of a Conv1D ([K, N] in the graph): its transpose is inserted when an op first reads it,
    so it sits right before the weight's quantizer, after the input's."""

    def __init__(self, builder: Builder, weight: torch.fx.Node):
        self.builder, self.weight, self.transpose = builder, weight, None

    def node(self) -> torch.fx.Node:
        if self.transpose is None:
            self.transpose = self.builder.transpose(self.weight)
        return self.transpose


def _recompute_weight_quantization(match: _Match, quantizer) -> None:
    """Have the partitioner recompute the weight's quantization in the backward instead of saving its codes.

    The weight quantizers of every recipe are deterministic (QuEST, four-over-six,
    2-D round-to-nearest), so the recomputation gives the same codes and scales
    bit for bit; the backward then reads the weight itself (a graph input, which
    FSDP re-gathers for the backward anyway) and saves no FP4 copy of it.  The
    casts between the weight input and the quantizer are recomputed too, or the
    partitioner would save the cast copy.
    """
    readers = [u for u in match.weight.users] + [v for u in match.weight.users if _is_transpose(u) for v in u.users]
    quantize = next(u for u in readers if u.target is quantizer)
    chain = [quantize, *quantize.users]
    if quantize.args[0] is not match.weight:
        chain.append(quantize.args[0])  # the transpose of a Conv1D weight
    node = match.weight
    while node.op == "call_function":
        chain.append(node)
        node = node.args[0]
    for node in chain:
        node.meta["recompute"] = CheckpointPolicy.MUST_RECOMPUTE


def _is_transpose(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and node.target in (aten.t.default, aten.permute.default, aten.transpose.int)


def _value_key(node: torch.fx.Node) -> tuple:
    """Equal for nodes :func:`same_value` would call equal (views of one value with one shape)."""
    base = node
    while base.op == "call_function" and base.target in VIEW_OPS:
        base = base.args[0]
    return (base.name, shape(node))


class _OutputHeads:
    """Finds the output head by structure, not by name: what the graph does with the matmul and its weight.

    A matmul is the output head when its weight is an embedding's weight
    (tied, as GPT-2, BERT and T5 do), when its output feeds a log-softmax (the
    loss), or when it is a graph output of the vocabulary's width (the logits).
    """

    LOSS_OPS = (aten._log_softmax.default, aten.log_softmax.int)

    def __init__(self, graph: torch.fx.Graph):
        self.embeddings: dict[torch.fx.Node, torch.fx.Node] = {}  # weight input -> its aten.embedding
        for node in graph.nodes:
            if node.op == "call_function" and node.target is aten.embedding.default:
                source = weight_source(node.args[0])
                if source is not None:
                    self.embeddings.setdefault(source, node)
        self.vocab_sizes = {shape(source)[0] for source in self.embeddings}

    def evidence(self, matmul: torch.fx.Node, weight: torch.fx.Node) -> str | None:
        embedding = self.embeddings.get(weight_source(weight))
        if embedding is not None:
            owner = module_of(embedding)
            return f"weight tied to the embedding {owner[0] if owner else embedding.name}"
        width = shape(matmul)[-1:]
        for user in _through_views(matmul):
            if user.op == "call_function" and user.target in self.LOSS_OPS:
                return "its output feeds the loss (log-softmax)"
            if user.op == "output" and width and width[0] in self.vocab_sizes:
                return f"its output is a graph output over the vocabulary ({width[0]})"
        return None


def _features(weight: torch.fx.Node, transposed: bool) -> tuple[int, int]:
    """``(in_features, out_features)`` of a layer's 2-D weight: [N, K] where the GEMM takes it transposed
    (``nn.Linear``), [K, N] where it takes it as it is (GPT-2's ``Conv1D``)."""
    rows, columns = shape(weight)
    return (columns, rows) if transposed else (rows, columns)


def _batched_weight_layer(node: torch.fx.Node, input_names: dict) -> LinearLayer | None:
    """A batched or grouped GEMM on parameters (mixture-of-experts weights), listed as skipped; None for one on
    activations only (attention's ``bmm``)."""
    rhs = node.args[BATCHED_MATMUL_OPS[node.target]]
    parameters, frontier, seen = [], [rhs], set()
    while frontier:  # the parameters the right-hand operand is picked from (through views, indexing, casts)
        current = frontier.pop()
        if current in seen or not isinstance(current, torch.fx.Node):
            continue
        seen.add(current)
        if current.op == "placeholder" and current.name in input_names:
            parameters.append(input_names[current.name])
        elif current.op == "call_function" and current.target in VIEW_OPS + CAST_OPS + WEIGHT_PICK_OPS:
            frontier.append(current.args[0])
    if not parameters:
        return None
    layer = LinearLayer.at(node, parameters[0], shape(rhs)[-2], shape(rhs)[-1], False)
    op = getattr(node.target, "__name__", str(node.target))
    return _skip(layer, f"batched GEMM ({op}) on stacked weights (mixture-of-experts): fp4 rewrites 2-D linear "
                        "layers only; stays in the model dtype")  # fmt: skip


def _parameters_behind(node: torch.fx.Node, input_names: dict) -> list[str]:
    """Names of the parameters a computed value derives from, or [] if it also depends on a non-parameter."""
    names, frontier, seen = [], [node], set()
    while frontier:
        current = frontier.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "placeholder":
            if current.name not in input_names:
                return []
            names.append(input_names[current.name])
        frontier.extend(current.all_input_nodes)
    return sorted(names)


def _through_views(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The users of ``node`` reached through views and dtype casts (the views and casts themselves excluded)."""
    users, frontier, seen = [], list(node.users), set()
    while frontier:
        user = frontier.pop()
        if user in seen:
            continue
        seen.add(user)
        if user.op == "call_function" and user.target in VIEW_OPS + CAST_OPS:
            frontier.extend(user.users)
        else:
            users.append(user)
    return users


def _grad_shape(spec) -> tuple:
    """Shape of the [T, N] gradient a spec denotes (a node, or ``("t", node)`` for its transpose)."""
    return tuple(reversed(shape(spec[1]))) if isinstance(spec, tuple) else shape(spec)


def _same_grad(a, b) -> bool:
    """Two gradient specs (node or ``("t", node)``) denote the same [T, N] tensor."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return same_value(a[1], b[1])
    if isinstance(a, tuple):
        a, b = b, a
    if isinstance(b, tuple):
        base, transposed = peel_transposes(b[1])
        return transposed and same_value(base, a)
    return same_value(a, b)


def _materialize(b: Builder, spec) -> torch.fx.Node:
    """The [T, N] gradient node of a spec, inserting one transpose if the graph only holds dY^T."""
    if isinstance(spec, tuple):
        base, transposed = peel_transposes(spec[1])
        return base if transposed else b.transpose(spec[1])
    return spec
