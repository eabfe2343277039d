"""Checks on what the Python API hands the encoders, shared by the full model and the text tower alone.

One text alone is one text, as one path alone is one source for ``Collection.ingest``: a bare ``str`` is never
iterated into its letters.
"""

from __future__ import annotations

import numbers
import reprlib
from typing import Iterable

from ..errors import QueryError


def text_list(texts: str | Iterable[str]) -> list[str]:
    """``texts`` as a list: one ``str`` alone is a list of one, any other iterable is read once.

    Raises:
        QueryError: bytes, something that is not iterable, or an item that is not a ``str``.
    """
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise QueryError("texts are str, not bytes: decode them first, e.g. data.decode('utf-8')")
    try:
        items = list(texts)
    except TypeError as exc:
        raise QueryError(f"texts must be a str or a list of str, got {reprlib.repr(texts)} of type "
                         f"{type(texts).__name__}") from exc
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise QueryError(f"texts: item {index} is {reprlib.repr(text)} of type {type(text).__name__}, not str")
    return items


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` if it is a whole number of at least 1.

    Raises:
        QueryError: zero, negative, or not a whole number (a negative size would silently encode nothing).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise QueryError(f"batch_size must be at least 1, got {batch_size!r}")
    return int(batch_size)
