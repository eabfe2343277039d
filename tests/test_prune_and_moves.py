"""``--prune`` drops a row once its path no longer names an image file (a folder now there, a broken link), and
labels follow the bytes: a moved, renamed or copied file takes the labels of the row whose vector it reuses."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from mmretrieval.collection.catalog import Catalog, encode_path
from mmretrieval.collection.collection import Collection
from mmretrieval.collection.places import RowMetadata, VectorWrite
from mmretrieval.collection.segments import SegmentWriter
from mmretrieval.errors import CollectionError
from mmretrieval.ingest import runner
from test_ingest import scene_jpeg, write_good_images


def _labels(col: Collection, path) -> set[str]:
    """Qualified labels (``SET:LABEL`` outside the default set) of the row at ``path``."""
    image_id = col.catalog.id_of_path(path)
    return {name for name, _ in col.label_of([image_id]).get(image_id, ())}


def _label_two_sets(col: Collection) -> None:
    col.label("red, green")
    col.label("circle, square", multi_label=True, threshold=0.0, label_set="shapes")


# -- a file replaced by something that is not one ---------------------------------------------------------------
def test_a_file_replaced_by_a_folder_of_the_same_name_is_pruned(tmp_path, tiny_encoder):
    tree = tmp_path / "tree"
    paths = write_good_images(tree, 4)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tree], workers=0)
        paths[0].unlink()
        write_good_images(paths[0], 2, seed=3)  # tree/good00.jpg/ is now a folder of two images
        summary = col.ingest([tree], workers=0, prune=True)
        assert (summary.embedded, summary.pruned) == (2, 1)
        assert col.catalog.id_of_path(paths[0]) is None
        hits = col.search("red", k=20)
        assert len(hits) == 5 and str(paths[0]) not in {hit.path for hit in hits}
        assert all(os.path.isfile(hit.path) for hit in hits)


def test_prune_keeps_files_and_links_to_them_and_drops_what_no_longer_names_a_file(tmp_path):
    """At the catalog: an image row goes when its path is gone, a folder, or a link whose file is gone; a skipped
    row (a record of something never opened) goes only once nothing is at its path."""
    tree = tmp_path / "tree"
    names = ["file.jpg", "link.jpg", "broken.jpg", "folder.jpg", "gone.jpg"]
    for name in names:
        (tree / name).parent.mkdir(exist_ok=True)
        (tree / name).write_bytes(b"bytes of " + name.encode())
    (tmp_path / "col").mkdir()
    catalog = Catalog(tmp_path / "col" / "catalog.sqlite")
    keys = [encode_path(tree / name) for name in names]
    catalog.mark_pending([(key, 1, 1, None) for key in keys])
    ids = [catalog.id_of_path(os.fsdecode(key)) for key in keys]
    catalog.write_results([VectorWrite(i, f"h{i}", 1, 1, "JPEG", v)
                           for i, v in zip(ids, np.eye(len(ids), 8, dtype=np.float32))], [])
    for name in ("link.jpg", "broken.jpg"):
        (tree / name).unlink()
        (tree / name).symlink_to(tree / f"target-of-{name}")
    (tree / "target-of-link.jpg").write_bytes(b"still here")
    (tree / "folder.jpg").unlink()
    (tree / "folder.jpg").mkdir()
    (tree / "gone.jpg").unlink()
    os.mkfifo(tree / "fifo.jpg")
    catalog.mark_skipped([(encode_path(tree / "fifo.jpg"), "not_regular_file", "a FIFO"),
                          (encode_path(tree / "shut"), "unreadable", "cannot list")])
    (tree / "shut").mkdir()

    assert catalog.prune_missing([encode_path(tree) + os.sep.encode()]) == 3
    left = {os.path.basename(row.path) for row in catalog.rows(catalog.vector_ids().tolist()).values()}
    assert left == {"file.jpg", "link.jpg"}
    assert {os.path.basename(f.path) for f in catalog.failures()} == {"fifo.jpg", "shut"}
    catalog.close()


def test_prune_still_refuses_a_missing_source(tmp_path, tiny_encoder):
    write_good_images(tmp_path / "drive", 2)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "drive"], workers=0)
        shutil.rmtree(tmp_path / "drive")
        with pytest.raises(CollectionError, match="missing.*nothing was deleted"):
            col.ingest([tmp_path / "drive"], workers=0, prune=True)
        assert col.catalog.counts_by_status() == {"ok": 2}


def test_prune_refuses_an_empty_mount_point_where_the_collection_holds_images(tmp_path, tiny_encoder):
    """A drive unmounted leaves its mount point behind, an empty folder: `--prune` deleted every row under it
    (2,604 in a walkthrough) and exited 0."""
    drive = tmp_path / "mnt" / "drive"
    write_good_images(drive / "2023", 3)
    write_good_images(tmp_path / "mnt" / "drive2", 1)  # a sibling whose name extends the drive's: not under it
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([drive, tmp_path / "mnt" / "drive2"], workers=0)
        (drive / "2023").rename(tmp_path / "away")  # unmounted: the mount point stays, empty
        with pytest.raises(CollectionError, match="is empty, but the collection holds images under it.*nothing was "
                                                  "deleted"):
            col.ingest([drive], workers=0, prune=True)
        assert col.catalog.counts_by_status() == {"ok": 4}
        (tmp_path / "mnt" / "driv").mkdir()  # empty, and the collection holds nothing under it (drive2's rows
        assert col.ingest([tmp_path / "mnt" / "driv"], workers=0, prune=True).pruned == 0  # are not): no refusal
        summary = col.ingest([tmp_path / "mnt"], workers=0, prune=True)  # emptied on purpose: from the folder above
        assert summary.pruned == 3 and col.catalog.counts_by_status() == {"ok": 1}


# -- labels follow the bytes -------------------------------------------------------------------------------------
def test_renaming_a_folder_keeps_its_images_labels_in_every_set(tmp_path, tiny_encoder):
    tree = tmp_path / "tree"
    paths = write_good_images(tree / "a", 4)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tree], workers=0)
        _label_two_sets(col)
        before = {p.name: _labels(col, p) for p in paths}
        counts = col.catalog.label_counts()
        assert all(any(n.startswith("shapes:") for n in labels) and len(labels) >= 2 for labels in before.values())

        (tree / "a").rename(tree / "b")
        moved = col.ingest([tree], workers=0, batch_size=3, prune=True)
        assert (moved.embedded, moved.duplicates, moved.moved, moved.pruned) == (0, 0, 4, 4)
        assert {p.name: _labels(col, tree / "b" / p.name) for p in paths} == before
        assert col.catalog.label_counts() == counts
        assert len(col.search("red", k=10, label="shapes:circle")) == counts.get("shapes:circle", 0)


def test_a_moved_file_keeps_its_labels_and_a_copy_or_changed_bytes_get_none(tmp_path, tiny_encoder):
    """Labels follow a picture that moved. A copy whose original stays gets none: a set is scored over what its
    filter chose then, and the copy was not among those images (a reviewer found a copy outside the set's
    --prefix answering that set's label filter)."""
    tree = tmp_path / "tree"
    paths = write_good_images(tree, 4)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tree], workers=0)
        _label_two_sets(col)
        before = {p.name: _labels(col, p) for p in paths}

        shutil.copy(paths[0], tree / "copy.jpg")  # the original stays
        shutil.move(paths[1], tree / "moved.jpg")
        (tree / "moved.jpg").write_bytes(scene_jpeg(70))  # moved and changed: its labels described other bytes
        paths[2].write_bytes(paths[0].read_bytes())  # overwritten with a labelled file's bytes, which stays
        shutil.move(paths[3], tree / "renamed.jpg")  # a plain move
        summary = col.ingest([tree], workers=0, prune=True)
        # the copy and the overwritten file reuse vectors; the plain move keeps its time, so planning finds it
        assert (summary.embedded, summary.duplicates, summary.moved, summary.pruned) == (1, 2, 1, 2)
        assert _labels(col, tree / "renamed.jpg") == before[paths[3].name]
        assert _labels(col, paths[0]) == before[paths[0].name]
        assert _labels(col, tree / "copy.jpg") == _labels(col, tree / "moved.jpg") == _labels(col, paths[2]) == set()


@pytest.mark.parametrize("batch_size", [1, 8])  # the files in one batch, or each in its own, in either order
def test_names_swapped_or_renumbered_keep_their_labels(tmp_path, tiny_encoder, batch_size, monkeypatch):
    """Two names swapped, and a renumbering (IMG_1 deleted, IMG_2 -> IMG_1, IMG_3 -> IMG_2): each file moved onto
    a path that another file still held, so no old path was gone and the moved files lost their labels (a
    walkthrough found it). The labels follow the bytes; a copy of an unchanged file still gets none.

    Each batch is committed before the next is embedded: a file's old vector was then gone when the file that
    took its bytes came a batch later, and that file was embedded again (a failure in about 1 run in 7, when the
    writer thread happened to be that quick)."""
    submit = runner._WriterThread.submit

    def committed_at_once(writer, batch):
        expected = writer.committed + len(batch.decoded) + len(batch.failed)
        submit(writer, batch)
        deadline = time.monotonic() + 30
        while writer.committed < expected and writer.error is None and time.monotonic() < deadline:
            time.sleep(0.001)

    monkeypatch.setattr(runner._WriterThread, "submit", committed_at_once)
    swap, numbered = tmp_path / "swap", tmp_path / "numbered"
    a, b = write_good_images(swap, 2)
    img1, img2, img3 = (numbered / f"IMG_{i}.jpg" for i in (1, 2, 3))
    for path, picture in zip((img1, img2, img3), write_good_images(numbered, 3, seed=7)):
        picture.rename(path)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([swap, numbered], workers=0)
        _label_two_sets(col)
        before = {path: _scored(col, path) for path in (a, b, img2, img3)}
        assert all(before.values()) and before[a] != before[b] and before[img2] != before[img3]  # by probability

        a.rename(swap / "t.jpg")
        b.rename(a)
        (swap / "t.jpg").rename(b)
        img1.unlink()
        img2.rename(img1)
        img3.rename(img2)
        shutil.copy(a, swap / "copy.jpg")  # a copy of a file whose bytes stay where they are: still no labels
        summary = col.ingest([swap, numbered], workers=0, batch_size=batch_size, prune=True)
        assert summary.embedded == 0 and summary.pruned == 1  # IMG_3's row: its path is gone
        assert (_scored(col, a), _scored(col, b)) == (before[b], before[a])
        assert (_scored(col, img1), _scored(col, img2)) == (before[img2], before[img3])
        assert _scored(col, swap / "copy.jpg") == ()


def _scored(col: Collection, path) -> tuple[tuple[str, float], ...]:
    """``(label, probability)`` pairs of the row at ``path``: the probabilities tell images apart, which the tiny
    model's labels alone do not."""
    image_id = col.catalog.id_of_path(path)
    return col.catalog.labels_of([image_id]).get(image_id, ())


def test_a_row_committed_from_a_segment_takes_the_labels_of_the_same_bytes(tmp_path):
    """The ``--ray`` path: a moved file's row arrives in a sealed segment, with its content hash."""
    (tmp_path / "col").mkdir()
    catalog = Catalog(tmp_path / "col" / "catalog.sqlite")
    old, new, other = (encode_path(tmp_path / name) for name in ("old.jpg", "new.jpg", "other.jpg"))
    catalog.mark_pending([(old, 1, 1, None)])
    old_id = catalog.id_of_path(os.fsdecode(old))
    catalog.write_results([VectorWrite(old_id, "same", 1, 1, "JPEG", np.eye(1, 8, dtype=np.float32)[0])], [])
    with catalog.transaction() as db:
        db.executemany("INSERT INTO labels(label_set, image_id, label, probability) VALUES (?, ?, ?, 0.9)",
                       [("default", old_id, "red"), ("shapes", old_id, "circle"), ("shapes", old_id, "star")])
    catalog.mark_pending([(new, 1, 1, None), (other, 1, 1, None)])
    ids = [catalog.id_of_path(os.fsdecode(key)) for key in (new, other)]
    writer = SegmentWriter(tmp_path / "elsewhere", 8, name="part-0")
    writer.append(np.array(ids, np.int64), np.eye(2, 8, dtype=np.float32))
    catalog.commit_segment(writer.seal(), [RowMetadata(ids[0], "same"), RowMetadata(ids[1], "other bytes")])
    labels = catalog.labels_of([old_id, *ids])
    assert sorted(labels[ids[0]]) == sorted(labels[old_id]) == [("red", 0.9), ("shapes:circle", 0.9),
                                                                 ("shapes:star", 0.9)]
    assert ids[1] not in labels
    catalog.close()


def test_a_folder_renamed_and_ingested_by_its_new_name_says_where_its_old_paths_go(tmp_path, tiny_model_dir, capsys):
    """`mmr ingest trip-2021 --prune` said "moved 3, pruned 0" and kept the old paths (search listed every photo
    twice); the prune of the old name was refused as a missing drive, with no word of the folder above it."""
    from mmretrieval.cli import main

    photos = tmp_path / "photos"
    write_good_images(photos / "trip", 3)
    col = str(tmp_path / "col")
    assert main(["ingest", str(photos / "trip"), "--collection", col, "--model", str(tiny_model_dir),
                 "--workers", "0"]) == 0
    (photos / "trip").rename(photos / "trip-2021")
    capsys.readouterr()
    assert main(["ingest", str(photos / "trip-2021"), "--prune", "--collection", col, "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "moved 3, pruned 0" in err
    assert ("the old paths of the 3 files moved here stay in the collection (with the same vectors) until an `mmr "
            "ingest --prune` over a folder that holds them: for a renamed folder, the folder above it") in err
    assert main(["ingest", str(photos / "trip"), "--prune", "--collection", col]) == 2
    assert "a folder renamed or deleted on purpose is pruned from the folder above it" in capsys.readouterr().err
    assert main(["ingest", str(photos), "--prune", "--collection", col, "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "unchanged 3" in err and "pruned 3" in err and "old paths" not in err
