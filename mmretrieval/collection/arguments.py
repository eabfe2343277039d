"""Checks of what a caller hands a :class:`~mmretrieval.collection.collection.Collection`: query vectors, ``k``,
thresholds, catalog ids, and the process it is used in.

Each check raises the library's own error, naming the bad value and what to pass instead, before the value
reaches FAISS, numpy or torch (whose errors name neither, and some of which accept bad values silently: a NaN
vector finds nothing, a unit vector times 10 scores every image 1.0 once clipped).
"""

from __future__ import annotations

import math
import numbers
import operator
import os

import numpy as np
import numpy.typing as npt
from PIL import Image

from ..errors import QueryError
from ..models.inputs import unit_rows


def check_k(k: object, what: str = "hits", name: str = "k") -> int:
    """``k`` (or the argument ``name``) as an ``int``: any integer (``np.int64`` included), at least 1.

    Raises:
        QueryError: a bool, a string, a float or anything else that is not a whole number, or less than 1.
    """
    if isinstance(k, (bool, np.bool_)):
        raise QueryError(f"{name} must be a whole number of {what} (1 or more), got {k!r}")
    try:
        value = operator.index(k)  # type: ignore[arg-type]
    except TypeError:
        raise QueryError(f"{name} must be a whole number of {what} (1 or more), got {k!r}") from None
    if value < 1:
        raise QueryError(f"{name} must be at least 1, got {value}")
    return value


def is_real(value: object) -> bool:
    """Whether ``value`` is a finite real number (numpy's too), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) and \
        bool(np.isfinite(value))


def check_ids(ids: object) -> list[int]:
    """Catalog ids as ``int``s: a sequence of whole numbers (``np.int64`` and arrays included).

    Raises:
        QueryError: one id alone, or a string (``vectors("12")`` read ids 1 and 2), or an id that is not a whole
            number, or past SQLite's 64-bit integers.
    """
    if isinstance(ids, (str, bytes, numbers.Number, np.generic)):
        raise QueryError(f"ids must be a list of catalog ids, got {ids!r}; one id alone goes in a list: [{ids!r}]")
    if isinstance(ids, np.ndarray) and ids.ndim == 1 and (ids.dtype.kind == "i" or (
            ids.dtype.kind == "u" and (not ids.size or ids.max() < 2**63))):
        return ids.astype(np.int64).tolist()  # whole numbers all: a million in 0.04 s, not 0.2 s one by one
    try:
        checked = [check_id(value) for value in ids]  # type: ignore[union-attr]
    except TypeError:
        raise QueryError(f"ids must be a list of catalog ids, got {ids!r}") from None
    return checked


def check_id(value: object) -> int:
    """One catalog id as an ``int``.

    Raises:
        QueryError: a bool or anything that is not a whole number, or one past SQLite's 64-bit integers.
    """
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        image_id = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise QueryError(f"a catalog id is a whole number, got {value!r}") from None
    if not -2**63 <= image_id < 2**63:
        raise QueryError(f"no catalog id is as large as {image_id}")
    return image_id


def check_threshold(threshold: object, duplicates: bool = False) -> float | None:
    """``threshold`` as a ``float`` (None stays None): any finite real number; with ``duplicates``, a cosine in
    (0, 1] (a lower one would call every image a copy of its neighbours).

    Raises:
        QueryError: a string, a bool, NaN, an infinity, or anything else that is not a number; with
            ``duplicates``, a number outside (0, 1].
    """
    if threshold is None:
        return None
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real):
        raise QueryError(f"threshold must be a number (a cosine, e.g. 0.25), got {threshold!r}")
    value = float(threshold)
    if not math.isfinite(value):
        raise QueryError(f"threshold must be a finite number (a cosine, e.g. 0.25), got {threshold!r}")
    if duplicates and not 0 < value <= 1:
        raise QueryError(f"duplicate threshold {value} must be a cosine in (0, 1]; e.g. 0.95")
    return value


def check_query_vector(vector: npt.ArrayLike, dim: int) -> npt.NDArray[np.float32]:
    """``vector`` scaled to unit length, as float32 of shape ``(dim,)`` (a ``(1, dim)`` row is accepted too);
    one already of unit length, give or take float16 rounding, is kept as it is (:func:`~..models.inputs.unit_rows`).

    Raises:
        QueryError: not numbers (an image, a path, a list of texts: said so), the wrong shape or dimension, a NaN
            or infinite value, or all zeros.
    """
    if isinstance(vector, (os.PathLike, bytes, Image.Image)) or vector is None or (
            isinstance(vector, (list, tuple)) and any(isinstance(item, (str, os.PathLike)) for item in vector)):
        raise QueryError(f"a query is text, a Query or a vector, got {type(vector).__name__}; an image is searched "
                         "with similar(image), or mixed with texts and negatives with parse_query(text, images=[...], "
                         "negatives=[...]); several texts are one query in one string, or weighted terms in a Query")
    array = np.asarray(vector)
    if array.ndim == 2 and array.shape[0] != 1 or array.ndim > 2:
        raise QueryError(f"a query vector has shape ({dim},), got shape {array.shape}")
    rows = unit_rows(array, dim, item="query vector",
                     fix="make it with the collection's model (Collection.query_vector)")
    return rows[0].astype(np.float32)


def forked_message(pid: int) -> str:
    """Why a collection cannot be used in a process other than process ``pid``, which opened it."""
    return (f"this collection was opened in process {pid} before a fork; FAISS, torch and SQLite do not survive a "
            "fork: open it again in this process (Collection.open), or use the 'spawn' start method of "
            "multiprocessing and open it in the child")


def unpicklable_message(directory: object) -> str:
    """Why a collection cannot be pickled (sent to another process, deep-copied)."""
    return (f"a Collection ({directory}) cannot be pickled: it holds a database connection, an index and a model; "
            "pass its folder and open it again in the other process (Collection.open), with the 'spawn' start "
            "method of multiprocessing")
