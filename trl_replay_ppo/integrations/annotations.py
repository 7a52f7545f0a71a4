"""Values checked against the type annotations of dataclass fields (`ReplayPPOConfig`, transformers' `TrainerState`).

Only what can be decided without guessing: ``bool``, ``int``, ``float``, ``str``, ``None``, ``Literal``,
unions of them, ``list``/``dict`` (with their item types); any other annotation (an enum, a class)
accepts every value and is left to the code that owns it.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

SIMPLE = (bool, int, float, str, type(None))


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the annotated type ``hint`` (an ``int`` is a ``float`` too, a ``bool`` neither)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in arguments)
    if origin in (Union, types.UnionType):
        return any(matches(value, argument) for argument in arguments)
    if hint in (type(None), None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is list or origin is list:
        return isinstance(value, list) and all(matches(item, arguments[0]) for item in value if arguments)
    if hint is dict or origin is dict:
        return isinstance(value, dict) and (
            not arguments or all(matches(k, arguments[0]) and matches(v, arguments[1]) for k, v in value.items())
        )
    return True


def checkable(hint: Any) -> bool:
    """Whether `matches` decides ``hint`` fully (every part of it is one of the types it knows)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return True
    if origin in (Union, types.UnionType, list, dict):
        return all(checkable(argument) for argument in arguments)
    return hint in (*SIMPLE, list, dict, Any)


def describe(hint: Any) -> str:
    """``hint`` as a reader would write it (``int | None``, ``'k1' | 'k3'``)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in arguments)
    if origin in (Union, types.UnionType):
        return " | ".join(describe(a) for a in arguments)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(describe(a) for a in arguments)}]"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))
