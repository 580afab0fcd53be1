"""How a config field is declared: its default, a one-line doc and the rule its value must satisfy.

Every field is declared once (`scorelib.builder.fields`, and each sampler's own options in the sampler
table); the defaults, the type and range checks, the typed records the builder hands down and the field
reference in docs/fields.md are all generated from the declarations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Rule = tuple[Callable[[Any], bool], str]  # (value is allowed, what is allowed)


class ConfigError(ValueError):
    """A config value that cannot be built; the message names the field."""


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


ANY: Rule = (lambda v: True, "any value")
POSITIVE: Rule = (lambda v: _number(v) and v > 0, "> 0")
NON_NEGATIVE: Rule = (lambda v: _number(v) and v >= 0, ">= 0")
UNIT: Rule = (lambda v: _number(v) and 0 <= v <= 1, "0 <= value <= 1")
RATE: Rule = (lambda v: _number(v) and 0 <= v < 1, "0 <= value < 1")
PROBABILITY: Rule = (lambda v: _number(v) and 0 < v < 1, "0 < value < 1")
FINITE: Rule = (_number, "a finite number")
POSITIVE_OR_INF: Rule = (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v > 0, "> 0, inf allowed")
NETWORK_SIZE: Rule = (lambda v: (_number(v) and v > 0) or v == -1, "> 0, or -1")


def one_of(names: Iterable[Any]) -> Rule:
    names = tuple(names)
    return (lambda v: v in names, "one of: " + ", ".join(map(str, names)))


def at_least(k: float) -> Rule:
    return (lambda v: _number(v) and v >= k, f">= {k:g}")


def each(rule: Rule, length: int | None = None) -> Rule:
    def ok(v: Any) -> bool:
        return isinstance(v, tuple | list) and (length is None or len(v) == length) and all(rule[0](x) for x in v)

    return (ok, f"{length or 'each'} values, each {rule[1]}" if length else f"each {rule[1]}")


@dataclass(frozen=True)
class Field:
    """One config field: its default (whose type the value must have), what it means, its rule."""

    default: Any
    doc: str
    rule: Rule = ANY

    def type_name(self) -> str:
        """What a value of this field must be, e.g. "an int"."""
        d = self.default
        for kind, name in ((bool, "a bool"), (int, "an int"), (float, "a number"), (str, "a string"),
                           (tuple | list, "a list")):
            if isinstance(d, kind):
                return name
        return "a value"

    def type_ok(self, value: Any) -> bool:
        d = self.default
        if isinstance(d, bool) or isinstance(value, bool):
            return isinstance(d, bool) and isinstance(value, bool)
        if isinstance(d, int):
            return isinstance(value, int)
        if isinstance(d, float):
            return isinstance(value, int | float)
        if isinstance(d, str):
            return isinstance(value, str)
        return isinstance(value, tuple | list)


F = Field  # the short name the declaration tables use


def format_value(v: object) -> str:
    """A config value as a flag writes it (floats with %g)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def show(v: Any) -> str:
    """A value in a message: strings quoted, floats with %g."""
    return repr(v) if isinstance(v, str) else format_value(v)
