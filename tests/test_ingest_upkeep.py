"""Re-ingesting a collection that lives on: labels survive a file that was only touched, ``--prune`` reuses the
vectors of moved files, and skipped rows clear once their cause is gone; each safe to interrupt (SIGKILL)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from mmretrieval.collection.catalog import Catalog, encode_path
from mmretrieval.collection.collection import Collection
from mmretrieval.collection.label_sets import scored_ids
from mmretrieval.ingest.writer import CatalogWriter
from test_ingest import scene_jpeg, write_good_images

_CHILD = textwrap.dedent("""
    import sys
    from mmretrieval.collection.collection import Collection

    def main():
        collection_dir, folder = sys.argv[1:3]
        with Collection.open(collection_dir, device="cpu") as col:
            col.ingest([folder], batch_size=2, workers=1, prune=True,
                       progress=lambda done, total: print(done, total, flush=True))
        print("finished", flush=True)

    if __name__ == "__main__":
        main()
""")


def _touch(path, seconds_later: int = 1) -> None:
    later = time.time_ns() + seconds_later * 10**9
    os.utime(path, ns=(later, later))


def _labels_by_set(col: Collection, path) -> set[str]:
    image_id = col.catalog.id_of_path(path)
    return {name for name, _ in col.label_of([image_id]).get(image_id, ())}


def _failing_writer(monkeypatch, fail_at: int) -> None:
    """Make the ``fail_at``-th batch commit of the next runs fail, as a full disk would."""
    real_write, calls = CatalogWriter.write, []

    def write_then_fail(self, batch):
        calls.append(len(batch.decoded))
        if len(calls) == fail_at:
            raise OSError(28, "No space left on device")
        return real_write(self, batch)

    monkeypatch.setattr(CatalogWriter, "write", write_then_fail)


# -- labels ----------------------------------------------------------------------------------------------------
def test_labels_of_every_set_stay_when_only_the_mtime_changes(tmp_path, tiny_encoder):
    paths = write_good_images(tmp_path / "photos", 4)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        col.label("red, green", label_set="default")
        col.label("circle, square", multi_label=True, threshold=0.0, label_set="shapes")
        before = {str(p): _labels_by_set(col, p) for p in paths}
        counts = col.catalog.label_counts()
        assert all(any(name.startswith("shapes:") for name in labels) for labels in before.values())

        _touch(paths[0])  # same bytes: a copy without -p, a sync tool, a restore
        touched = col.ingest([tmp_path / "photos"], workers=0)
        assert (touched.embedded, touched.duplicates, touched.unchanged) == (0, 0, 4)  # hashed, not re-embedded
        assert {str(p): _labels_by_set(col, p) for p in paths} == before
        assert col.catalog.label_counts() == counts

        paths[1].write_bytes(scene_jpeg(60))  # new content: its labels described the old one
        _touch(paths[1])
        changed = col.ingest([tmp_path / "photos"], workers=0)
        assert (changed.embedded, changed.unchanged) == (1, 3)
        assert _labels_by_set(col, paths[1]) == set()
        assert _labels_by_set(col, paths[0]) == before[str(paths[0])]


def test_touched_files_keep_their_labels_beside_a_changed_one_through_a_failed_run(tmp_path, tiny_encoder,
                                                                                  monkeypatch):
    paths = write_good_images(tmp_path / "photos", 8)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        col.label("red, green")
        before = {str(p): _labels_by_set(col, p) for p in paths}
        for path in paths:
            _touch(path)
        paths[6].write_bytes(paths[6].read_bytes()[:-1] + b"\0")  # the same size, other bytes: changed
        paths[7].write_bytes(scene_jpeg(61))
        for path in paths[6:]:
            _touch(path)
        _failing_writer(monkeypatch, fail_at=1)
        with pytest.raises(OSError, match="No space left"):
            col.ingest([tmp_path / "photos"], workers=0, batch_size=4)
        assert col.catalog.counts_by_status() == {"ok": 6, "pending": 2}  # the touched ones were only hashed
        # the pending ones keep the labels of the vectors they still have
        assert {str(p): _labels_by_set(col, p) for p in paths} == before
        monkeypatch.undo()
        again = col.ingest([tmp_path / "photos"], workers=0, batch_size=4)
        # paths[6]: its last byte (the JPEG's end marker) changed, so it now fails; it was never taken as touched
        assert (again.embedded, again.unchanged, again.failed) == (1, 6, {"truncated": 1})
        assert {str(p): _labels_by_set(col, p) for p in paths[:6]} == {str(p): before[str(p)] for p in paths[:6]}
        assert _labels_by_set(col, paths[7]) == set()


def test_a_changed_file_committed_from_a_segment_loses_its_labels_only_if_its_bytes_changed(tmp_path):
    from mmretrieval.collection.places import RowMetadata, VectorWrite
    from mmretrieval.collection.segments import SegmentWriter

    (tmp_path / "col").mkdir()
    catalog = Catalog(tmp_path / "col" / "catalog.sqlite")
    keys = [encode_path(tmp_path / f"{name}.jpg") for name in ("same", "changed", "unknown")]
    catalog.mark_pending([(key, 1, 1, None) for key in keys])
    ids = [catalog.id_of_path(os.fsdecode(key)) for key in keys]
    vectors = np.eye(3, 8, dtype=np.float32)
    catalog.write_results([VectorWrite(i, f"h{i}", 1, 1, "JPEG", v) for i, v in zip(ids, vectors)], [])
    with catalog.transaction() as db:
        db.executemany("INSERT INTO labels(label_set, image_id, label, probability) VALUES (?, ?, ?, 1.0)",
                       [(label_set, i, "red") for i in ids for label_set in ("default", "other")])
    catalog.mark_pending([(key, 1, 2, None) for key in keys])  # all three touched
    writer = SegmentWriter(tmp_path / "elsewhere", 8, name="part-0")  # as another process or node would
    writer.append(np.array(ids, np.int64), vectors)
    catalog.commit_segment(writer.seal(), [RowMetadata(ids[0], f"h{ids[0]}"), RowMetadata(ids[1], "other bytes")])
    assert catalog.counts_by_status() == {"ok": 3}
    assert set(catalog.labels_of(ids)) == {ids[0]}  # a vector of unknown bytes drops them too
    assert len(catalog.labels_of(ids)[ids[0]]) == 2
    catalog.close()


# -- prune -----------------------------------------------------------------------------------------------------
def test_prune_reuses_the_vectors_of_moved_files(tmp_path, tiny_encoder):
    write_good_images(tmp_path / "tree" / "a", 3)
    write_good_images(tmp_path / "tree" / "c", 3, seed=1)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "tree"], workers=0)
        old = dict(zip([col.catalog.rows([i])[i].path for i in col.catalog.vector_ids().tolist()],
                       col.vectors()[1]))
        (tmp_path / "tree" / "a").rename(tmp_path / "tree" / "b")
        moved = col.ingest([tmp_path / "tree"], workers=0, prune=True)
        assert (moved.embedded, moved.duplicates, moved.moved, moved.unchanged, moved.pruned, moved.failed) == (
            0, 0, 3, 3, 3, {})
        ids, vectors = col.vectors()
        now = {col.catalog.rows([i])[i].path: v for i, v in zip(ids.tolist(), vectors)}
        assert sorted(now) == sorted(p.replace(f"{os.sep}a{os.sep}", f"{os.sep}b{os.sep}") for p in old)
        for path, vector in old.items():
            np.testing.assert_array_equal(now[path.replace(f"{os.sep}a{os.sep}", f"{os.sep}b{os.sep}")], vector)
        assert col.catalog.counts_by_status() == {"ok": 6}
        col.load_index()
        assert sorted(col._indexes.index.ids().tolist()) == sorted(col.catalog.vector_ids().tolist())


def test_an_interrupted_prune_run_resumes_with_nothing_lost_or_embedded_again(tmp_path, tiny_encoder, monkeypatch):
    write_good_images(tmp_path / "tree" / "a", 8)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "tree"], workers=0)
        (tmp_path / "tree" / "b").mkdir()
        for path in (tmp_path / "tree" / "a").iterdir():  # new names and times: decoded, not found in planning
            shutil.copyfile(path, tmp_path / "tree" / "b" / f"moved-{path.name}")
            path.unlink()
        _failing_writer(monkeypatch, fail_at=2)
        with pytest.raises(OSError, match="No space left"):
            col.ingest([tmp_path / "tree"], workers=0, batch_size=4, prune=True)
        assert col.catalog.counts_by_status() == {"ok": 12, "pending": 4}  # the old rows wait for the end
        monkeypatch.undo()
        again = col.ingest([tmp_path / "tree"], workers=0, batch_size=4, prune=True)
        assert (again.embedded, again.duplicates, again.unchanged, again.pruned) == (0, 4, 4, 8)
        assert col.catalog.counts_by_status() == {"ok": 8}
        assert sorted(os.path.basename(os.path.dirname(col.catalog.rows([i])[i].path))
                      for i in col.catalog.vector_ids().tolist()) == ["b"] * 8


def test_prune_never_decodes_the_pending_rows_of_vanished_files(tmp_path, tiny_encoder, monkeypatch):
    paths = write_good_images(tmp_path / "tree", 6)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        _failing_writer(monkeypatch, fail_at=1)
        with pytest.raises(OSError, match="No space left"):
            col.ingest([tmp_path / "tree"], workers=0, batch_size=4)
        monkeypatch.undo()
        for path in paths[:4]:
            path.unlink()
        summary = col.ingest([tmp_path / "tree"], workers=0, batch_size=4, prune=True)
        assert (summary.embedded, summary.pruned, summary.failed) == (2, 4, {})
        assert col.catalog.counts_by_status() == {"ok": 2}


def _snapshot(directory) -> dict[str, object]:
    with Collection.open(directory) as col:
        ids, vectors = col.vectors()
        rows = col.catalog.rows(ids.tolist())
        labels = col.label_of(ids.tolist())
        col.load_index()
        assert sorted(col._indexes.index.ids().tolist()) == sorted(ids.tolist())
        paths = [rows[i].path for i in ids.tolist()]
        assert len(paths) == len(set(paths))
        return {"counts": col.catalog.counts_by_status(), "labels": col.catalog.label_counts(),
                **{path: (tuple(np.round(v, 4)), sorted(name for name, _ in labels.get(i, ())))
                   for path, i, v in zip(paths, ids.tolist(), vectors)}}


def test_sigkill_during_a_prune_that_moves_touches_and_changes_files_then_resume(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    write_good_images(photos / "a", 10)
    kept = write_good_images(photos / "c", 10, seed=1)
    with Collection.open(tmp_path / "base", model=str(tiny_model_dir), create=True, device="cpu") as col:
        col.ingest([photos], workers=0)
        col.label("red, green")
        col.label("circle, square", multi_label=True, threshold=0.0, label_set="shapes")
    shutil.copytree(tmp_path / "base", tmp_path / "killed")
    shutil.copytree(tmp_path / "base", tmp_path / "clean")
    (photos / "a").rename(photos / "b")
    for path in kept:
        _touch(path)
    kept[0].write_bytes(scene_jpeg(70))
    _touch(kept[0], 2)

    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    killed_runs = []
    for kill_after in (1, 2, 3):  # planned (the model loads next); first batch committed; second
        child = subprocess.Popen([sys.executable, str(script), str(tmp_path / "killed"), str(photos)],
                                 stdout=subprocess.PIPE, text=True, env=env)
        for lines, _ in enumerate(child.stdout, start=1):
            if lines >= kill_after:
                child.send_signal(signal.SIGKILL)
                break
        child.stdout.close()
        killed_runs.append(child.wait(timeout=60) == -signal.SIGKILL)
    assert killed_runs[0]  # the kills really interrupted work (a later one may come after its run ended)
    finished = subprocess.run([sys.executable, str(script), str(tmp_path / "killed"), str(photos)],
                              capture_output=True, text=True, env=env, timeout=120)
    assert finished.returncode == 0, finished.stderr

    with Collection.open(tmp_path / "clean", device="cpu") as col:
        clean = col.ingest([photos], workers=0, batch_size=2, prune=True)
    # the changed file embedded, the moved ones' vectors reused, the touched ones hashed in planning, a/ pruned
    assert (clean.embedded, clean.duplicates, clean.moved, clean.unchanged, clean.pruned) == (1, 0, 10, 9, 10)
    killed, expected = _snapshot(tmp_path / "killed"), _snapshot(tmp_path / "clean")
    assert killed == expected
    assert expected["counts"] == {"ok": 20}
    for path in kept[1:]:  # touched only: both sets' labels kept
        labels = expected[str(path)][1]
        assert any(name.startswith("shapes:") for name in labels) and any(":" not in name for name in labels)
    assert expected[str(kept[0])][1] == []  # changed


# -- skipped rows ----------------------------------------------------------------------------------------------
@pytest.fixture()
def locked(monkeypatch):
    """Folders listed here cannot be listed (as a folder without read permission, even for root)."""
    real_scandir, folders = os.scandir, set()

    def scandir(path="."):
        if os.path.abspath(os.fsdecode(path)) in folders:
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return folders


def test_a_folder_made_readable_is_no_longer_listed_as_skipped(tmp_path, tiny_encoder, locked):
    tree = tmp_path / "tree"
    write_good_images(tree / "open", 2)
    write_good_images(tree / "shut", 2, seed=1)
    write_good_images(tree / "shut" / "inner", 1, seed=2)
    locked.update({str(tree / "shut")})
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        first = col.ingest([tree], workers=0)
        assert first.skipped == {"unreadable": 1}
        assert [(f.path, f.reason) for f in col.failures()] == [(str(tree / "shut"), "unreadable")]

        locked.clear()
        locked.add(str(tree / "shut" / "inner"))  # the folder opens; one inside it does not
        second = col.ingest([tree], workers=0)
        assert (second.embedded, second.skipped) == (2, {"unreadable": 1})
        assert [(f.path, f.reason) for f in col.failures()] == [(str(tree / "shut" / "inner"), "unreadable")]

        locked.clear()
        third = col.ingest([tree], workers=0)
        assert (third.embedded, third.skipped) == (1, {})
        assert list(col.failures()) == [] and col.catalog.counts_by_status() == {"ok": 5}


def test_a_source_folder_made_readable_is_no_longer_listed_as_skipped(tmp_path, tiny_encoder, locked):
    write_good_images(tmp_path / "tree", 2)
    locked.add(str(tmp_path / "tree"))
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        assert col.ingest([tmp_path / "tree"], workers=0).skipped == {"unreadable": 1}
        locked.clear()
        assert col.ingest([tmp_path / "tree"], workers=0).embedded == 2
        assert list(col.failures()) == [] and col.catalog.counts_by_status() == {"ok": 2}


def test_skipped_rows_stay_while_their_cause_does_and_under_folders_not_walked(tmp_path, tiny_encoder, locked):
    tree = tmp_path / "tree"
    write_good_images(tree, 1)
    os.mkfifo(tree / "fifo.jpg")
    (tree / "dangling.jpg").symlink_to(tree / "nowhere.jpg")
    write_good_images(tree / ".hidden", 1)
    locked.add(str(tree / ".hidden" / "shut"))
    (tree / ".hidden" / "shut").mkdir()
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tree / ".hidden"], workers=0)  # a hidden folder named as a source is read
        first = col.ingest([tree], workers=0)
        assert first.skipped["not_regular_file"] == 1 and sum(first.skipped.values()) == 2  # and the link
        locked.clear()
        again = col.ingest([tree], workers=0)  # the walk passes over .hidden: what it knew of it stays
        assert again.skipped == first.skipped
        assert sorted(f.path for f in col.failures()) == sorted(
            str(path) for path in (tree / "fifo.jpg", tree / "dangling.jpg", tree / ".hidden" / "shut"))


def test_prune_removes_the_skipped_rows_of_vanished_paths(tmp_path, tiny_encoder):
    tree = tmp_path / "tree"
    write_good_images(tree, 2)
    os.mkfifo(tree / "fifo.jpg")
    (tree / "dangling.jpg").symlink_to(tree / "nowhere.jpg")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        first = col.ingest([tree], workers=0)
        assert first.skipped["not_regular_file"] == 1 and sum(first.skipped.values()) == 2  # and the link
        (tree / "dangling.jpg").unlink()
        (tree / "fifo.jpg").unlink()
        kept = col.ingest([tree], workers=0)
        assert kept.skipped == {} and kept.pruned == 0
        pruned = col.ingest([tree], workers=0, prune=True)
        assert (pruned.pruned, pruned.skipped) == (2, {})
        assert list(col.failures()) == [] and col.catalog.counts_by_status() == {"ok": 2}


@pytest.mark.parametrize("batch_size", [1, 32])
def test_identical_bytes_are_embedded_once_whatever_the_batch_size(tmp_path, tiny_encoder, batch_size):
    """A copy met a batch later, while the writer thread has not committed the first yet, takes its vector
    instead of being embedded again: three copies are one embedding and two duplicates at any batch size."""
    import shutil

    from test_ingest import write_good_images

    folder = tmp_path / "photos"
    write_good_images(folder, 6)
    for name in ("good00-copy.jpg", "good00-zcopy.jpg"):
        shutil.copy(folder / "good00.jpg", folder / name)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        summary = col.ingest([folder], workers=0, batch_size=batch_size)
    assert (summary.embedded, summary.duplicates) == (6, 2)


def test_a_moved_file_keeps_its_record_of_being_scored_with_no_label(tmp_path, tiny_encoder):
    """A multi-label run scores images that reach no label; the export lists them with an empty label. Moved or
    renamed, such an image took its old row's labels (none) but not its record, and left the export."""
    write_good_images(tmp_path / "tree" / "a", 4)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "tree"], workers=0)
        col.label(["red circle", "blue square"], multi_label=True, threshold=1.0)  # none reaches 1.0
        before = scored_ids(col.catalog, "default")
        assert len(before) == 4 and not col.catalog.label_counts()
        (tmp_path / "tree" / "a").rename(tmp_path / "tree" / "b")
        col.ingest([tmp_path / "tree"], workers=0, prune=True)
        after = scored_ids(col.catalog, "default")
        assert len(after) == 4 and set(after) == set(col.catalog.vector_ids().tolist())
        assert not set(after) & set(before.tolist())  # the new rows hold the record: the old ones are pruned


def test_checksum_finds_a_replacement_of_the_same_size_with_its_time_copied(tmp_path, tiny_model_dir, capsys):
    """Size and modification time are all a plain run compares (as rsync does): a file replaced by other bytes of
    the same size, its time copied over (`cp -p`, `touch -r`), kept its old vector. --checksum hashes them."""
    from mmretrieval.cli import main

    paths = write_good_images(tmp_path / "photos", 3)
    collection = str(tmp_path / "col")
    base = ["ingest", str(tmp_path / "photos"), "--collection", collection, "--workers", "0"]
    assert main([*base, "--model", str(tiny_model_dir), "--device", "cpu"]) == 0
    def stored_hash() -> str:
        with Collection.open(collection) as col:
            return col.catalog.file_states_of([os.fsencode(paths[0])])[os.fsencode(paths[0])].content_hash

    old = stored_hash()
    stat = paths[0].stat()
    data = bytearray(paths[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # other pixels, the same size
    paths[0].write_bytes(bytes(data))
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capsys.readouterr()
    assert main([*base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == 3  # by size and time, nothing changed
    assert main([*base, "--json", "--checksum"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["embedded"], summary["unchanged"]) == (1, 2)
    assert stored_hash() not in (old, None)  # embedded from the new bytes
    assert main([*base, "--json", "--checksum"]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == 3
    reported: list[tuple[int, int | None]] = []  # a checksum run reads every file: its bar says how far it got
    with Collection.open(collection) as col:
        col.ingest([tmp_path / "photos"], workers=0, checksum=True, hashed=lambda *done: reported.append(done))
    assert reported == [(1, None), (2, None), (3, None)]


def test_a_file_that_cannot_be_read_while_hashed_keeps_its_vector_and_labels(tmp_path, tiny_encoder, monkeypatch):
    """--checksum (and a touch) planned a file it could not read as changed; its decode then failed it, and a
    failed row loses its vector and its labels in every set: a flaky mount cost a checksum run its work."""
    from mmretrieval.errors import ImageDecodeError
    from mmretrieval.ingest import touched

    paths = write_good_images(tmp_path / "photos", 3)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        col.label("red, green")
        before = {str(p): _labels_by_set(col, p) for p in paths}
        real_read = touched.read_image_file

        def flaky(path):
            if os.fsdecode(path) == str(paths[0]):
                raise ImageDecodeError("unreadable", f"cannot open {os.fsdecode(path)}: Input/output error")
            return real_read(path)

        monkeypatch.setattr(touched, "read_image_file", flaky)
        _touch(paths[0])
        for checksum in (True, False):
            summary = col.ingest([tmp_path / "photos"], workers=0, checksum=checksum)
            assert (summary.embedded, summary.unchanged, summary.failed) == (0, 3, {})
            assert col.catalog.counts_by_status() == {"ok": 3}
            assert {str(p): _labels_by_set(col, p) for p in paths} == before
        monkeypatch.undo()  # readable again: the touch is recorded, and it is still unchanged
        assert col.ingest([tmp_path / "photos"], workers=0).unchanged == 3
        assert col.catalog.file_state(paths[0])[2] == paths[0].stat().st_mtime_ns
