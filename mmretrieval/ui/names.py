"""How file paths are shown in the browser: as readable UTF-8, whatever bytes the file system holds.

The catalog hands paths back as ``os.fsdecode`` of their stored bytes, so a name that is not valid UTF-8
(``caf\\xe9.png`` from a Latin-1 system) holds a lone surrogate (``'\\udce9'``). That string opens the right
file, but JSON, HTML, pandas and zip member names cannot encode it, and the whole response fails.

So the two uses are kept apart: whatever the browser *reads* (captions, hits, details, tables, download
names, messages quoting a path) goes through :func:`display_path`; whatever *opens* the file (thumbnails,
originals, the duplicates export) keeps the true path or the catalog id.
"""

from __future__ import annotations

import os


def display_path(path: str | bytes | os.PathLike) -> str:
    """``path`` (or a message quoting one) as text for people: each undecodable byte shown as U+FFFD.

    The same replacement the library uses in files written for people (the labels CSV), so a name reads
    the same in the UI and in its exports. Valid names come back unchanged.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        return text.decode("utf-8", "replace")
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file system name decodes to: nothing to recover
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")
