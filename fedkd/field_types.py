"""What a config field's type annotation accepts, read from the resolved type (``typing.get_type_hints``) rather
than from the annotation's text, so that ``float | None``, ``Optional[float]``, ``list[int]``,
``tuple[float, ...]`` and ``Literal["a", "b"]`` are checked like ``int`` and ``str``. The schema's validator
(``fedkd.config.parse_section``) words the errors; the registry refuses, at import, a parameter whose type this
module cannot check, so that no component reaches a user with a key nothing validates.
"""

from __future__ import annotations

import dataclasses
import math
import types
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

MAX_INT = 2**63  # a whole number must fit in a signed 64-bit integer (torch and numpy take it)
SCALARS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", type(None): "null"}


class UnsupportedType(TypeError):
    """A parameter's annotation is not one the validator can check (a component author's error, not a user's)."""


def declared_default(spec: dataclasses.Field) -> Any:
    """A dataclass field's default (its factory's value), or ``dataclasses.MISSING`` for a field without one."""
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return dataclasses.MISSING


@cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of every dataclass field of ``cls``, each one checked to be supported."""
    hints = get_type_hints(cls)
    resolved = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    for name, hint in resolved.items():
        try:
            describe(hint)
        except UnsupportedType as err:
            raise UnsupportedType(f"{cls.__name__}.{name}: {err}") from None
    return resolved


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _is_sequence(hint: Any) -> bool:
    origin = get_origin(hint)
    if origin is list:
        return len(get_args(hint)) == 1
    return origin is tuple and (len(get_args(hint)) == 2 and get_args(hint)[1] is Ellipsis or
                                Ellipsis not in get_args(hint))


def describe(hint: Any) -> str:
    """The values ``hint`` accepts, in words for an error message ("a number or null")."""
    if hint in SCALARS:
        return SCALARS[hint]
    if _is_union(hint):
        return " or ".join(describe(arg) for arg in get_args(hint))
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(arg) for arg in get_args(hint))
    if _is_sequence(hint):
        args = get_args(hint)
        if get_origin(hint) is tuple and Ellipsis not in args:
            return f"a list of {len(args)} items: " + ", ".join(describe(arg) for arg in args)
        return f"a list whose every item is {describe(args[0])}"
    raise UnsupportedType(f"the type {spell(hint)} is not one the config validator checks; use bool, int, float, "
                          "str, Literal[...], X | None, list[X] or tuple[X, ...]")


def spell(hint: Any) -> str:
    """``hint`` as it is written in the source (``float | None``, ``list[int]``), for the configuration reference."""
    if isinstance(hint, type) and not get_args(hint):
        return "None" if hint is type(None) else hint.__name__
    if _is_union(hint):
        return " | ".join(spell(arg) for arg in get_args(hint))
    if get_origin(hint) is Literal:
        return "Literal[" + ", ".join(repr(arg) for arg in get_args(hint)) + "]"
    if get_origin(hint) in (list, tuple):
        return f"{get_origin(hint).__name__}[" + ", ".join("..." if a is Ellipsis else spell(a)
                                                          for a in get_args(hint)) + "]"
    return str(hint)


def mismatch(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit ``hint`` ("must be a whole number"), or None when it fits. A bool is never a
    number, a float is finite, a whole number fits in 64 bits."""
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be a whole number"
        return None if abs(value) < MAX_INT else "is too large: it must fit in a signed 64-bit integer"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        return None if math.isfinite(value) else "must be a finite number"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    if hint is type(None):
        return None if value is None else "must be null"
    if _is_union(hint):
        reasons = [mismatch(value, arg) for arg in get_args(hint)]
        if None in reasons:
            return None
        # a member whose kind the value has, but not its range (an infinite float), says what is wrong
        ranged = [r for r, arg in zip(reasons, get_args(hint), strict=True) if r != f"must be {describe(arg)}"]
        return ranged[0] if ranged else f"must be {describe(hint)}"
    if get_origin(hint) is Literal:
        if any(type(value) is type(arg) and value == arg for arg in get_args(hint)):
            return None
        return f"must be {describe(hint)}"
    return _sequence_mismatch(value, hint)


def _sequence_mismatch(value: Any, hint: Any) -> str | None:
    if not isinstance(value, list | tuple):
        return f"must be {describe(hint)}"
    args = get_args(hint)
    fixed = get_origin(hint) is tuple and Ellipsis not in args
    if fixed and len(value) != len(args):
        return f"must be {describe(hint)} (got {len(value)} items)"
    for i, item in enumerate(value):
        why = mismatch(item, args[i] if fixed else args[0])
        if why is not None:
            return f"item {i} ({item!r}) {why}"
    return None


def as_field_value(value: Any, hint: Any) -> Any:
    """``value`` as the field stores it: a YAML list becomes a tuple where the field is a tuple, recursively.
    Prefer ``tuple[X, ...]`` to ``list[X]`` in a parameter dataclass: a list field makes the frozen config
    unhashable, and the data builders cache on dataset and partition configs."""
    if _is_union(hint) and value is not None:
        hint = next(arg for arg in get_args(hint) if mismatch(value, arg) is None)
    if get_origin(hint) not in (list, tuple) or not isinstance(value, list | tuple):
        return value
    args = get_args(hint)
    fixed = get_origin(hint) is tuple and Ellipsis not in args
    items = [as_field_value(item, args[i] if fixed else args[0]) for i, item in enumerate(value)]
    return tuple(items) if get_origin(hint) is tuple else items
