"""Rows that ``mmr import`` brought in, met as files by an ingest: their vectors are kept, not made again.

An imported row records a path and a vector but no file size, time or content hash (clip-retrieval's output has
none), so an ingest of the same folder would have embedded every file again: hours for a million images on a CPU,
to replace vectors that the same model made. Planning reads such a file once instead (on a few threads, as for
touched files), records its size, time and content hash, and reads its header (no pixel decoded, so nothing a
malformed file can hang or crash in a decoder, outside the decoding pool that guards against that) for the pixel
size, format, capture time, camera and place that ingestion records; from then on it is a file like any other,
unchanged until its bytes change. A file that cannot be read is left as it is and looked at again next run; one
whose header does not open (camera RAW among them) keeps its vector and gets a size, time and hash, but no pixel
size or date. The bytes cannot be checked against the vector: a file changed after the export keeps the vector of
what it was, as it would in clip-retrieval's own index (``mmr ingest --checksum`` cannot tell either).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence, TYPE_CHECKING

from ..collection.planned_rows import FileFacts
from ..errors import ImageDecodeError
from ..images.decode import read_header, read_image_file
from ..images.metadata import photo_metadata
from .batches import content_hash
from .touched import in_threads

if TYPE_CHECKING:
    from ..collection.catalog import FileState
    from .batches import SourceFile


def is_imported(state: FileState | None) -> bool:
    """Whether a catalog row holds an imported vector and nothing known of its file (no hash, no time)."""
    return state is not None and state.status == "ok" and state.content_hash is None and state.mtime_ns == 0


def examine_files(files: Sequence[tuple[bytes, SourceFile]],
                  done: Callable[[], None] | None = None) -> list[FileFacts | None]:
    """:class:`FileFacts` of each ``(path key, file found)``, None for those that cannot be read now; ``done`` is
    called as each file is read."""
    return in_threads(lambda file: _examine(*file), files, done)


def _examine(key: bytes, found: SourceFile) -> FileFacts | None:
    try:
        data = read_image_file(key)
    except ImageDecodeError:
        return None
    examined = FileFacts(found.size, found.mtime_ns, content_hash(data))  # the size the walk compares
    header = read_header(data, key)
    if header is None:
        return examined
    photo = photo_metadata(header.exif, mtime_ns=found.mtime_ns, width=header.width, height=header.height)
    return dataclasses.replace(examined, width=header.width, height=header.height, format=header.format, photo=photo)
