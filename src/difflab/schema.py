"""Declared config schemas: a section is a ``{key: Field}`` dict written beside the code that reads it.

``check_section(fields, values, where)`` reads the declaration: an unknown key, a missing key or a
value its ``Field`` does not allow is one ``ConfigError`` line naming the dotted key, the value and
what is allowed. What no single field can state (a network that must fit the data's shape, a bound
below another) is the reader's own check, run by ``check_built``, which names the key to blame.
(lightning-hydra-template and Hydra structured configs: the schema is declared, not inferred.)
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


class ConfigError(ValueError):
    """A bad configuration value: one line naming the key, the value and what is allowed."""


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# kind -> (test, what one is, what several are)
_KINDS: dict[type, tuple[Callable, str, str]] = {
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", "integers"),
    float: (_finite, "a finite number", "finite numbers"),
    bool: (lambda v: isinstance(v, bool), "true or false", "true or false"),
    str: (lambda v: isinstance(v, str) and bool(v), "a non-empty name", "non-empty names"),
    dict: (lambda v: isinstance(v, dict), "a mapping", "mappings"),
    list: (lambda v: isinstance(v, list), "a list", "lists"),
    object: (lambda v: True, "any value", "any values"),
}


@dataclass(frozen=True)
class Field:
    """One config value. ``kind``: int, float (ints accepted), bool, str (non-empty), list, dict or
    object (anything; ``choices`` decide). ``low``/``high``: bounds, open where ``low_open``/
    ``high_open``. ``choices``: the allowed values, or a function returning them (a registry's keys,
    read when checking). ``nullable``: null allowed. ``optional``: the key may be absent (the reader's
    default applies). ``any_of``: alternatives, one must allow the value. Lists: ``item`` each item's
    field; distinct and non-empty (``may_be_empty``: or empty), or exactly ``length`` items (one value:
    a bad item names the whole list). Mappings: ``fields`` (fixed keys), or ``keys`` and ``values``
    (free keys: registry names); neither: any mapping, left to a cross-check. ``noun`` names what a
    ``choices`` value is ("schedule"): a bad list item or mapping key reads "unknown schedule 'x'".
    """

    kind: type = object
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: Sequence | Callable[[], Sequence] | None = None
    nullable: bool = False
    optional: bool = False
    any_of: tuple[Field, ...] = ()
    item: Field | None = None
    length: int | None = None
    may_be_empty: bool = False
    fields: Mapping[str, Field] | None = None
    keys: Field | None = None
    values: Field | None = None
    noun: str = ""
    doc: str = ""

    def options(self) -> tuple:
        """The allowed values (``choices``, read now)."""
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def accepts(self, v) -> bool:
        """Whether ``v`` is allowed (a mapping's contents are ``check_section``'s)."""
        if v is None:
            return self.nullable
        if self.any_of:
            return any(f.accepts(v) for f in self.any_of)
        if self.choices is not None:  # type-strict: 1 is not True, 32 is not "32"
            return any(v == c and type(v) is type(c) for c in self.options())
        if not _KINDS[self.kind][0](v):
            return False
        if self.kind is list and self.item is not None:
            size_ok = (
                len(v) == self.length if self.length else (bool(v) or self.may_be_empty) and _distinct(v)
            )
            return size_ok and all(self.item.accepts(x) for x in v)
        lo = self.low is None or (v > self.low if self.low_open else v >= self.low)
        return lo and (self.high is None or (v < self.high if self.high_open else v <= self.high))

    def allowed(self, plural: bool = False) -> str:
        """What is allowed, in words ("an integer >= 1", "null or one of a, b")."""
        if self.any_of:
            text = " or ".join(f.allowed(plural) for f in self.any_of)
        elif self.choices is not None:
            names = self.options()
            shown = ", ".join(names if all(isinstance(c, str) for c in names) else map(repr, names))
            text = ("values among " if plural else "one of ") + shown
        elif self.kind is list and self.item is not None:
            each = self.item.allowed(plural=True)
            some = "a list of distinct" if self.may_be_empty else "a non-empty list of distinct"
            text = f"a list of {self.length} {each}" if self.length else f"{some} {each}"
        else:
            text = _KINDS[self.kind][2 if plural else 1] + self._bounds()
        return f"null or {text}" if self.nullable else text

    def _bounds(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            return f" in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"
        if lo is not None:
            return f" {'>' if self.low_open else '>='} {lo}"
        return f" {'<' if self.high_open else '<='} {hi}" if hi is not None else ""

    def check(self, key: str, v) -> None:
        """``ConfigError`` unless ``v`` is allowed at the dotted ``key``."""
        if isinstance(v, dict) and (self.fields is not None or self.keys is not None):
            _check_mapping(self, v, key)
            return
        if self.kind is list and self.item is not None and not self.length and isinstance(v, list) and v:
            for x in v:
                if not self.item.accepts(x):
                    unknown = f"unknown {self.item.noun} " if self.item.noun else ""
                    raise ConfigError(
                        f"params: {key} holds {unknown}{x!r}; allowed: {self.item.allowed(True)}"
                    )
            twice = [x for i, x in enumerate(v) if repr(x) in map(repr, v[:i])]
            if twice:
                raise ConfigError(f"params: {key}={v!r} lists {twice[0]!r} twice")
        if not self.accepts(v):
            raise ConfigError(f"params: {key}={v!r} is not allowed; must be {self.allowed()}")


def registry(module: str, name: str) -> Callable[[], tuple]:
    """``choices`` that are a registry's keys, read (and its module imported) when checking:
    ``registry("difflab.solvers", "SOLVERS")``."""
    return lambda: tuple(getattr(importlib.import_module(module), name))


def _distinct(values: list) -> bool:
    return len({repr(v) for v in values}) == len(values)


def unknown_key(where: str, key, allowed, noun: str = "key") -> ConfigError:
    """The error for ``key`` in section ``where`` ("" = the top level), listing the ``allowed`` ones."""
    names = ", ".join(map(str, allowed)) or "none"
    if not where:
        return ConfigError(f"params: unknown {noun} {key}; allowed: {names}")
    return ConfigError(f"params: {where}.{key}: unknown {noun} {key!r}; allowed: {names}")


def _check_mapping(field: Field, values, where: str) -> None:
    if not isinstance(values, dict):
        if not where:
            raise ConfigError(f"params: expected a mapping at the top level, got {type(values).__name__}")
        raise ConfigError(f"params: {where}={values!r} is not allowed; must be a mapping")
    at = f"{where}." if where else ""
    if field.fields is None:  # free keys: each one a registry name (``keys``), each value ``values``
        for key, v in values.items():
            if not field.keys.accepts(key):
                names = field.keys.options() if field.keys.choices is not None else [field.keys.allowed(True)]
                raise unknown_key(where, key, names, field.keys.noun or "key")
            field.values.check(f"{at}{key}", v)
        return
    for key in values:
        if key not in field.fields:
            raise unknown_key(where, key, field.fields, field.noun or "key")
    for key, f in field.fields.items():
        if key in values:
            f.check(f"{at}{key}", values[key])
        elif not f.optional:
            raise ConfigError(f"params: missing key '{at}{key}'")


def check_section(fields: Mapping[str, Field], values, where: str, noun: str = "key") -> dict:
    """Check the section ``where`` (dotted; "" = the top level) against its declared ``fields``:
    unknown keys (called ``noun``s in the message), missing keys, then each value. Returns ``values``."""
    _check_mapping(Field(dict, fields=fields, noun=noun), values, where)
    return values


def check_built(build: Callable[[dict], object], values: dict, where: str, context: str = ""):
    """``build(values)``: the reader's own check of what no field states alone. Its ``ValueError`` is
    one ``ConfigError`` naming the key whose removal (the reader's default in its place) lets
    ``build`` pass, else the section, with the reader's reason (``context``: e.g. the data's shape)."""
    try:
        return build(values)
    except ValueError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    for key in values:
        try:
            build({k: v for k, v in values.items() if k != key})
        except ValueError:
            continue
        raise ConfigError(f"params: {where}.{key}={values[key]!r} is not allowed{context}: {reason}")
    raise ConfigError(f"params: {where}={values!r} is not allowed{context}: {reason}")
