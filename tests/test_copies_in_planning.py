"""A folder copied, moved or renamed, or files renamed, are found while the ingest plans (rows embedded elsewhere
with the same size, the same name or time, and the same bytes) and stored with those rows' vectors, without
loading the model; a link ingested first and its real folder later count as aliases, as the other order does."""

from __future__ import annotations

import os
import shutil
import sqlite3

import numpy as np
import pytest

from mmretrieval.collection.catalog import Catalog
from mmretrieval.collection.collection import Collection
from mmretrieval.ingest import copies as copies_module
from mmretrieval.ingest.batches import IngestConfig
from mmretrieval.ingest.runner import run_ingest
from test_ingest import write_good_images
from test_photo_metadata import dated_and_undated


def _no_model():
    raise AssertionError("the model was loaded")


def _vectors_by_path(col: Collection) -> dict[str, np.ndarray]:
    ids, vectors = col.vectors()
    rows = col.catalog.rows(ids.tolist())
    return {rows[i].path: vector for i, vector in zip(ids.tolist(), vectors)}


def test_a_copied_folder_takes_the_stored_vectors_without_the_model(tmp_path, tiny_encoder):
    write_good_images(tmp_path / "tree" / "a", 4)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "tree"], workers=0)
        shutil.copytree(tmp_path / "tree" / "a", tmp_path / "tree" / "copy")  # new mtimes, the same bytes
        summary = run_ingest(col.catalog, _no_model, [str(tmp_path / "tree")], IngestConfig(workers=0))
        assert (summary.embedded, summary.duplicates, summary.moved, summary.unchanged, summary.failed) == (0, 4, 0, 4, {})
        assert col.catalog.counts_by_status() == {"ok": 8}
        stored = _vectors_by_path(col)
        for name in (f"good{i:02d}.jpg" for i in range(4)):
            original, copy = str(tmp_path / "tree" / "a" / name), str(tmp_path / "tree" / "copy" / name)
            np.testing.assert_array_equal(stored[copy], stored[original])
            assert col.catalog.rows([col.catalog.id_of_path(copy)])[col.catalog.id_of_path(copy)].width > 0
        hits = col.search("red", k=8)
        assert len(hits) == 8 and {os.path.dirname(hit.path) for hit in hits} == {
            str(tmp_path / "tree" / "a"), str(tmp_path / "tree" / "copy")}


def test_a_renamed_folder_keeps_its_labels_with_prune_and_the_model_stays_unloaded(tmp_path, tiny_encoder):
    write_good_images(tmp_path / "tree" / "a", 3)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "tree"], workers=0)
        col.label("red, green")
        before = {os.path.basename(path): labels for path, labels in _labels_by_path(col).items()}
        (tmp_path / "tree" / "a").rename(tmp_path / "tree" / "b")
        summary = run_ingest(col.catalog, _no_model, [str(tmp_path / "tree")], IngestConfig(workers=0, prune=True))
        assert (summary.embedded, summary.duplicates, summary.moved, summary.pruned) == (0, 0, 3, 3)  # not copies
        after = _labels_by_path(col)
        assert {os.path.dirname(path) for path in after} == {str(tmp_path / "tree" / "b")}
        assert {os.path.basename(path): labels for path, labels in after.items()} == before


def test_files_renamed_in_place_keep_their_vectors_and_labels_without_the_model(tmp_path, tiny_encoder):
    """A photo manager renaming IMG_0001.jpg to its date: new names, the same bytes, size and time (``mv``)."""
    paths = write_good_images(tmp_path / "photos", 3)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        col.label("red, green")
        before = _vectors_by_path(col)
        labels = {str(path): found for path, found in _labels_by_path(col).items()}
        for i, path in enumerate(paths):
            path.rename(tmp_path / "photos" / f"2024-06-0{i + 1} 12.00.00.jpg")
        summary = run_ingest(col.catalog, _no_model, [str(tmp_path / "photos")], IngestConfig(workers=0, prune=True))
        assert (summary.embedded, summary.duplicates, summary.moved, summary.pruned) == (0, 0, 3, 3)
        after, after_labels = _vectors_by_path(col), _labels_by_path(col)
        for i, path in enumerate(paths):
            renamed = str(tmp_path / "photos" / f"2024-06-0{i + 1} 12.00.00.jpg")
            np.testing.assert_array_equal(after[renamed], before[str(path)])
            assert after_labels[renamed] == labels[str(path)]


def _labels_by_path(col: Collection) -> dict[str, set[str]]:
    ids = col.catalog.vector_ids().tolist()
    rows, labels = col.catalog.rows(ids), col.label_of(ids)
    return {rows[i].path: {name for name, _ in labels.get(i, ())} for i in ids}


def test_a_copy_keeps_the_exif_date_camera_and_place_and_is_dated_by_its_own_time_without_one(tmp_path,
                                                                                               tiny_encoder):
    dated, undated = dated_and_undated(tmp_path / "photos")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        (tmp_path / "backup").mkdir()
        stamp = 1_500_000_000  # 2017-07-14 UTC
        for path in (dated, undated):
            shutil.copyfile(path, tmp_path / "backup" / path.name)
            os.utime(tmp_path / "backup" / path.name, (stamp, stamp))
        summary = run_ingest(col.catalog, _no_model, [str(tmp_path / "backup")], IngestConfig(workers=0))
        assert (summary.embedded, summary.duplicates) == (0, 2)
        ids = [col.catalog.id_of_path(tmp_path / "backup" / name) for name in ("dated.jpg", "undated.jpg")]
        photos = col.photos(ids)
        assert photos[ids[0]].taken_local == "2021-07-04T10:30:00" and photos[ids[0]].taken_source == "exif_original"
        assert photos[ids[1]].taken_source == "mtime" and photos[ids[1]].taken_local.startswith("2017-07-1")
        assert (photos[ids[1]].make, photos[ids[1]].model) == ("Canon", "EOS R5")
        assert photos[ids[1]].latitude == pytest.approx(48.85, abs=1e-4)
        original = col.photos([col.catalog.id_of_path(undated)])[col.catalog.id_of_path(undated)]
        assert not original.taken_local.startswith("2017")  # the original keeps its own time


def test_a_file_of_the_same_name_and_size_with_other_bytes_is_embedded_and_a_copy_under_a_new_name_decoded(tmp_path, tiny_encoder):
    paths = write_good_images(tmp_path / "tree" / "a", 2)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "tree"], workers=0)
        (tmp_path / "tree" / "b").mkdir()
        data = bytearray(paths[0].read_bytes())
        data[len(data) // 2] ^= 0xFF  # the same name and size, other bytes (still a JPEG that decodes)
        (tmp_path / "tree" / "b" / paths[0].name).write_bytes(bytes(data))
        shutil.copyfile(paths[1], tmp_path / "tree" / "b" / "renamed.jpg")  # not looked for while planning
        summary = col.ingest([tmp_path / "tree"], workers=0)
        assert (summary.embedded, summary.duplicates, summary.failed) == (1, 1, {})
        stored = _vectors_by_path(col)
        np.testing.assert_array_equal(stored[str(tmp_path / "tree" / "b" / "renamed.jpg")], stored[str(paths[1])])
        assert not np.array_equal(stored[str(tmp_path / "tree" / "b" / paths[0].name)], stored[str(paths[0])])


def test_a_run_killed_between_planning_and_storing_the_copies_embeds_them_next_time(tmp_path, tiny_encoder,
                                                                                      monkeypatch):
    write_good_images(tmp_path / "tree" / "a", 3)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "tree"], workers=0)
        shutil.copytree(tmp_path / "tree" / "a", tmp_path / "tree" / "b")

        def killed(*args):
            raise KeyboardInterrupt

        monkeypatch.setattr("mmretrieval.ingest.planning.write_copies", killed)
        with pytest.raises(KeyboardInterrupt):
            col.ingest([tmp_path / "tree"], workers=0)
        assert col.catalog.counts_by_status() == {"ok": 3, "pending": 3}
        monkeypatch.undo()
        again = col.ingest([tmp_path / "tree"], workers=0)
        assert (again.embedded, again.duplicates, again.unchanged) == (0, 3, 3)  # decoded, vectors reused by hash
        assert col.catalog.counts_by_status() == {"ok": 6}


def test_a_link_ingested_first_makes_its_real_folder_an_alias(tmp_path, tiny_encoder):
    write_good_images(tmp_path / "real", 3)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        first = col.ingest([tmp_path / "link"], workers=0)
        assert first.embedded == 3
        for _ in range(2):  # counted each run, never recorded
            again = run_ingest(col.catalog, _no_model, [str(tmp_path / "real")], IngestConfig(workers=0))
            assert (again.embedded, again.duplicates, again.skipped) == (0, 0, {"alias": 3})
            assert col.catalog.counts_by_status() == {"ok": 3}
        # a real file whose link row has another time (touched since) is no alias: recorded, its vector reused by
        # content hash (a second row for one file, which `mmr duplicates` lists as an alias, never as a copy)
        changed = tmp_path / "real" / "good00.jpg"
        os.utime(changed, ns=(changed.stat().st_mtime_ns + 10**9,) * 2)
        later = col.ingest([tmp_path / "real"], workers=0)
        assert (later.skipped, later.duplicates) == ({"alias": 2}, 1)


def test_copies_are_hashed_only_where_a_twin_has_their_size_and_name_or_time(tmp_path, tiny_encoder, monkeypatch):
    write_good_images(tmp_path / "tree" / "a", 2)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "tree"], workers=0)
        write_good_images(tmp_path / "tree" / "new", 3, seed=5)  # new photos: the same names, other sizes
        shutil.copytree(tmp_path / "tree" / "a", tmp_path / "tree" / "copy")
        hashed: list[bytes] = []
        real = copies_module.file_hashes

        def counting(paths, hashed_callback=None):
            hashed.extend(paths)
            return real(paths, hashed_callback)

        monkeypatch.setattr(copies_module, "file_hashes", counting)
        summary = col.ingest([tmp_path / "tree"], workers=0)
        assert (summary.embedded, summary.duplicates) == (3, 2)
        assert sorted(os.path.dirname(os.fsdecode(path)) for path in hashed) == [str(tmp_path / "tree" / "copy")] * 2


def test_a_catalog_without_the_size_index_gets_it_at_a_writable_open_and_reads_without_it(tmp_path, tiny_encoder):
    write_good_images(tmp_path / "photos", 2)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
    path = tmp_path / "col" / "catalog.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX images_size")
    reader = Catalog(path, writable=False)
    assert reader.counts_by_status() == {"ok": 2}
    reader.close()
    with sqlite3.connect(path) as db:
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'images_size'").fetchone()
    Catalog(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT 1 FROM sqlite_master WHERE name = 'images_size'").fetchone()
        plan = " ".join(row[-1] for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT path, id, mtime_ns, content_hash, width, height, format FROM images "
            "WHERE content_hash IS NOT NULL AND size = 1 AND status = 'ok' LIMIT 65"))  # Catalog.twins' query
    assert "images_size" in plan


def test_a_size_that_many_embedded_rows_share_finds_no_twins(tmp_path):
    """Uncompressed RAW files of one camera all have one size, and card after card reuses DSC00001.ARW: such a
    size says nothing of a file, so it is not looked up (the look-up read every row of it for every new file)."""
    from mmretrieval.collection.catalog import VectorWrite, encode_path
    from mmretrieval.collection.planned_rows import TWIN_SIZE_CAP

    (tmp_path / "col").mkdir()
    catalog = Catalog(tmp_path / "col" / "catalog.sqlite")
    few = [encode_path(f"/cards/a/DSC{i:05d}.ARW") for i in range(3)]
    many = [encode_path(f"/cards/b/IMG{i:05d}.BMP") for i in range(TWIN_SIZE_CAP + 1)]
    catalog.mark_pending([(key, 24_000_000, 7, None) for key in few] + [(key, 6_000_000, 8, None) for key in many])
    rows = catalog.file_states_of(few + many)
    catalog.write_results([VectorWrite(rows[key].id, f"h{rows[key].id}", 1, 1, "TIFF", np.eye(1, 4, dtype=np.float32)[0])
                           for key in few + many], [])
    found = catalog.twins({encode_path("/cards/c/DSC00001.ARW"): (24_000_000, 99),  # same name and size
                           encode_path("/cards/c/moved.ARW"): (24_000_000, 7),  # same size and time
                           encode_path("/cards/c/IMG00001.BMP"): (6_000_000, 8)})  # a crowded size: nothing
    assert {os.path.basename(key): sorted(os.path.basename(t.path) for t in twins) for key, twins in found.items()} == {
        b"DSC00001.ARW": [b"DSC00001.ARW"], b"moved.ARW": [b"DSC00000.ARW", b"DSC00001.ARW", b"DSC00002.ARW"]}
    catalog.close()


def test_a_renamed_file_that_has_a_copy_elsewhere_counts_as_moved(tmp_path, tiny_encoder):
    """Renamed onto the name of its copy in another folder: both rows have its bytes, and the one that stays (same
    name) was taken, so a plain mv counted as a duplicate (a walkthrough found it)."""
    write_good_images(tmp_path / "lib" / "favourites", 1)
    (tmp_path / "lib" / "downloads").mkdir()
    shutil.copy2(tmp_path / "lib" / "favourites" / "good00.jpg", tmp_path / "lib" / "downloads" / "copy.jpg")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "lib"], workers=0)
        (tmp_path / "lib" / "downloads" / "copy.jpg").rename(tmp_path / "lib" / "downloads" / "good00.jpg")
        summary = run_ingest(col.catalog, _no_model, [str(tmp_path / "lib")], IngestConfig(workers=0, prune=True))
        assert (summary.embedded, summary.duplicates, summary.moved, summary.pruned) == (0, 0, 1, 1)
