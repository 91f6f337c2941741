"""The eager oracle: a ``torch.autograd.Function`` and an ``nn.Linear`` drop-in.

This computes one linear layer's forward and backward exactly as its recipe
(:mod:`fp4.runtime.recipes`) defines them, one fp4 op at a time: the
recipe's program run eagerly, the program the ``quartet-linear`` pass runs
symbolically.  Compiled graphs are compared with it bit for bit, and it is
the "eager Quartet" baseline of the benchmarks.  On a GPU the same ops run
the Triton kernels.

Under the default recipe (Quartet: QuEST forward quantizer with clip mask,
Hadamard rotations, stochastic-rounding backward) the forward ``Y = X W^T``
keeps only the MXFP4 codes, scales and clip masks of ``X`` and ``W`` (plus a
seed) for backward::

    dX = rotate^-1(mX * (Q_b(rot_b(dY)) . Q_b(rot_b(W^T))^T) / 9)      contract N
    dW = rotate^-1(mW * (Q_b(rot_b(dY^T)) . Q_b(rot_b(X^T))^T) / 9)    contract T
"""

from __future__ import annotations

import torch

from . import ops  # noqa: F401  (registers torch.ops.fp4)
from .recipes import RECIPES, eager_call

fp4_ops = torch.ops.fp4


class QuartetLinearFunction(torch.autograd.Function):
    """``F.linear`` under a recipe: inputs ``(x [..., K], weight [N, K], bias [N] | None, seed[, recipe])``.

    ``recipe``: a name of :data:`fp4.runtime.recipes.RECIPES` or a recipe (a Quartet variant); default Quartet.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, seed, recipe="quartet"):
        recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
        in_features = weight.shape[1]
        if x.shape[-1] != in_features:
            raise ValueError(f"input has {x.shape[-1]} features, weight expects {in_features}")
        y, saved = recipe.forward(eager_call, x.reshape(-1, in_features), weight, bias, x.dtype)
        names = sorted(saved)
        ctx.save_for_backward(*(t for name in names for t in saved[name]), seed)
        ctx.layout = [(name, len(saved[name])) for name in names]
        ctx.recipe = recipe
        ctx.shapes = (x.shape, x.dtype, weight.dtype, None if bias is None else bias.dtype)
        # a copy, not a view of ``y``: the model may update the output in place (Falcon's ``y += h``), which
        # autograd forbids on a view made inside a custom Function
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], weight.shape[0]).clone()

    @staticmethod
    def backward(ctx, grad_y):
        # The op implementations compute in float32 whatever autocast says (a backward run inside an
        # autocast region would otherwise see their float32 matmuls cast), as in the compiled backward.
        with torch.autocast(grad_y.device.type, enabled=False):
            return QuartetLinearFunction._backward(ctx, grad_y)

    @staticmethod
    def _backward(ctx, grad_y):
        *tensors, seed = ctx.saved_tensors
        saved, start = {}, 0
        for name, count in ctx.layout:
            saved[name] = tuple(tensors[start : start + count])
            start += count
        recipe = ctx.recipe
        x_shape, x_dtype, w_dtype, b_dtype = ctx.shapes
        grad_output = grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = recipe.input_grad(eager_call, grad_output, saved, seed, x_dtype).reshape(x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = recipe.weight_grad(eager_call, grad_output, saved, seed, w_dtype)
        if b_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = recipe.bias_grad(eager_call, grad_output, b_dtype)
        # seed, and recipe when given: no gradient
        return grad_x, grad_w, grad_b, *[None] * (len(ctx.needs_input_grad) - 3)


def draw_layer_seed(rank_seeds="auto", device="cpu") -> torch.Tensor:
    """One layer seed from ``device``'s generator, salted with ``rank + 1`` under a process group (``rank_seeds``)."""
    from fp4.core import seed_salt

    salt = seed_salt(rank_seeds)
    return fp4_ops.draw_seeds(1, torch.device(device), salt)[0] if salt else fp4_ops.draw_seeds(1, device)[0]


def quartet_linear(x, weight, bias=None, seed=None, rank_seeds="auto", recipe="quartet"):
    """Functional linear layer under ``recipe`` (default Quartet); draws a seed (:func:`draw_layer_seed`) when none
    is given.

    Under ``torch.autocast`` it runs as the compiled graph does, where autocast
    casts ``F.linear``'s floating inputs (float64 aside) to its dtype before the
    GEMM: the layer quantizes the cast input and weight and returns the autocast
    dtype; the gradients flow back through the casts.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight, bias = (_autocast(t, dtype) for t in (x, weight, bias))
        with torch.autocast(device_type, enabled=False):
            return quartet_linear(x, weight, bias, seed, rank_seeds, recipe)
    if seed is None:
        seed = draw_layer_seed(rank_seeds, x.device)
    if bias is not None and x.dim() > 2 and not x.is_contiguous():
        # F.linear adds the bias in the GEMM only for 2-D or contiguous input; otherwise it is a matmul and
        # an add (nn.MultiheadAttention's in-projection of a batch_first input), and so is the graph.
        return QuartetLinearFunction.apply(x, weight, None, seed, recipe) + bias
    return QuartetLinearFunction.apply(x, weight, bias, seed, recipe)


def _autocast(tensor, dtype):
    eligible = tensor is not None and tensor.is_floating_point() and tensor.dtype != torch.float64
    return tensor.to(dtype) if eligible else tensor


class QuartetLinear(torch.nn.Linear):
    """``nn.Linear`` whose three GEMMs run in FP4 under a recipe (default: MXFP4 under the Quartet algorithm)."""

    rank_seeds = "auto"  # the backend option of the same name
    recipe = "quartet"  # the backend option of the same name

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, rank_seeds="auto", recipe="quartet") -> QuartetLinear:
        """A layer sharing ``linear``'s parameters (no copy)."""
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.rank_seeds = rank_seeds
        layer.recipe = recipe
        return layer

    def forward(self, x):
        return quartet_linear(x, self.weight, self.bias, rank_seeds=self.rank_seeds, recipe=self.recipe)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.recipe == "quartet" else f", recipe={self.recipe!r}")


def _leaf_of(grad_fn):
    """The parameter a one-step cast's autograd node leads to (``weight.to(dtype)``), or None."""
    if type(grad_fn).__name__ != "ToCopyBackward0":
        return None
    node = grad_fn.next_functions[0][0]
    return getattr(node, "variable", None)


class _RoutedMatmuls:
    """While a module runs, sends its matmuls on given weights to :func:`quartet_linear`.

    ``F.linear(x, w)``, ``torch.addmm(b, x, w)`` (``w`` [K, N]) and ``x @ w.T`` /
    ``torch.matmul(x, w.T)`` (``w`` [N, K]; or ``x @ w`` with ``w`` [K, N]), as
    the backend rewrites each of them, also on a copy of the weight cast in the
    forward.  For the modules a swap cannot cover: Linear subclasses (their own
    ``forward`` may do more than ``F.linear``, or multiply by the transposed
    weight itself, as Falcon's ``FalconLinear``), GPT-2's ``Conv1D``, modules
    with a 2-D weight of their own (a mixture-of-experts router)
    and ``nn.MultiheadAttention``,
    whose functional forward calls ``F.linear`` on its projection weights
    itself (looked up in ``torch.nn.functional`` at call time, which is why
    this replaces the two functions there, for the duration of the call, rather
    than using a torch-function mode: a mode would also catch the enclosing
    ``F.multi_head_attention_forward`` and run its body with the mode off).
    Every other call goes to the original function.
    """

    def __init__(self, weights, rank_seeds="auto", recipe="quartet"):
        self.weights = weights  # id(weight) -> "linear" ([N, K] weight) or "conv1d" ([K, N] weight)
        self.rank_seeds = rank_seeds
        self.recipe = recipe
        self.saved = []

    def _kind(self, tensor) -> str | None:
        """The kind of a routed weight, or of a copy of one cast to another dtype in the forward (DeepSeek-V3's
        router multiplies in float32: the graph traces that cast back to the parameter, so the backend rewrites
        it); None for any other tensor."""
        kind = self.weights.get(id(tensor))
        if kind is not None:
            return kind
        leaf = _leaf_of(tensor.grad_fn) if isinstance(tensor, torch.Tensor) and tensor.grad_fn is not None else None
        return None if leaf is None else self.weights.get(id(leaf))

    def linear(self, x, weight, bias=None):
        if self._kind(weight) == "linear":
            return quartet_linear(x, weight, bias, rank_seeds=self.rank_seeds, recipe=self.recipe)
        return self.original_linear(x, weight, bias)

    def addmm(self, bias, x, weight, **kwargs):
        if self._kind(weight) == "conv1d" and not kwargs and x.dim() == 2:
            return quartet_linear(x, weight.t(), bias, rank_seeds=self.rank_seeds, recipe=self.recipe)
        return self.original_addmm(bias, x, weight, **kwargs)

    def matmul(self, x, other):
        """``x @ w.T`` for a routed ``w`` [N, K] (the transposed view of it), or ``x @ w`` for a ``w`` [K, N]."""
        base = other._base if isinstance(other, torch.Tensor) else None
        if (
            base is not None
            and self._kind(base) == "linear"
            and other.shape == base.shape[::-1]
            and other.stride() == base.stride()[::-1]
            and other.storage_offset() == base.storage_offset()
        ):
            return quartet_linear(x, base, None, rank_seeds=self.rank_seeds, recipe=self.recipe)
        if isinstance(other, torch.Tensor) and self._kind(other) == "conv1d":
            return quartet_linear(x, other.t(), None, rank_seeds=self.rank_seeds, recipe=self.recipe)
        return self.original_matmul(x, other)

    def __enter__(self):
        functional = torch.nn.functional
        self.saved.append((functional.linear, torch.addmm, torch.matmul, torch.Tensor.__matmul__))
        self.original_linear, self.original_addmm, self.original_matmul, _ = self.saved[-1]
        functional.linear, torch.addmm = self.linear, self.addmm
        torch.matmul = self.matmul
        torch.Tensor.__matmul__ = lambda x, other: self.matmul(x, other)  # a function, so that it binds ``x``
        return self

    def __exit__(self, *exc):
        functional = torch.nn.functional
        functional.linear, torch.addmm, torch.matmul, torch.Tensor.__matmul__ = self.saved.pop()
        return False


def _is_conv1d(module) -> bool:
    """GPT-2's ``transformers.pytorch_utils.Conv1D``: a linear layer with the transposed weight [K, N]."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def linear_layers(model: torch.nn.Module):
    """Every linear layer the backend sees in a graph, as ``(layer name, module, weight, kind)``.

    ``nn.Linear`` and its subclasses, ``nn.MultiheadAttention``'s projections, GPT-2's ``Conv1D``, and any
    other module's own 2-D ``weight`` (a router calling ``F.linear`` on it), embeddings aside.
    ``kind`` is ``"linear"`` (``weight`` [N, K]) or ``"conv1d"`` (``weight`` [K, N]);
    the names are :func:`fp4.options.layer_name`'s, as the backend reports them.
    """
    from fp4.core import layer_name

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.MultiheadAttention):
            if module.in_proj_weight is not None:
                yield layer_name(name, _param(name, "in_proj_weight")), module, module.in_proj_weight, "linear"
            else:
                for part in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                    yield layer_name(name, _param(name, part)), module, getattr(module, part), "linear"
            out = module.out_proj
            yield layer_name(name, _param(name, "out_proj.weight")), module, out.weight, "linear"
        elif isinstance(module, torch.nn.Linear) and not _inside_attention(model, name):
            yield layer_name(name, _param(name, "weight")), module, module.weight, "linear"
        elif _is_conv1d(module):
            yield layer_name(name, _param(name, "weight")), module, module.weight, "conv1d"
        elif _has_matrix_weight(module):
            yield layer_name(name, _param(name, "weight")), module, module.weight, "linear"


def _has_matrix_weight(module) -> bool:
    """A module of another kind holding a 2-D ``weight`` of its own, which its ``forward`` may pass to
    ``F.linear`` or multiply by (a mixture-of-experts router); an embedding's is looked up, not multiplied."""
    weight = module._parameters.get("weight")
    embedding = isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag))
    return weight is not None and weight.dim() == 2 and not embedding


def _param(module: str, attribute: str) -> str:
    return f"{module}.{attribute}" if module else attribute


def _inside_attention(model, name: str) -> bool:
    """Whether ``name`` is the ``out_proj`` of an ``nn.MultiheadAttention`` (covered with its attention)."""
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    return child == "out_proj" and isinstance(owner, torch.nn.MultiheadAttention)


def output_heads(model: torch.nn.Module) -> dict[int, str]:
    """``id(weight) -> why`` for the weights of the model's output head (what the backend finds in the graph).

    A weight that is also an ``nn.Embedding``'s (tied), and the layer a Hugging
    Face model names with ``get_output_embeddings()``.
    """
    heads = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding):
            heads.setdefault(id(module.weight), f"weight tied to the embedding {name}")
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if isinstance(output, torch.nn.Module) and getattr(output, "weight", None) is not None:
        heads.setdefault(id(output.weight), "the model's output embeddings (get_output_embeddings)")
    return heads


def quartetize(model: torch.nn.Module, options=None, **overrides) -> torch.nn.Module:
    """Make every linear layer the backend would rewrite run the recipe's ops eagerly; returns ``model`` (in place).

    The layers are chosen by the backend's rule (:func:`fp4.options.skip_reason`
    with the same ``options``: name patterns, output head, K a multiple of the
    recipe's block), and ``keep_last_layers`` leaves the last of them in the model
    dtype, in module order (the order ``named_modules`` lists them, which is
    their forward order in Hugging Face models and ``fp4.models``; the backend
    counts in forward order).  A plain ``nn.Linear`` is swapped for a
    :class:`QuartetLinear`; Linear subclasses, ``Conv1D``,
    ``nn.MultiheadAttention`` and other modules with a 2-D weight of their own
    (:func:`linear_layers`) keep their module and have their matmuls routed
    through :func:`quartet_linear` during their forward.  ``overrides`` are
    options too (``quartetize(model, rank_seeds=False)``, ``recipe="nvfp4"``).
    """
    from fp4.core import skip_reason
    from fp4.options import Options

    options = Options.from_mapping(options, **overrides)
    heads = output_heads(model)
    routed: dict[torch.nn.Module, dict[int, str]] = {}
    swaps = []
    selected = []
    for name, module, weight, kind in list(linear_layers(model)):
        in_features = weight.shape[0] if kind == "conv1d" else weight.shape[1]
        if skip_reason(options, name, in_features, head=heads.get(id(weight))) is None:
            selected.append((name, module, weight, kind))
    if options.keep_last_layers:
        selected = selected[: -options.keep_last_layers]
    for name, module, weight, kind in selected:
        if type(module) is torch.nn.Linear:
            swaps.append(name)
        else:
            routed.setdefault(module, {})[id(weight)] = kind
    for name in swaps:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuartetLinear.from_linear(getattr(parent, child), options.rank_seeds, options.recipe))
    for module, weights in routed.items():
        enter, routing = _enter_routing(weights, options.rank_seeds, options.recipe)
        module.register_forward_pre_hook(enter)
        module.register_forward_hook(_exit_routing(routing), always_call=True)
    return model


def _enter_routing(weights, rank_seeds, recipe="quartet"):
    routing = _RoutedMatmuls(weights, rank_seeds, recipe)

    def hook(module, args):
        routing.__enter__()

    return hook, routing


def _exit_routing(routing):
    def hook(module, args, output):
        routing.__exit__(None, None, None)

    return hook
