"""``mmr check``: damage that no command noticed until a query reached it (a row of the active segment, which has no
checksum until sealed; a sealed segment's bytes; the ids beside the vectors; the catalog's pages; the saved index)
is found, named by file, and repaired by embedding the damaged images again."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from mmretrieval.cli import main
from mmretrieval.collection import segments
from mmretrieval.collection.collection import Collection
from test_ingest import write_good_images

IMAGES = 6


@pytest.fixture
def col(tmp_path, tiny_model_dir, capsys) -> Path:
    write_good_images(tmp_path / "photos", IMAGES)
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(tmp_path / "col"), "--model",
                 str(tiny_model_dir), "--workers", "0"]) == 0
    capsys.readouterr()
    return tmp_path / "col"


def _check(capsys, col: Path, *options: str) -> tuple[int, list[dict], str]:
    status = main(["check", "--collection", str(col), "--json", *options])
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def _row_bytes(col: Path) -> int:
    return (col / "segments" / "000001.vec").stat().st_size // IMAGES


def _search(capsys, col: Path) -> dict[str, float]:
    assert main(["search", "red", "--collection", str(col), "--json", "-k", str(IMAGES)]) == 0
    return {row["path"]: row["score"] for row in map(json.loads, capsys.readouterr().out.splitlines())}


def test_a_whole_collection_checks_clean(col, capsys):
    status, problems, err = _check(capsys, col)
    assert (status, problems) == (0, [])
    assert f"checked the catalog, the saved index and {IMAGES} vectors (segments: 1): no damage found" in err


def test_a_damaged_row_of_the_active_segment_is_found_and_embedded_again(col, capsys):
    """The active segment has no checksum until sealed: a zeroed block in it went unnoticed (crash walkthrough)."""
    before = _search(capsys, col)
    vec = col / "segments" / "000001.vec"
    row = _row_bytes(col)
    with open(vec, "r+b") as handle:
        handle.seek(2 * row)
        handle.write(bytes(row))  # row 2 zeroed, as a torn block on some file systems
    status, problems, err = _check(capsys, col)
    assert status == 1 and len(problems) == 1
    assert problems[0]["where"] == str(vec) and problems[0]["images"] == 1
    assert problems[0]["problem"].startswith("damaged vectors (not of length 1): 1 (first: row 2, length 0)")
    assert "images whose vectors are damaged: 1" in err and "`mmr check --repair` sets them" in err
    status, problems, err = _check(capsys, col, "--repair")
    assert status == 1 and len(problems) == 1 and "run `mmr ingest` on their folders" in err
    assert main(["ingest", str(col.parent / "photos"), "--collection", str(col), "--workers", "0"]) == 0
    assert f"embedded 1, unchanged {IMAGES - 1}" in capsys.readouterr().err
    assert _check(capsys, col)[:2] == (0, [])
    after = _search(capsys, col)
    assert after.keys() == before.keys() and all(abs(after[p] - before[p]) < 1e-3 for p in before)


def test_ids_that_name_another_image_are_found(col, capsys):
    ids = col / "segments" / "000001.ids"
    stored = np.fromfile(ids, "<i8")
    stored[[1, 4]] = stored[[4, 1]]  # two rows' images swapped: each vector would answer for the other image
    stored.tofile(ids)
    status, problems, _ = _check(capsys, col)
    assert status == 1 and [p["where"] for p in problems] == [str(ids)]
    assert problems[0]["problem"].startswith("rows that name another image than the catalog says: 2 (first: row 1)")
    with Collection.open(col) as collection:
        report = collection.check()
    assert sorted(report.damaged_ids.tolist()) == sorted(stored[[1, 4]].tolist())


def test_a_sealed_segment_that_no_longer_matches_its_checksum_is_named(tmp_path, tiny_model_dir, capsys,
                                                                      monkeypatch):
    monkeypatch.setattr(segments, "SEGMENT_ROWS", 2)  # sealed past two rows: three segments of two
    write_good_images(tmp_path / "photos", IMAGES)
    col = tmp_path / "col"
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(col), "--model", str(tiny_model_dir),
                 "--workers", "0", "--batch-size", "2"]) == 0
    capsys.readouterr()
    manifest = json.loads((col / "segments" / "manifest.json").read_text())
    sealed = [entry["number"] for entry in manifest["segments"] if entry["sealed"]]
    assert sealed
    vec = col / "segments" / f"{sealed[0]:06d}.vec"
    data = bytearray(vec.read_bytes())
    data[0] ^= 1  # the lowest mantissa bit of one float16: a unit vector still, but not the bytes that were sealed
    vec.write_bytes(bytes(data))
    status, problems, err = _check(capsys, col)
    assert status == 1 and [p["where"] for p in problems] == [str(vec)]
    assert f"segment {sealed[0]:06d} does not match the sha256 its manifest lists" in problems[0]["problem"]
    assert problems[0]["images"] == 0 and "images whose vectors are damaged" not in err
    assert f"(segments: {len(manifest['segments'])})" in err


def test_a_segment_file_cut_short_is_named_and_its_images_embedded_again(col, capsys):
    vec = col / "segments" / "000001.vec"
    os.truncate(vec, 4 * _row_bytes(col))
    status, problems, err = _check(capsys, col)
    assert status == 1 and [p["images"] for p in problems] == [2]
    assert problems[0]["problem"].startswith("segment 000001 holds 4 whole rows: files deleted or cut short")
    assert f"and {IMAGES - 2} vectors" in err  # the rows still there are read and found whole
    status, problems, err = _check(capsys, col, "--repair")  # the writer's own repair forgets them on entry
    assert (status, problems) == (0, []) and "2 images had lost their vectors" in err
    assert main(["ingest", str(col.parent / "photos"), "--collection", str(col), "--workers", "0"]) == 0
    assert f"embedded 2, unchanged {IMAGES - 2}" in capsys.readouterr().err


def test_a_damaged_index_file_is_named_and_a_search_rebuilds_it(col, capsys):
    manifest = json.loads((col / "index.json").read_text())
    index = col / manifest["file"]
    index.write_bytes(index.read_bytes()[:-8])
    status, problems, _ = _check(capsys, col)
    assert status == 1 and [p["where"] for p in problems] == [str(index)]
    assert "does not match its checksum; a search rebuilds it" in problems[0]["problem"]
    assert len(_search(capsys, col)) == IMAGES


def test_a_damaged_catalog_is_named_with_the_way_out(col, capsys):
    with closing(sqlite3.connect(col / "catalog.sqlite")) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'images_status'").fetchone()
    with open(col / "catalog.sqlite", "r+b") as handle:  # an index's page overwritten: the tables still read
        handle.seek((root - 1) * page_size)
        handle.write(random.Random(0).randbytes(page_size))
    status, problems, _ = _check(capsys, col)
    assert status == 1 and [p["where"] for p in problems] == [str(col / "catalog.sqlite")]
    assert problems[0]["problem"].startswith("damaged: ") and "restore it from a backup" in problems[0]["problem"]
