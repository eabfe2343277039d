"""The rows of image lists: text files and streams of paths (a line or a NUL-ended name each), and CSV files naming
image paths (and optionally captions) in columns, for ingest and training. Read as they come, never held whole.
"""

from __future__ import annotations

import csv
import itertools
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..errors import CollectionError

PATH_COLUMNS = ("path", "filepath", "file", "image", "filename")  # accepted names, first match wins
CAPTION_COLUMNS = ("caption", "text", "title")


def csv_columns(fieldnames: Sequence[str] | None) -> tuple[str | None, str | None]:
    """The (path, caption) column names of a CSV header, matched case-insensitively; None where absent."""
    columns = {name.strip().lower(): name for name in fieldnames or ()}
    path_column = next((columns[c] for c in PATH_COLUMNS if c in columns), None)
    caption_column = next((columns[c] for c in CAPTION_COLUMNS if c in columns), None)
    return path_column, caption_column


def once_in_a_row(rows: Iterable[tuple[str, str | None]]) -> Iterator[tuple[str, str | None]]:
    """Rows less those that repeat the row before: ``mmr label --out`` writes an image's labels on consecutive
    rows, and such a file used as a list names each image once (a repeat further down is read again)."""
    return (row for row, _ in itertools.groupby(rows))


def null_rows(pieces: Iterable[bytes]) -> Iterator[tuple[str, None]]:
    """Paths that each end with NUL, as ``find -print0`` writes them, from pieces of any size (lines of a file,
    blocks of a pipe): kept exactly, a newline or surrounding space included; an empty one is skipped."""
    rest = b""
    for piece in pieces:
        *names, rest = (rest + piece).split(b"\0")
        yield from ((os.fsdecode(name), None) for name in names if name)
    if rest:
        yield os.fsdecode(rest), None


def decoded_lines(lines: Iterable[bytes]) -> Iterator[str]:
    """Lines of bytes as text: UTF-8, undecodable bytes kept as surrogate escapes, a byte-order mark dropped."""
    for number, line in enumerate(lines):
        text = line.decode("utf-8", "surrogateescape")
        yield text.removeprefix("\ufeff") if number == 0 else text


def text_rows(lines: Iterable[str]) -> Iterator[tuple[str, None]]:
    """One path per line, its line break cut (surrounding spaces are :func:`.reader._listed_path`'s to judge); blank
    lines and lines starting with ``#`` are skipped."""
    return ((line.rstrip("\r\n"), None) for line in lines if line.strip() and not line.startswith("#"))


def csv_rows(path: Path, lines: Iterable[str]) -> Iterator[tuple[str, str | None]]:
    """(path, caption) of each CSV row that names a path; ``path`` is the file named in the error when the header
    has no path column."""
    reader = csv.DictReader(lines)
    path_column, caption_column = csv_columns(reader.fieldnames)
    if path_column is None:
        raise CollectionError(f"{path} has no path column; name one of its columns {' or '.join(PATH_COLUMNS[:2])}")
    return ((row[path_column], readable(row.get(caption_column)) if caption_column else None)
            for row in reader if (row.get(path_column) or "").strip())


def readable(caption: str | None) -> str | None:
    """A caption is text for people and the model: an undecodable byte becomes U+FFFD (a path keeps its bytes)."""
    return None if caption is None else caption.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
