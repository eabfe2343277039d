"""The columns of image lists: CSV files naming image paths (and optionally captions), for ingest and training."""

from __future__ import annotations

from typing import Sequence

PATH_COLUMNS = ("path", "filepath", "file", "image", "filename")  # accepted names, first match wins
CAPTION_COLUMNS = ("caption", "text", "title")


def csv_columns(fieldnames: Sequence[str] | None) -> tuple[str | None, str | None]:
    """The (path, caption) column names of a CSV header, matched case-insensitively; None where absent."""
    columns = {name.strip().lower(): name for name in fieldnames or ()}
    path_column = next((columns[c] for c in PATH_COLUMNS if c in columns), None)
    caption_column = next((columns[c] for c in CAPTION_COLUMNS if c in columns), None)
    return path_column, caption_column
