"""The details panel of one collection image: what the catalog knows of it (path, size, caption, labels, capture
time, camera, place), as Markdown with every name escaped (file names can hold markup)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .context import AppContext
from .names import markdown_code, markdown_text

if TYPE_CHECKING:
    from ..images.metadata import PhotoMetadata


LABELS_SHOWN = 12  # most probable labels the panel names; it counts the rest


@dataclass(frozen=True)
class ImageDetails:
    """What the details panel shows about one catalog image."""

    path: Path
    width: int | None  # pixels, as recorded at ingest
    height: int | None
    caption: str | None
    labels: tuple[tuple[str, float], ...]  # (label, probability), best first
    photo: "PhotoMetadata | None" = None  # capture time, camera and place, when the file told them


def catalog_details(ctx: AppContext, image_id: int) -> ImageDetails:
    """The catalog's row for ``image_id`` (path, size, caption) plus its labels; raises for unknown ids."""
    path = ctx.collection.image_path(image_id)  # the collection's own readable "no such image" error
    row = ctx.collection.catalog.rows([image_id]).get(image_id)
    labels = ctx.collection.label_of([image_id]).get(image_id, ())
    photo = ctx.collection.catalog.photos([image_id]).get(image_id)
    return ImageDetails(Path(path), getattr(row, "width", None), getattr(row, "height", None),
                        getattr(row, "caption", None), tuple(labels), photo)


def describe_details(image_id: int, row: ImageDetails) -> str:
    """The details panel's Markdown; the name, path, caption and labels are escaped (file names can hold markup)."""
    size = f"{row.width} × {row.height} px" if row.width else "size unknown"
    lines = [f"**{markdown_text(row.path.name)}** (id {image_id})", f"- path: {markdown_code(row.path)}",
             f"- size: {size}",  # the row keeps the true path, for stat below
             f"- id {image_id}: the catalog's number, counted from 1 in ingest order (not the file name's number)"]
    try:
        lines.append(f"- file: {row.path.stat().st_size / 1024:.1f} KiB")
    except OSError:
        lines.append("- file: missing on disk")
    lines.extend(_photo_lines(row.photo))
    if row.caption:
        lines.append(f"- caption: {markdown_text(row.caption)}")
    labels = ", ".join(f"{markdown_text(name)} ({probability:.2f})" for name, probability in row.labels[:LABELS_SHOWN])
    more = len(row.labels) - LABELS_SHOWN
    if more > 0:  # a multi-label set of thousands of labels gave one image hundreds (an 11 KB panel)
        labels += f" and {more:,} more (each set's CSV export lists them all)"
    lines.append(f"- labels: {labels or 'none yet (see the Label collection tab)'}")
    return "\n".join(lines)


def _photo_lines(photo: "PhotoMetadata | None") -> list[str]:
    """Details lines for what the date, camera and place filters match on (each only when known)."""
    if photo is None:
        return []
    lines = []
    if photo.taken_at:
        source = " (file's modification time: no EXIF date)" if photo.taken_source == "mtime" else ""
        lines.append(f"- taken: {markdown_text(photo.taken_at.replace('T', ' '))}{source}")
    camera = photo.camera  # "Canon EOS 80D", not "Canon Canon EOS 80D"
    if camera:
        lines.append(f"- camera: {markdown_text(camera)}")
    if photo.latitude is not None and photo.longitude is not None:
        lines.append(f"- place: {photo.latitude:.5f}, {photo.longitude:.5f}")
    return lines
