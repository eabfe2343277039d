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
    assert main(["check", "--collection", str(col), "--wait"]) == 2  # accepted and ignored, it was
    assert "--wait is for --repair" in capsys.readouterr().err


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
    assert "images whose vectors are damaged: 1" in err and "`mmr check --repair` sets those whose files are here" in err
    status, problems, err = _check(capsys, col, "--repair")
    assert status == 1 and len(problems) == 1 and "all set to be embedded again: run `mmr ingest` on their" in err
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
    assert problems[0]["problem"].startswith("segment 000001 holds 4 whole rows: the vectors of 2 images are lost")
    assert f"and {IMAGES - 2} vectors" in err  # the rows still there are read and found whole
    status, problems, err = _check(capsys, col, "--repair")  # the writer's own repair forgets them on entry
    assert status == 1 and [p["images"] for p in problems] == [2] and "2 images had lost their vectors" in err
    assert "they are set to be embedded again" in problems[0]["problem"]
    assert main(["ingest", str(col.parent / "photos"), "--collection", str(col), "--workers", "0"]) == 0
    assert f"embedded 2, unchanged {IMAGES - 2}" in capsys.readouterr().err


def test_a_segment_the_manifest_does_not_list_is_named_and_not_thrown_away(col, capsys):
    """An older manifest restored: check said "no damage found", and the next writer deleted the segment's files as
    an interrupted write's leftovers."""
    from mmretrieval.collection.segment_files import _checksum

    manifest_path = col / "segments" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.pop("checksum")
    manifest["segments"] = []
    manifest_path.write_text(json.dumps({**manifest, "checksum": _checksum(manifest)}))
    status, problems, _ = _check(capsys, col)
    assert status == 1 and [p["images"] for p in problems] == [IMAGES]
    assert problems[0]["problem"].startswith("segment 000001 is not in the segments' manifest: the vectors of")
    assert main(["info", "--collection", str(col)]) == 0
    assert "segment 000001 is not in the segments' manifest" in capsys.readouterr().err


def test_a_damaged_manifest_or_index_manifest_is_damage_found_not_an_error(col, capsys):
    (col / "index.json").write_text("{not json")
    status, problems, _ = _check(capsys, col)
    assert status == 1 and [p["where"] for p in problems] == [str(col / "index.json")]
    assert "the saved index's manifest is unreadable" in problems[0]["problem"]
    manifest = col / "segments" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"sealed"', '"sealed" ', 1).replace("1", "2", 1))
    status, problems, err = _check(capsys, col)
    assert status == 1 and problems[0]["where"] == str(manifest)  # exit 1 (damage), not 2 (an error)
    assert "checked what could be read" in err


def test_a_check_beside_a_running_ingest_finds_no_damage(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """The finder read the files, then the catalog: rows an ingest committed in between looked lost (7 of 224,000
    looks in a review, 13 of 34 with a pause between the two reads). Here an ingest commits new rows right after
    the finder's look at the files."""
    import threading

    from mmretrieval.collection import repair
    from mmretrieval.collection.segment_files import SegmentFiles

    write_good_images(tmp_path / "photos", 4)
    col = tmp_path / "col"
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(col), "--model", str(tiny_model_dir),
                 "--workers", "0"]) == 0
    write_good_images(tmp_path / "more", 4, seed=1)  # other pictures: new rows appended to the active segment
    looked = SegmentFiles.intact_rows
    ingested: list[int] = []

    def look_then_ingest(files, entry):  # once: the injected ingest's own writer looks at the files too
        rows = looked(files, entry)
        if not ingested:
            ingested.append(rows)
            other = threading.Thread(target=lambda: Collection.open(col).ingest([tmp_path / "more"], workers=0))
            other.start()
            other.join()
        return rows

    with Collection.open(col) as reading:
        monkeypatch.setattr(SegmentFiles, "intact_rows", look_then_ingest)
        assert repair.lost_vectors(reading.catalog) == ([], [])
        monkeypatch.undo()
        assert ingested == [4] and reading.catalog.vector_count() == 8  # it looked at 4 rows, then 8 were committed
    assert _check(capsys, col)[:2] == (0, [])


def test_a_damaged_index_file_is_named_and_a_search_rebuilds_it(col, capsys):
    manifest = json.loads((col / "index.json").read_text())
    index = col / manifest["file"]
    index.write_bytes(index.read_bytes()[:-8])
    status, problems, _ = _check(capsys, col)
    assert status == 1 and [p["where"] for p in problems] == [str(index)]
    assert "does not match its checksum; a search rebuilds it" in problems[0]["problem"]
    assert len(_search(capsys, col)) == IMAGES


def test_info_says_the_index_is_not_saved_when_its_file_is_gone(col, capsys):
    """index.json alone answered: `index_saved yes` beside `mmr check`'s "the saved index file is missing"."""
    (index_file,) = col.glob("index-*.faiss")
    assert main(["info", "--collection", str(col), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["index_saved"] is True
    index_file.unlink()
    assert main(["info", "--collection", str(col), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["index_saved"] is False
    assert f"the saved index file {index_file.name} is missing: a search rebuilds the index" in err


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
    assert main(["info", "--collection", str(col)]) == 2  # a generic "DatabaseError: ... malformed" before
    assert "the collection's catalog is damaged: `mmr check` names the damage, and the catalog is restored from a " \
           "backup (README: Backups)" in capsys.readouterr().err


def test_a_float32_collection_and_imported_vectors_check_clean(tmp_path, tiny_model_dir, capsys):
    """The length test must hold for every way vectors come in: float32 storage, and imports (renormalised there)."""
    write_good_images(tmp_path / "photos", IMAGES)
    col = tmp_path / "col32"
    with Collection.open(col, model=str(tiny_model_dir), create=True, vector_dtype="float32") as collection:
        collection.ingest([tmp_path / "photos"], workers=0)
    assert _check(capsys, col)[:2] == (0, [])
    assert main(["export", str(tmp_path / "out"), "--collection", str(col)]) == 0
    assert main(["import", str(tmp_path / "out"), "--collection", str(tmp_path / "copy"), "--model",
                 str(tiny_model_dir)]) == 0
    capsys.readouterr()
    assert _check(capsys, tmp_path / "copy")[:2] == (0, [])


def test_repair_leaves_a_damaged_vector_whose_image_is_not_on_this_machine(tmp_path, tiny_model_dir, capsys):
    """An imported row has no file here: set pending, it would fail as missing and its vector be lost for good."""
    import shutil

    write_good_images(tmp_path / "photos", IMAGES)
    source = tmp_path / "source"
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(source), "--model", str(tiny_model_dir),
                 "--workers", "0"]) == 0
    assert main(["export", str(tmp_path / "out"), "--collection", str(source)]) == 0
    assert main(["import", str(tmp_path / "out"), "--collection", str(tmp_path / "copy"), "--model",
                 str(tiny_model_dir)]) == 0
    shutil.rmtree(tmp_path / "photos")  # the images were on another machine
    copy = tmp_path / "copy"
    (vec,) = (copy / "segments").glob("*.vec")
    with open(vec, "r+b") as handle:
        handle.write(bytes(vec.stat().st_size // IMAGES))  # row 0 zeroed
    capsys.readouterr()
    status, problems, err = _check(capsys, copy, "--repair")
    assert status == 1 and [p["images"] for p in problems] == [1]
    assert "1 image with damaged vectors: no file here (deleted, moved, or imported from another machine)" in err
    assert "`mmr ingest --prune` on their folders drops those whose files were deleted" in err
    assert "none of them set to be embedded again: their files are not here" in err  # it said "those images are"
    with Collection.open(copy) as collection:
        assert collection.info().counts == {"ok": IMAGES} and collection.info().vectors == IMAGES  # kept


@pytest.mark.parametrize("when", ["listing", "finding_lost", "checksums", "reading_rows", "reading_vectors"])
def test_a_check_beside_a_compaction_finds_no_damage(tmp_path, tiny_model_dir, capsys, monkeypatch, when):
    """A compaction moves rows to new segments and leaves the old files for the next writer to delete; here both
    run at each step of a check, which reads again what went."""
    import threading

    from mmretrieval.collection import check
    from mmretrieval.collection.catalog import Catalog
    from mmretrieval.collection.segment_files import SegmentFiles

    monkeypatch.setattr(segments, "SEGMENT_ROWS", 2)  # sealed past two rows: three segments of two
    write_good_images(tmp_path / "photos", IMAGES)
    col = tmp_path / "col"
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(col), "--model", str(tiny_model_dir),
                 "--workers", "0", "--batch-size", "2"]) == 0
    sorted((tmp_path / "photos").iterdir())[0].unlink()  # one dead row: below the writers' own compaction
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(col), "--prune", "--workers", "0"]) == 0
    capsys.readouterr()
    targets = {"listing": (SegmentFiles, "segments"), "finding_lost": (SegmentFiles, "intact_rows"),
               "checksums": (check, "_matches_checksums"), "reading_rows": (Catalog, "places_in_segment"),
               "reading_vectors": (SegmentFiles, "gather")}  # its .ids read, then the .vec gone (a review)
    owner, name = targets[when]
    original = getattr(owner, name)
    compacted: list[int] = []

    before = when == "reading_vectors"  # the .ids read, the .vec gone before its read: not a FileNotFoundError

    def compact_then_write():
        with Collection.open(col) as writer:
            compacted.append(writer.compact().rows_copied)
            writer.ingest([tmp_path / "photos"])  # its writer deletes the old segments' files on entry

    def then_compact(*args, **kwargs):
        result = None if before else original(*args, **kwargs)
        if not compacted:
            compacted.append(-1)
            other = threading.Thread(target=compact_then_write)
            other.start()
            other.join()
        return original(*args, **kwargs) if before else result

    with Collection.open(col) as reading:
        monkeypatch.setattr(owner, name, then_compact)
        report = reading.check()
        monkeypatch.undo()
    assert compacted[0] == -1 and compacted[1] > 0
    assert report.problems == ()
    assert _check(capsys, col)[:2] == (0, [])


def test_a_check_under_endless_compactions_gives_up_with_the_way_out(col, monkeypatch):
    from mmretrieval.collection import check
    from mmretrieval.errors import CollectionError

    calls: list[int] = []

    def files_always_gone(*args, **kwargs):
        calls.append(1)
        raise FileNotFoundError(2, "No such file or directory", str(col / "segments" / "000001.ids"))

    monkeypatch.setattr(check, "check_catalog", files_always_gone)
    with Collection.open(col) as reading, pytest.raises(CollectionError, match="000001.ids went away during the "
                                                         "check, 3 times: .*run the check once they are done"):
        reading.check()
    assert len(calls) == check.CHECK_ATTEMPTS == 3
