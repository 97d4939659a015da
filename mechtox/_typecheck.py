"""Checking a settings dataclass's field values against their annotations, so that a config made
by hand in Python (a number as a string, a string for a list) is a one-line error when it is made,
not a TypeError deep in a run. Imports nothing heavy."""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Callable
from typing import Any

from mechtox.errors import MechtoxError


def check_types(cfg: Any, where: Callable[[dataclasses.Field], str] = lambda f: "") -> None:
    """A one-line error for the first field of the dataclass ``cfg`` whose value does not match its
    annotation (int, float, str, bool, None, Literal, lists, tuples and dicts of them; Any passes).
    ``where(field)`` adds to the field's name in the message (a job config: its flag)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _matches(value, hints[f.name]):
            raise MechtoxError(f"{type(cfg).__name__}.{f.name}{where(f)} must be {_describe(f.type)}, not {value!r}")


def is_whole_number(value: Any) -> bool:
    """An int (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_whole_number(value)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return all(_matches(v, args[0]) for v in value) if args else True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # an annotation this check does not know: the config's own checks apply


def _describe(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    if text.startswith("Literal[") and text.endswith("]"):  # Literal['a', 'b'] -> one of 'a', 'b'
        return "one of " + text[len("Literal["):-1]
    return {"int": "a whole number", "float": "a number", "str": "a string", "bool": "True or False",
            "int | None": "a whole number or None", "str | None": "a string or None"}.get(text, text)
