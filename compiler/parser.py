"""Read the ``.fx`` text format (see :mod:`fp4.printer`) back into FX graphs.

``parse_graph(text)`` returns ``(GraphModule, header_pass_name)``.  Every node
of the result carries ``meta['val']``: placeholders get FakeTensors of their
declared dtype, shape and device, and every other node the value its op
computes on those under a ``FakeTensorMode``.  A declared type that disagrees
with the computed one is an error that names the line, so a hand-written test
input cannot silently describe a different graph than the one it builds.

Besides the printer's own output, the parser accepts two conveniences for
hand-written test files: a node line without a type (``y = torch.ops...(x)``)
or with the type ``"?"`` is computed but not checked, and a file may hold
several ``def`` blocks (:func:`parse_graphs`), each an independent test case.
"""

from __future__ import annotations

import ast
import builtins
import math
import operator
import re
from dataclasses import dataclass

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode

from . import runtime  # noqa: F401  (registers torch.ops.fp4 so its ops resolve)
from .printer import DTYPES_BY_ABBREVIATION, format_type

_HEADER = re.compile(r"^#\s*Constructed by\s+(.*?)\s*$")


class GraphParseError(ValueError):
    """A problem in ``.fx`` text; the message starts with ``line N:`` where a line is known."""

    def __init__(self, message: str, line: int | None = None):
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


# ----------------------------------------------------------------------------
# types


@dataclass(frozen=True)
class TensorType:
    dtype: torch.dtype
    shape: tuple[int, ...]
    device: torch.device


UNKNOWN = "?"
_SCALAR_TYPES = {"int": int, "float": float, "bool": bool}
_TYPE_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*(?::\d+)?)|(-?\d+)|([\[\](),?]))")


def _tokenize_type(text: str, line: int) -> list[str]:
    tokens, position = [], 0
    while position < len(text):
        match = _TYPE_TOKEN.match(text, position)
        if not match or match.end() == position:
            if text[position:].strip() == "":
                break
            raise GraphParseError(f"cannot read type {text!r} at {text[position:]!r}", line)
        tokens.append(match.group(match.lastindex))
        position = match.end()
    return tokens


def parse_type(text: str, line: int | None = None):
    """``"f32[8, 32]"`` -> :class:`TensorType`; tuples/lists of types; ``None``; ``int``/``float``/``bool``; ``?``."""
    tokens = _tokenize_type(text, line)
    position = 0

    def peek():
        return tokens[position] if position < len(tokens) else None

    def take(expected=None):
        nonlocal position
        token = peek()
        if token is None or (expected is not None and token != expected):
            raise GraphParseError(f"cannot read type {text!r}: expected {expected or 'more'}, got {token!r}", line)
        position += 1
        return token

    def sequence(close):
        items = []
        while peek() != close:
            items.append(one())
            if peek() == ",":
                take(",")
            elif peek() != close:
                raise GraphParseError(f"cannot read type {text!r}: expected ',' or {close!r}", line)
        take(close)
        return items

    def one():
        token = take()
        if token == "(":
            return tuple(sequence(")"))
        if token == "[":
            return sequence("]")
        if token == "?":
            return UNKNOWN
        if token == "None":
            return None
        if token in _SCALAR_TYPES:
            return _SCALAR_TYPES[token]
        device = torch.device("cpu")
        if token not in DTYPES_BY_ABBREVIATION:
            try:
                device = torch.device(token)
            except RuntimeError:
                raise GraphParseError(f"unknown dtype {token!r} in type {text!r}", line) from None
            token = take()
        if token not in DTYPES_BY_ABBREVIATION:
            raise GraphParseError(f"unknown dtype {token!r} in type {text!r}", line)
        dtype = DTYPES_BY_ABBREVIATION[token]
        take("[")
        shape = []
        while peek() != "]":
            size = take()
            if not re.fullmatch(r"\d+", size):
                raise GraphParseError(
                    f"dimension {size!r} of type {text!r} is not a non-negative integer: "
                    "only static shapes are supported",
                    line,
                )
            shape.append(int(size))
            if peek() == ",":
                take(",")
        take("]")
        return TensorType(dtype, tuple(shape), device)

    result = one()
    if position != len(tokens):
        raise GraphParseError(f"unexpected {tokens[position]!r} after type in {text!r}", line)
    return result


def _matches(declared, value) -> bool:
    if declared is UNKNOWN:
        return True
    if isinstance(declared, TensorType):
        return (
            isinstance(value, torch.Tensor)
            and value.dtype == declared.dtype
            and tuple(value.shape) == declared.shape
            and value.device == declared.device
        )
    if isinstance(declared, (tuple, list)):
        return (
            type(value) is type(declared)
            and len(value) == len(declared)
            and all(_matches(d, v) for d, v in zip(declared, value))
        )
    if declared is None:
        return value is None
    if declared is bool:
        return isinstance(value, bool)
    if declared is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if declared is float:
        return isinstance(value, float)
    return False


def _placeholder_value(declared: TensorType, mode: FakeTensorMode) -> torch.Tensor:
    with mode:
        return torch.empty(declared.shape, dtype=declared.dtype, device=declared.device)


# ----------------------------------------------------------------------------
# fake propagation, shared with the pass manager's verifier


def compute_fake_value(node: torch.fx.Node, mode: FakeTensorMode, values: dict):
    """Run ``node``'s target on the fake values of its inputs (``values``: node -> fake value)."""

    def value_of(arg):
        return values[arg]

    args = torch.fx.node.map_arg(node.args, value_of)
    kwargs = torch.fx.node.map_arg(node.kwargs, value_of)
    with mode:
        return node.target(*args, **kwargs)


# ----------------------------------------------------------------------------
# expressions


_ROOTS = {"torch": torch, "operator": operator, "math": math}
_CONSTANT_CALLS = {"float", "slice"}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _resolve(path: str, line: int):
    root, *rest = path.split(".")
    if root not in _ROOTS:
        raise GraphParseError(f"unknown name {path!r}: targets start with torch., operator. or math.", line)
    value = _ROOTS[root]
    for index, attr in enumerate(rest):
        try:
            value = getattr(value, attr)
        except (AttributeError, RuntimeError):
            prefix = ".".join([root, *rest[: index + 1]])
            raise GraphParseError(f"{prefix!r} does not exist (is the op's library imported?)", line) from None
    return value


def _resolve_target(func: ast.AST, line: int):
    path = _dotted(func)
    if path is None:
        raise GraphParseError("a call target must be a dotted name", line)
    if "." not in path:
        target = getattr(builtins, path, None)
        if not callable(target):
            raise GraphParseError(f"unknown call target {path!r}", line)
        return target
    target = _resolve(path, line)
    op_types = (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)
    if path.startswith("torch.ops.") and not isinstance(target, op_types):
        raise GraphParseError(f"{path!r} is not an op overload or packet (write torch.ops.<ns>.<op>.<overload>)", line)
    if not callable(target):
        raise GraphParseError(f"{path!r} is not callable", line)
    return target


class _Expressions:
    """Evaluates argument expressions: literals, names of earlier nodes, torch constants."""

    def __init__(self, nodes: dict[str, torch.fx.Node]):
        self.nodes = nodes

    def __call__(self, expr: ast.AST):
        line = getattr(expr, "lineno", None)
        if isinstance(expr, ast.Constant):
            return expr.value
        if isinstance(expr, ast.Name):
            if expr.id in self.nodes:
                return self.nodes[expr.id]
            raise GraphParseError(f"{expr.id!r} is used before it is defined", line)
        if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, (ast.USub, ast.UAdd)):
            operand = self(expr.operand)
            if not isinstance(operand, (int, float)) or isinstance(operand, bool):
                raise GraphParseError("unary minus applies only to number literals", line)
            return -operand if isinstance(expr.op, ast.USub) else operand
        if isinstance(expr, ast.List):
            return [self(item) for item in expr.elts]
        if isinstance(expr, ast.Tuple):
            return tuple(self(item) for item in expr.elts)
        if isinstance(expr, ast.Attribute):
            path = _dotted(expr)
            value = _resolve(path, line) if path else None
            if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
                return value
            raise GraphParseError(f"{path!r} is not a torch dtype, layout or memory format", line)
        if isinstance(expr, ast.Call):
            path = _dotted(expr.func)
            args = [self(arg) for arg in expr.args]
            if expr.keywords:
                raise GraphParseError(f"{path}(...) takes positional arguments only here", line)
            if path == "float" and len(args) == 1 and args[0] in ("inf", "-inf", "nan"):
                return float(args[0])
            if path == "slice":
                return slice(*args)
            if path == "torch.device":
                return torch.device(*args)
            raise GraphParseError(f"{ast.unparse(expr)!r} is not a literal argument", line)
        raise GraphParseError(f"{ast.unparse(expr)!r} is not a literal argument", line)


# ----------------------------------------------------------------------------
# graphs


@dataclass
class ParsedGraph:
    graph_module: torch.fx.GraphModule
    produced_by: str | None
    name: str


def _header_before(lines: list[str], def_line: int) -> str | None:
    """The ``# Constructed by X`` comment right above line ``def_line`` (1-based), skipping other comments."""
    index = def_line - 2
    while index >= 0:
        text = lines[index].strip()
        match = _HEADER.match(text)
        if match:
            return match.group(1)
        if text and not text.startswith("#"):
            return None
        index -= 1
    return None


def _annotation_text(annotation: ast.AST | None, line: int) -> str | None:
    if annotation is None:
        return None
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return annotation.value
    raise GraphParseError('a type must be a string such as "f32[8, 32]"', line)


def _check(node: torch.fx.Node, declared, line: int) -> None:
    value = node.meta["val"]
    if not _matches(declared, value):
        raise GraphParseError(
            f"{node.name!r} is declared {_type_text(declared)} but computes {format_type(value, node.name)}", line
        )


def _type_text(declared) -> str:
    if isinstance(declared, TensorType):
        shape = ", ".join(map(str, declared.shape))
        dtype = next(short for short, dtype in DTYPES_BY_ABBREVIATION.items() if dtype == declared.dtype)
        prefix = "" if declared.device.type == "cpu" else f"{declared.device} "
        return f"{prefix}{dtype}[{shape}]"
    if isinstance(declared, tuple):
        return "(" + ", ".join(_type_text(d) for d in declared) + ("," if len(declared) == 1 else "") + ")"
    if isinstance(declared, list):
        return "[" + ", ".join(_type_text(d) for d in declared) + "]"
    if declared in (int, float, bool):
        return declared.__name__
    return str(declared)


def _build(function: ast.FunctionDef) -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    nodes: dict[str, torch.fx.Node] = {}
    mode = FakeTensorMode()
    values: dict[torch.fx.Node, object] = {}

    def define(name: str, node: torch.fx.Node, line: int) -> None:
        if node.name != name:
            raise GraphParseError(f"{name!r} is not a usable node name (FX would call it {node.name!r})", line)
        nodes[name] = node

    arguments = function.args
    if arguments.vararg or arguments.kwarg or arguments.kwonlyargs or arguments.defaults or arguments.posonlyargs:
        raise GraphParseError("graph parameters must be plain names with types", function.lineno)
    for arg in arguments.args:
        if arg.arg in nodes:
            raise GraphParseError(f"parameter {arg.arg!r} appears twice", arg.lineno)
        text = _annotation_text(arg.annotation, arg.lineno)
        if text is None:
            raise GraphParseError(f'parameter {arg.arg!r} needs a type such as "f32[8, 32]"', arg.lineno)
        declared = parse_type(text, arg.lineno)
        if not isinstance(declared, TensorType):
            raise GraphParseError(f"parameter {arg.arg!r} must be a tensor, got {text!r}", arg.lineno)
        node = graph.placeholder(arg.arg)
        define(arg.arg, node, arg.lineno)
        node.meta["val"] = values[node] = _placeholder_value(declared, mode)

    evaluate = _Expressions(nodes)
    returned = False
    for statement in function.body:
        line = statement.lineno
        if returned:
            raise GraphParseError("statements after return", line)
        if isinstance(statement, ast.Return):
            output = evaluate(statement.value) if statement.value is not None else None
            graph.output(output)
            returned = True
            continue
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring
        if isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, annotation = statement.target, _annotation_text(statement.annotation, line)
        elif isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, annotation = statement.targets[0], None
        else:
            raise GraphParseError('expected `name: "type" = op(args)` or `return ...`', line)
        if not isinstance(target, ast.Name):
            raise GraphParseError("the left-hand side must be one name", line)
        if target.id in nodes:
            raise GraphParseError(f"{target.id!r} is defined twice", line)
        if isinstance(statement.value, ast.Attribute) and _dotted(statement.value.value) == "self":
            raise GraphParseError(f"{target.id!r} reads a tensor constant, whose data the text does not hold", line)
        if not isinstance(statement.value, ast.Call):
            raise GraphParseError(f"{target.id!r} must be the result of a call", line)
        declared = parse_type(annotation, line) if annotation is not None else UNKNOWN
        call = statement.value
        op = _resolve_target(call.func, line)
        args = tuple(evaluate(arg) for arg in call.args)
        kwargs = {}
        for keyword in call.keywords:
            if keyword.arg is None:
                raise GraphParseError("**kwargs is not allowed in a node", line)
            kwargs[keyword.arg] = evaluate(keyword.value)
        node = graph.create_node("call_function", op, args, kwargs, name=target.id)
        define(target.id, node, line)
        try:
            value = compute_fake_value(node, mode, values)
        except Exception as error:  # the op's own message says what is wrong with its inputs
            raise GraphParseError(
                f"{target.id!r}: {ast.unparse(call.func)} fails on its inputs: {type(error).__name__}: {error}", line
            ) from error
        node.meta["val"] = values[node] = value
        try:
            format_type(value, target.id)
        except ValueError as error:
            raise GraphParseError(str(error), line) from None
        _check(node, declared, line)
    if not returned:
        raise GraphParseError(f"graph {function.name!r} has no return statement", function.end_lineno)
    graph.lint()
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    gm.meta["fp4.graph_name"] = function.name
    return gm


def parse_graphs(text: str) -> list[ParsedGraph]:
    """Every ``def`` block of ``text``, in order, as :class:`ParsedGraph`."""
    try:
        module = ast.parse(text)
    except SyntaxError as error:
        raise GraphParseError(f"not valid graph text: {error.msg}", error.lineno) from None
    lines = text.splitlines()
    graphs = []
    for statement in module.body:
        if not isinstance(statement, ast.FunctionDef):
            raise GraphParseError("only `def` blocks may appear at the top level", statement.lineno)
        if statement.decorator_list:
            raise GraphParseError("graph definitions take no decorators", statement.lineno)
        gm = _build(statement)
        produced_by = _header_before(lines, statement.lineno)
        if produced_by is not None:
            gm.meta["fp4.produced_by"] = produced_by
        graphs.append(ParsedGraph(gm, produced_by, statement.name))
    if not graphs:
        raise GraphParseError("no graph (`def ...`) in the text")
    return graphs


def parse_graph(text: str) -> tuple[torch.fx.GraphModule, str | None]:
    """Parse text holding exactly one graph; returns ``(graph_module, header_pass_name)``."""
    graphs = parse_graphs(text)
    if len(graphs) != 1:
        names = ", ".join(parsed.name for parsed in graphs)
        raise GraphParseError(f"expected one graph, found {len(graphs)} ({names}); use parse_graphs")
    return graphs[0].graph_module, graphs[0].produced_by
