"""``mmr import``: clip-retrieval output folders made here, good and corrupt shards, re-runs, SIGKILL, provenance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from mmretrieval.cli import main  # noqa: E402
from mmretrieval.collection.collection import Collection  # noqa: E402
from mmretrieval.collection.import_writer import provenance  # noqa: E402
from mmretrieval.collection.imports import import_embeddings  # noqa: E402
from mmretrieval.errors import CollectionError  # noqa: E402

DIM = 32  # tests/conftest.py's tiny model


def unit_rows(rng: np.random.Generator, rows: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_shard(folder: Path, number: int, paths: list, vectors: np.ndarray, captions: list | None = None) -> None:
    """One clip-retrieval shard: img_emb/img_emb_N.npy and metadata/metadata_N.parquet."""
    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    np.save(folder / "img_emb" / f"img_emb_{number}.npy", vectors)
    columns = {"image_path": pa.array(paths, pa.string())}
    if captions is not None:
        columns["caption"] = pa.array(captions, pa.string())
    pq.write_table(pa.table(columns), folder / "metadata" / f"metadata_{number}.parquet")


def make_folder(folder: Path, shards: int, rows: int, seed: int = 0, prefix: str = "/gone/photos") -> np.ndarray:
    """``shards`` shards of ``rows`` rows with paths ``prefix/s{shard}_{row}.jpg``; returns all vectors."""
    rng = np.random.default_rng(seed)
    vectors = unit_rows(rng, shards * rows)
    for shard in range(shards):
        paths = [f"{prefix}/s{shard}_{row}.jpg" for row in range(rows)]
        write_shard(folder, shard, paths, vectors[shard * rows:(shard + 1) * rows].astype(np.float16),
                    [f"caption {shard} {row}" for row in range(rows)])
    return vectors


@pytest.fixture()
def collection(tmp_path, tiny_encoder):
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as opened:
        yield opened


def stored(collection: Collection) -> dict[str, np.ndarray]:
    ids, vectors = collection.vectors()
    rows = collection.catalog.rows(ids.tolist())
    return {rows[i].path: vector for i, vector in zip(ids.tolist(), vectors)}


def test_import_lands_every_row_with_captions_and_unit_vectors(tmp_path, collection):
    vectors = make_folder(tmp_path / "emb", shards=3, rows=50)
    summary = import_embeddings(collection, tmp_path / "emb")
    assert (summary.rows_added, summary.shards_added, summary.rows_known) == (150, 3, 0)
    assert summary.renormalised == 0  # float16 rounding of unit vectors is within tolerance
    by_path = stored(collection)
    assert len(by_path) == 150
    np.testing.assert_allclose(by_path["/gone/photos/s1_7.jpg"], vectors[57], atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(np.stack(list(by_path.values())), axis=1), 1, atol=1e-3)  # stored as float16
    assert collection.catalog.counts_by_status() == {"ok": 150}
    hit = collection.similar("/gone/photos/s2_0.jpg", k=1)[0]
    assert hit.caption is not None and hit.caption.startswith("caption ")


def test_similar_for_a_gone_file_uses_its_stored_vector(tmp_path, collection):
    vectors = make_folder(tmp_path / "emb", shards=1, rows=40)
    import_embeddings(collection, tmp_path / "emb")
    assert not os.path.exists("/gone/photos/s0_3.jpg")
    hits = collection.similar("/gone/photos/s0_3.jpg", k=5)
    expected = np.argsort(-(vectors @ vectors[3]))[1:6]  # brute force, the file itself left out
    assert [hit.path for hit in hits] == [f"/gone/photos/s0_{i}.jpg" for i in expected]
    assert hits[0].score == pytest.approx(float(vectors[expected[0]] @ vectors[3]), abs=5e-3)


def test_reimport_skips_imported_shards_and_known_paths(tmp_path, collection):
    make_folder(tmp_path / "emb", shards=2, rows=30)
    import_embeddings(collection, tmp_path / "emb")
    again = import_embeddings(collection, tmp_path / "emb")
    assert (again.rows_added, again.shards_skipped, again.shards_added) == (0, 2, 0)
    # another export overlapping the first: its known paths are skipped, only new ones land
    rng = np.random.default_rng(5)
    paths = [f"/gone/photos/s0_{row}.jpg" for row in range(10)] + [f"/new/{row}.jpg" for row in range(5)]
    write_shard(tmp_path / "emb2", 0, paths + ["/new/0.jpg"], unit_rows(rng, 16))  # and a path twice
    other = import_embeddings(collection, tmp_path / "emb2")
    assert (other.rows_added, other.rows_known) == (5, 11)
    assert len(collection.vectors()[0]) == 65
    sources = {s.source: s for s in provenance(collection.catalog)}
    assert sources[str(tmp_path / "emb")].rows == 60 and sources[str(tmp_path / "emb")].shards == 2
    assert sources[str(tmp_path / "emb2")].rows == 5


def test_new_rows_among_known_ones_get_their_own_vectors(tmp_path, collection):
    """Known paths interleaved with new ones (and a repeat): each new path lands with the vector of its row."""
    make_folder(tmp_path / "emb", shards=1, rows=20)
    import_embeddings(collection, tmp_path / "emb")
    rng = np.random.default_rng(9)
    paths = ["/gone/photos/s0_3.jpg", "/new/a.jpg", "/gone/photos/s0_4.jpg", "/new/b.jpg", "/new/a.jpg", "/new/c.jpg"]
    vectors = unit_rows(rng, len(paths))
    write_shard(tmp_path / "emb2", 0, paths, vectors, ["known", "a", "known", "b", "a again", "c"])
    summary = import_embeddings(collection, tmp_path / "emb2")
    assert (summary.rows_added, summary.rows_known) == (3, 3)
    by_path = stored(collection)
    for path, row in (("/new/a.jpg", 1), ("/new/b.jpg", 3), ("/new/c.jpg", 5)):
        np.testing.assert_allclose(by_path[path], vectors[row], atol=2e-3)
    assert collection.similar("/new/b.jpg", k=1)  # a landed row is searchable
    captions = {row.path: row.caption for row in collection.catalog.rows(collection.vectors()[0].tolist()).values()}
    assert (captions["/new/a.jpg"], captions["/new/c.jpg"]) == ("a", "c")


def test_a_known_path_inside_a_new_looking_shard_is_skipped_and_the_rest_land_right(tmp_path, collection):
    """First and last paths new, so the vectors are appended under guessed ids while the rows go in; a known path
    and a repeat in between prove the guess wrong: that block is left as waste, the new rows get their own."""
    make_folder(tmp_path / "emb", shards=1, rows=20)
    import_embeddings(collection, tmp_path / "emb")
    rows_before = collection.catalog.segments.total_rows()
    rng = np.random.default_rng(11)
    paths = ["/new/first.jpg", "/gone/photos/s0_3.jpg", "/new/a.jpg", "/new/a.jpg", "/new/last.jpg"]
    vectors = unit_rows(rng, len(paths))
    write_shard(tmp_path / "emb2", 0, paths, vectors)
    summary = import_embeddings(collection, tmp_path / "emb2")
    assert (summary.rows_added, summary.rows_known) == (3, 2)
    by_path = stored(collection)
    assert len(by_path) == 23
    for path, row in (("/new/first.jpg", 0), ("/new/a.jpg", 2), ("/new/last.jpg", 4)):
        np.testing.assert_allclose(by_path[path], vectors[row], atol=2e-3)
    assert collection.catalog.segments.total_rows() == rows_before + 5 + 3  # the guessed block, then the new rows
    assert {s.source: s.rows for s in provenance(collection.catalog)}[str(tmp_path / "emb2")] == 3


def test_a_v4_catalog_with_imported_rows_migrates_to_id_ranges(tmp_path, tiny_encoder):
    """Schema 4 kept a provenance row per imported image and indexed every content hash (NULL ones too) and
    every status ('ok' too)."""
    import sqlite3

    make_folder(tmp_path / "emb", shards=2, rows=10)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        import_embeddings(col, tmp_path / "emb")
        with col.catalog.transaction() as db:
            db.execute("DELETE FROM images WHERE path = ?", (b"/gone/photos/s1_9.jpg",))
    with sqlite3.connect(tmp_path / "col" / "catalog.sqlite") as db:  # back to what schema 4 wrote
        db.execute("CREATE TABLE imported_rows (image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE "
                   "CASCADE, shard_id INTEGER NOT NULL REFERENCES import_shards(id))")
        db.execute("INSERT INTO imported_rows SELECT i.id, s.id FROM images i JOIN import_shards s "
                   "ON i.id BETWEEN s.first_id AND s.last_id")
        db.execute("ALTER TABLE import_shards DROP COLUMN first_id")
        db.execute("ALTER TABLE import_shards DROP COLUMN last_id")
        db.execute("DROP INDEX images_hash")
        db.execute("CREATE INDEX images_hash ON images(content_hash)")
        db.execute("DROP INDEX images_status")
        db.execute("CREATE INDEX images_status ON images(status)")
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    with Collection.open(tmp_path / "col") as col:
        assert col.catalog.get_meta("schema") == "7"  # through 5 (id ranges), 6 (status index), 7 (no GPS 0,0)
        status_sql, = col.catalog.select("SELECT sql FROM sqlite_master WHERE name = 'images_status'", ())[0]
        assert "WHERE status != 'ok'" in status_sql
        assert col.catalog.counts_by_status() == {"ok": 19}
        assert [(s.source, s.shards, s.rows) for s in provenance(col.catalog)] == [(str(tmp_path / "emb"), 2, 19)]
        index_sql, = col.catalog.select("SELECT sql FROM sqlite_master WHERE name = 'images_hash'", ())[0]
        assert "WHERE content_hash IS NOT NULL" in index_sql
        assert not col.catalog.select("SELECT 1 FROM sqlite_master WHERE name = 'imported_rows'", ())
        more = import_embeddings(col, tmp_path / "emb")  # the shards are still known as imported
        assert (more.shards_skipped, more.rows_added) == (2, 0)


def test_a_path_that_is_not_utf8_lands_too(tmp_path, collection):
    """Keys JSON cannot carry (another collection's raw path bytes) take the row-by-row route, same result."""
    from mmretrieval.collection.import_writer import ShardLanding, ensure_schema
    from mmretrieval.collection.import_sources import CheckedShard

    vectors = unit_rows(np.random.default_rng(2), 3)
    keys = [b"/photos/caf\xe9.jpg", b"/photos/plain.jpg", b"/photos/\xff\xfe.png"]
    shard = CheckedShard("segment-000001", tmp_path / "x.vec", keys, [None, "plain", None], vectors)
    with collection.writing("busy"), ShardLanding(collection) as landing:
        ensure_schema(collection.catalog)
        assert landing.land(shard, str(tmp_path), "fp") == (3, 0, 0)
    ids, stored_vectors = collection.vectors()
    rows = collection.catalog.rows(ids.tolist())
    by_key = {os.fsencode(rows[i].path): vector for i, vector in zip(ids.tolist(), stored_vectors)}
    assert set(by_key) == set(keys)
    np.testing.assert_allclose(by_key[b"/photos/\xff\xfe.png"], vectors[2], atol=2e-3)


def test_non_unit_vectors_are_renormalised_and_counted(tmp_path, collection):
    rng = np.random.default_rng(1)
    vectors = unit_rows(rng, 20)
    vectors[:7] *= 3.0
    write_shard(tmp_path / "emb", 0, [f"/x/{i}.jpg" for i in range(20)], vectors)
    summary = import_embeddings(collection, tmp_path / "emb")
    assert summary.renormalised == 7
    np.testing.assert_allclose(np.linalg.norm(collection.vectors()[1], axis=1), 1, atol=1e-3)  # stored as float16


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.dtype(">f2"), np.float64])
def test_row_norms_match_float64_and_keep_nan_and_inf(dtype):
    from mmretrieval.collection.import_vectors import row_norms

    rng = np.random.default_rng(6)
    scales = np.tile([0.01, 1.0, 200.0], 500)[:, None]  # tiny, unit-ish and large rows (200^2 * 24 > f16 max)
    block = (rng.standard_normal((1500, 24)) * scales).astype(dtype)  # 1500 rows: several torch calls
    block[7, 3], block[9, 0] = np.nan, np.inf
    expected = np.sqrt((block.astype(np.float64) ** 2).sum(axis=1))
    got = row_norms(block)
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-5)
    assert got.dtype == np.float32 and np.isnan(got[7]) and np.isinf(got[9]) and finite.sum() == 1498


def _corrupt(kind: str, folder: Path, rng: np.random.Generator) -> Path:
    """Shard 1 of ``folder`` made bad in one way; returns the file the error must name."""
    paths = [f"/bad/{i}.jpg" for i in range(20)]
    npy = folder / "img_emb" / "img_emb_1.npy"
    if kind == "wrong_dim":
        write_shard(folder, 1, paths, unit_rows(rng, 20, DIM * 2))
    elif kind == "row_mismatch":
        write_shard(folder, 1, paths[:19], unit_rows(rng, 20))
        return folder / "metadata" / "metadata_1.parquet"
    elif kind == "truncated":
        write_shard(folder, 1, paths, unit_rows(rng, 20))
        npy.write_bytes(npy.read_bytes()[:-100])
    elif kind == "nan":
        vectors = unit_rows(rng, 20)
        vectors[13, 4] = np.nan
        write_shard(folder, 1, paths, vectors)
    elif kind == "empty_path":
        write_shard(folder, 1, paths[:5] + [""] + paths[6:], unit_rows(rng, 20))
        return folder / "metadata" / "metadata_1.parquet"
    elif kind == "no_metadata":
        write_shard(folder, 1, paths, unit_rows(rng, 20))
        (folder / "metadata" / "metadata_1.parquet").unlink()
    return npy


@pytest.mark.parametrize("kind, words", [
    ("wrong_dim", "64-d vectors"), ("row_mismatch", "19 rows"), ("truncated", "truncated"),
    ("nan", "row 13"), ("empty_path", "row 5"), ("no_metadata", "no metadata"),
])
def test_a_bad_shard_is_named_and_nothing_of_it_lands(tmp_path, collection, kind, words):
    folder = tmp_path / "emb"
    make_folder(folder, shards=1, rows=25)
    write_shard(folder, 2, [f"/late/{i}.jpg" for i in range(5)], unit_rows(np.random.default_rng(2), 5))
    named = _corrupt(kind, folder, np.random.default_rng(3))
    with pytest.raises(CollectionError) as error:
        import_embeddings(collection, folder)
    assert str(named) in str(error.value) and words in str(error.value)
    paths = set(stored(collection))
    if kind != "no_metadata":  # found while listing the shards, before any shard lands
        assert len(paths) == 25 and all(p.startswith("/gone/") for p in paths)  # shard 0 in, 1 and 2 not
    assert not any(p.startswith(("/bad/", "/late/")) for p in paths)


def test_a_bad_vector_blocks_into_a_shard_rolls_back_what_was_written_before_it(tmp_path, collection, monkeypatch):
    """Blocks before the bad one were checked, written and given places inside the shard's transaction: the
    rollback must take all of them back, and a corrected shard must then land whole."""
    import mmretrieval.collection.import_vectors as import_vectors

    monkeypatch.setattr(import_vectors, "BLOCK_ROWS", 8)
    vectors = unit_rows(np.random.default_rng(12), 40)
    paths = [f"/blocks/{row}.jpg" for row in range(40)]
    bad = vectors.copy()
    bad[29, 5] = np.nan  # block 3 of 5
    write_shard(tmp_path / "emb", 0, paths, bad)
    with pytest.raises(CollectionError, match="row 29"):
        import_embeddings(collection, tmp_path / "emb")
    assert collection.catalog.vector_count() == 0 and stored(collection) == {}
    assert provenance(collection.catalog) == []
    write_shard(tmp_path / "emb", 0, paths, vectors)  # fixed: a new fingerprint
    assert import_embeddings(collection, tmp_path / "emb").rows_added == 40
    by_path = stored(collection)
    assert len(by_path) == 40
    for row in (0, 17, 29, 39):
        np.testing.assert_allclose(by_path[f"/blocks/{row}.jpg"], vectors[row], atol=2e-3)


def test_the_next_shards_vectors_start_while_one_commits_and_stop_when_it_fails(tmp_path, collection, monkeypatch):
    """Each shard's vectors are queued while the shard before it commits (when its check is ready), under the
    ids its rows then get; when a shard fails, the one queued behind it stops, neither lands, and a re-run
    with the shard fixed lands them all with the right vectors."""
    import mmretrieval.collection.import_vectors as import_vectors
    import mmretrieval.collection.imports as imports_module
    from mmretrieval.collection.import_writer import ShardLanding

    monkeypatch.setattr(import_vectors, "BLOCK_ROWS", 8)
    queued_during = []  # (shard queued, shard being landed) pairs, None when queued by its own land()
    landing_now: list = [None]
    original_land, original_queue = ShardLanding.land, ShardLanding._queue

    def land(self, shard, *args, **kwargs):
        landing_now[0] = shard.name
        return original_land(self, shard, *args, **kwargs)

    def queue(self, shard, base, any_known):
        queued_during.append((shard.name, None if landing_now[0] == shard.name else landing_now[0]))
        return original_queue(self, shard, base, any_known)

    monkeypatch.setattr(ShardLanding, "land", land)
    monkeypatch.setattr(ShardLanding, "_queue", queue)
    monkeypatch.setattr(imports_module._CheckedAhead, "ready", lambda self: self._ahead.result()
                        if self._ahead is not None and self._ahead.exception() is None else None)  # wait for it
    rng = np.random.default_rng(13)
    vectors = unit_rows(rng, 120)
    paths = [f"/queued/{row}.jpg" for row in range(120)]
    bad = vectors.copy()
    bad[40 + 29, 3] = np.inf  # shard 1, block 3 of 5
    for shard in range(3):
        write_shard(tmp_path / "emb", shard, paths[shard * 40:(shard + 1) * 40], bad[shard * 40:(shard + 1) * 40])
    with pytest.raises(CollectionError, match="img_emb_1.npy row 29"):
        import_embeddings(collection, tmp_path / "emb")
    assert queued_during == [("img_emb_0", None), ("img_emb_1", "img_emb_0"), ("img_emb_2", "img_emb_1")]
    assert sorted(stored(collection)) == sorted(paths[:40])  # shard 0 only: shard 2, queued, did not land
    assert [s.shard_names for s in provenance(collection.catalog)] == [("img_emb_0",)]

    write_shard(tmp_path / "emb", 1, paths[40:80], vectors[40:80])  # fixed: a new fingerprint
    queued_during.clear()
    summary = import_embeddings(collection, tmp_path / "emb")
    assert (summary.shards_skipped, summary.rows_added) == (1, 80)
    assert queued_during == [("img_emb_1", None), ("img_emb_2", "img_emb_1")]
    by_path = stored(collection)
    assert len(by_path) == 120
    for row in range(120):
        np.testing.assert_allclose(by_path[paths[row]], vectors[row], atol=2e-3)


def test_read_ahead_stops_its_producer_when_the_consumer_stops_and_passes_errors_on():
    from mmretrieval.collection.import_writer import _ahead

    produced = []

    def endless():
        row = 0
        while True:
            produced.append(row)
            yield row
            row += 1

    ahead = _ahead(endless(), depth=2)
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    ahead.close()  # joins the producer: it must notice, not wait on a full queue forever
    made = len(produced)
    time.sleep(0.3)
    assert len(produced) == made <= 3 + 2 + 1

    def failing():
        yield 1
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        list(_ahead(failing()))


def test_relative_paths_resolve_against_root_and_uris_are_kept(tmp_path, collection):
    rng = np.random.default_rng(4)
    paths = ["a/b.jpg", "https://example.org/c.jpg", "/x/./y/../z.jpg", "/x//w.jpg", "/x/.hidden.jpg"]
    write_shard(tmp_path / "emb", 0, paths, unit_rows(rng, len(paths)))
    import_embeddings(collection, tmp_path / "emb", root=tmp_path / "pics")
    assert set(stored(collection)) == {str(tmp_path / "pics" / "a" / "b.jpg"), "https://example.org/c.jpg",
                                       "/x/z.jpg", "/x/w.jpg", "/x/.hidden.jpg"}
    by_uri = collection.similar("https://example.org/c.jpg", k=10)  # from its stored vector, found by its URI
    assert len(by_uri) == 4 and "https://example.org/c.jpg" not in {hit.path for hit in by_uri}


def test_relative_paths_that_name_no_file_under_the_default_root_are_refused(tmp_path, collection):
    """clip-retrieval writes image_path relative to the folder it ran in: resolved against the import folder, all
    50 paths of a walkthrough's import named no file, in silence, and a re-run skips the landed shard. Without
    --root, the first shard's relative paths must name some file there; --root says where, or accepts them."""
    rng = np.random.default_rng(8)
    names = [f"photos/p{n}.jpg" for n in range(3)]
    write_shard(tmp_path / "emb", 0, names, unit_rows(rng, 3))
    with pytest.raises(CollectionError, match=r"none of the first 3 relative image_path values of metadata_0.parquet "
                       r"names a file under .*emb \(e.g. 'photos/p0.jpg'\); nothing was imported: pass --root"):
        import_embeddings(collection, tmp_path / "emb")
    write_shard(tmp_path / "up", 0, [f"../{name}" for name in names], unit_rows(rng, 3))  # outside the folder
    with pytest.raises(CollectionError, match=r"e.g. '../photos/p0.jpg'"):
        import_embeddings(collection, tmp_path / "up")
    assert collection.vectors()[0].size == 0
    for name in names:  # where clip-retrieval ran
        (tmp_path / "run" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "run" / name).write_bytes(b"jpeg")
    assert import_embeddings(collection, tmp_path / "emb", root=tmp_path / "run").rows_added == 3
    write_shard(tmp_path / "emb2", 0, names, unit_rows(rng, 3))
    assert import_embeddings(collection, tmp_path / "emb2", root=tmp_path / "emb2").rows_added == 3  # as they are
    (tmp_path / "emb3" / "photos").mkdir(parents=True)
    (tmp_path / "emb3" / "photos" / "p1.jpg").write_bytes(b"jpeg")  # one of them is there: the default is right
    write_shard(tmp_path / "emb3", 0, names, unit_rows(rng, 3))
    assert import_embeddings(collection, tmp_path / "emb3").rows_added == 3


def test_relative_paths_in_a_later_shard_are_checked_too(tmp_path, collection):
    """A first shard of absolute paths passed the default root's check and a second shard's relative paths landed
    unchecked, naming no file (import walkthrough: clip-retrieval output with parts of both kinds)."""
    rng = np.random.default_rng(9)
    write_shard(tmp_path / "emb", 0, ["/gone/a0.jpg", "/gone/a1.jpg"], unit_rows(rng, 2))
    write_shard(tmp_path / "emb", 1, ["photos/b0.jpg", "photos/b1.jpg"], unit_rows(rng, 2))
    with pytest.raises(CollectionError, match="none of the first 2 relative image_path values of metadata_1.parquet"):
        import_embeddings(collection, tmp_path / "emb")
    assert sorted(row.path for row in collection.catalog.rows([1, 2]).values()) == ["/gone/a0.jpg", "/gone/a1.jpg"]
    (tmp_path / "emb" / "photos").mkdir()
    (tmp_path / "emb" / "photos" / "b1.jpg").write_bytes(b"jpeg")
    assert import_embeddings(collection, tmp_path / "emb").rows_added == 2  # the second shard, checked, lands


def test_a_metadata_file_without_its_embeddings_is_refused_as_the_reverse_is(tmp_path, collection):
    """Its rows were left out of an import that exited 0 without a word (import walkthrough)."""
    make_folder(tmp_path / "emb", shards=2, rows=3)
    (tmp_path / "emb" / "img_emb" / "img_emb_1.npy").unlink()
    with pytest.raises(CollectionError, match=r"metadata_1.parquet has no embeddings file .*img_emb_1.npy; "
                                              "clip-retrieval writes both"):
        import_embeddings(collection, tmp_path / "emb")
    assert collection.vectors()[0].size == 0


def test_a_damaged_first_metadata_file_is_named(tmp_path, collection):
    """The first shard's parquet was opened for the left-behind warning before its own check, and pyarrow's bare
    "Parquet magic bytes not found" came out (import walkthrough)."""
    make_folder(tmp_path / "emb", shards=1, rows=3)
    (tmp_path / "emb" / "metadata" / "metadata_0.parquet").write_bytes(b"not parquet")
    with pytest.raises(CollectionError, match=r"metadata_0.parquet is not a readable parquet file"):
        import_embeddings(collection, tmp_path / "emb")


def test_a_shard_that_partly_overlaps_counts_only_the_added_vectors_it_renormalised(tmp_path, collection, caplog):
    """It counted every off-unit vector of the shard, the known paths' too, whose vectors were not stored."""
    rng = np.random.default_rng(4)
    write_shard(tmp_path / "first", 0, ["/x/0.jpg", "/x/1.jpg"], unit_rows(rng, 2))
    import_embeddings(collection, tmp_path / "first")
    vectors = unit_rows(rng, 6)
    vectors[[0, 1, 4]] *= 2  # rows 0 and 1 are the known paths: not stored, not counted
    write_shard(tmp_path / "second", 0, [f"/x/{i}.jpg" for i in range(6)], vectors)
    with caplog.at_level("WARNING"):
        summary = import_embeddings(collection, tmp_path / "second")
    assert (summary.rows_added, summary.rows_known, summary.renormalised) == (4, 2, 1)
    assert "1 of the 4 vectors it added were not unit length" in caplog.text
    assert {s.source: s.renormalised for s in provenance(collection.catalog)}[str(tmp_path / "second")] == 1


def test_a_shard_read_again_that_adds_nothing_renormalises_nothing(tmp_path, collection, caplog):
    """Its known rows were counted (and warned about) as renormalised again (import walkthrough)."""
    vectors = unit_rows(np.random.default_rng(3), 4)
    vectors[0] *= 2
    write_shard(tmp_path / "emb", 0, [f"/x/{i}.jpg" for i in range(4)], vectors)
    assert import_embeddings(collection, tmp_path / "emb").renormalised == 1
    os.utime(tmp_path / "emb" / "img_emb" / "img_emb_0.npy", ns=(1, 1))  # touched: the shard is read again
    caplog.clear()
    with caplog.at_level("WARNING"):
        again = import_embeddings(collection, tmp_path / "emb")
    assert (again.rows_added, again.rows_known, again.renormalised) == (0, 4, 0)
    assert "not unit length" not in caplog.text


@pytest.mark.parametrize("known", [0, 3])
def test_progress_is_reported_as_a_shards_blocks_are_written(tmp_path, collection, monkeypatch, known):
    """One big shard drew no bar until it had committed: progress came only after each shard."""
    from mmretrieval.collection import import_vectors

    monkeypatch.setattr(import_vectors, "BLOCK_ROWS", 4)
    vectors = unit_rows(np.random.default_rng(5), 10)
    paths = [f"/x/{i}.jpg" for i in range(10)]
    if known:  # the shard's first paths are known: its new rows are appended by another route
        write_shard(tmp_path / "before", 0, paths[:known], vectors[:known])
        import_embeddings(collection, tmp_path / "before")
    write_shard(tmp_path / "emb", 0, paths, vectors)
    reports = []
    summary = import_embeddings(collection, tmp_path / "emb", progress=lambda done, total: reports.append(done))
    assert summary.rows_added == 10 - known
    assert reports[0] == 0 and reports[-1] == 10 and reports == sorted(reports)
    assert len([done for done in reports if 0 < done < 10]) >= 1 and reports.count(10) == 1


def test_a_collection_moved_between_shards_stops_the_import_saying_so(tmp_path, tiny_encoder):
    """It said "manifest.json is missing ... restore it from a backup" (a review), or failed on SQLite's "unable to
    open database file" from the checkpoint that opens the catalog by path: both now check the folder first."""
    import shutil

    make_folder(tmp_path / "emb", shards=2, rows=3)

    def move_after_the_first(done: int, total: int) -> None:
        if 0 < done < total:  # (0: the report at the start)
            shutil.move(tmp_path / "col", tmp_path / "moved")

    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as collection:
        with pytest.raises(CollectionError, match="was moved or deleted while this command was writing to it"):
            import_embeddings(collection, tmp_path / "emb", progress=move_after_the_first)
    assert not (tmp_path / "col").exists()
    with Collection.open(tmp_path / "moved") as moved:  # whole shards: the second too when its vectors were
        assert moved.catalog.vector_count() in (3, 6) and moved.check().problems == ()  # appended before the move


def test_cli_import_json_info_provenance_and_similar(tmp_path, tiny_model_dir, capsys):
    make_folder(tmp_path / "emb", shards=2, rows=20)
    collection = str(tmp_path / "col")
    assert main(["import", str(tmp_path / "emb"), "--collection", collection, "--model", str(tiny_model_dir),
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows_added"] == 40
    assert "imported 40 vectors (2 shards read) in " in captured.err
    assert main(["info", "--collection", collection, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["imported"] == {str(tmp_path / "emb"): 40} and info["vectors"] == 40
    assert main(["similar", "/gone/photos/s1_3.jpg", "--collection", collection, "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "/gone/photos/s1_3.jpg" not in [line.split("\t")[1] for line in lines]
    assert main(["import", str(tmp_path / "nope"), "--collection", collection]) == 2
    assert "is not a folder" in capsys.readouterr().err
    # a new collection needs the model that made the vectors: the demo model never did
    assert main(["import", str(tmp_path / "emb"), "--collection", str(tmp_path / "new")]) == 2
    assert "--model is needed to create" in capsys.readouterr().err and not (tmp_path / "new").exists()
    # but a mistyped folder is named first: --model would not make it right
    assert main(["import", str(tmp_path / "nope"), "--collection", str(tmp_path / "new")]) == 2
    assert "is not a folder" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_cli_import_bar_closes_before_the_index_update(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """The import bar stayed open through the index update, so its closing rate counted it (5,518 vec/s on the bar
    against 50,378/s in the summary, import walkthrough): it now closes with the last shard, before the update."""
    from mmretrieval.collection.upkeep import IndexKeeper

    sync = IndexKeeper.sync

    def noted_sync(self, *args, **kwargs):
        print("index update starts", file=sys.stderr)
        return sync(self, *args, **kwargs)

    monkeypatch.setattr(IndexKeeper, "sync", noted_sync)
    make_folder(tmp_path / "emb", shards=2, rows=20)
    assert main(["import", str(tmp_path / "emb"), "--collection", str(tmp_path / "col"), "--model",
                 str(tiny_model_dir)]) == 0
    lines = capsys.readouterr().err.splitlines()
    closed = next(i for i, line in enumerate(lines) if line.startswith("import: 40/40"))
    assert closed < lines.index("index update starts"), lines


def test_cli_import_no_index_leaves_the_index_to_mmr_index(tmp_path, tiny_model_dir, capsys):
    make_folder(tmp_path / "emb", shards=1, rows=20)
    collection = str(tmp_path / "col")
    assert main(["import", str(tmp_path / "emb"), "--collection", collection, "--model", str(tiny_model_dir),
                 "--no-index"]) == 0
    assert "index left for `mmr index`" in capsys.readouterr().err
    assert main(["info", "--collection", collection, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vectors"] == 20 and info["index_saved"] is False  # a reader caught up in memory, wrote nothing
    assert main(["index", "--collection", collection]) == 0
    capsys.readouterr()
    assert main(["info", "--collection", collection, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["index_saved"] is True


_CHILD = textwrap.dedent("""
    import sys
    from mmretrieval.collection.collection import Collection
    from mmretrieval.collection.imports import import_embeddings

    with Collection.open(sys.argv[1]) as collection:
        import_embeddings(collection, sys.argv[2], progress=lambda done, total: print(done, flush=True))
    print("finished", flush=True)
""")


def _import_in_child(collection_dir: Path, folder: Path, kill_after_lines: int | None, kill_delay_s: float) -> bool:
    """Import in a subprocess; SIGKILL it ``kill_delay_s`` after its ``kill_after_lines``-th progress line."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(collection_dir), str(folder)],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    lines = 0
    for line in child.stdout:
        if line.strip() == "finished":
            break
        lines += 1
        if kill_after_lines is not None and lines >= kill_after_lines:
            time.sleep(kill_delay_s)
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=120)
    child.stdout.close()
    return child.returncode == 0


@pytest.mark.slow
def test_sigkill_during_import_then_rerun_loses_and_duplicates_nothing(tmp_path, tiny_encoder):
    folder = tmp_path / "emb"
    vectors = make_folder(folder, shards=12, rows=3000)
    collection_dir = tmp_path / "col"
    Collection.open(collection_dir, model=tiny_encoder, create=True).close()
    interrupted = [not _import_in_child(collection_dir, folder, after, delay)
                   for after, delay in ((1, 0.0), (3, 0.05), (6, 0.02))]
    assert any(interrupted)
    with Collection.open(collection_dir) as collection:
        partial = len(collection.vectors()[0])
        assert partial % 3000 == 0 and partial < 36000  # whole shards only, and the kills did interrupt
        summary = import_embeddings(collection, folder)
        assert summary.rows_added == 36000 - partial and summary.rows_known == 0
        ids, _ = collection.vectors()
        by_path = stored(collection)
        assert len(ids) == len(set(ids.tolist())) == len(by_path) == 36000
        np.testing.assert_allclose(by_path["/gone/photos/s11_2999.jpg"], vectors[-1], atol=2e-3)
        assert collection.catalog.counts_by_status() == {"ok": 36000}
        assert sum(source.rows for source in provenance(collection.catalog)) == 36000


def test_import_another_collections_segments_live_rows_only(tmp_path, collection, tiny_encoder, shapes_encoder):
    vectors = make_folder(tmp_path / "emb", shards=2, rows=30)
    with Collection.open(tmp_path / "other", model=tiny_encoder, create=True) as other:
        import_embeddings(other, tmp_path / "emb")
        with other.catalog.transaction() as db:  # a deleted row leaves a tombstone in its segment
            db.execute("DELETE FROM images WHERE path = ?", (b"/gone/photos/s0_4.jpg",))
    summary = import_embeddings(collection, tmp_path / "other")
    assert (summary.rows_added, summary.rows_known) == (59, 0)
    by_path = stored(collection)
    assert "/gone/photos/s0_4.jpg" not in by_path and len(by_path) == 59
    np.testing.assert_allclose(by_path["/gone/photos/s1_29.jpg"], vectors[59], atol=2e-3)
    assert collection.similar("/gone/photos/s1_2.jpg", k=1)[0].caption.startswith("caption 1 ")
    assert import_embeddings(collection, tmp_path / "other").shards_skipped >= 1
    with Collection.open(tmp_path / "shapes", model=shapes_encoder, create=True) as foreign:
        with pytest.raises(CollectionError, match="same model"):
            import_embeddings(foreign, tmp_path / "other")
        with pytest.raises(CollectionError, match="the collection itself"):
            import_embeddings(foreign, tmp_path / "shapes")


def test_checkpoints_aside_copy_the_wal_beside_and_at_the_end_then_sqlites_are_back(tmp_path):
    """While an import lands shards, SQLite's own checkpoints are off on the writer's connection; the
    checkpoint started beside copies the WAL into the database, a last one runs at the end, and SQLite's own
    are back on."""
    import sqlite3

    from mmretrieval.collection.catalog import Catalog

    path = tmp_path / "catalog.sqlite"

    def rows_in_database_file() -> int:  # immutable: the WAL is not read
        try:
            with sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True) as main_file:
                return main_file.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        except sqlite3.DatabaseError:  # caught mid-copy
            return -1

    def insert(db, count, start=0):
        db.executemany("INSERT INTO images(path, size, mtime_ns, status) VALUES (?, 0, 0, 'ok')",
                       [(f"/x/{i:06d}.jpg".encode(),) for i in range(start, start + count)])

    catalog = Catalog(path)
    catalog._query("PRAGMA wal_checkpoint(TRUNCATE)")  # the empty tables into the database file
    with catalog.checkpoints_aside() as checkpoint:
        assert catalog._query("PRAGMA wal_autocheckpoint") == [(0,)]
        with catalog.transaction() as db:
            insert(db, 20_000)
        assert rows_in_database_file() == 0  # committed to the WAL only
        checkpoint()
        deadline = time.monotonic() + 30
        while rows_in_database_file() != 20_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rows_in_database_file() == 20_000  # copied beside, before the block ended
        with catalog.transaction() as db:
            insert(db, 5, start=20_000)
        assert rows_in_database_file() == 20_000
    assert rows_in_database_file() == 20_005  # the last checkpoint
    assert catalog._query("PRAGMA wal_autocheckpoint") == [(1000,)]


def test_a_checkpoint_error_does_not_hide_the_imports_own_and_is_raised_after_a_clean_run(tmp_path, monkeypatch):
    import sqlite3

    import mmretrieval.collection.catalog as catalog_module
    from mmretrieval.collection.catalog import Catalog

    def broken(path):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(catalog_module, "checkpoint_wal", broken)
    catalog = Catalog(tmp_path / "catalog.sqlite")
    catalog._query("PRAGMA wal_autocheckpoint=500")
    with pytest.raises(CollectionError, match="bad shard"):
        with catalog.checkpoints_aside() as checkpoint:
            checkpoint()
            raise CollectionError("bad shard")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        with catalog.checkpoints_aside():
            pass
    assert catalog._query("PRAGMA wal_autocheckpoint") == [(500,)]  # as it was before, both times


def test_a_shard_that_fails_before_its_vectors_are_written_stops_them(tmp_path, collection, monkeypatch):
    """An error on the SQL side of a shard (here its row insert) stops its own vector work within a few blocks
    instead of leaving it to check and write the whole shard as waste."""
    import sqlite3

    import mmretrieval.collection.import_vectors as import_vectors
    import mmretrieval.collection.import_writer as import_writer
    from mmretrieval.collection.import_writer import ShardLanding, ensure_schema
    from mmretrieval.collection.import_sources import CheckedShard

    monkeypatch.setattr(import_vectors, "BLOCK_ROWS", 8)
    original_blocks = import_writer.checked_blocks

    def slow_blocks(path, vectors):  # a block every 20 ms: 50 blocks would take a second
        for item in original_blocks(path, vectors):
            time.sleep(0.02)
            yield item

    def failing_insert(db, shard):
        time.sleep(0.1)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(import_writer, "checked_blocks", slow_blocks)
    monkeypatch.setattr(import_writer, "_insert_rows", failing_insert)
    vectors = unit_rows(np.random.default_rng(14), 400)
    shard = CheckedShard("img_emb_0", tmp_path / "x.npy", [f"/s/{i}.jpg".encode() for i in range(400)],
                         [None] * 400, vectors)
    with collection.writing("busy"):
        ensure_schema(collection.catalog)
        with pytest.raises(sqlite3.OperationalError, match="full"), ShardLanding(collection) as landing:
            landing.land(shard, str(tmp_path), "fp")
        written = collection.catalog.segments.total_rows()
    assert 0 < written < 200  # stopped after a handful of the 50 blocks; nothing of it is referenced
    assert collection.catalog.vector_count() == 0


def test_a_byte_identical_copy_ranks_first_at_1_above_a_stored_row_longer_than_1(tmp_path, collection):
    """float16 storage leaves a unit vector 1 +- 4e-5 long, and raw dot products put a re-saved copy (1.00004:
    "1.0000") above the byte-identical one (0.99996), which `--threshold 1` then missed (photos walkthrough).
    Here the re-save's row is 1.0015 long, within what an import stores as it is."""
    rng = np.random.default_rng(4)
    original = unit_rows(rng, 1)[0]
    resaved = original + 0.01 * unit_rows(rng, 1)[0]
    resaved = 1.0015 * resaved / np.linalg.norm(resaved)
    vectors = np.stack([original, original, resaved, *unit_rows(rng, 5)])
    write_shard(tmp_path / "emb", 0, [f"/gone/{name}.jpg" for name in ("orig", "copy", "resaved", *"abcde")],
                vectors.astype(np.float16))
    assert import_embeddings(collection, tmp_path / "emb").renormalised == 0
    hits = collection.similar("/gone/orig.jpg", k=3)
    assert [hit.path for hit in hits[:2]] == ["/gone/copy.jpg", "/gone/resaved.jpg"]
    assert hits[0].score == 1.0 and hits[1].score == pytest.approx(float(original @ resaved) / 1.0015, abs=2e-4)
    assert [hit.path for hit in collection.similar("/gone/orig.jpg", threshold=1.0)] == ["/gone/copy.jpg"]
    _, scored = collection.catalog.vectors()  # as the index and the scores get them
    np.testing.assert_allclose(np.linalg.norm(scored, axis=1), 1, atol=1e-6)
    ids, stored = collection.vectors()  # the public API gives them as stored
    assert np.linalg.norm(stored[ids.tolist().index(3)]) == pytest.approx(1.0015, abs=1e-3)


@pytest.mark.parametrize("status", ["failed", "pending", "skipped", "lost"])
def test_a_path_held_only_as_a_row_without_a_vector_takes_the_imported_vector(tmp_path, collection, status):
    """An ingest that could not decode a file (failed), stopped before embedding it (pending), or found a listed
    file missing (skipped), or a repair that forgot a lost vector (pending, its labels kept) left a row with no
    vector: the import's vector for that path lands (counted as added) instead of being dropped as known, and the
    old row's labels and records go with it (an imported row has no content hash; labels follow content)."""
    from test_ingest import write_good_images

    from mmretrieval.ingest.planning import plan
    from mmretrieval.ingest.reader import discover

    photos = tmp_path / "photos"
    photos.mkdir()
    held = photos / "x0.png"
    if status == "failed":
        held.write_bytes(b"not a png at all")
        collection.ingest([photos], workers=0)
    elif status == "pending":
        held.write_bytes(b"not a png at all")
        plan(collection.catalog, discover([photos]))
    elif status == "skipped":
        (tmp_path / "list.txt").write_text(f"{held}\n")  # named by a list, and not on this machine
        collection.ingest([str(tmp_path / "list.txt")], workers=0)
    else:
        write_good_images(photos, 1)
        held = next(photos.iterdir())
        collection.ingest([photos], workers=0)
        collection.label(["red", "blue"])
        collection.catalog.forget_vectors(collection.catalog.vector_ids().tolist())  # as repair does
        status = "pending"
    assert collection.catalog.counts_by_status() == {status: 1}
    paths = [str(photos / "new.png"), str(held), str(photos / "after.png")]
    vectors = unit_rows(np.random.default_rng(5), len(paths))
    write_shard(tmp_path / "emb", 0, paths, vectors)
    summary = import_embeddings(collection, tmp_path / "emb")
    assert (summary.rows_added, summary.rows_known) == (3, 0)
    assert collection.catalog.counts_by_status() == {"ok": 3}
    by_path = stored(collection)
    for row, path in enumerate(paths):
        np.testing.assert_allclose(by_path[path], vectors[row], atol=2e-3)
    assert collection.catalog.select("PRAGMA foreign_key_check") == []  # no label, record or photo of a gone row
    assert collection.catalog.select("SELECT COUNT(*) FROM labels") == [(0,)]
