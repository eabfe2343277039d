"""Which images a search, a similarity query or a labelling run may return: folder, label, date, camera, place.

All filters resolve to a set of allowed catalog ids by SQL (GPS distance is finished in numpy), and the caller
then scores exactly over that set, as for ``--prefix`` and ``--label``.

Dates (``after``/``before``) accept ``2024``, ``2024-06``, ``2024-06-01`` and ISO datetimes
(``2024-06-01T14:30``, ``2024-06-01T14:30:00+02:00``). Each names the instant its period starts, and the range
is half-open: ``after`` keeps photos taken at or after it, ``before`` those taken strictly before it, so June
2024 is ``after="2024-06", before="2024-07"``. A date without an offset is compared with the photo's own wall
clock (a photo taken at 23:00 in Tokyo on June 1 is a June 1 photo wherever you search from); one with an
offset (or ``Z``) with the absolute capture time. Fractions of a second count: capture times are whole seconds,
so a photo taken at 12:00:00 is before ``12:00:00.5`` (``after`` leaves it out) and before ``12:00:00.000001``
(``before`` keeps it).
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np
import numpy.typing as npt

from ..errors import QueryError
from ..models.label_text import label_key
from .label_sets import has_label, is_declared, qualified, resolve, sets
from .photo_table import camera_pairs

LABELS_SHOWN = 10  # most known labels an unknown label filter's error names

if TYPE_CHECKING:
    from .catalog import Catalog

EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)
WALL_CLOCK_SPREAD_S = 14 * 3600  # the farthest a wall clock is from UTC (UTC+14, and UTC-12 nearer)
_PERIOD = re.compile(r"^(\d{4})(?:-(\d{1,2}))?(?:-(\d{1,2}))?$")
_DATE_HELP = "use YYYY, YYYY-MM, YYYY-MM-DD or an ISO datetime such as 2024-06-01T14:30 or 2024-06-01T14:30+02:00"


@dataclass(frozen=True)
class DateBound:
    """One end of a date range: a wall-clock time, or an absolute instant when the text had an offset."""

    text: str  # as the user wrote it, for messages
    local: str | None = None  # "YYYY-MM-DDTHH:MM:SS[.ffffff]", compared with the photo's local capture time
    utc_s: float | None = None  # POSIX seconds, compared with the photo's absolute capture time


@dataclass(frozen=True)
class Near:
    """A circle on the globe: photos whose GPS position lies within ``km`` of (latitude, longitude)."""

    latitude: float  # decimal degrees, north positive
    longitude: float  # decimal degrees, east positive
    km: float  # radius in kilometres (great-circle distance)


DateLike = Union[str, dt.date, dt.datetime, DateBound]
NearLike = Union[str, tuple[float, float, float], Near]


@dataclass(frozen=True)
class Filters:
    """Every filter a query can carry; all None means the whole collection."""

    path_prefix: str | None = None  # absolute path starts with this (a folder)
    label: str | None = None  # assigned this label by `mmr label`
    after: DateBound | None = None  # taken at or after
    before: DateBound | None = None  # taken strictly before
    camera: str | None = None  # case-insensitive substring of "make model"
    near: Near | None = None  # GPS position within a circle

    @classmethod
    def of(cls, *, path_prefix: str | None = None, label: str | None = None, after: DateLike | None = None,
           before: DateLike | None = None, camera: str | None = None, near: NearLike | None = None) -> "Filters":
        """Filters from user-facing values (strings as the CLI takes them, dates, a (lat, lon, km) tuple).

        Raises:
            QueryError: a date, coordinate or radius that does not parse or is out of range, or an empty range;
                a folder, label or camera that is not text.
        """
        for name, value in (("path_prefix", path_prefix), ("label", label), ("camera", camera)):
            if value is not None and not isinstance(value, str):
                raise QueryError(f"{name} must be text, got {value!r} ({type(value).__name__})")
        filters = cls(path_prefix=path_prefix or None, label=label or None,
                      after=None if after is None else parse_date(after, "after"),
                      before=None if before is None else parse_date(before, "before"),
                      camera=(camera or "").strip() or None, near=None if near is None else parse_near(near))
        filters._check_range()
        return filters

    @property
    def photo_filters(self) -> bool:
        """Whether a date, camera or place filter is set (they need the photos table)."""
        return any(value is not None for value in (self.after, self.before, self.camera, self.near))

    def _check_range(self) -> None:
        after, before = self.after, self.before
        if after is None or before is None:
            return
        empty = ((after.local is not None and before.local is not None and after.local >= before.local)
                 or (after.utc_s is not None and before.utc_s is not None and after.utc_s >= before.utc_s))
        if empty:
            raise QueryError(f"after {after.text!r} is not earlier than before {before.text!r}: no photo can match; "
                             "the range is half-open, so June 2024 is after 2024-06, before 2024-07")


def parse_date(value: DateLike, name: str = "date") -> DateBound:
    """A date bound from ``2024``, ``2024-06``, ``2024-06-01``, an ISO datetime, or a date/datetime object.

    Raises:
        QueryError: text that is none of these, naming ``name`` and the accepted forms.
    """
    if isinstance(value, DateBound):
        return value
    if isinstance(value, dt.datetime):
        return _bound(str(value), value)
    if isinstance(value, dt.date):
        return _bound(str(value), dt.datetime(value.year, value.month, value.day))
    text = str(value).strip()
    period = _PERIOD.match(text)
    try:
        if period:
            year, month, day = (int(part) if part else 1 for part in period.groups())
            moment = dt.datetime(year, month, day)
        else:
            moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{name} {text!r} is not a date; {_DATE_HELP}") from None
    return _bound(text, moment)


def _bound(text: str, moment: dt.datetime) -> DateBound:
    if moment.tzinfo is not None:
        return DateBound(text, utc_s=moment.timestamp())  # a float: the fraction is kept
    # Here too the fraction is kept: truncating it would move the bound earlier and break [after, before).
    # ISO text sorts in time order with or without a fraction ("12:00:00" < "12:00:00.500000" < "12:00:01"),
    # so SQL compares it exactly with the stored whole-second times: as if rounded up to the next second.
    return DateBound(text, local=moment.isoformat(timespec="auto"))


def parse_near(value: NearLike) -> Near:
    """A circle from ``"LAT,LON,KM"`` (or a ``(lat, lon, km)`` tuple).

    Raises:
        QueryError: not three numbers, a latitude outside [-90, 90], a longitude outside [-180, 180], or a
            radius that is not positive.
    """
    if isinstance(value, Near):
        parts: tuple = (value.latitude, value.longitude, value.km)
    elif isinstance(value, str):
        parts = tuple(part.strip() for part in value.split(","))
    else:
        parts = tuple(value)
    try:
        latitude, longitude, km = (float(part) for part in parts)
    except (TypeError, ValueError):
        raise QueryError(f"near {value!r} is not LAT,LON,KM (three numbers, e.g. 48.8584,2.2945,5)") from None
    if not (math.isfinite(latitude) and -90 <= latitude <= 90):
        raise QueryError(f"near: latitude {latitude} is outside -90..90; give LAT,LON,KM in decimal degrees")
    if not (math.isfinite(longitude) and -180 <= longitude <= 180):
        raise QueryError(f"near: longitude {longitude} is outside -180..180; give LAT,LON,KM in decimal degrees")
    if not (math.isfinite(km) and km > 0):
        raise QueryError(f"near: radius {km} km must be a positive number of kilometres")
    return Near(latitude, longitude, km)


def great_circle_km(lat1: npt.ArrayLike, lon1: npt.ArrayLike, lat2: float, lon2: float) -> npt.NDArray[np.float64]:
    """Haversine distance in kilometres between points and one point, all in decimal degrees."""
    phi1, phi2 = np.radians(lat1), math.radians(lat2)
    dphi, dlam = phi2 - phi1, np.radians(np.subtract(lon2, lon1))
    h = np.sin(dphi / 2) ** 2 + np.cos(phi1) * math.cos(phi2) * np.sin(dlam / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def allowed_ids(catalog: "Catalog", filters: Filters) -> npt.NDArray[np.int64] | None:
    """Sorted ids of embedded images that pass every filter, or None when no filter is set.

    A label filter that names no label exactly takes the labels that differ from it only in case or Unicode form
    (``Red Circle`` finds ``red circle``; ``CAT`` finds ``cat`` and ``animals:Cat``).

    Raises:
        QueryError: a label no label set was run with (one a set was run with and gave no image allows none).
    """
    allowed = None
    if filters.path_prefix:
        allowed = catalog.ids_with_prefix(filters.path_prefix)
    if filters.label:
        with_label = _ids_with_label(catalog, filters.label)
        allowed = with_label if allowed is None else np.intersect1d(allowed, with_label)
    if filters.photo_filters:
        matching = _photo_ids(catalog, filters)
        allowed = matching if allowed is None else np.intersect1d(allowed, matching)
    return None if allowed is None else np.unique(allowed)


def _ids_with_label(catalog: "Catalog", ref: str) -> npt.NDArray[np.int64]:
    """Ids given the label ``ref`` names: exactly, else every label alike but for case and Unicode form."""
    return np.unique(np.concatenate([catalog.ids_with_label(name) for name in label_refs(catalog, ref)]))


def label_refs(catalog: "Catalog", ref: str) -> list[str]:
    """The label filters that ``ref`` stands for: itself when a set has that label (given to images or not), else
    every label alike but for case and Unicode form.

    Raises:
        QueryError: no label set has such a label (the message names the closest).
    """
    if has_label(catalog, ref) or is_declared(catalog, ref):  # a declared one may match nothing
        return [ref]
    label_set, label = resolve(catalog, ref)
    folded, folded_ref = label_key(label), label_key(ref)
    alike = [qualified(found.name, name) for found in sets(catalog) if label_set in (None, found.name)
             for name in found.labels
             if label_key(name) == folded or (label_set is None and label_key(qualified(found.name, name)) == folded_ref)]
    if not alike:
        raise _unknown_label(catalog, ref)
    return alike


def _unknown_label(catalog: "Catalog", ref: str) -> QueryError:
    """The error for a label filter that names no label, even but for case (:func:`label_refs`): the labels that
    read closest to it, at most :data:`LABELS_SHOWN` of them, not every label of every set (a million characters
    with a 20,000-label vocabulary). Labels are compared without their set's name and casefolded, among the named
    set's labels only when the filter names one."""
    label_set, label = resolve(catalog, ref)
    known = {qualified(found.name, name): label_key(name) for found in sets(catalog)
             if label_set in (None, found.name) for name in found.labels}  # qualified name -> compared text
    if not known:
        return QueryError(f"no label set has label {ref!r}; none yet: label the collection first (mmr label, or the "
                          "web UI's Label tab)")
    by_text: dict[str, list[str]] = {}
    for name, text in known.items():
        by_text.setdefault(text, []).append(name)
    close = [name for text in difflib.get_close_matches(label_key(label), list(by_text), n=LABELS_SHOWN, cutoff=0.6)
             for name in by_text[text]]
    shown = (close or list(known))[:LABELS_SHOWN]
    listed = ", ".join(repr(name) for name in shown)
    more = f" and {len(known) - len(shown):,} more" if len(known) > len(shown) else ""
    return QueryError(f"no label set has label {ref!r}; {'closest' if close else 'labels'}: {listed}{more}")



def date_and_camera_sql(catalog: "Catalog", filters: Filters, by_time: bool = False) -> tuple[list[str], list] | None:
    """SQL conditions on the ``photos`` table (as ``p``) for the date range and camera of ``filters``, with their
    parameters; None when the camera filter names no camera in the collection (nothing can match).

    ``by_time``: for a walk down the absolute-time index (browsing), which must lead: the wall-clock and camera
    columns are kept from choosing theirs, and a wall-clock bound adds the absolute range it implies (a wall
    clock is UTC shifted by at most 14 hours either way), so the walk skips what lies far outside it."""
    where: list[str] = []
    params: list = []
    plus = "+" if by_time else ""
    for bound, operator in ((filters.after, ">="), (filters.before, "<")):
        if bound is None:
            continue
        if bound.local is None:
            where.append(f"p.taken_utc_s {operator} ?")
            params.append(bound.utc_s)
            continue
        where.append(f"{plus}p.taken_local {operator} ?")  # one indexed column, unless the walk needs the other
        params.append(bound.local)
        if by_time:
            as_utc = dt.datetime.fromisoformat(bound.local).replace(tzinfo=dt.timezone.utc).timestamp()
            where.append(f"p.taken_utc_s {operator} ?")
            params.append(as_utc + (-WALL_CLOCK_SPREAD_S if operator == ">=" else WALL_CLOCK_SPREAD_S))
    if filters.camera:
        pairs = camera_pairs(catalog.select, filters.camera)
        if not pairs:
            return None
        # With a date range, let its index lead (a library has few cameras, each a large share of it): the
        # unary + keeps SQLite from choosing the camera index instead.
        if filters.after is not None or filters.before is not None:
            plus = "+"
        where.append("(" + " OR ".join([f"({plus}p.make IS ? AND {plus}p.model IS ?)"] * len(pairs)) + ")")
        params += [part for pair in pairs for part in pair]
    return where, params


def _photo_ids(catalog: "Catalog", filters: Filters) -> npt.NDArray[np.int64]:
    found = date_and_camera_sql(catalog, filters)
    if found is None:
        return np.zeros(0, np.int64)
    where, params = found
    near = filters.near
    if near is not None:  # a latitude band in SQL (indexed), the exact circle below
        band = near.km / (math.pi * EARTH_RADIUS_KM / 180)
        where.append("p.latitude BETWEEN ? AND ? AND p.longitude IS NOT NULL")
        params += [near.latitude - band, near.latitude + band]
    # Without --near only the id is read: the date or camera index alone answers (a covering index scan)
    columns = "p.image_id, p.latitude, p.longitude" if near is not None else "p.image_id"
    rows = catalog.select(f"SELECT {columns} FROM photos p WHERE {' AND '.join(where)}", params)
    ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    if near is not None and len(rows):
        latitudes = np.array([row[1] for row in rows], dtype=np.float64)
        longitudes = np.array([row[2] for row in rows], dtype=np.float64)
        ids = ids[great_circle_km(latitudes, longitudes, near.latitude, near.longitude) <= near.km]
    return np.sort(ids)
