"""Rows that ``mmr import`` brought in, met as files by an ingest: their vectors are kept, not made again.

An imported row records a path and a vector but no file size, time or content hash (clip-retrieval's output has
none), so an ingest of the same folder would have embedded every file again: hours for a million images on a CPU,
to replace vectors that the same model made. Planning reads such a file once instead (a thread per file, as for
touched files), records its size, time and content hash, and decodes it small (JPEGs at an eighth of their size)
for the pixel size, format, capture time, camera and place that ingestion records; from then on it is a file like
any other, unchanged until its bytes change. A file that cannot be read is left as it is and looked at again
next run; one that does not decode keeps its vector and gets a size, time and hash, but no pixel size or date.
The bytes cannot be checked against the vector: a file changed after the export keeps the vector of what it was,
as it would in clip-retrieval's own index (``mmr ingest --checksum`` cannot tell either).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TYPE_CHECKING

from ..errors import ImageDecodeError
from ..images.decode import decode_file_bytes, read_image_file
from ..images.metadata import PhotoMetadata, photo_metadata
from .batches import content_hash
from .touched import in_threads

if TYPE_CHECKING:
    from ..collection.catalog import FileState
    from .batches import SourceFile

SMALLEST_DRAFT = 1  # JPEGs decode at 1/8 scale: only their size, format and EXIF are wanted


@dataclass(frozen=True)
class Examined:
    """What an ingest records of a file, read without the model (pixel size, format and photo None when its
    bytes did not decode)."""

    size: int
    mtime_ns: int
    content_hash: str
    width: int | None = None
    height: int | None = None
    format: str | None = None
    photo: PhotoMetadata | None = None


def is_imported(state: FileState | None) -> bool:
    """Whether a catalog row holds an imported vector and nothing known of its file (no hash, no time)."""
    return state is not None and state.status == "ok" and state.content_hash is None and state.mtime_ns == 0


def examine_files(files: Sequence[tuple[bytes, SourceFile]], max_pixels: int,
                  done: Callable[[], None] | None = None) -> list[Examined | None]:
    """:class:`Examined` of each ``(path key, file found)``, None for those that cannot be read now; ``done`` is
    called as each file is read."""
    return in_threads(lambda file: _examine(*file, max_pixels), files, done)


def _examine(key: bytes, found: SourceFile, max_pixels: int) -> Examined | None:
    try:
        data = read_image_file(key)
    except ImageDecodeError:
        return None
    examined = Examined(found.size, found.mtime_ns, content_hash(data))  # the size the walk compares
    try:
        decoded = decode_file_bytes(data, key, draft_size=SMALLEST_DRAFT, max_pixels=max_pixels)
    except ImageDecodeError:
        return examined
    except Exception:  # a Pillow bug on one file must not stop the plan: it keeps its vector, undated
        return examined
    photo = photo_metadata(decoded.exif, mtime_ns=found.mtime_ns, width=decoded.width, height=decoded.height)
    return Examined(examined.size, examined.mtime_ns, examined.content_hash, decoded.width, decoded.height,
                    decoded.format, photo)
