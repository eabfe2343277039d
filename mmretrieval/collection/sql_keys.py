"""Where-clause pieces for the catalog's keys: ids in ``IN (...)`` lists of a size SQLite takes, and the
paths under a folder as a range of the path index."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

IN_LIST_SIZE = 500  # ids per IN (...) query


def in_lists(values: Sequence) -> Iterator[tuple[list, str]]:
    """``values`` as ``(chunk, "?,?,...")`` pairs of at most :data:`IN_LIST_SIZE`, for ``IN (...)`` queries (SQLite
    caps a statement's parameters); numpy integers become Python ints, which sqlite3 can bind."""
    for start in range(0, len(values), IN_LIST_SIZE):
        block = values[start:start + IN_LIST_SIZE]
        chunk = [value.item() if isinstance(value, np.generic) else value for value in block]
        yield chunk, ",".join("?" * len(chunk))


def key_range(prefix: bytes) -> tuple[bytes, bytes]:
    """The catalog keys that start with ``prefix`` (an absolute path's start, such as a folder's ending in a
    separator) as a range ``[low, high)`` of the path index: one look along it, where ``substr`` would read every
    row. ``high`` is the prefix with its last byte below 0xFF raised by one (a key is absolute, so the leading
    separator is always there to raise)."""
    stem = prefix.rstrip(b"\xff")
    return prefix, stem[:-1] + bytes([stem[-1] + 1])
