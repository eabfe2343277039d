"""Checks on what the Python API hands the encoders, shared by the full model and the text tower alone.

One text alone is one text, as one path alone is one source for ``Collection.ingest``: a bare ``str`` is never
iterated into its letters.
"""

from __future__ import annotations

import numbers
import reprlib
from typing import Any, Callable, Iterable

from ..errors import QueryError


def listed(value: Any, kinds: tuple[type, ...], item: str, expected: str,
           hint: Callable[[Any], str] = lambda item: "") -> list[Any]:
    """``value`` as a list of ``kinds``: one of them alone is a list of one, any other iterable is read once and
    every item checked before any is used. ``item`` names one in messages ("text", "image", "label"), ``expected``
    what it should be ("a str"), and ``hint`` may add a fix for a given wrong item.

    Raises:
        QueryError: bytes where text is expected, something that is not iterable, or an item of another type.
    """
    if isinstance(value, kinds):
        return [value]
    if isinstance(value, (bytes, bytearray)):  # (a path as bytes is one of ``kinds`` where it is accepted)
        raise QueryError(f"{item}s are str, not bytes: decode them first, e.g. data.decode('utf-8')")
    try:
        items = list(value)
    except TypeError as exc:
        raise QueryError(f"{item}s must be {expected} or a list of them, got {reprlib.repr(value)} of type "
                         f"{type(value).__name__}") from exc
    for index, one in enumerate(items):
        if not isinstance(one, kinds):
            raise QueryError(f"{item} {index} is {reprlib.repr(one)} of type {type(one).__name__}, not {expected}"
                             f"{hint(one)}")
    return items


def text_list(texts: str | Iterable[str]) -> list[str]:
    """``texts`` as a list (:func:`listed`): one ``str`` alone is a list of one.

    Raises:
        QueryError: bytes, something that is not iterable, or an item that is not a ``str``.
    """
    return listed(texts, (str,), "text", "a str")


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` if it is a whole number of at least 1.

    Raises:
        QueryError: zero, negative, or not a whole number (a negative size would silently encode nothing).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise QueryError(f"batch_size must be at least 1, got {batch_size!r}")
    return int(batch_size)
