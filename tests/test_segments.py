"""Vector segments, compaction (SIGKILL at every step loses and duplicates nothing), schema migration of a
collection in the v1 layout, and file modes under the umask."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mmretrieval.collection.catalog import Catalog, VectorWrite, encode_path
from mmretrieval.collection.collection import Collection
from mmretrieval.collection.compaction import collect_garbage, compact, waste
from mmretrieval.collection.migrations import SCHEMA_VERSION
from mmretrieval.collection.segments import SegmentStore, SegmentWriter, read_sealed
from mmretrieval.errors import CollectionError

DIM = 32


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def fill(catalog: Catalog, folder, vectors: np.ndarray, batch: int = 7) -> np.ndarray:
    """Rows for ``folder/i.png`` with ``vectors`` written in batches (several appends); returns their ids."""
    paths = [os.path.join(str(folder), f"{i:05d}.png") for i in range(len(vectors))]
    catalog.mark_pending([(encode_path(p), 1, 1, None) for p in paths])
    ids = np.array([image_id for image_id, _ in catalog.pending()], dtype=np.int64)
    for start in range(0, len(ids), batch):
        catalog.write_results([VectorWrite(int(i), f"h{i}", 1, 1, "PNG", v)
                               for i, v in zip(ids[start:start + batch], vectors[start:start + batch])], [])
    return ids


@pytest.mark.parametrize("bad", ["double", "nan", "zero"])
def test_segment_writer_refuses_rows_that_are_not_unit_vectors(tmp_path, bad):
    vectors = unit_vectors(6)
    vectors[4] = {"double": 2 * vectors[4], "nan": np.nan, "zero": 0}[bad]
    writer = SegmentWriter(tmp_path, DIM, "float16", name="part")
    writer.append(np.arange(3), vectors[:3].astype(np.float16))  # float16 rounding is within the tolerance
    with pytest.raises(CollectionError, match=r"1 of 3 rows are not unit vectors \(row 1 has length"):
        writer.append(np.arange(3, 6), vectors[3:])
    writer.append([9], vectors[:1].astype(np.float64))  # numpy's default dtype passes the check too (a review:
    sealed = writer.seal()                               # TypeError from the check's cast)
    assert sealed.count == 4 and sealed.ids().tolist() == [0, 1, 2, 9]  # the refused block wrote nothing


def test_segment_writer_round_trip_and_damage_detected(tmp_path):
    vectors = unit_vectors(10)
    writer = SegmentWriter(tmp_path, DIM, "float32", name="part")
    writer.append(np.arange(4), vectors[:4])
    writer.append(np.arange(4, 10), vectors[4:])
    sealed = writer.seal()
    again = read_sealed(tmp_path / "part.json")
    assert again == sealed and again.count == 10 and again.ids().tolist() == list(range(10))
    with pytest.raises(CollectionError, match="shape"):
        SegmentWriter(tmp_path, DIM, name="other").append(np.arange(3), vectors[:2])
    data = bytearray((tmp_path / "part.vec").read_bytes())
    data[5] ^= 0xFF
    (tmp_path / "part.vec").write_bytes(bytes(data))
    with pytest.raises(CollectionError, match="sha256"):
        read_sealed(tmp_path / "part.json")
    (tmp_path / "part.vec").write_bytes(bytes(data[:-4]))
    with pytest.raises(CollectionError, match="bytes"):
        read_sealed(tmp_path / "part.json")


def test_commit_segment_is_idempotent_and_ignores_unknown_ids(tmp_path):
    (tmp_path / "col").mkdir()
    catalog = Catalog(tmp_path / "col" / "catalog.sqlite")
    vectors = unit_vectors(12)
    ids = fill(catalog, tmp_path / "a", vectors[:6])
    catalog.mark_pending([(encode_path(tmp_path / "b" / f"{i}.png"), 1, 1, None) for i in range(6)])
    pending = [image_id for image_id, _ in catalog.pending()]
    writer = SegmentWriter(tmp_path / "elsewhere", DIM, name="part-0")  # as another process or node would
    writer.append(np.array(pending + [999_999]), np.concatenate([vectors[6:], vectors[:1]]))
    sealed = writer.seal()
    generation = catalog.generation
    result = catalog.commit_segment(read_sealed(tmp_path / "elsewhere" / "part-0.json"))
    assert (result.placed, result.unknown_ids, result.already_committed) == (6, 1, False)
    assert catalog.counts_by_status() == {"ok": 12} and catalog.generation == generation + 1
    again = catalog.commit_segment(sealed, source="somewhere else")
    assert again.already_committed and catalog.generation == generation + 1 and catalog.vector_count() == 12
    found_ids, found = catalog.vectors(list(ids) + pending)
    np.testing.assert_allclose(found, vectors, atol=1e-3)
    assert catalog.segment_sources()[0][2] == 6
    with pytest.raises(CollectionError, match="64-d"):
        wrong = SegmentWriter(tmp_path / "elsewhere", 64, name="wrong")
        wrong.append(np.array(pending[:1]), np.eye(1, 64, dtype=np.float32))
        catalog.commit_segment(wrong.seal())


def test_streaming_gathering_and_float32_storage(tmp_path):
    (tmp_path / "col").mkdir()
    catalog = Catalog(tmp_path / "col" / "catalog.sqlite")
    with catalog.transaction():
        catalog.set_meta("vector_dtype", "float32")
    vectors = unit_vectors(50)
    ids = fill(catalog, tmp_path / "a", vectors)
    blocks = list(catalog.iter_vectors(block_rows=8))
    assert max(len(b[0]) for b in blocks) == 8 and sum(len(b[0]) for b in blocks) == 50
    np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), vectors)  # float32: exact
    picked = ids[[40, 3, 17]]
    found_ids, found = catalog.vectors(picked.tolist())
    assert found_ids.tolist() == sorted(picked.tolist())
    np.testing.assert_array_equal(found, vectors[np.searchsorted(ids, found_ids)])
    assert catalog.segments.dtype == "float32"


def test_compaction_reclaims_dead_rows_and_keeps_every_vector(tmp_path):
    (tmp_path / "col").mkdir()
    catalog = Catalog(tmp_path / "col" / "catalog.sqlite")
    vectors = unit_vectors(60)
    ids = fill(catalog, tmp_path / "a", vectors)
    # re-embedding 20 files leaves 20 dead rows; pruning 10 more leaves 10
    fill(catalog, tmp_path / "a", vectors[:20][::-1].copy())
    with catalog.transaction() as db:
        db.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in ids[50:]])
    before = dict(zip(*catalog.vectors(ids[:50].tolist())))
    assert waste(catalog).stored == 80 and waste(catalog).live == 50
    summary = compact(catalog)
    assert summary.rows_copied == 50 and summary.rows_reclaimed == 30
    assert waste(catalog).ratio == 0.0 and waste(catalog).stored == 50
    after_ids, after = catalog.vectors(ids[:50].tolist())
    for image_id, vector in zip(after_ids.tolist(), after):
        np.testing.assert_array_equal(vector, before[image_id])
    assert len(list((tmp_path / "col" / "segments").glob("*.vec"))) == len(catalog.segments.segments())


_COMPACT_CHILD = textwrap.dedent("""
    import os, signal, sys
    from mmretrieval.collection import compaction, segments
    from mmretrieval.collection.catalog import Catalog

    point = sys.argv[2]
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def after(owner, name, when):
        original = getattr(owner, name)
        def wrapped(*args, **kwargs):
            if when == "before":
                die()
            result = original(*args, **kwargs)
            die()
        setattr(owner, name, wrapped)

    if point == "staged":
        after(compaction, "_write_live_rows", "after")
    elif point == "listed":
        after(segments.SegmentStore, "add_sealed", "after")
    elif point == "switched":
        after(segments.SegmentStore, "drop", "before")
    elif point == "unlisted":  # the old segments are off the manifest, their files not yet deleted
        original_write = segments.SegmentStore.write_manifest
        def write_then_die(self, manifest):
            original_write(self, manifest)
            if sys._getframe(1).f_code.co_name == "drop":
                die()
        segments.SegmentStore.write_manifest = write_then_die
    catalog = Catalog(sys.argv[1])
    if point == "mid-switch":  # inside the switch transaction, some rows moved, not committed
        updates = []
        def trace(statement):
            if statement.startswith("UPDATE vector_rows"):
                updates.append(statement)
                if len(updates) == 3:
                    die()
        catalog._db.set_trace_callback(trace)
    compaction.compact(catalog)
    print("finished")
""")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["staged", "listed", "mid-switch", "switched", "unlisted"])
def test_sigkill_during_compaction_loses_and_duplicates_nothing(tmp_path, point, caplog):
    (tmp_path / "col").mkdir()
    catalog = Catalog(tmp_path / "col" / "catalog.sqlite")
    vectors = unit_vectors(40)
    ids = fill(catalog, tmp_path / "a", vectors)
    fill(catalog, tmp_path / "a", vectors[:15].copy())  # 15 dead rows
    expected = dict(zip(*catalog.vectors(ids.tolist())))
    catalog.close()
    script = tmp_path / "child.py"
    script.write_text(_COMPACT_CHILD)
    child = subprocess.run([sys.executable, str(script), str(tmp_path / "col" / "catalog.sqlite"), point],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=120)
    assert child.returncode == -9, child.stderr  # SIGKILLed where asked
    catalog = Catalog(tmp_path / "col" / "catalog.sqlite")
    with caplog.at_level("WARNING", logger="mmretrieval.collection.compaction"):
        collect_garbage(catalog)  # what the next writer does first
    if point == "switched":  # the old segments, 40 + 15 rows, are what the next writer frees: it says so
        assert "removed 1 segment(s) that nothing points at any more (55 rows" in caplog.text
    found_ids, found = catalog.vectors(ids.tolist())
    assert sorted(found_ids.tolist()) == sorted(ids.tolist())  # nothing lost
    for image_id, vector in zip(found_ids.tolist(), found):
        np.testing.assert_array_equal(vector, expected[image_id])
    assert catalog.vector_count() == len(ids)  # nothing duplicated
    segment_dir = tmp_path / "col" / "segments"
    listed = {s.number for s in catalog.segments.segments()}
    assert {int(p.stem) for p in segment_dir.glob("*.vec")} == listed  # no orphan files, none missing
    assert set(catalog.rows_per_segment()) <= listed and not (segment_dir / "staging").exists()
    compact(catalog)  # and it finishes the job
    assert waste(catalog).stored == len(ids) and catalog.vector_count() == len(ids)


def _write_v1_collection(directory, vectors: np.ndarray, identity_json: str) -> list[int]:
    """A collection exactly as the v1 code left it: float32 BLOB vectors inside catalog.sqlite."""
    directory.mkdir(parents=True)
    db = sqlite3.connect(directory / "catalog.sqlite")
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, path BLOB NOT NULL UNIQUE, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, status TEXT NOT NULL, content_hash TEXT, width INTEGER, height INTEGER,
            format TEXT, reason TEXT, message TEXT, caption TEXT);
        CREATE TABLE vectors (image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
            generation INTEGER NOT NULL, embedding BLOB NOT NULL);
        CREATE TABLE labels (image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE, label TEXT NOT NULL,
            probability REAL NOT NULL, PRIMARY KEY (image_id, label));
    """)
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("schema", "1"), ("generation", str(len(vectors))),
                                                       ("model_identity", identity_json)])
    ids = []
    for i, vector in enumerate(vectors):
        cursor = db.execute("INSERT INTO images(path, size, mtime_ns, status, content_hash) VALUES (?, 1, 1, 'ok', ?)",
                            (os.fsencode(str(directory.parent / f"photo{i}.jpg")), f"h{i}"))
        ids.append(cursor.lastrowid)
        db.execute("INSERT INTO vectors VALUES (?, ?, ?)", (cursor.lastrowid, i + 1, vector.astype("<f4").tobytes()))
    db.execute("INSERT INTO images(path, size, mtime_ns, status, reason) VALUES (?, 1, 1, 'failed', 'truncated')",
               (b"/nowhere/bad.jpg",))
    db.commit()
    db.close()
    return ids


def test_v1_collection_is_migrated_on_open(tmp_path, tiny_encoder, monkeypatch):
    from mmretrieval.collection import migrations

    monkeypatch.setattr(migrations, "_CHUNK", 7)  # several chunks: the move streams
    vectors = unit_vectors(30)
    ids = _write_v1_collection(tmp_path / "old", vectors, tiny_encoder.identity.to_json())
    with Collection.open(tmp_path / "old") as col:
        found_ids, found = col.vectors()
        assert found_ids.tolist() == ids
        np.testing.assert_allclose(found, vectors, atol=1e-3)
        assert col.catalog.get_meta("schema") == str(SCHEMA_VERSION)  # every migration ran, 1 -> 2 first
        assert col.catalog.counts_by_status() == {"ok": 30, "failed": 1}
        hits = col.similar(ids[4], k=3)
        assert len(hits) == 3 and ids[4] not in [h.id for h in hits]
        assert col.info().vectors == 30 and col.info().vector_dtype == "float16"
    db = sqlite3.connect(tmp_path / "old" / "catalog.sqlite")
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert "vectors" not in tables and "vector_rows" in tables


def test_catalog_from_newer_code_is_refused_naming_both_versions(tmp_path, tiny_encoder):
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        with col.catalog.transaction():
            col.catalog.set_meta("schema", "99")
    with pytest.raises(CollectionError, match=rf"version 99.*up to version {SCHEMA_VERSION}"):
        Collection.open(tmp_path / "col")


def test_a_migration_killed_midway_leaves_v1_and_reruns(tmp_path, tiny_encoder, monkeypatch):
    from mmretrieval.collection import migrations

    vectors = unit_vectors(12)
    ids = _write_v1_collection(tmp_path / "old", vectors, tiny_encoder.identity.to_json())
    monkeypatch.setattr(migrations, "_CHUNK", 5)
    calls = []
    original = SegmentStore.append

    def append_then_fail(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands in for a crash: the transaction never commits
        return original(self, *args)

    monkeypatch.setattr(SegmentStore, "append", append_then_fail)
    with pytest.raises(KeyboardInterrupt):
        Collection.open(tmp_path / "old")
    db = sqlite3.connect(tmp_path / "old" / "catalog.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "1"
    assert db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 12
    db.close()
    monkeypatch.setattr(SegmentStore, "append", original)
    with Collection.open(tmp_path / "old") as col:
        found_ids, found = col.vectors()
        assert found_ids.tolist() == ids and col.catalog.segments.total_rows() == 12  # no rows from the first try
        np.testing.assert_allclose(found, vectors, atol=1e-3)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_umask_mode(tmp_path, umask):
    from mmretrieval.atomic import atomic_write_bytes

    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "file.bin", b"x")
        atomic_write_bytes(tmp_path / "file.bin", b"y")  # replacing keeps the rule
        store = SegmentStore(tmp_path / "segments")
        store.create(DIM)
    finally:
        os.umask(old)
    assert (tmp_path / "file.bin").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "segments" / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert json.loads((tmp_path / "segments" / "manifest.json").read_text())["dim"] == DIM


def test_append_blocks_rotates_segments_and_each_block_reads_back_where_it_was_placed(tmp_path, monkeypatch):
    """Many blocks in one call, past the segment size twice: sealed segments keep their checksums, every block's
    returned place holds its rows, and ``written`` saw the same places in the same order."""
    import mmretrieval.collection.segments as segments_module
    from mmretrieval.atomic import file_sha256

    monkeypatch.setattr(segments_module, "SEGMENT_ROWS", 10)
    store = SegmentStore(tmp_path / "segments")
    store.create(DIM, "float32")
    vectors = unit_vectors(24)
    blocks = [(np.arange(start, start + 4), vectors[start:start + 4]) for start in range(0, 24, 4)]
    seen = []
    places = store.append_blocks(iter(blocks), lambda number, first: seen.append((number, first)))
    assert seen == places and len({number for number, _ in places}) == 3  # 8 + 8 + 8 rows: two rotations
    for (ids, block), (number, first) in zip(blocks, places):
        read_ids, read = store.read_rows(number, first, first + len(ids))
        assert read_ids.tolist() == ids.tolist()
        np.testing.assert_allclose(read, block, atol=1e-6)
    sealed = [info for info in store.segments() if info.sealed]
    assert len(sealed) == 2
    for info in sealed:
        assert info.count == 8 and info.sha256 == file_sha256(tmp_path / "segments" / f"{info.number:06d}.vec")
    for info in sealed:
        assert info.ids_sha256 == file_sha256(tmp_path / "segments" / f"{info.number:06d}.ids")


def test_sealed_checksums_are_the_files_whoever_appended_and_after_a_torn_tail_is_cut(tmp_path, monkeypatch):
    """A store follows the checksums of a segment it began (across calls) and reads them back from disk for one
    that another store (process) began; a torn tail cut in between changes neither answer."""
    import mmretrieval.collection.segments as segments_module
    from mmretrieval.atomic import file_sha256

    monkeypatch.setattr(segments_module, "SEGMENT_ROWS", 10)
    folder = tmp_path / "segments"
    vectors = unit_vectors(30)
    first = SegmentStore(folder)
    first.create(DIM, "float16")
    first.append(np.arange(0, 3), vectors[0:3])  # segment 1, begun by `first`
    second = SegmentStore(folder)
    second.append(np.arange(3, 6), vectors[3:6])  # continued by another store: not followed
    second.append(np.arange(6, 12), vectors[6:12])  # 12 > 10: seals 1, begins 2 (followed from its first byte)
    second.append(np.arange(12, 15), vectors[12:15])
    with open(folder / "000002.vec", "ab") as torn:
        torn.write(b"\x01" * 5)  # a killed writer's partial row
    assert second.collect_garbage({1: 6, 2: 9}) == []  # rows the catalog would point into
    second.append(np.arange(15, 16), vectors[15:16])  # 10 rows in segment 2 now
    second.append(np.arange(16, 19), vectors[16:19])  # 13 > 10: seals 2
    sealed = {info.number: info for info in second.segments() if info.sealed}
    assert sorted(sealed) == [1, 2] and [sealed[1].count, sealed[2].count] == [6, 10]
    for number, info in sealed.items():
        assert info.sha256 == file_sha256(folder / f"{number:06d}.vec")
        assert info.ids_sha256 == file_sha256(folder / f"{number:06d}.ids")
        assert info.size == os.path.getsize(folder / f"{number:06d}.vec")


def test_checksums_hold_when_the_caller_refills_one_buffer_between_appends(tmp_path, monkeypatch):
    """Appends are hashed on a thread: a writer that reuses its batch array must still get the files' sha256."""
    import mmretrieval.collection.segments as segments_module
    from mmretrieval.atomic import file_sha256

    import time

    from mmretrieval.collection.sealed import RunningDigest

    monkeypatch.setattr(segments_module, "SEGMENT_ROWS", 10)
    hash_now = RunningDigest._update
    monkeypatch.setattr(RunningDigest, "_update", lambda self, *arrays: (time.sleep(0.05), hash_now(self, *arrays)))
    vectors = unit_vectors(24)
    buffer, ids = np.empty((4, DIM), np.float16), np.empty(4, np.int64)  # written as they are: no copy made
    writer = SegmentWriter(tmp_path / "out", DIM, "float16", name="part")
    store = SegmentStore(tmp_path / "segments")
    store.create(DIM, "float16")
    for start in range(0, 24, 4):
        buffer[:], ids[:] = vectors[start:start + 4], np.arange(start, start + 4)
        writer.append(ids, buffer)
        store.append(ids, buffer)
    read_sealed(writer.seal().directory / "part.json")  # verifies both files against their sha256
    sealed = [info for info in store.segments() if info.sealed]
    assert len(sealed) == 2
    for info in sealed:
        assert info.sha256 == file_sha256(tmp_path / "segments" / f"{info.number:06d}.vec")
        assert info.ids_sha256 == file_sha256(tmp_path / "segments" / f"{info.number:06d}.ids")


def test_counts_by_status_inside_and_outside_a_transaction(tmp_path):
    """'ok' is counted as all rows less the others (the status index holds only rows that are not 'ok')."""
    from mmretrieval.collection.places import FailureWrite

    catalog = Catalog(tmp_path / "catalog.sqlite")
    ids = fill(catalog, tmp_path, unit_vectors(5))
    catalog.mark_pending([(encode_path(str(tmp_path / f"new{i}.png")), 1, 1, None) for i in range(3)])
    catalog.write_results([], [FailureWrite(int(ids[0]), "decode", "truncated")])
    expected = {"ok": 4, "failed": 1, "pending": 3}
    assert catalog.counts_by_status() == expected
    with catalog.transaction():
        assert catalog.counts_by_status() == expected


def test_the_next_writer_removes_a_killed_manifest_writes_temporary(tmp_path):
    """`mmr compact` killed while it rewrote the segment manifest left ``.manifest.json.<owner>.<random>.tmp``,
    which no later writer removed."""
    (tmp_path / "col").mkdir()
    catalog = Catalog(tmp_path / "col" / "catalog.sqlite")
    fill(catalog, tmp_path / "a", unit_vectors(10))
    segment_dir = tmp_path / "col" / "segments"
    stale = segment_dir / ".manifest.json.otherhost~4242.0123456789ab.tmp"
    stale.write_text('{"half": ')
    collect_garbage(catalog)  # what the next writer does first, under the collection's lock
    assert not stale.exists() and (segment_dir / "manifest.json").is_file()
    assert catalog.vector_count() == 10


@pytest.mark.parametrize("damage", ["deleted", "cut short"])
def test_vectors_lost_from_a_segment_are_named_then_embedded_again_by_the_next_ingest(tmp_path, tiny_model_dir,
                                                                                      capsys, damage):
    """Every command failed with a bare FileNotFoundError (a walkthrough deleted one ``.vec`` file), ``mmr export``
    blamed its output folder, and nothing but a new collection got the vectors back, though every file was there."""
    from mmretrieval.cli import main
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 3)
    col = str(tmp_path / "col")
    assert main(["ingest", str(tmp_path / "photos"), "--collection", col, "--model", str(tiny_model_dir)]) == 0
    assert main(["label", "--labels", "red,green", "--collection", col]) == 0
    capsys.readouterr()
    assert main(["search", "red", "--collection", col, "--json"]) == 0
    before = {json.loads(line)["path"]: json.loads(line)["score"] for line in capsys.readouterr().out.splitlines()}
    (vec,) = (tmp_path / "col" / "segments").glob("*.vec")
    if damage == "deleted":
        vec.unlink()
        shown = f"{vec} is missing"
    else:
        os.truncate(vec, vec.stat().st_size // 3)  # one whole row of three
        shown = f"{vec} holds 1 row, the catalog points at row 2"
    capsys.readouterr()
    assert main(["info", "--collection", col]) == 0
    out, err = capsys.readouterr()
    assert "counts\tok=3\n" in out
    if damage == "deleted":
        assert f"warning: {shown}" in err
    else:  # info reads no vector: a short file looked whole
        assert ("warning: the vectors of 2 images are lost (segment 000001 holds 1 whole row); the collection's "
                "segments are damaged") in err
    assert "stored_rows\t-\n" in out and "waste_ratio\t-\n" in out  # not numbers made up (cut short: -1.0007)
    for command in (["similar", "--id", "3"], ["export", str(tmp_path / "out")]):  # each reads stored vectors
        status = main([*command, "--collection", col])
        err = capsys.readouterr().err
        assert status == 2, err
        assert f"error: {shown}; the collection's segments are damaged: the next `mmr ingest` into it embeds the " \
               "images whose vectors were lost again from their files" in err, command
        assert "FileNotFoundError" not in err and "cannot write" not in err
    assert main(["ingest", str(tmp_path / "photos"), "--collection", col]) == 0
    lost = 3 if damage == "deleted" else 2
    err = capsys.readouterr().err
    whole = "1 whole row" if lost == 2 else "0 whole rows"
    assert f"warning: {lost} images had lost their vectors (segment 000001 holds {whole}" in err
    assert f"embedded {lost}, unchanged {3 - lost}" in err
    assert "interrupted write" not in err  # the lost segment is dropped quietly: nothing was interrupted
    assert main(["search", "red", "--collection", col, "--json"]) == 0
    after = {json.loads(line)["path"]: json.loads(line)["score"] for line in capsys.readouterr().out.splitlines()}
    assert after.keys() == before.keys() and all(abs(after[p] - before[p]) < 1e-3 for p in before)
    assert main(["info", "--collection", col, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"] == {"ok": 3} and info["vectors"] == info["index_vectors"] == 3
    assert sum(info["labels"].values()) == 3  # the labels stayed with their images


def test_a_segment_file_missing_for_a_moment_is_not_taken_for_lost(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """A network share that answers ENOENT for a moment cost a re-embedding (and an imported vector, for good)."""
    from mmretrieval.cli import main
    from mmretrieval.collection import repair
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 3)
    col = str(tmp_path / "col")
    assert main(["ingest", str(tmp_path / "photos"), "--collection", col, "--model", str(tiny_model_dir)]) == 0
    (vec,) = (tmp_path / "col" / "segments").glob("*.vec")
    vec.rename(tmp_path / "away.vec")
    looks: list[float] = []
    monkeypatch.setattr(repair, "_pause", lambda seconds: looks.append(seconds) or
                        (tmp_path / "away.vec").rename(vec))  # back by the second look
    capsys.readouterr()
    assert main(["ingest", str(tmp_path / "photos"), "--collection", col, "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert looks == [repair.RECHECK_S] and "lost their vectors" not in err and "embedded 0, unchanged 3" in err
    monkeypatch.setattr(repair, "_pause", lambda seconds: None)
    vec.rename(tmp_path / "away.vec")  # gone at both looks: forgotten, and embedded again
    assert main(["ingest", str(tmp_path / "photos"), "--collection", col, "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "3 images had lost their vectors" in err and "embedded 3, unchanged 0" in err


def test_the_cut_of_torn_tails_never_cuts_below_the_rows_the_catalog_points_into(tmp_path, tiny_encoder,
                                                                                   monkeypatch):
    """A stat that failed for a moment read as 0 rows, and the writer's cut of a torn tail emptied the active
    segment (a review's script: 2048 bytes to 0)."""
    from mmretrieval.collection.collection import Collection
    from mmretrieval.collection.segments import SegmentStore
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 3)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
    (vec,) = (tmp_path / "col" / "segments").glob("*.vec")
    whole = vec.read_bytes()
    with open(vec, "ab") as torn:
        torn.write(b"\x01" * 5)  # a killed writer's partial row, which the cut is for
    collect = SegmentStore.collect_garbage

    def with_a_gone_look(store, referenced):  # the files read as gone while the writer cleans up
        monkeypatch.setattr(SegmentStore, "intact_rows", lambda self, entry: 0)
        try:
            return collect(store, referenced)
        finally:
            monkeypatch.undo()

    monkeypatch.setattr(SegmentStore, "collect_garbage", with_a_gone_look)
    with Collection.open(tmp_path / "col") as col, col.writing():
        pass
    assert vec.read_bytes()[:len(whole)] == whole  # not emptied
    with Collection.open(tmp_path / "col") as col, col.writing():  # a later writer that sees the files cuts the tail
        pass
    assert vec.read_bytes() == whole


def test_a_segment_manifest_gone_is_not_called_an_empty_collection(tmp_path, tiny_model_dir, capsys):
    from mmretrieval.cli import main
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 3)
    col = str(tmp_path / "col")
    assert main(["ingest", str(tmp_path / "photos"), "--collection", col, "--model", str(tiny_model_dir)]) == 0
    manifest = tmp_path / "col" / "segments" / "manifest.json"
    manifest.unlink()
    capsys.readouterr()
    assert main(["info", "--collection", col]) == 0  # it said nothing of it
    assert f"warning: {manifest} is missing" in capsys.readouterr().err
    assert main(["search", "red", "--collection", col]) == 2
    err = capsys.readouterr().err  # it said "the collection has no vectors yet", of 3
    assert f"error: {manifest} is missing, so the vectors the catalog points at cannot be read; restore it from a " \
           "backup (README: Backups)" in err


def test_a_sealed_segment_lost_is_dropped_and_its_images_embedded_again(tmp_path, tiny_encoder, monkeypatch):
    import mmretrieval.collection.segments as segments_module
    from test_ingest import write_good_images

    monkeypatch.setattr(segments_module, "SEGMENT_ROWS", 2)  # 5 images: two sealed segments and an active one
    write_good_images(tmp_path / "photos", 5)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0, batch_size=1)
        sealed = [s for s in col.catalog.segments.segments() if s.sealed]
        assert sealed and sum(s.count for s in sealed) < 5
        first = sealed[0]
        ids, vectors = col.vectors()
        before = dict(zip(ids.tolist(), vectors))
    (tmp_path / "col" / "segments" / f"{first.number:06d}.vec").unlink()
    with Collection.open(tmp_path / "col") as col:
        again = col.ingest([tmp_path / "photos"], workers=0)
        assert (again.embedded, again.unchanged) == (first.count, 5 - first.count)
        assert first.number not in [s.number for s in col.catalog.segments.segments()]  # nothing points at it now
        ids, vectors = col.vectors()
        assert sorted(ids.tolist()) == sorted(before) and col.catalog.counts_by_status() == {"ok": 5}
        for image_id, vector in zip(ids.tolist(), vectors):
            np.testing.assert_allclose(vector, before[image_id], atol=2e-3)  # float16 storage


@pytest.mark.parametrize("when", ["next block", "next segment"])
def test_an_append_under_way_when_the_collection_folder_moves_says_so(tmp_path, tiny_encoder, monkeypatch, when):
    """An import's next shard starts appending while the shard before it commits; a folder moved after the
    append's first check failed on the manifest it reads by path ("manifest.json is missing ... restore it from
    a backup") or on a segment file it opens by path (FileNotFoundError), not as the move."""
    import shutil

    from mmretrieval.collection import segments as segments_module

    monkeypatch.setattr(segments_module, "SEGMENT_ROWS", 3 if when == "next segment" else 100)
    vectors = unit_vectors(6)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as collection:
        store = collection.catalog.segments
        collection.catalog._ensure_store(vectors.shape[1])

        def blocks():
            yield np.arange(1, 4), vectors[:3]
            shutil.move(tmp_path / "col", tmp_path / "moved")  # as `mv` in another terminal, between two blocks
            yield np.arange(4, 7), vectors[3:]

        with pytest.raises(CollectionError, match="was moved or deleted while this command was writing to it"):
            store.append_blocks(blocks())
    assert not (tmp_path / "col").exists()
