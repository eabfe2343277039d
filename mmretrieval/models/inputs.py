"""Checks on what the Python API hands the encoders, shared by the full model and the text tower alone.

One text alone is one text, as one path alone is one source for ``Collection.ingest``: a bare ``str`` is never
iterated into its letters.
"""

from __future__ import annotations

import numbers
import reprlib
from typing import Any, Callable, Iterable

import numpy as np
import numpy.typing as npt

from ..errors import QueryError

UNIT_TOLERANCE = 1e-3  # a norm this close to 1 is a unit vector (a stored float16 row is within ~1e-4)


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


def unit_rows(vectors: npt.ArrayLike, dim: int, *, item: str, fix: str) -> npt.NDArray[np.float64]:
    """``vectors`` as float64 rows of unit length, ``(N, dim)``; one ``(dim,)`` vector is one row.

    Scores are cosines only between unit vectors; scaling keeps a row's direction, all that a cosine sees. Rows
    already of unit length within :data:`UNIT_TOLERANCE` are kept as they are, so that the scores of stored
    (float16) vectors do not shift. ``item`` names one row in messages ("query vector"), ``fix`` says how to make
    rows of the right dimension.

    Raises:
        QueryError: not numbers, ragged rows, not 1-D or 2-D, a width other than ``dim``, a NaN or infinite value,
            or a row of zeros (no direction).
    """
    try:
        array = np.asarray(vectors)
    except ValueError as exc:  # rows of different lengths
        raise QueryError(f"{item}s must be rows of {dim} numbers each: {exc}") from None
    if array.dtype.kind not in "iuf":
        raise QueryError(f"{item}s must hold numbers (ints or floats), got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise QueryError(f"{item}s have shape (N, {dim}) (or ({dim},) for one), got shape {array.shape}")
    if array.shape[1] != dim:
        raise QueryError(f"the {item} has {array.shape[1]} dimensions where {dim} are needed; {fix}")
    array = array.astype(np.float64)

    def which(bad: npt.NDArray[np.bool_]) -> str:
        return f"{item} {int(np.argmax(bad))}" if len(array) > 1 else f"the {item}"

    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise QueryError(f"{which(~finite)} holds NaN or infinite values; every value must be finite")
    largest = np.abs(array).max(axis=1)
    if (largest == 0).any():
        raise QueryError(f"{which(largest == 0)} is all zeros: it has no direction to score")
    scale = np.abs(np.linalg.norm(array, axis=1) - 1) > UNIT_TOLERANCE
    if scale.any():
        rows = array[scale] / largest[scale, None]  # first, so that the norm of huge values does not overflow
        array[scale] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return array
