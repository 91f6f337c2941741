"""Pass registry and pipeline syntax.

A pipeline is written ``pass-a,pass-b{key=value,other=1},pass-c``.  Each pass
is a frozen dataclass whose fields are its options; ``parse_pipeline`` turns
the text into configured pass instances, with errors that name the pass and
the option.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch.fx
from fp4.target import Target


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
    """Base class: subclasses set ``name`` and implement ``apply``; fields are options."""

    name: ClassVar[str] = ""

    def apply(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:  # pragma: no cover
        raise NotImplementedError

    def spec(self) -> str:
        """The pipeline text that recreates this pass with its options."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = [f"{k}={_format_value(v)}" for k, v in values.items() if v != defaults[k]]
        return self.name + ("{" + ",".join(changed) + "}" if changed else "")


_REGISTRY: dict[str, type[GraphPass]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def register_pass(cls: type[GraphPass]) -> type[GraphPass]:
    if not _NAME.match(cls.name or ""):
        raise ValueError(f"pass name {cls.name!r} of {cls.__qualname__} is not kebab-case")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"pass {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_passes() -> None:
    from . import builtin  # noqa: F401  (imports every pass module)


def registered_passes() -> dict[str, type[GraphPass]]:
    _load_builtin_passes()
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


def _convert(text: str, annotation: Any, pass_name: str, option: str) -> Any:
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    kind = kind.replace(" ", "")
    try:
        if kind == "bool":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind.startswith("tuple"):
            return tuple(part for part in text.split(":") if part)
        return text
    except ValueError:
        raise ValueError(f"pass {pass_name!r}: option {option}={text!r} is not a valid {kind}") from None


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
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for item in filter(None, (body or "{}")[1:-1].split(",")):
            key, _, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if key not in fields:
                known = ", ".join(fields) or "none"
                raise ValueError(f"pass {name!r} has no option {key!r} (options: {known})")
            kwargs[key] = _convert(value.strip(), fields[key].type, name, key)
        passes.append(cls(**kwargs))
        position = match.end()
    return passes
