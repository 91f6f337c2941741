"""Pass registry and pipeline syntax.

A pipeline is written ``pass-a,pass-b{key=value,other=1},pass-c``.  Each pass
is a frozen dataclass whose fields are its options; ``parse_pipeline`` turns
the text into configured pass instances, with errors that name the pass and
the option.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch.fx
from fp4.core import Target


@dataclass
class PassContext:
    """What every pass may read: the target, the backend options, and shared counters/records."""

    target: Target = field(default_factory=lambda: Target("cpu"))
    options: Any = None
    counters: Counter = field(default_factory=Counter)
    # Free-form records a pass leaves for the report (e.g. rewritten/skipped layers).
    records: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PassResult:
    graph_module: torch.fx.GraphModule
    modified: bool


@dataclass(frozen=True)
class GraphPass:
    """Base class: subclasses set ``name`` and implement ``apply``; fields are options.

    An option's type is its field annotation: ``bool``, ``int``, ``float``, ``str``, ``tuple[str, ...]``,
    ``typing.Literal[...]`` (one of the given values), any of them ``| None`` (unset: the pass decides),
    and ``field(metadata={"choices": (...)})`` restricts a ``str`` to those values.  Pipeline text is
    parsed to that type (``{rotate=True}`` is the bool ``True``) and anything else is refused with an
    error naming the pass, the option and what it accepts; so are wrongly typed values given directly.
    """

    name: ClassVar[str] = ""

    def __post_init__(self):
        for option in _options(type(self)).values():
            _check(getattr(self, option.name), option, self.name)

    def apply(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:  # pragma: no cover
        raise NotImplementedError

    def spec(self) -> str:
        """The pipeline text that recreates this pass with its options."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = [f"{k}={_format_value(v)}" for k, v in values.items() if v != defaults[k]]
        return self.name + ("{" + ",".join(changed) + "}" if changed else "")


@dataclass(frozen=True)
class _Option:
    """One pass option: its field name, value type, accepted values (or None) and whether it may be unset."""

    name: str
    kind: type
    choices: tuple | None
    optional: bool

    def accepted(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(_format_value(c) for c in self.choices)
        return {bool: "true or false", int: "an integer", float: "a number", tuple: "values separated by ':'"}.get(
            self.kind, "a string"
        )


def _options(cls: type) -> dict[str, _Option]:
    """The options of a pass class, typed from the field annotations."""
    hints = typing.get_type_hints(cls)
    options = {}
    for f in dataclasses.fields(cls):
        annotation, optional = hints[f.name], False
        arguments = typing.get_args(annotation)
        if type(None) in arguments and (typing.get_origin(annotation) in (typing.Union, types.UnionType)):
            rest = tuple(a for a in arguments if a is not type(None))
            annotation, optional = (rest[0] if len(rest) == 1 else annotation), True  # X | Y | None: unsupported
        choices = f.metadata.get("choices")
        if typing.get_origin(annotation) is typing.Literal:
            choices = typing.get_args(annotation)
            kind = type(choices[0])
        else:
            kind = typing.get_origin(annotation) or annotation
        if kind not in (bool, int, float, str, tuple):
            raise TypeError(f"pass {cls.name!r}: option {f.name!r} has an unsupported type {hints[f.name]!r}")
        options[f.name] = _Option(f.name, kind, tuple(choices) if choices is not None else None, optional)
    return options


def _check(value: Any, option: _Option, pass_name: str) -> None:
    if value is None and option.optional:
        return
    typed = isinstance(value, option.kind) and not (option.kind is int and isinstance(value, bool))
    if option.kind is float and isinstance(value, int) and not isinstance(value, bool):
        typed = True
    if not typed or (option.choices is not None and value not in option.choices):
        raise ValueError(
            f"pass {pass_name!r}: option {option.name}={value!r} is not valid; it takes {option.accepted()} "
            f"(a {option.kind.__name__}{' or None' if option.optional else ''})"
        )


_REGISTRY: dict[str, type[GraphPass]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def register_pass(cls: type[GraphPass]) -> type[GraphPass]:
    if not _NAME.match(cls.name or ""):
        raise ValueError(f"pass name {cls.name!r} of {cls.__qualname__} is not kebab-case")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"pass {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[GraphPass]]:
    """Every registered pass by name (the package ``fp4.passes`` imports the built-in ones when it loads)."""
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[GraphPass]:
    passes = registered_passes()
    if name not in passes:
        raise KeyError(f"unknown pass {name!r}; registered passes: {', '.join(passes)}")
    return passes[name]


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ":".join(str(v) for v in value)
    return str(value)


_BOOLS = {"true": True, "1": True, "false": False, "0": False}


def _convert(text: str, option: _Option, pass_name: str) -> Any:
    """Pipeline text -> the option's typed value, or an error naming the pass, the option and what it takes."""
    value: Any = None
    if option.kind is bool:
        value = _BOOLS.get(text.lower())
    elif option.kind is tuple:
        value = tuple(part for part in text.split(":") if part)
    elif option.choices is not None:
        value = next((c for c in option.choices if _format_value(c).lower() == text.lower()), None)
    else:
        try:
            value = option.kind(text) if text else None
        except ValueError:
            value = None
    if value is None:
        raise ValueError(
            f"pass {pass_name!r}: option {option.name}={text!r} is not valid; it takes {option.accepted()}"
        )
    return value


_ITEM = re.compile(r"\s*([a-z0-9-]+)\s*(\{[^}]*\})?\s*(,|$)")


def parse_pipeline(text: str) -> list[GraphPass]:
    """``"dce,fuse-epilogue{activation=false}"`` -> configured pass instances."""
    passes: list[GraphPass] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _ITEM.match(text, position)
        if not match:
            raise ValueError(f"cannot parse pass pipeline at {text[position:]!r}")
        name, body = match.group(1), match.group(2)
        cls = get_pass(name)
        options = _options(cls)
        kwargs = {}
        for item in filter(None, (body or "{}")[1:-1].split(",")):
            key, equals, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if key not in options:
                known = ", ".join(options) or "none"
                raise ValueError(f"pass {name!r} has no option {key!r} (options: {known})")
            if not equals:
                raise ValueError(
                    f"pass {name!r}: option {key} needs a value ({key}=...); it takes {options[key].accepted()}"
                )
            if key in kwargs:
                raise ValueError(f"pass {name!r}: option {key} is given twice")
            kwargs[key] = _convert(value.strip(), options[key], name)
        passes.append(cls(**kwargs))
        position = match.end()
    return passes
