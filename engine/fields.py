"""The one way a config dataclass declares a field: its default, a one-line doc, and the values it accepts.

    depth: int = field_doc(12, "number of transformer blocks", valid=at_least(1))

    def __post_init__(self):
        check_fields(self, "model.")          # every declared range, one ValueError naming the field
        ...                                   # then the checks that involve several fields

The doc and the range live in the field's metadata, so the recipe's `--describe` (`describe`) prints the same
words and the same bounds that the check enforces. A tuple or list field's range applies to every item.
Imports nothing but the standard library: every layer of the engine may use it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Valid:
    """The values a field accepts: an interval (either end open, closed or absent) or a set of choices."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()

    def accepts(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    @property
    def rule(self) -> str:
        """What an error says the value must do: 'be >= 1', 'lie in (0, 1]', "be one of 'a', 'b'"."""
        if self.choices:
            return "be one of " + ", ".join(repr(c) for c in self.choices)
        if self.low is not None and self.high is not None:
            return (f"lie in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"be {'>' if self.low_open else '>='} {self.low:g}"
        return f"be {'<' if self.high_open else '<='} {self.high:g}"


def at_least(low: float) -> Valid:
    return Valid(low=low)


def above(low: float) -> Valid:
    return Valid(low=low, low_open=True)


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Valid:
    return Valid(low=low, high=high, low_open=low_open, high_open=high_open)


def one_of(*choices: Any) -> Valid:
    return Valid(choices=tuple(choices))


def field_doc(default: Any = MISSING, doc: str = "", *, factory: Any = MISSING, valid: Valid | None = None):
    """A dataclass field with a one-line doc and, optionally, the values it accepts (see `check_fields`)."""
    metadata = {"doc": doc, "valid": valid}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_valid(f: dataclasses.Field) -> Valid | None:
    return f.metadata.get("valid")


def check_fields(obj: Any, prefix: str = "") -> None:
    """Raise one ValueError, `<prefix><name>=<value> must <rule>`, for the first field outside its declared
    range, or holding a non-integer where the type says int. None passes (optional fields say so in their
    type); tuples and lists are checked item by item."""
    integers = _integer_fields(type(obj))
    for f in dataclasses.fields(obj):
        valid = field_valid(f)
        value = getattr(obj, f.name)
        if value is None or (valid is None and f.name not in integers):
            continue
        items = value if isinstance(value, (tuple, list)) else (value,)
        if f.name in integers and not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
            raise ValueError(f"{prefix}{f.name}={value!r} must be an integer")
        if valid is not None and not all(valid.accepts(item) for item in items):
            raise ValueError(f"{prefix}{f.name}={value!r} must {valid.rule}")


@functools.cache
def _integer_fields(cls: type) -> frozenset[str]:
    """Fields typed int, Optional[int] or a tuple/list of int."""
    names = set()
    for name, tp in typing.get_type_hints(cls).items():
        tp = _optional_member(tp) or tp
        if typing.get_origin(tp) in (list, tuple):
            args = {a for a in typing.get_args(tp) if a is not Ellipsis}
            tp = args.pop() if len(args) == 1 else None
        if tp is int:
            names.add(name)
    return frozenset(names)


# -- describing ---------------------------------------------------------------------------------------

def type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def _optional_member(tp: Any) -> Any:
    """T of Optional[T] / T | None, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1 and len(members) < len(typing.get_args(tp)):
            return members[0]
    return None


def nested_dataclass(tp: Any) -> tuple[type, str] | None:
    """(dataclass, how it nests) of a field type that holds sections: '' for a section, '[]' for a list or
    tuple of them; an Optional section counts as a section. None for a leaf."""
    inner = _optional_member(tp) or tp
    if dataclasses.is_dataclass(inner):
        return inner, ""
    if typing.get_origin(inner) in (list, tuple):
        args = [a for a in typing.get_args(inner) if a is not Ellipsis]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            return args[0], "[]"
    return None


def value_range(tp: Any, valid: Valid | None) -> str:
    """The valid range of a leaf, in words: the declared rule, the choices of a Literal, or what the type allows."""
    optional = _optional_member(tp)
    base = optional if optional is not None else tp
    if valid is not None:
        text = valid.rule.split(" ", 1)[1]
        if typing.get_origin(base) in (list, tuple):
            text = f"each item {text}"
    elif typing.get_origin(base) is Literal:
        text = "one of " + ", ".join(repr(a) for a in typing.get_args(base))
    elif base is bool:
        text = "true or false"
    elif nested_dataclass(base) is not None:
        text = "a list of sections" if nested_dataclass(base)[1] else "a section"
    else:
        text = "any"
    return f"{text}, or null" if optional is not None else text


def default_text(f: dataclasses.Field) -> str:
    if f.default is not MISSING:
        return repr(f.default)
    if f.default_factory is not MISSING:
        value = f.default_factory()
        return f"{type(value).__name__} (a section)" if dataclasses.is_dataclass(value) else repr(value)
    return "(required)"


@dataclass(frozen=True)
class Described:
    """One settable key of a config tree."""

    key: str
    """Dotted key; `[]` marks the items of a list of sections (data.datasets[].root)."""
    type: str
    default: str
    valid: str
    doc: str

    def line(self) -> str:
        return f"{self.key}: {self.type} = {self.default}  [{self.valid}]  {self.doc}"


def describe_fields(cls: type, prefix: str = "", hidden: frozenset[str] = frozenset()) -> list[Described]:
    """Every leaf key below dataclass `cls`, depth first, sections expanded; keys in `hidden` (dotted, with
    `[]`) are left out with everything under them."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{prefix}{f.name}"
        if key in hidden:
            continue
        nested = nested_dataclass(hints[f.name])
        if nested is not None:
            inner, suffix = nested
            if suffix or _optional_member(hints[f.name]) is not None:  # a value of its own: a list, or null
                kind = f"list of {inner.__name__} sections" if suffix else f"{inner.__name__} section"
                rows.append(Described(key, kind, default_text(f), value_range(hints[f.name], None),
                                      f.metadata.get("doc", "")))
            rows.extend(describe_fields(inner, f"{key}{suffix}.", hidden))
            continue
        rows.append(Described(key, type_name(hints[f.name]), default_text(f), value_range(hints[f.name], field_valid(f)),
                              f.metadata.get("doc", "")))
    return rows
