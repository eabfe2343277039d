"""Photo metadata from real EXIF blocks, stored in the catalog, and the date/camera/place filters checked
against a brute-force reference."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import random
import sqlite3

import numpy as np
import pytest
from PIL import Image

from mmretrieval.cli import main
from mmretrieval.collection.collection import Collection
from mmretrieval.collection.filters import Filters, allowed_ids, great_circle_km, parse_date, parse_near
from mmretrieval.errors import QueryError
from mmretrieval.images.decode import decode_image
from mmretrieval.images.metadata import photo_metadata

EXIF_IFD, GPS_IFD = 0x8769, 0x8825


def make_exif(*, taken: str | None = None, offset: str | None = None, make: str | None = None,
              model: str | None = None, gps: tuple[float, float] | None = None, orientation: int | None = None,
              digitized: str | None = None, ifd0_time: str | None = None) -> Image.Exif:
    """A real EXIF block with PIL's IFDs: dates with offsets, GPS as degree/minute/second rationals."""
    exif = Image.Exif()
    sub = exif.get_ifd(EXIF_IFD)
    for ifd, tag, value in ((exif, 0x010F, make), (exif, 0x0110, model), (exif, 0x0112, orientation),
                            (exif, 0x0132, ifd0_time), (sub, 0x9003, taken), (sub, 0x9011, offset),
                            (sub, 0x9004, digitized)):
        if value:
            ifd[tag] = value
    if gps:
        gps_ifd = exif.get_ifd(GPS_IFD)
        for (ref_tag, value_tag), value, refs in (((1, 2), gps[0], "NS"), ((3, 4), gps[1], "EW")):
            gps_ifd[ref_tag] = refs[0] if value >= 0 else refs[1]
            gps_ifd[value_tag] = _dms(abs(value))
    return exif


def _dms(value: float) -> tuple[float, float, float]:
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round((value - degrees - minutes / 60) * 3600, 4)
    return (float(degrees), float(minutes), seconds)


def dated_and_undated(folder) -> tuple:
    """Two JPEGs in a new ``folder``: ``dated.jpg`` (EXIF 2021-07-04 10:30:00) and ``undated.jpg`` (no EXIF date,
    but a camera, Canon EOS R5, and a place, 48.85 N 2.35 E)."""
    folder.mkdir()
    dated, undated = folder / "dated.jpg", folder / "undated.jpg"
    dated.write_bytes(jpeg_with(make_exif(taken="2021:07:04 10:30:00")))
    undated.write_bytes(jpeg_with(make_exif(make="Canon", model="EOS R5", gps=(48.85, 2.35)), colour=(10, 200, 30)))
    return dated, undated


def jpeg_with(exif: Image.Exif, size=(48, 32), colour=(120, 60, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_capture_time_offset_camera_gps_and_orientation():
    exif = make_exif(taken="2024:06:01 23:30:15", offset="+09:00", make="Apple", model="iPhone 15 Pro",
                     gps=(35.6586, 139.7454), orientation=6)
    decoded = decode_image(jpeg_with(exif))
    meta = photo_metadata(decoded.exif, mtime_ns=0, width=decoded.width, height=decoded.height)
    assert meta.taken_local == "2024-06-01T23:30:15" and meta.taken_source == "exif_original"
    assert meta.utc_offset_min == 540 and meta.taken_at == "2024-06-01T23:30:15+09:00"
    assert meta.taken_utc_s == dt.datetime(2024, 6, 1, 14, 30, 15, tzinfo=dt.timezone.utc).timestamp()
    assert meta.camera == "Apple iPhone 15 Pro" and meta.make == "Apple"
    assert meta.latitude == pytest.approx(35.6586, abs=1e-5) and meta.longitude == pytest.approx(139.7454, abs=1e-5)
    assert meta.orientation == 6 and (meta.width, meta.height) == (32, 48)  # turned: portrait


def test_southern_western_gps_and_negative_offsets():
    exif = make_exif(taken="2023:01:02 03:04:05", offset="-03:30", gps=(-33.8568, -70.6483))
    meta = photo_metadata(decode_image(jpeg_with(exif)).exif, mtime_ns=None)
    assert (meta.latitude, meta.longitude) == (pytest.approx(-33.8568, abs=1e-5), pytest.approx(-70.6483, abs=1e-5))
    assert meta.utc_offset_min == -210 and meta.taken_at.endswith("-03:30")


def test_gps_zero_zero_is_no_position_but_the_equator_and_the_meridian_are_places():
    no_fix = photo_metadata(make_exif(make="GoPro", model="HERO12 Black", gps=(0.0, 0.0)), mtime_ns=0)
    assert (no_fix.latitude, no_fix.longitude) == (None, None)
    for place in ((0.0, 32.58), (51.4779, 0.0), (-0.0001, 0.0001)):  # Kampala's latitude, Greenwich, near 0,0
        meta = photo_metadata(make_exif(gps=place), mtime_ns=0)
        assert (meta.latitude, meta.longitude) == (pytest.approx(place[0], abs=1e-5), pytest.approx(place[1], abs=1e-5))


def test_capture_time_fallbacks_are_recorded():
    mtime_ns = int(dt.datetime(2020, 5, 4, 12, 0, 0).timestamp() * 1e9)
    digitized = photo_metadata(make_exif(digitized="2019:07:08 09:10:11"), mtime_ns=mtime_ns)
    assert (digitized.taken_source, digitized.taken_local) == ("exif_digitized", "2019-07-08T09:10:11")
    assert digitized.utc_offset_min is None  # no offset tag: an absolute time only by this machine's zone
    ifd0 = photo_metadata(make_exif(ifd0_time="2018:01:01 00:00:01"), mtime_ns=mtime_ns)
    assert (ifd0.taken_source, ifd0.taken_local) == ("exif_datetime", "2018-01-01T00:00:01")
    for bad in ("0000:00:00 00:00:00", "    :  :     :  :  ", "2024:13:45 99:00:00", "yesterday"):
        meta = photo_metadata(make_exif(taken=bad, offset="+01:00"), mtime_ns=mtime_ns)
        assert (meta.taken_source, meta.taken_local) == ("mtime", "2020-05-04T12:00:00"), bad
    assert photo_metadata(None, mtime_ns=None).taken_source is None


@pytest.mark.parametrize("taken, zone", [("0001:01:01 00:00:00", "America/New_York"),
                                         ("9999:12:31 23:59:59", "America/New_York"),
                                         ("9999:12:31 23:59:59", "Pacific/Kiritimati")])
def test_a_date_at_the_ends_of_the_calendar_is_no_date_not_a_failed_image(monkeypatch, taken, zone):
    """A camera whose clock was reset wrote year 1: datetime's range ran out in the time-zone step
    (ValueError: year 0 is out of range; OverflowError), and ingest failed the photo as corrupt."""
    import time

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        decoded = decode_image(jpeg_with(make_exif(taken=taken)))  # no offset tag: read in the machine's zone
        meta = photo_metadata(decoded.exif, mtime_ns=0)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert meta.taken_source == "mtime"


def test_heic_exif_is_read(tmp_path):
    import pillow_heif

    pillow_heif.register_heif_opener()
    buffer = io.BytesIO()
    exif = make_exif(taken="2024:08:09 10:11:12", offset="+02:00", make="Apple", model="iPhone 13")
    Image.new("RGB", (40, 30), (10, 200, 10)).save(buffer, "HEIF", exif=exif.tobytes())
    meta = photo_metadata(decode_image(buffer.getvalue()).exif, mtime_ns=0)
    assert meta.taken_at == "2024-08-09T10:11:12+02:00" and meta.camera == "Apple iPhone 13"


def test_ingest_records_upright_sizes_file_orientations_and_no_place_without_a_fix(tmp_path, tiny_encoder):
    """A TIFF and a HEIC stored 64x48 with orientation 6 are 48x64 portraits; a GoPro's 0,0 is no position."""
    from mmretrieval.images.formats import ensure_openers

    ensure_openers()  # HEIF
    folder = tmp_path / "photos"
    folder.mkdir()
    turned = make_exif(taken="2024:05:06 07:08:09", make="Apple", model="iPhone 13", orientation=6)
    for name, fmt in (("scan.tif", "TIFF"), ("phone.heic", "HEIF")):
        Image.new("RGB", (64, 48), (200, 40, 40)).save(folder / name, fmt, exif=turned.tobytes())
    (folder / "gopro.jpg").write_bytes(jpeg_with(make_exif(make="GoPro", gps=(0.0, 0.0)), colour=(20, 90, 200)))
    (folder / "gulf.jpg").write_bytes(jpeg_with(make_exif(gps=(0.004, 0.004)), colour=(20, 200, 90)))
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        assert col.ingest([folder], workers=0).embedded == 4
        ids = {os.path.basename(col.catalog.rows([i])[i].path): i for i in col.catalog.vector_ids().tolist()}
        photos = col.photos(list(ids.values()))
        for name in ("scan.tif", "phone.heic"):
            photo = photos[ids[name]]
            assert (photo.width, photo.height, photo.orientation) == (48, 64, 6), name
            assert photo.camera == "Apple iPhone 13" and photo.taken_local == "2024-05-06T07:08:09", name
        assert (photos[ids["gopro.jpg"]].latitude, photos[ids["gopro.jpg"]].longitude) == (None, None)
        assert [os.path.basename(hit.path) for hit in col.search("x", k=10, near="0,0,1")] == ["gulf.jpg"]


def test_dates_and_places_parse_or_fail_with_one_clear_message():
    assert parse_date("2024").local == "2024-01-01T00:00:00"
    assert parse_date("2024-06").local == "2024-06-01T00:00:00"
    assert parse_date("2024-06-03").local == "2024-06-03T00:00:00"
    assert parse_date("2024-06-03T14:30").local == "2024-06-03T14:30:00"
    assert parse_date("2024-06-03T14:30:00Z").utc_s == dt.datetime(2024, 6, 3, 14, 30, tzinfo=dt.timezone.utc).timestamp()
    assert parse_date(dt.date(2024, 2, 29)).local == "2024-02-29T00:00:00"
    for bad in ("2024-13", "24", "June", "2024-02-30", ""):
        with pytest.raises(QueryError, match="YYYY-MM-DD"):
            parse_date(bad, "after")
    assert parse_near("48.8584, 2.2945, 5").km == 5.0
    for bad, words in (("48.8,2.29", "LAT,LON,KM"), ("91,0,1", "latitude"), ("0,181,1", "longitude"),
                       ("0,0,0", "radius"), ("a,b,c", "LAT,LON,KM")):
        with pytest.raises(QueryError, match=words):
            parse_near(bad)
    with pytest.raises(QueryError, match="half-open"):
        Filters.of(after="2024-06", before="2024-06")


def test_a_fraction_of_a_second_is_kept_not_truncated():
    assert parse_date("2024-06-15T12:00:00.5").local == "2024-06-15T12:00:00.500000"
    assert parse_date(dt.datetime(2024, 6, 15, 12, 0, 0, 1)).local == "2024-06-15T12:00:00.000001"
    noon_utc_s = dt.datetime(2024, 6, 15, 12, tzinfo=dt.timezone.utc).timestamp()
    assert parse_date("2024-06-15T12:00:00.5Z").utc_s == noon_utc_s + 0.5
    Filters.of(after="2024-06-15T12:00:00.3", before="2024-06-15T12:00:00.7")  # holds no whole second, yet not empty
    with pytest.raises(QueryError, match="half-open"):
        Filters.of(after="2024-06-15T12:00:00.7", before="2024-06-15T12:00:00.3")


def test_fractional_bounds_keep_the_range_half_open(tmp_path, tiny_encoder, capsys):
    """Capture times are whole seconds: a photo taken at 12:00:00 is before 12:00:00.5 and before 12:00:00.000001."""
    folder = tmp_path / "beach"
    folder.mkdir()
    taken = {"a_second_before.jpg": ("2024:06:15 11:59:59", None), "noon.jpg": ("2024:06:15 12:00:00", None),
             "noon_utc.jpg": ("2024:06:15 12:00:00", "+00:00"), "a_second_after.jpg": ("2024:06:15 12:00:01", None)}
    for index, (name, (when, offset)) in enumerate(taken.items()):
        (folder / name).write_bytes(jpeg_with(make_exif(taken=when, offset=offset), colour=(60 * index, 90, 30)))
    with Collection.open(tmp_path / "c1.mmr", model=tiny_encoder, create=True) as col:
        assert col.ingest([folder], workers=0).embedded == len(taken)

        def found(**dates) -> set[str]:
            return {os.path.basename(hit.path) for hit in col.search("beach", k=10, **dates)}

        noon = {"noon.jpg", "noon_utc.jpg"}
        assert found(after="2024-06-15T12:00:00.5") == {"a_second_after.jpg"}
        assert found(after="2024-06-15T12:00:00") == noon | {"a_second_after.jpg"}
        assert found(before="2024-06-15T12:00:00.000001") == noon | {"a_second_before.jpg"}
        assert found(before="2024-06-15T12:00:00") == {"a_second_before.jpg"}
        assert found(after="2024-06-15T11:59:59.999999", before="2024-06-15T12:00:00.999999") == noon
        assert found(after="2024-06-15T12:00:00.3", before="2024-06-15T12:00:00.7") == set()
        # With an offset the bound is an absolute time (only noon_utc.jpg's is known, whatever this machine's zone)
        assert "noon_utc.jpg" not in found(after="2024-06-15T12:00:00.5Z")
        assert "noon_utc.jpg" in found(before="2024-06-15T14:00:00.000001+02:00")
    for flag, expected in (("--after", {"a_second_after.jpg"}), ("--before", noon | {"a_second_before.jpg"})):
        instant = "2024-06-15T12:00:00.5" if flag == "--after" else "2024-06-15T12:00:00.000001"
        code = main(["search", "beach", "--collection", str(tmp_path / "c1.mmr"), "--json", flag, instant])
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert code == 0 and {os.path.basename(row["path"]) for row in rows} == expected


def test_great_circle_distance_matches_known_figures():
    paris, london = (48.8566, 2.3522), (51.5074, -0.1278)
    assert great_circle_km(paris[0], paris[1], *london) == pytest.approx(343.5, abs=1.0)
    assert great_circle_km(0.0, 179.9, 0.0, -179.9) == pytest.approx(22.24, abs=0.05)  # across the date line


CAMERAS = [("Apple", "iPhone 15 Pro"), ("Canon", "Canon EOS R5"), ("NIKON CORPORATION", "NIKON Z 6"),
           ("SONY", "ILCE-7M3"), (None, None)]
PLACES = [(48.8584, 2.2945), (48.8606, 2.3376), (51.5007, -0.1246), (-33.8568, 151.2153), None]


def _library(folder, count: int = 36, seed: int = 3) -> dict[str, dict]:
    """JPEGs with varied capture times (some with offsets, some without EXIF), cameras and places."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    truth = {}
    for index in range(count):
        taken = dt.datetime(2022, 1, 1) + dt.timedelta(minutes=rng.randrange(0, 3 * 365 * 24 * 60))
        offset_min = rng.choice([None, 0, 120, -300, 540])
        make, model = rng.choice(CAMERAS)
        place = rng.choice(PLACES)
        has_exif = index % 9 != 0
        exif = make_exif(taken=taken.strftime("%Y:%m:%d %H:%M:%S") if has_exif else None,
                         offset=None if offset_min is None else _offset_text(offset_min), make=make, model=model,
                         gps=place if has_exif else None)
        path = folder / f"p{index:02d}.jpg"
        path.write_bytes(jpeg_with(exif, colour=(rng.randrange(256), rng.randrange(256), rng.randrange(256))))
        mtime = dt.datetime(2021, 3, 1) + dt.timedelta(days=index * 20)
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
        if not has_exif:
            taken, offset_min, place = mtime, None, None
        truth[str(path)] = {"local": taken, "offset": offset_min, "camera": f"{make or ''} {model or ''}",
                            "place": place, "exif": has_exif}
    return truth


def _offset_text(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _utc(fact: dict) -> float:
    if fact["offset"] is None:
        return fact["local"].astimezone().timestamp()
    return fact["local"].replace(tzinfo=dt.timezone(dt.timedelta(minutes=fact["offset"]))).timestamp()


def _compare(fact: dict, bound: dt.datetime) -> float:
    """Photo minus bound: on the photo's wall clock for a naive bound, in absolute time for an aware one."""
    if bound.tzinfo is None:
        return (fact["local"] - bound).total_seconds()
    return _utc(fact) - bound.timestamp()


def _brute_force(truth: dict[str, dict], after=None, before=None, camera=None, near=None) -> set[str]:
    kept = set()
    for path, fact in truth.items():
        if after is not None and not _compare(fact, after) >= 0:
            continue
        if before is not None and not _compare(fact, before) < 0:
            continue
        if camera is not None and camera.casefold() not in fact["camera"].casefold():
            continue
        if near is not None:
            if fact["place"] is None:
                continue
            lat, lon, km = near
            if great_circle_km(fact["place"][0], fact["place"][1], lat, lon) > km:
                continue
        kept.add(path)
    return kept


FILTER_CASES = [
    ({"after": "2023"}, {"after": dt.datetime(2023, 1, 1)}),
    ({"before": "2023-06"}, {"before": dt.datetime(2023, 6, 1)}),
    ({"after": "2022-03-15", "before": "2024-02-01T12:00"},
     {"after": dt.datetime(2022, 3, 15), "before": dt.datetime(2024, 2, 1, 12)}),
    ({"after": "2023-01-01T00:00:00+00:00"}, {"after": dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)}),
    ({"camera": "iphone"}, {"camera": "iphone"}),
    ({"camera": "NIKON z"}, {"camera": "NIKON z"}),
    ({"near": "48.8584,2.2945,5"}, {"near": (48.8584, 2.2945, 5)}),
    ({"near": (48.8584, 2.2945, 0.5)}, {"near": (48.8584, 2.2945, 0.5)}),
    ({"near": "51.5,-0.12,400", "camera": "canon", "after": "2022-06"},
     {"near": (51.5, -0.12, 400), "camera": "canon", "after": dt.datetime(2022, 6, 1)}),
]


@pytest.fixture(scope="module")
def photo_collection(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("photos")
    truth = _library(root / "library")
    with Collection.open(root / "col", model=tiny_encoder, create=True) as col:
        summary = col.ingest([root / "library"], workers=0, batch_size=8)
        assert summary.embedded == len(truth)
        yield col, truth, root


@pytest.mark.parametrize("api, reference", FILTER_CASES)
def test_filters_match_a_brute_force_reference(photo_collection, api, reference):
    col, truth, _ = photo_collection
    expected = _brute_force(truth, **reference)
    hits = col.search("a photo", k=100, **api)
    assert {hit.path for hit in hits} == expected
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    if expected:  # similar() filters the same way and still leaves the query image out
        query = sorted(expected)[0]
        similar = col.similar(query, k=100, **api)
        assert {hit.path for hit in similar} == expected - {query}


def test_reference_cases_are_not_trivial(photo_collection):
    _, truth, _ = photo_collection
    sizes = [len(_brute_force(truth, **reference)) for _, reference in FILTER_CASES]
    assert all(0 < size < len(truth) for size in sizes), sizes


def test_metadata_is_stored_per_image(photo_collection):
    col, truth, _ = photo_collection
    ids = col.catalog.vector_ids().tolist()
    photos = col.photos(ids)
    rows = col.catalog.rows(ids)
    for image_id in ids:
        fact, meta = truth[rows[image_id].path], photos[image_id]
        assert meta.taken_local == fact["local"].isoformat(timespec="seconds")
        assert meta.taken_source == ("exif_original" if fact["exif"] else "mtime")
        if fact["exif"]:
            assert meta.utc_offset_min == fact["offset"]
        assert (meta.latitude is None) == (fact["place"] is None)
        assert (meta.width, meta.height) == (48, 32)


def test_label_with_a_filter_labels_only_the_matching_photos(photo_collection):
    col, truth, _ = photo_collection
    summary = col.label(["red", "blue"], camera="canon")
    expected = _brute_force(truth, camera="canon")
    assert summary.images == len(expected)
    labelled = col.label_of(col.catalog.vector_ids().tolist())
    assert {col.catalog.rows([i])[i].path for i in labelled} == expected
    with pytest.raises(QueryError, match="labels are kept"):
        col.label(["red", "blue"], camera="no such camera")
    assert col.label_of(col.catalog.vector_ids().tolist()) == labelled


def test_cli_filters_and_json_fields(photo_collection, capsys):
    col, truth, _ = photo_collection
    code = main(["search", "a photo", "--collection", str(col.directory), "-k", "100", "--json",
                 "--camera", "iPhone", "--after", "2023"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and {row["path"] for row in rows} == _brute_force(truth, camera="iPhone",
                                                                      after=dt.datetime(2023, 1, 1))
    assert all(row["camera"] == "Apple iPhone 15 Pro" and row["taken_at"] for row in rows)
    assert all("latitude" not in row for row in rows)  # GPS only when asked
    main(["search", "a photo", "--collection", str(col.directory), "--json", "--gps", "--near", "48.86,2.3,10"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and all(abs(row["latitude"] - 48.86) < 0.1 and abs(row["longitude"] - 2.3) < 0.1 for row in rows)


@pytest.mark.parametrize("args, words", [(["--after", "2024-13"], "YYYY-MM-DD"),
                                         (["--near", "100,0,5"], "latitude"),
                                         (["--near=-33.8,151.2"], "LAT,LON,KM")])
def test_cli_bad_filters_are_one_line_errors(photo_collection, capsys, args, words):
    col, _, _ = photo_collection
    code = main(["search", "x", "--collection", str(col.directory), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_collections_made_before_the_photos_table_still_open_and_filter_by_mtime(tmp_path, tiny_encoder):
    folder = tmp_path / "old"
    folder.mkdir()
    for index, year in enumerate((2019, 2021, 2023)):
        path = folder / f"{year}.jpg"
        path.write_bytes(jpeg_with(make_exif(taken=f"{year}:05:05 05:05:05"), colour=(index * 80, 10, 10)))
        stamp = dt.datetime(year, 7, 1).timestamp()
        os.utime(path, (stamp, stamp))
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([folder], workers=0)
    with sqlite3.connect(tmp_path / "col" / "catalog.sqlite") as db:  # as a schema-3 catalog, before the change
        db.execute("DROP TABLE photos")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    with Collection.open(tmp_path / "col") as col:
        hits = col.search("x", k=10, after="2020", before="2022-12")
        assert [os.path.basename(hit.path) for hit in hits] == ["2021.jpg"]
        photo = col.photos([hits[0].id])[hits[0].id]
        assert photo.taken_source == "mtime" and photo.taken_local.startswith("2021-07-01")
        assert col.search("x", k=10, camera="canon") == []
        assert col.catalog.get_meta("schema") == "7"  # 3 -> 4 photos, 4 -> 5 import id ranges, 5 -> 6 status index,
        # 6 -> 7 no GPS 0,0
        assert len(col.catalog.select("SELECT image_id FROM photos", ())) == 3  # every embedded row dated


def test_a_changed_file_is_dated_and_described_afresh(tmp_path, tiny_encoder):
    folder = tmp_path / "photos"
    folder.mkdir()
    path = folder / "a.jpg"
    path.write_bytes(jpeg_with(make_exif(taken="2020:02:02 02:02:02", make="Canon", model="Canon EOS R5")))
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([folder], workers=0)
        assert [os.path.basename(h.path) for h in col.search("x", camera="eos")] == ["a.jpg"]
        path.write_bytes(jpeg_with(Image.Exif(), colour=(1, 2, 3)))  # re-saved without EXIF
        stamp = dt.datetime(2022, 3, 4, 5, 6, 7).timestamp()
        os.utime(path, (stamp, stamp))
        assert col.ingest([folder], workers=0).embedded == 1
        assert col.search("x", camera="eos") == []
        photo = col.photos([col.catalog.id_of_path(path)])[col.catalog.id_of_path(path)]
        assert (photo.taken_source, photo.taken_local, photo.camera) == ("mtime", "2022-03-04T05:06:07", None)


def test_rows_written_without_metadata_are_dated_by_mtime(tmp_path):
    from mmretrieval.collection.catalog import Catalog, VectorWrite

    catalog = Catalog(tmp_path / "catalog.sqlite")
    stamp_ns = int(dt.datetime(2021, 8, 9, 10, 11, 12).timestamp() * 1e9)
    catalog.mark_pending([(b"/x/a.jpg", 10, stamp_ns, None)])
    image_id = catalog.pending()[0][0]
    catalog.write_results([VectorWrite(image_id, "h", 4, 3, "JPEG", np.ones(8, np.float32) / math.sqrt(8))], [])
    photo = catalog.photos([image_id])[image_id]
    assert (photo.taken_source, photo.taken_local) == ("mtime", "2021-08-09T10:11:12")
    assert photo.utc_offset_min == photo_metadata(None, mtime_ns=stamp_ns).utc_offset_min
    assert len(catalog.select("SELECT image_id FROM photos WHERE taken_source = 'mtime'", ())) == 1
    with catalog.transaction() as db:  # whatever removes a vector (compaction, a future path) drops its photo row
        db.execute("DELETE FROM vector_rows WHERE image_id = ?", (image_id,))
    assert catalog.select("SELECT image_id FROM photos", ()) == []
    catalog.close()


@pytest.mark.parametrize("stamp_ns", [-275_000_000_500_000_000, -1_500_000_000, 1_500_000_000,
                                      1_700_000_000_999_999_999])
def test_sql_dates_a_file_time_as_python_does_before_1970_too(tmp_path, stamp_ns):
    """The catalog's SQL dates rows written without metadata (and touched ones) from their mtimes; Python dates
    decoded files. Both round a fractional second down, also before 1970 (1961 and a second and a half before 1970)."""
    from mmretrieval.collection.catalog import Catalog, VectorWrite

    catalog = Catalog(tmp_path / "catalog.sqlite")
    catalog.mark_pending([(b"/x/a.jpg", 10, stamp_ns, None)])
    image_id = catalog.pending()[0][0]
    catalog.write_results([VectorWrite(image_id, "h", 4, 3, "JPEG", np.ones(8, np.float32) / math.sqrt(8))], [])
    photo, expected = catalog.photos([image_id])[image_id], photo_metadata(None, mtime_ns=stamp_ns)
    assert (photo.taken_local, photo.utc_offset_min) == (expected.taken_local, expected.utc_offset_min)
    assert photo.taken_utc_s == pytest.approx(stamp_ns / 1e9)
    catalog.close()


def test_rows_without_a_file_time_have_no_date_and_match_no_photo_filter(tmp_path):
    from mmretrieval.collection.catalog import Catalog, VectorWrite

    catalog = Catalog(tmp_path / "catalog.sqlite")
    catalog.mark_pending([(b"/elsewhere/imported.jpg", 0, 0, None)])  # as `mmr import` records rows: mtime 0
    image_id = catalog.pending()[0][0]
    catalog.write_results([VectorWrite(image_id, "h", 4, 3, "JPEG", np.ones(8, np.float32) / math.sqrt(8))], [])
    assert catalog.photos([image_id])[image_id].taken_at is None
    assert allowed_ids(catalog, Filters.of(before="2100")).tolist() == []
    catalog.close()


def test_a_touched_file_is_dated_by_its_new_time_unless_exif_dates_it(tmp_path, tiny_encoder):
    """A touched file is hashed, not decoded again, during planning: the capture time taken from its mtime must
    move with the mtime, and one from EXIF must stay."""
    import os

    from mmretrieval.collection.collection import Collection

    # undated: no EXIF date, but a camera and a place: the touch lost them (its photos row was written afresh from
    # the mtime)
    dated, undated = dated_and_undated(tmp_path / "photos")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        stamp = 1_500_000_000  # 2017-07-14 UTC
        for path in (dated, undated):
            os.utime(path, (stamp, stamp))
        summary = col.ingest([tmp_path / "photos"], workers=0)
        assert (summary.embedded, summary.unchanged) == (0, 2)
        ids = [col.catalog.id_of_path(path) for path in (dated, undated)]
        photos = col.photos(ids)
        assert photos[ids[0]].taken_local == "2021-07-04T10:30:00" and photos[ids[0]].taken_source == "exif_original"
        assert photos[ids[1]].taken_source == "mtime" and photos[ids[1]].taken_at is not None
        assert (photos[ids[1]].make, photos[ids[1]].model) == ("Canon", "EOS R5")
        assert photos[ids[1]].latitude == pytest.approx(48.85, abs=1e-4)
        assert photos[ids[1]].taken_local.startswith("2017-07-1")
        assert col.search("x", k=5, after="2017-07-01", before="2017-08-01")[0].id == ids[1]
