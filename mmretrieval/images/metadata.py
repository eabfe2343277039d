"""Photo metadata: when, with what and where a photo was taken, from its EXIF block.

Capture time is EXIF ``DateTimeOriginal`` with ``OffsetTimeOriginal`` (then ``DateTimeDigitized``, then the
IFD0 ``DateTime``, each with its own offset tag), falling back to the file's modification time; the
:attr:`PhotoMetadata.taken_source` field says which one it is. Two forms are kept:

* ``taken_local``: the wall-clock time where the photo was taken (``"2024-06-01T14:30:00"``), which is what
  a person means by "photos from June"; for a modification time, the wall clock of this machine.
* ``taken_utc_s``: POSIX seconds. Exact when EXIF gives an offset or the time is a modification time; a
  time without an offset is read in this machine's time zone (``utc_offset_min`` is then None).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import re
from dataclasses import dataclass

from PIL import Image

logger = logging.getLogger(__name__)

_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_MAKE, _MODEL, _ORIENTATION, _DATETIME, _OFFSET_TIME = 0x010F, 0x0110, 0x0112, 0x0132, 0x9010
# (time tag, its offset tag, source name), best first
_TIME_TAGS = ((0x9003, 0x9011, "exif_original"), (0x9004, 0x9012, "exif_digitized"))
_EXIF_TIME = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^\s*([+-])(\d{2}):?(\d{2})\s*$")
TAKEN_SOURCES = ("exif_original", "exif_digitized", "exif_datetime", "mtime")


@dataclass(frozen=True)
class PhotoMetadata:
    """What the catalog records about a photo besides its pixels."""

    taken_local: str | None  # "YYYY-MM-DDTHH:MM:SS", the wall clock where it was taken (see the module doc)
    taken_utc_s: float | None  # POSIX seconds
    utc_offset_min: int | None  # minutes east of UTC, when known (an EXIF offset tag, or this machine's for mtime)
    taken_source: str | None  # one of TAKEN_SOURCES; None when neither EXIF nor mtime gave a time
    make: str | None = None  # EXIF Make, e.g. "Apple"
    model: str | None = None  # EXIF Model, e.g. "iPhone 15 Pro"
    latitude: float | None = None  # decimal degrees, north positive; None without a fix (0, 0 counts as none)
    longitude: float | None = None  # decimal degrees, east positive
    orientation: int = 1  # EXIF orientation 1-8 as stored (already applied to the embedded pixels)
    width: int | None = None  # pixels, after orientation
    height: int | None = None

    @property
    def taken_at(self) -> str | None:
        """ISO 8601 local time, with its UTC offset when known (``2024-06-01T14:30:00+02:00``)."""
        if self.taken_local is None:
            return None
        if self.utc_offset_min is None:
            return self.taken_local
        sign = "+" if self.utc_offset_min >= 0 else "-"
        hours, minutes = divmod(abs(self.utc_offset_min), 60)
        return f"{self.taken_local}{sign}{hours:02d}:{minutes:02d}"

    def to_json(self) -> str:
        """One line of JSON (for records that cross process or machine boundaries, e.g. Ray results)."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "PhotoMetadata | None":
        """The metadata :meth:`to_json` wrote; None for an empty string (nothing was extracted)."""
        return cls(**json.loads(text)) if text else None

    @property
    def camera(self) -> str | None:
        """Make and model as one name, without the make twice ("NIKON CORPORATION" + "NIKON Z 6" -> "NIKON Z 6")."""
        make, model = (self.make or "").strip(), (self.model or "").strip()
        brand = make.split(" ")[0].casefold()
        if model.casefold().startswith(brand):
            return model or None
        return f"{make} {model}".strip() or None


def photo_metadata(exif: Image.Exif | None, *, mtime_ns: int | None, width: int | None = None,
                   height: int | None = None) -> PhotoMetadata:
    """Read capture time, camera, GPS position and orientation from an EXIF block.

    Args:
        exif: the image's EXIF (``Image.getexif()`` before any transpose), or None.
        mtime_ns: the file's modification time, the fallback capture time.
        width, height: the image's size in pixels after orientation.

    Returns:
        The metadata; a malformed tag is treated as absent, never an error.
    """
    exif = exif if exif is not None else Image.Exif()
    sub = _ifd(exif, _EXIF_IFD)
    taken = None
    for time_tag, offset_tag, source in _TIME_TAGS:
        taken = _parse_time(sub.get(time_tag), sub.get(offset_tag), source)
        if taken:
            break
    if taken is None:
        taken = _parse_time(exif.get(_DATETIME), sub.get(_OFFSET_TIME), "exif_datetime")
    if taken is None and mtime_ns is not None:
        taken = _from_mtime(mtime_ns)
    local, utc_s, offset_min, source = taken or (None, None, None, None)
    latitude, longitude = _gps(_ifd(exif, _GPS_IFD))
    orientation = exif.get(_ORIENTATION, 1)
    return PhotoMetadata(
        taken_local=local, taken_utc_s=utc_s, utc_offset_min=offset_min, taken_source=source,
        make=_text(exif.get(_MAKE)), model=_text(exif.get(_MODEL)), latitude=latitude, longitude=longitude,
        orientation=orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1,
        width=width, height=height)


def _ifd(exif: Image.Exif, tag: int) -> dict:
    try:
        return dict(exif.get_ifd(tag))
    except Exception:  # a sub-IFD pointer into nowhere: as if absent
        return {}


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _parse_time(value: object, offset: object, source: str) -> tuple[str, float, int | None, str] | None:
    match = _EXIF_TIME.match(_text(value) or "")
    if not match:
        return None
    try:
        local = dt.datetime(*(int(part) for part in match.groups()))
    except ValueError:  # "0000:00:00 00:00:00" and friends
        return None
    offset_min = _parse_offset(_text(offset))
    try:
        if offset_min is None:
            utc_s = local.astimezone().timestamp()  # no offset tag: read in this machine's time zone
        else:
            utc_s = local.replace(tzinfo=dt.timezone(dt.timedelta(minutes=offset_min))).timestamp()
    except (ValueError, OverflowError):  # year 1, or 9999 at the year's end, moved past datetime's range by a zone
        return None
    return local.isoformat(timespec="seconds"), utc_s, offset_min, source


def _parse_offset(text: str | None) -> int | None:
    match = _OFFSET.match(text or "")
    if not match:
        return None
    sign, hours, minutes = match.groups()
    total = int(hours) * 60 + int(minutes)
    return (-total if sign == "-" else total) if total <= 14 * 60 else None


def redated(photo: PhotoMetadata, mtime_ns: int) -> PhotoMetadata:
    """``photo`` for a file with the same bytes and the time ``mtime_ns`` (a copy): a capture time that came from
    the mtime comes from this one; EXIF's, the camera and the place stay."""
    if photo.taken_source != "mtime":
        return photo
    local, utc_s, offset_min, source = _from_mtime(mtime_ns)
    return dataclasses.replace(photo, taken_local=local, taken_utc_s=utc_s, utc_offset_min=offset_min,
                               taken_source=source)


def _from_mtime(mtime_ns: int) -> tuple[str, float, int, str]:
    local = dt.datetime.fromtimestamp(mtime_ns // 1_000_000_000).astimezone()  # whole seconds, down: as the SQL
    offset = local.utcoffset() or dt.timedelta(0)
    return (local.replace(tzinfo=None, microsecond=0).isoformat(timespec="seconds"), mtime_ns / 1e9,
            int(offset.total_seconds() // 60), "mtime")


def _gps(gps: dict) -> tuple[float | None, float | None]:
    latitude = _degrees(gps.get(2), gps.get(1), "S")
    longitude = _degrees(gps.get(4), gps.get(3), "W")
    if latitude is None or longitude is None or abs(latitude) > 90 or abs(longitude) > 180:
        return None, None
    if latitude == 0 and longitude == 0:  # what cameras without a fix write (GoPro): in the sea off Africa
        return None, None
    return latitude, longitude


def _degrees(value: object, ref: object, negative: str) -> float | None:
    try:
        parts = [float(part) for part in value]  # (degrees, minutes, seconds) as rationals
        degrees = parts[0] + (parts[1] if len(parts) > 1 else 0) / 60 + (parts[2] if len(parts) > 2 else 0) / 3600
    except (TypeError, ValueError, ZeroDivisionError, IndexError):
        return None
    if not math.isfinite(degrees):
        return None
    return -degrees if (_text(ref) or "").upper().startswith(negative) else degrees
