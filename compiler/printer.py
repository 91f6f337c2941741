"""Print an FX graph as readable, re-parseable Python text (the ``.fx`` format).

Every stage of the pipeline, every ``fp4-opt`` output and every lit test uses
this one format, so a graph can be read, diffed, checked with FileCheck and
parsed back (:mod:`fp4.parser`) without loss::

    # Constructed by capture
    def graph(x: "f32[8, 64]", w: "bf16[32, 64]"):
        t: "bf16[64, 32]" = torch.ops.aten.t.default(w)
        quest_quantize: "(u8[8, 32], u8[8, 2], u8[8, 8])" = torch.ops.fp4.quest_quantize.default(x, True)
        getitem: "u8[8, 32]" = operator.getitem(quest_quantize, 0)
        mm: "f32[8, 32]" = torch.ops.aten.mm.default(x, t)
        return (mm, getitem)

The rules, which the parser relies on:

* Line 1 is ``# Constructed by <pass>``: the pass (or capture step) that
  produced the graph.  Other ``#`` lines are comments and are ignored.
* ``def <name>(...)`` lists the placeholders in order, each annotated with its
  type (one per line when they do not fit on one line).  A file may hold several ``def`` blocks (one per test case).
* One node per line, ``<name>: "<type>" = <target>(<args>, <key>=<value>)``,
  in graph order.  ``<name>`` is the FX node name; ``<target>`` is a full op
  path (``torch.ops.<namespace>.<op>.<overload>``), ``operator.<fn>`` or a
  Python builtin.
* Types: a tensor is ``<dtype>[<d0>, <d1>, ...]`` (``f32[]`` for a scalar
  tensor), prefixed with its device when that is not the CPU
  (``"cuda:0 bf16[8, 32]"``); a tuple result is ``(<type>, ...)``, a list
  ``[<type>, ...]``; ``None``, ``int``, ``float`` and ``bool`` name Python
  values; ``?`` means unknown (a node without ``meta['val']``).  Dtypes use
  the short names of :data:`DTYPE_ABBREVIATIONS`.
* Arguments are Python literals: ints, floats (``float("inf")``,
  ``float("-inf")``, ``float("nan")`` for the non-finite ones), bools, None,
  strings, lists and tuples, ``torch.<dtype>``, ``torch.device("cuda", 0)``,
  ``torch.strided`` (layouts), ``torch.contiguous_format`` (memory formats).
* A constant attribute of the GraphModule prints as ``name: "<type>" = self.<attr>``;
  its data is not in the text, so the parser rejects it.
* The last line is ``return <value>``, the output node's argument as is
  (usually a tuple of names, ``None`` where an output is absent).

Only static shapes are supported; a symbolic size is an error.
"""

from __future__ import annotations

import builtins
import math
import operator

import torch
import torch.fx

_DTYPE_NAMES = (
    ("float32", "f32"),
    ("float64", "f64"),
    ("float16", "f16"),
    ("bfloat16", "bf16"),
    ("float8_e4m3fn", "f8e4m3"),
    ("float8_e4m3fnuz", "f8e4m3fnuz"),
    ("float8_e5m2", "f8e5m2"),
    ("float8_e5m2fnuz", "f8e5m2fnuz"),
    ("float8_e8m0fnu", "f8e8m0"),
    ("float4_e2m1fn_x2", "f4e2m1x2"),
    ("complex32", "c32"),
    ("complex64", "c64"),
    ("complex128", "c128"),
    ("int8", "i8"),
    ("int16", "i16"),
    ("int32", "i32"),
    ("int64", "i64"),
    ("uint8", "u8"),
    ("uint16", "u16"),
    ("uint32", "u32"),
    ("uint64", "u64"),
    ("bool", "b8"),
)

# Dtypes that the installed torch knows (older releases lack some float8/float4 types).
DTYPE_ABBREVIATIONS: dict[torch.dtype, str] = {
    getattr(torch, name): short for name, short in _DTYPE_NAMES if isinstance(getattr(torch, name, None), torch.dtype)
}
"""torch dtype -> short name used in printed types."""

DTYPES_BY_ABBREVIATION: dict[str, torch.dtype] = {short: dtype for dtype, short in DTYPE_ABBREVIATIONS.items()}

_LAYOUTS = ("strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn", "jagged")
_MEMORY_FORMATS = ("contiguous_format", "preserve_format", "channels_last", "channels_last_3d")


SIGNATURE_WIDTH = 120
"""A ``def`` line longer than this lists one parameter per line."""


class UnsupportedGraphError(ValueError):
    """The graph uses something the text format cannot express (symbolic shapes, submodules, ...)."""


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return DTYPE_ABBREVIATIONS[dtype]
    except KeyError:
        raise UnsupportedGraphError(f"dtype {dtype} has no short name in the graph text format") from None


def _static_size(size, where: str) -> int:
    if isinstance(size, torch.SymInt):
        raise UnsupportedGraphError(f"{where} has the symbolic size {size}: only static shapes are supported")
    return int(size)


def format_tensor_type(value: torch.Tensor, where: str = "a value") -> str:
    """``"f32[8, 32]"`` (``"cuda:0 f32[8, 32]"`` off the CPU)."""
    shape = ", ".join(str(_static_size(size, where)) for size in value.shape)
    text = f"{dtype_name(value.dtype)}[{shape}]"
    device = value.device
    if device.type != "cpu":
        text = f"{device} {text}"
    return text


def format_type(value, where: str = "a value") -> str:
    """The printed type of a ``meta['val']`` (tensor, tuple/list of them, None or a Python scalar)."""
    if isinstance(value, torch.Tensor):
        return format_tensor_type(value, where)
    if isinstance(value, tuple):
        inner = ", ".join(format_type(item, where) for item in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(format_type(item, where) for item in value) + "]"
    if value is None:
        return "None"
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        raise UnsupportedGraphError(f"{where} is the symbolic value {value}: only static shapes are supported")
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    raise UnsupportedGraphError(f"{where} has a value of type {type(value).__name__} the graph format cannot print")


def _node_type(node: torch.fx.Node) -> str:
    where = f"node {node.name!r}"
    if "val" in node.meta:
        return format_type(node.meta["val"], where)
    tensor_meta = node.meta.get("tensor_meta")
    if tensor_meta is not None and hasattr(tensor_meta, "shape"):
        shape = ", ".join(str(_static_size(size, where)) for size in tensor_meta.shape)
        return f"{dtype_name(tensor_meta.dtype)}[{shape}]"
    return "?"


def format_float(value: float) -> str:
    if math.isnan(value):
        return 'float("nan")'
    if math.isinf(value):
        return 'float("inf")' if value > 0 else 'float("-inf")'
    return repr(value)


def format_device(device: torch.device) -> str:
    if device.index is None:
        return f'torch.device("{device.type}")'
    return f'torch.device("{device.type}", {device.index})'


def format_arg(value) -> str:
    """A node argument as a Python literal (nodes print as their names)."""
    if isinstance(value, torch.fx.Node):
        return value.name
    if value is None or isinstance(value, (bool, str)):
        return repr(value)
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        raise UnsupportedGraphError(f"symbolic argument {value}: only static shapes are supported")
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, tuple):
        items = [format_arg(item) for item in value]
        return "(" + items[0] + ",)" if len(items) == 1 else "(" + ", ".join(items) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(format_arg(item) for item in value) + "]"
    if isinstance(value, torch.dtype):
        return str(value)  # "torch.bfloat16"
    if isinstance(value, torch.device):
        return format_device(value)
    if isinstance(value, torch.layout):
        return str(value)  # "torch.strided"
    if isinstance(value, torch.memory_format):
        return str(value)  # "torch.contiguous_format"
    if isinstance(value, slice):
        return f"slice({format_arg(value.start)}, {format_arg(value.stop)}, {format_arg(value.step)})"
    if value is Ellipsis:
        return "..."
    raise UnsupportedGraphError(f"argument {value!r} of type {type(value).__name__} has no literal form")


def format_target(target) -> str:
    """The full dotted path the parser resolves back to the same callable."""
    if isinstance(target, torch._ops.OpOverload):
        namespace = target.namespace
        packet = target._schema.name.split("::", 1)[1]
        return f"torch.ops.{namespace}.{packet}.{target._overloadname}"
    if isinstance(target, torch._ops.OpOverloadPacket):
        namespace, packet = target._qualified_op_name.split("::", 1)
        return f"torch.ops.{namespace}.{packet}"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"torch.ops.higher_order.{target.name()}"
    name = getattr(target, "__name__", None)
    if name is not None and getattr(operator, name, None) is target:
        return f"operator.{name}"
    if name is not None and getattr(builtins, name, None) is target:
        return name
    if name is not None and getattr(math, name, None) is target:
        return f"math.{name}"
    raise UnsupportedGraphError(f"call target {target!r} has no printable path")


def _format_call(node: torch.fx.Node) -> str:
    parts = [format_arg(arg) for arg in node.args]
    parts += [f"{key}={format_arg(value)}" for key, value in node.kwargs.items()]
    return f"{format_target(node.target)}({', '.join(parts)})"


def _graph_of(gm_or_graph) -> torch.fx.Graph:
    if isinstance(gm_or_graph, torch.fx.GraphModule):
        return gm_or_graph.graph
    if isinstance(gm_or_graph, torch.fx.Graph):
        return gm_or_graph
    raise TypeError(f"expected a torch.fx.GraphModule or Graph, got {type(gm_or_graph).__name__}")


def graph_name(gm_or_graph) -> str:
    """The ``def`` name a graph prints under (kept by the parser in ``gm.meta['fp4.graph_name']``)."""
    meta = getattr(gm_or_graph, "meta", None) or {}
    return meta.get("fp4.graph_name", "graph")


def format_graph(gm_or_graph, produced_by: str = "capture", name: str | None = None) -> str:
    """Print ``gm_or_graph`` in the ``.fx`` text format (see the module docstring).

    The output is deterministic: it depends only on the graph's nodes, their
    order, arguments and ``meta['val']``.
    """
    graph = _graph_of(gm_or_graph)
    name = name or graph_name(gm_or_graph)
    params, body, returns = [], [], None
    for node in graph.nodes:
        if node.op == "placeholder":
            if node.args:
                raise UnsupportedGraphError(f"placeholder {node.name!r} has a default value")
            params.append(f'{node.name}: "{_node_type(node)}"')
        elif node.op == "call_function":
            body.append(f'    {node.name}: "{_node_type(node)}" = {_format_call(node)}')
        elif node.op == "output":
            returns = f"    return {format_arg(node.args[0])}"
        elif node.op == "get_attr":
            # Printed for reading; the parser refuses it (the constant's data is not in the text).
            body.append(f'    {node.name}: "{_node_type(node)}" = self.{node.target}')
        else:
            raise UnsupportedGraphError(f"node {node.name!r} is a {node.op}: only call_function graphs are printable")
    signature = f"def {name}({', '.join(params)}):"
    if len(signature) > SIGNATURE_WIDTH:
        signature = f"def {name}(\n" + "".join(f"    {param},\n" for param in params) + "):"
    lines = [f"# Constructed by {produced_by}", signature, *body]
    lines.append(returns if returns is not None else "    return None")
    return "\n".join(lines) + "\n"
