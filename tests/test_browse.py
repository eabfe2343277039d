"""Browsing without a query (Collection.browse, `mmr search` with filters alone): the images that pass the filters in
capture order, checked against the brute-force reference of test_photo_metadata, then undated images by id."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from mmretrieval.cli import main
from mmretrieval.collection import browse
from mmretrieval.collection.catalog import Catalog, VectorWrite
from mmretrieval.collection.collection import Collection
from mmretrieval.collection.filters import Filters
from mmretrieval.errors import QueryError
from test_photo_metadata import FILTER_CASES, _brute_force, _library, _utc, jpeg_with, make_exif

NO_FILTER = ({}, {})


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("browse")
    truth = _library(root / "library", count=40, seed=11)
    with Collection.open(root / "col", model=tiny_encoder, create=True) as col:
        assert col.ingest([root / "library"], workers=0, batch_size=8).embedded == len(truth)
        ids = {path: col.catalog.id_of_path(path) for path in truth}
        yield col, truth, ids, root


def _in_capture_order(paths, truth, ids, oldest_first=False):
    """The reference order: absolute capture time, ties by catalog id, newest first unless ``oldest_first``."""
    ordered = sorted(paths, key=lambda path: (_utc(truth[path]), ids[path]))
    return ordered if oldest_first else ordered[::-1]


@pytest.mark.parametrize("walk", ["index", "by id"])
@pytest.mark.parametrize("oldest_first", [False, True])
@pytest.mark.parametrize("api, reference", [NO_FILTER, *FILTER_CASES])
def test_browse_lists_what_the_filters_pass_in_capture_order(library, monkeypatch, api, reference, oldest_first,
                                                              walk):
    col, truth, ids, _ = library
    # Small pages, so the walk takes several and resumes each where the last ended; or the by-id look-up
    monkeypatch.setattr(browse, "FIRST_PAGE", 3)
    monkeypatch.setattr(browse, "LAST_PAGE", 5)
    monkeypatch.setattr(browse, "FEW_IDS", 0 if walk == "index" else 10_000)
    monkeypatch.setattr(browse, "IDS_A_QUERY", 4)
    expected = _in_capture_order(_brute_force(truth, **reference), truth, ids, oldest_first)
    hits = col.browse(k=100, oldest_first=oldest_first, **api)
    assert [hit.path for hit in hits] == expected
    assert all(math.isnan(hit.score) for hit in hits)
    assert [hit.path for hit in col.browse(k=4, oldest_first=oldest_first, **api)] == expected[:4]


def test_a_folder_filter_walks_the_index_or_reads_by_id_alike(library, monkeypatch):
    """p00.jpg ... p09.jpg: a path prefix allowing a quarter of the library, in pages of two or read by id."""
    col, truth, ids, root = library
    expected = _in_capture_order([p for p in truth if p.startswith(str(root / "library" / "p0"))], truth, ids)
    assert 0 < len(expected) < len(truth)
    monkeypatch.setattr(browse, "FIRST_PAGE", 2)
    for few in (0, 10_000):
        monkeypatch.setattr(browse, "FEW_IDS", few)
        assert [hit.path for hit in col.browse(k=50, path_prefix=str(root / "library" / "p0"))] == expected


def test_undated_images_follow_the_dated_ones_unless_a_date_is_asked_for(tmp_path):
    catalog = Catalog(tmp_path / "catalog.sqlite")
    vector = np.ones(8, np.float32) / math.sqrt(8)
    stamps = {b"/p/old.jpg": 1_500_000_000, b"/p/tie1.jpg": 1_600_000_000, b"/p/new.jpg": 1_700_000_000,
              b"/p/tie2.jpg": 1_600_000_000, b"/p/undated2.jpg": 0, b"/p/undated1.jpg": 0, b"/q/undated.jpg": 0}
    catalog.mark_pending([(path, 10, seconds * 10**9, None) for path, seconds in stamps.items()])
    pending = catalog.pending()
    catalog.write_results([VectorWrite(row[0], f"h{row[0]}", 4, 3, "JPEG", vector) for row in pending], [])
    by_path = {bytes(row.path, "utf-8", "surrogateescape"): image_id
               for image_id, row in catalog.rows([row[0] for row in pending]).items()}

    def listed(filters: Filters, k: int = 10) -> list[bytes]:
        found = browse.browse_ids(catalog, filters, k)
        return [path for image_id in found for path, known in by_path.items() if known == image_id]

    undated = sorted((b"/p/undated2.jpg", b"/p/undated1.jpg", b"/q/undated.jpg"), key=by_path.get)
    ties = sorted((b"/p/tie1.jpg", b"/p/tie2.jpg"), key=by_path.get, reverse=True)  # taken at once: by id
    dated = [b"/p/new.jpg", *ties, b"/p/old.jpg"]
    assert listed(Filters()) == [*dated, *undated]
    assert listed(Filters(), k=5) == [*dated, undated[0]]
    in_p = [*dated, *[p for p in undated if p.startswith(b"/p/")]]
    assert listed(Filters.of(path_prefix="/p/")) == in_p  # read by id
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(browse, "FEW_IDS", 0)
        patch.setattr(browse, "FIRST_PAGE", 1)
        assert listed(Filters.of(path_prefix="/p/")) == in_p  # walked a row at a time
    assert listed(Filters.of(before="2100")) == dated  # a date range: dated ones only
    assert listed(Filters.of(camera="canon")) == []  # no photo has a camera: nothing, undated ones included
    catalog.close()


def test_cli_lists_by_filters_alone_with_capture_times_first(library, capsys):
    col, truth, ids, _ = library
    expected = _in_capture_order(_brute_force(truth, camera="canon"), truth, ids)
    assert main(["search", "--collection", str(col.directory), "--camera", "canon", "-k", "100"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [path for _, path in lines] == expected
    photos = col.photos([ids[path] for path in expected])
    assert [taken for taken, _ in lines] == [photos[ids[path]].taken_at for path in expected]
    assert main(["search", "--collection", str(col.directory), "--camera", "canon", "--oldest", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["path"] for row in rows] == expected[::-1][:10]
    assert all(row["score"] is None and row["camera"] for row in rows)


@pytest.mark.parametrize("args, words", [
    (["--after", "2023", "--threshold", "0.2"], "--threshold drops results by score"),
    (["a photo", "--oldest"], "--oldest orders the images that filters alone list"),
    (["-k", "5"], "--prefix, --after, --before, --camera or --near"),
])
def test_cli_browse_misuse_is_one_clear_line(library, capsys, args, words):
    col = library[0]
    assert main(["search", "--collection", str(col.directory), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_browse_checks_k_and_filters(library):
    col = library[0]
    with pytest.raises(QueryError):
        col.browse(k=0)
    with pytest.raises(QueryError, match="not a date"):
        col.browse(after="June")


def test_a_wall_clock_range_keeps_photos_whose_absolute_time_lies_outside_it(tmp_path, tiny_encoder):
    """A date without an offset is the photo's own wall clock: New Year in Tokyo is still 2022 in UTC, and New
    Year's Eve in New York already 2023. The walk bounds absolute time loosely around it (14 hours) and must not
    cut either."""
    folder = tmp_path / "new-year"
    folder.mkdir()
    shots = {"tokyo.jpg": ("2023:01:01 00:30:00", "+14:00", (200, 30, 30)),
             "new-york.jpg": ("2022:12:31 23:30:00", "-12:00", (30, 30, 200))}
    for name, (taken, offset, colour) in shots.items():
        (folder / name).write_bytes(jpeg_with(make_exif(taken=taken, offset=offset), colour=colour))
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([folder], workers=0)
        for oldest_first in (False, True):
            assert [Path(hit.path).name for hit in col.browse(after="2023", oldest_first=oldest_first)] == ["tokyo.jpg"]
            assert [Path(hit.path).name for hit in col.browse(before="2023", oldest_first=oldest_first)] == [
                "new-york.jpg"]


def test_the_root_as_a_folder_filter_lists_everything_and_a_huge_k_is_no_error(library, capsys):
    """--prefix / compared paths with "//" and matched nothing, in search too; a k past SQLite's integers
    overflowed the walk's LIMIT."""
    col, truth, ids, _ = library
    newest = _in_capture_order(list(truth), truth, ids)
    assert [hit.path for hit in col.browse(k=100, path_prefix="/")] == newest
    assert len(col.search("a photo", k=100, path_prefix="/")) == len(truth)
    assert [hit.path for hit in col.browse(k=10**20, camera="canon")] == _in_capture_order(
        _brute_force(truth, camera="canon"), truth, ids)
    assert [hit.path for hit in col.browse(k=10**20)] == newest
    assert main(["search", " ", "--prefix", "/", "-k", "3", "--null", "--collection", str(col.directory)]) == 0
    assert capsys.readouterr().out.split("\0")[:-1] == newest[:3]  # a blank query is no query


def test_files_dated_before_1970_keep_their_date_when_touched(tmp_path, tiny_encoder):
    """A scan whose file time is 1961: dated so when first ingested, and again (not left undated) once touched to
    another pre-1970 time."""
    import datetime as dt

    folder = tmp_path / "scans"
    write_good_images_dated(folder, {"scan.jpg": dt.datetime(1961, 5, 4, 12, 0, tzinfo=dt.timezone.utc)})
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([folder], workers=0)
        assert _taken_utc(col) == dt.datetime(1961, 5, 4, 12, 0, tzinfo=dt.timezone.utc)
        moment = dt.datetime(1965, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc).timestamp()
        os.utime(folder / "scan.jpg", (moment, moment))  # touched: the same bytes, a new time
        col.ingest([folder], workers=0)
        assert _taken_utc(col) == dt.datetime(1965, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
        assert [hit.path for hit in col.browse(before="1966")] == [str(folder / "scan.jpg")]


def write_good_images_dated(folder, dates: dict) -> None:
    folder.mkdir()
    for name, moment in dates.items():
        (folder / name).write_bytes(jpeg_with(make_exif()))
        os.utime(folder / name, (moment.timestamp(), moment.timestamp()))


def _taken_utc(col: Collection):
    import datetime as dt

    (photo,) = col.photos(col.catalog.vector_ids().tolist()).values()
    return dt.datetime.fromtimestamp(photo.taken_utc_s, dt.timezone.utc)


def test_a_path_prefix_finds_what_startswith_finds_odd_bytes_included(tmp_path):
    """The prefix is looked up as a range of the path index; the range's end must hold for names with 0xFF bytes
    (not UTF-8), and only embedded rows count."""
    catalog = Catalog(tmp_path / "catalog.sqlite")
    paths = [b"/p/a.jpg", b"/p/a\xff.jpg", b"/p/a\xff\xff/b.jpg", b"/p/a\xff\xff", b"/p/b\x00.jpg", b"/p/b.jpg",
             b"/p/ab.jpg", b"/p0/a.jpg", b"/q/a.jpg", b"/p/pending.jpg"]
    catalog.mark_pending([(path, 10, 0, None) for path in paths])
    embedded = [row for row in catalog.pending() if not row[1].endswith("pending.jpg")]
    vector = np.ones(8, np.float32) / math.sqrt(8)
    catalog.write_results([VectorWrite(row[0], f"h{row[0]}", 4, 3, "JPEG", vector) for row in embedded], [])
    by_id = {row[0]: os.fsencode(row[1]) for row in embedded}
    for prefix in (b"/p/a", b"/p/a\xff", b"/p/a\xff\xff", b"/p/", b"/p", b"/p/b", b"/q/a.jpg", b"/r/"):
        found = [by_id[i] for i in catalog.ids_with_prefix(os.fsdecode(prefix))]
        assert sorted(found) == sorted(p for p in by_id.values() if p.startswith(prefix)), prefix
    catalog.close()
