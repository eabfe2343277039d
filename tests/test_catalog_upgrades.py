"""Catalogs from older code: what their tables hold decides the repair, not only their version number; migrating
says so on stderr; a read-only copy behind only by data-only migrations is read as it is; and a long-running
reader switches to an index that another process rebuilt and saved instead of building one itself."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from mmretrieval.collection.catalog import Catalog
from mmretrieval.collection.collection import Collection
from mmretrieval.collection.label_sets import sets
from mmretrieval.collection.migrations import SCHEMA_VERSION
from mmretrieval.errors import CollectionError
from test_collection import _fill_catalog

# The catalog of commits 5c0e7c7..3881d80 (a branch on which schema 3 meant "photos table" and labels had no sets),
# as `git show 3881d80:mmretrieval/collection/migrations.py` and `.../photo_table.py` create it.
BRANCH_V3_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, path BLOB NOT NULL UNIQUE, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, status TEXT NOT NULL, content_hash TEXT, width INTEGER, height INTEGER, format TEXT,
    reason TEXT, message TEXT, caption TEXT);
CREATE INDEX images_hash ON images(content_hash);
CREATE INDEX images_status ON images(status);
CREATE TABLE vector_rows (image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    generation INTEGER NOT NULL, segment INTEGER NOT NULL, row INTEGER NOT NULL);
CREATE INDEX vector_rows_generation ON vector_rows(generation);
CREATE INDEX vector_rows_place ON vector_rows(segment, row);
CREATE TABLE removed_vectors (image_id INTEGER NOT NULL, generation INTEGER NOT NULL);
CREATE INDEX removed_vectors_generation ON removed_vectors(generation);
CREATE TRIGGER vector_rows_removed AFTER DELETE ON vector_rows BEGIN INSERT INTO removed_vectors(image_id, generation) SELECT old.image_id, CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'generation'; END;
CREATE TABLE segment_commits (sha256 TEXT PRIMARY KEY, source TEXT NOT NULL, segment INTEGER NOT NULL,
    rows INTEGER NOT NULL);
CREATE TABLE labels (image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE, label TEXT NOT NULL,
    probability REAL NOT NULL, PRIMARY KEY (image_id, label));
CREATE INDEX labels_label ON labels(label);
CREATE TABLE photos (image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE, taken_local TEXT,
    taken_utc_s REAL, utc_offset_min INTEGER, taken_source TEXT, make TEXT, model TEXT, latitude REAL,
    longitude REAL, orientation INTEGER NOT NULL DEFAULT 1);
CREATE INDEX photos_taken_local ON photos(taken_local);
CREATE INDEX photos_taken_utc ON photos(taken_utc_s);
CREATE INDEX photos_camera ON photos(make, model);
CREATE INDEX photos_latitude ON photos(latitude);
CREATE TRIGGER vector_rows_removed_photo AFTER DELETE ON vector_rows BEGIN DELETE FROM photos WHERE image_id = old.image_id; END;
INSERT INTO meta VALUES ('schema', '3'), ('generation', '1'), ('removals_logged_from', '0'),
    ('vector_dtype', 'float16');
INSERT INTO images(path, size, mtime_ns, status, content_hash) VALUES
    (x'2f612e6a7067', 1, 1000000000, 'ok', 'h1'), (x'2f622e6a7067', 1, 2000000000, 'ok', 'h2');
INSERT INTO vector_rows VALUES (1, 1, 0, 0), (2, 1, 0, 1);
INSERT INTO photos(image_id, taken_local, taken_source, make, model) VALUES
    (1, '2020-05-01T10:00:00', 'exif_original', 'Canon', 'EOS'), (2, '2021-06-02T11:00:00', 'mtime', NULL, NULL);
INSERT INTO labels VALUES (1, 'cat', 0.9), (2, 'dog', 0.8);
"""


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == logging.WARNING]


@pytest.fixture()
def logged():
    """What the collection modules log (a handler of its own: another test's logging setup cannot hide it)."""
    handler = _Records()
    logger = logging.getLogger("mmretrieval.collection")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _columns(path: Path, table: str) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
    finally:
        db.close()


def _branch_catalog(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript(BRANCH_V3_SCHEMA)
    db.commit()
    db.close()
    return path


def _as_stamped_7_by_the_old_migration(path: Path) -> None:
    """What the code before this fix made of a branch catalog: every table of schema 7 but ``labels`` as it was."""
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE labels_old (image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            label TEXT NOT NULL, probability REAL NOT NULL, PRIMARY KEY (image_id, label));
        INSERT INTO labels_old SELECT image_id, label, probability FROM labels WHERE label_set = 'default';
        DROP TABLE labels;
        ALTER TABLE labels_old RENAME TO labels;
        CREATE INDEX labels_label ON labels(label);
        CREATE INDEX labels_image ON labels(image_id);
        DELETE FROM label_sets;
    """)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
    db.commit()
    db.close()


def test_a_schema_3_catalog_of_the_photos_branch_gets_label_sets_and_keeps_its_photos(tmp_path, logged):
    path = _branch_catalog(tmp_path / "catalog.sqlite")
    catalog = Catalog(path)
    try:
        assert catalog.get_meta("schema") == str(SCHEMA_VERSION)
        assert catalog.label_counts() == {"cat": 1, "dog": 1}
        assert catalog.ids_with_label("cat").tolist() == [1]
        assert catalog.labels_of([1, 2]) == {1: (("cat", 0.9),), 2: (("dog", 0.8),)}
        assert [(s.name, s.labels) for s in sets(catalog)] == [("default", ("cat", "dog"))]
        photos = catalog.photos([1, 2])
        assert (photos[1].make, photos[1].taken_source) == ("Canon", "exif_original")  # EXIF rows kept as they were
    finally:
        catalog.close()
    assert _columns(path, "labels") == ["label_set", "image_id", "label", "probability"]
    assert any("from schema 3 to" in message for message in logged.warnings())
    before = len(logged.records)
    Catalog(path).close()  # a second open finds nothing to do and says nothing
    assert len(logged.records) == before


def test_a_branch_catalog_already_stamped_7_is_repaired_by_a_writable_open(tmp_path, tiny_encoder, logged):
    vectors = np.random.default_rng(0).normal(size=(6, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        ids = _fill_catalog(col, vectors, lambda i: "photos")
        with col.catalog.transaction() as db:
            db.execute("INSERT INTO labels(label_set, image_id, label, probability) VALUES ('default', ?, 'cat', 0.9)",
                       (int(ids[0]),))
    catalog_path = tmp_path / "col" / "catalog.sqlite"
    _as_stamped_7_by_the_old_migration(catalog_path)
    assert "label_set" not in _columns(catalog_path, "labels")

    with pytest.raises(CollectionError, match="opened read-only; open it once where it is writable"):
        Collection.open(tmp_path / "col", read_only=True)  # a reader cannot repair it, and says how
    with Collection.open(tmp_path / "col") as col:  # info, search --label, similar and label all crashed before
        assert col.info().labels == {"cat": 1}
        assert [hit.id for hit in col.search(vectors[0], k=3, label="cat")] == [int(ids[0])]
        assert col.similar(int(ids[1]), k=3, label="cat")[0].labels == ("cat",)
        col.label("circle, square", label_set="shapes")
        assert sum(n for name, n in col.info().labels.items() if name.startswith("shapes:")) == 6
    assert "label_set" in _columns(catalog_path, "labels")
    assert any("label sets" in message and str(tmp_path / "col") in message for message in logged.warnings())


def test_a_label_set_repair_that_fails_changes_nothing_and_the_next_open_redoes_it(tmp_path, monkeypatch):
    from mmretrieval.collection import migrations

    path = _branch_catalog(tmp_path / "catalog.sqlite")
    Catalog(path).close()
    _as_stamped_7_by_the_old_migration(path)
    real = migrations.create_tables

    def fail(db: sqlite3.Connection) -> None:
        raise KeyboardInterrupt  # stands in for a crash inside the repair's transaction

    monkeypatch.setattr(migrations, "create_tables", fail)
    with pytest.raises(KeyboardInterrupt):
        Catalog(path)
    assert _columns(path, "labels") == ["image_id", "label", "probability"]  # rolled back whole
    monkeypatch.setattr(migrations, "create_tables", real)
    catalog = Catalog(path)
    try:
        assert catalog.label_counts() == {"cat": 1, "dog": 1}
    finally:
        catalog.close()


def test_migrating_warns_that_older_mmretrieval_can_no_longer_open_it(tmp_path, logged):
    path = tmp_path / "catalog.sqlite"
    Catalog(path).close()
    assert not logged.warnings()  # a new catalog is no migration
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '6' WHERE key = 'schema'")
    db.commit()
    db.close()
    Catalog(path).close()
    assert logged.warnings() == [f"migrated {tmp_path}'s catalog from schema 6 to {SCHEMA_VERSION}; mmretrieval "
                                 "versions before this one can no longer open it"]


def test_a_read_only_catalog_behind_only_by_data_migrations_is_read_as_it_is(tmp_path, logged):
    """Schema 6 -> 7 only clears GPS (0, 0): a read-only copy of a schema-6 collection is read as it is (with a
    warning); schema 5 (an index it lacks) is refused as before."""
    path = tmp_path / "catalog.sqlite"
    catalog = Catalog(path)
    with catalog.transaction() as db:
        db.execute("INSERT INTO images(path, size, mtime_ns, status) VALUES (x'2f61', 1, 1, 'ok')")
        db.execute("INSERT INTO photos(image_id, latitude, longitude) VALUES (1, 0, 0)")
        catalog.set_meta("schema", "6")
    catalog.close()

    reader = Catalog(path, writable=False)
    try:
        assert reader.counts_by_status() == {"ok": 1}
        assert (reader.photos([1])[1].latitude, reader.photos([1])[1].longitude) == (0.0, 0.0)  # as the warning says
    finally:
        reader.close()
    assert _columns(path, "labels")[0] == "label_set"
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("6",)  # untouched
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", ("5",))
    db.commit()
    db.close()
    (warning,) = logged.warnings()
    assert "schema 6" in warning and "(0, 0)" in warning and "writable" in warning

    with pytest.raises(CollectionError, match="needs its schema migrated"):  # older ones are refused as before
        Catalog(path, writable=False)


def test_every_migration_a_reader_may_skip_says_what_the_reader_sees_meanwhile():
    from mmretrieval.collection.migrations import OLDEST_READABLE, UNMIGRATED_CAVEATS

    assert 1 < OLDEST_READABLE <= SCHEMA_VERSION
    assert set(range(OLDEST_READABLE + 1, SCHEMA_VERSION + 1)) <= set(UNMIGRATED_CAVEATS)


def test_a_reader_switches_to_an_index_another_process_rebuilt_and_never_builds_one(tmp_path, tiny_encoder,
                                                                                     monkeypatch):
    from mmretrieval.collection import upkeep
    from mmretrieval.collection.index import VectorIndex
    from mmretrieval.collection.index_manifest import manifest_stamp

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(400, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        ids = _fill_catalog(col, vectors[:300], lambda i: "photos")
        col.rebuild_index("flat")
    server = Collection.open(tmp_path / "col", model=tiny_encoder)  # the web UI's process, say
    writer = Collection.open(tmp_path / "col", model=tiny_encoder)  # `mmr index --type hnsw` in another process
    try:
        assert server.search(vectors[0], k=1)[0].id == ids[0]
        assert server.info().index_type == "flat"

        loads = []
        real_load = VectorIndex.load

        def counted_load(*args, **kwargs):
            loads.append(1)
            return real_load(*args, **kwargs)

        monkeypatch.setattr(VectorIndex, "load", counted_load)
        writer.rebuild_index("hnsw")
        writer.info()
        assert not loads  # the writer's own save is not read back

        def no_build(self, fill=None) -> None:
            raise AssertionError("the reader built an index instead of loading the saved one")

        monkeypatch.setattr(upkeep.IndexKeeper, "_build", no_build)
        assert server.search(vectors[5], k=1)[0].id == ids[5]
        assert server.info().index_type == "hnsw" and len(loads) == 1
        more = _fill_catalog(writer, vectors[300:], lambda i: "more")  # a change the saved index lacks
        assert server.search(vectors[350], k=1)[0].id == more[50]  # caught up from the catalog: no build
        info = server.info()
        assert (info.index_type, info.index_vectors) == ("hnsw", 400) and len(loads) == 1
        stamp = manifest_stamp(tmp_path / "col")
        with writer.writing():  # a writer's end-of-run save of the same index, caught up: cheaper caught up here
            pass
        assert manifest_stamp(tmp_path / "col") != stamp
        assert server.search(vectors[360], k=1)[0].id == more[60] and len(loads) == 1
    finally:
        server.close()
        writer.close()
