"""``mmr export``: a collection written as clip-retrieval output, checked row by row against the catalog, read back
by ``mmr import``, with names that are not UTF-8, refusals, interruptions and SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from mmretrieval.cli import main  # noqa: E402
from mmretrieval.collection.collection import Collection  # noqa: E402
from mmretrieval.collection.exports import export_embeddings  # noqa: E402
from mmretrieval.collection.imports import import_embeddings  # noqa: E402
from mmretrieval.errors import CollectionError  # noqa: E402
from test_import import unit_rows, write_shard  # noqa: E402
from test_ingest import scene_jpeg, write_good_images  # noqa: E402

LATIN1 = b"caf\xe9.jpg"  # a Latin-1 name: not UTF-8


@pytest.fixture(scope="module")
def imported(tmp_path_factory, tiny_encoder) -> Path:
    """23 rows imported from two clip-retrieval shards; captions on some rows of the first."""
    folder = tmp_path_factory.mktemp("imported")
    vectors = unit_rows(np.random.default_rng(0), 23)
    write_shard(folder / "in", 0, [f"/gone/a{row}.jpg" for row in range(13)], vectors[:13].astype(np.float16),
                [None if row % 3 else f"caption {row}" for row in range(13)])
    write_shard(folder / "in", 1, [f"s3://bucket/b{row}.jpg" for row in range(10)], vectors[13:].astype(np.float16))
    with Collection.open(folder / "col", model=tiny_encoder, create=True) as collection:
        import_embeddings(collection, folder / "in")
    return folder / "col"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, tiny_model_dir) -> Path:
    """Real files: a name that is not UTF-8, a file that fails (a row with no vector), and a file changed and
    re-embedded, so that its vector lies after the others' in the segments while its id comes first."""
    folder = tmp_path_factory.mktemp("ingested")
    photos = folder / "photos"
    write_good_images(photos, 4)
    os.rename(photos / "good03.jpg", os.path.join(os.fsencode(photos), LATIN1))
    (photos / "text.jpg").write_text("this is not an image\n")
    with Collection.open(folder / "col", model=str(tiny_model_dir), create=True, device="cpu") as collection:
        collection.ingest([photos], workers=0)
        (photos / "good00.jpg").write_bytes(scene_jpeg(7, seed=5))
        os.utime(photos / "good00.jpg", ns=(1, 10**18))  # a new mtime whatever the clock's resolution
        assert collection.ingest([photos], workers=0).embedded == 1
    return folder / "col"


def read_export(out: Path) -> tuple[list[pa.Table], list[np.ndarray]]:
    """The metadata tables and vector arrays of an export, shard by shard in name order."""
    embeddings = sorted((out / "img_emb").iterdir())
    metadata = sorted((out / "metadata").iterdir())
    assert [p.name[len("img_emb_"):-len(".npy")] for p in embeddings] == \
        [p.name[len("metadata_"):-len(".parquet")] for p in metadata]
    return [pq.read_table(p) for p in metadata], [np.load(p) for p in embeddings]


def catalog_rows(collection: Collection) -> tuple[np.ndarray, list[bytes], list, np.ndarray]:
    """``(ids, path bytes, captions, float32 vectors)`` of the embedded rows in id order, straight from SQLite."""
    rows = collection.catalog.select("SELECT i.id, i.path, i.caption FROM images i JOIN vector_rows v "
                                     "ON v.image_id = i.id ORDER BY i.id")
    ids = np.array([row[0] for row in rows], np.int64)
    found, vectors = collection.vectors(ids.tolist())
    assert found.tolist() == ids.tolist()
    return ids, [bytes(row[1]) for row in rows], [row[2] for row in rows], vectors


def test_shards_match_the_catalog_row_by_row(imported, tmp_path):
    progress: list[tuple[int, int]] = []
    with Collection.open(imported) as collection:
        summary = export_embeddings(collection, tmp_path / "out", shard_rows=5, block_rows=3,
                                    progress=lambda done, total: progress.append((done, total)))
        ids, paths, captions, vectors = catalog_rows(collection)
    tables, arrays = read_export(tmp_path / "out")
    assert (summary.rows, summary.shards, summary.dtype, summary.captions, summary.binary_path_shards) == \
        (23, 5, "float16", True, 0)
    assert [len(t) for t in tables] == [len(a) for a in arrays] == [5, 5, 5, 5, 3]
    assert all(a.dtype == np.float16 and a.shape[1] == 32 for a in arrays)
    table = pa.concat_tables(tables)
    assert table.column("id").to_pylist() == ids.tolist()
    assert [p.encode() for p in table.column("image_path").to_pylist()] == paths
    assert table.column("caption").to_pylist() == captions and captions.count(None) == 18
    np.testing.assert_array_equal(np.concatenate(arrays).astype(np.float32), vectors)  # float16 stored: exact
    assert table.column("width").null_count == len(table)  # imported rows: no pixels, time or camera known
    assert progress[-1] == (23, 23) and [done for done, _ in progress] == sorted({done for done, _ in progress})


def test_shard_names_are_padded_so_that_name_order_is_shard_order(imported, tmp_path):
    with Collection.open(imported) as collection:
        assert export_embeddings(collection, tmp_path / "out", shard_rows=2).shards == 12
    names = sorted(p.name for p in (tmp_path / "out" / "img_emb").iterdir())
    assert names[:2] == ["img_emb_00.npy", "img_emb_01.npy"] and names[-1] == "img_emb_11.npy"
    tables, _ = read_export(tmp_path / "out")
    ids = pa.concat_tables(tables).column("id").to_pylist()
    assert ids == sorted(ids) and len(ids) == 23


def test_float32_vectors_on_request_from_a_read_only_collection(imported, tmp_path):
    with Collection.open(imported, read_only=True) as collection:
        export_embeddings(collection, tmp_path / "out", dtype="float32")
        _, _, _, vectors = catalog_rows(collection)
    _, arrays = read_export(tmp_path / "out")
    assert arrays[0].dtype == np.float32
    np.testing.assert_array_equal(arrays[0], vectors)


def test_id_order_not_storage_order_and_rows_without_vectors_left_out(ingested, tmp_path):
    with Collection.open(ingested) as collection:
        stored_order = np.concatenate([ids for ids, _ in collection.iter_vectors()]).tolist()
        failed = collection.catalog.select("SELECT id FROM images WHERE status = 'failed'")
        export_embeddings(collection, tmp_path / "out", shard_rows=2, block_rows=1)
        ids, paths, _, vectors = catalog_rows(collection)
        sizes = collection.catalog.select("SELECT width, height FROM images WHERE status = 'ok' ORDER BY id")
    assert stored_order != sorted(stored_order)  # the re-embedded file's vector comes last: the case is real
    assert len(failed) == 1 and failed[0][0] not in ids.tolist()
    tables, arrays = read_export(tmp_path / "out")
    table = pa.concat_tables([t.set_column(0, "image_path", t.column("image_path").cast(pa.binary()))
                              for t in tables])
    assert table.column("id").to_pylist() == ids.tolist() and len(ids) == 4
    assert table.column("image_path").to_pylist() == paths
    np.testing.assert_array_equal(np.concatenate(arrays).astype(np.float32), vectors)
    assert "caption" not in table.column_names  # no row has one
    assert list(zip(table.column("width").to_pylist(), table.column("height").to_pylist())) == sizes
    assert None not in sum(sizes, ())
    assert table.column("taken_local").null_count == 0  # dated (by mtime: the test JPEGs have no EXIF)


def test_a_name_that_is_not_utf8_keeps_its_bytes(ingested, tmp_path):
    with Collection.open(ingested) as collection:
        summary = export_embeddings(collection, tmp_path / "out", shard_rows=2)
    assert (summary.shards, summary.binary_path_shards) == (2, 1)
    tables, _ = read_export(tmp_path / "out")
    types = [t.schema.field("image_path").type for t in tables]
    assert sorted(map(str, types)) == ["binary", "string"]  # only the shard holding the name is binary
    binary = next(t for t in tables if t.schema.field("image_path").type == pa.binary())
    names = [os.path.basename(raw) for raw in binary.column("image_path").to_pylist()]
    assert LATIN1 in names
    assert os.path.isfile(os.fsdecode(next(raw for raw in binary.column("image_path").to_pylist()
                                           if raw.endswith(LATIN1))))  # the bytes name the real file


def round_trip(source: Path, tmp_path: Path, model: str) -> tuple[tuple, tuple]:
    """Export ``source`` with ``mmr export``, import that into a new collection with ``mmr import``; returns the
    catalog rows of both."""
    assert main(["export", str(tmp_path / "out"), "--collection", str(source)]) == 0
    assert main(["import", str(tmp_path / "out"), "--collection", str(tmp_path / "copy"), "--model", model,
                 "--no-index"]) == 0
    with Collection.open(source) as original, Collection.open(tmp_path / "copy") as copy:
        return catalog_rows(original), catalog_rows(copy)


def test_labels_and_where_each_capture_time_came_from_are_exported(tmp_path, tiny_model_dir, capsys):
    """A labelled collection exported no labels, and a capture time from the file's mtime read as an EXIF one."""
    photos = tmp_path / "photos"
    write_good_images(photos, 3)
    with Collection.open(tmp_path / "col", model=str(tiny_model_dir), create=True, device="cpu") as collection:
        collection.ingest([photos], workers=0)
        assert main(["export", str(tmp_path / "bare"), "--collection", str(tmp_path / "col")]) == 0
        collection.label("circle, square")
        collection.label("red, blue", multi_label=True, threshold=0.0, label_set="colours")
        expected = {row: [name for name, _ in labels] for row, labels in collection.label_of(
            collection.catalog.vector_ids().tolist()).items()}
    (bare,), _ = read_export(tmp_path / "bare")
    assert "labels" not in bare.column_names and set(bare.column("taken_source").to_pylist()) == {"mtime"}
    assert main(["export", str(tmp_path / "out"), "--collection", str(tmp_path / "col")]) == 0
    (table,), _ = read_export(tmp_path / "out")
    exported = dict(zip(table.column("id").to_pylist(), table.column("labels").to_pylist()))
    assert exported == expected and all(len(names) == 3 for names in exported.values())
    assert all(sum(name.startswith("colours:") for name in names) == 2 for names in exported.values())
    for source, copy in ((tmp_path / "out", "copy"), (tmp_path / "col", "copy2"), (tmp_path / "bare", "copy3")):
        capsys.readouterr()  # an import says what it leaves behind: it restored neither, in silence
        assert main(["import", str(source), "--collection", str(tmp_path / copy)]) == 0
        err = capsys.readouterr().err
        assert ("holds labels and capture times, which an import leaves behind" in err) == (copy != "copy3"), err
        assert copy != "copy3" or "holds capture times, which an import leaves behind" in err


def test_round_trip_through_mmr_import(imported, tmp_path, tiny_model_dir):
    (_, paths, captions, vectors), (_, copied_paths, copied_captions, copied_vectors) = \
        round_trip(imported, tmp_path, str(tiny_model_dir))
    assert copied_paths == paths and copied_captions == captions
    np.testing.assert_allclose(copied_vectors, vectors, atol=1e-3)  # float16 on both sides


def test_an_export_names_its_model_and_import_refuses_another(imported, tmp_path, tiny_model_dir, capsys):
    """The dimension alone would let another model's vectors in: they would be scored as this model's."""
    assert main(["export", str(tmp_path / "out"), "--collection", str(imported)]) == 0
    recorded = json.loads((tmp_path / "out" / "mmr-model.json").read_text())
    with Collection.open(imported) as collection:
        assert recorded == json.loads(collection.identity.to_json())
    (tmp_path / "out" / "mmr-model.json").write_text(json.dumps({**recorded, "weights": "sha256-of-other-weights"}))
    capsys.readouterr()
    assert main(["import", str(tmp_path / "out"), "--collection", str(tmp_path / "copy"), "--model",
                 str(tiny_model_dir)]) == 2
    assert "import only vectors of the same model" in capsys.readouterr().err
    assert not (tmp_path / "copy").exists()  # a refused first import leaves no collection


def test_import_takes_the_model_an_export_or_a_collection_records(imported, tmp_path, capsys):
    """Importing an `mmr export` into a new collection asked for --model though mmr-model.json names it."""
    assert main(["export", str(tmp_path / "out"), "--collection", str(imported)]) == 0
    with Collection.open(imported) as collection:
        key, spec = collection.identity.key(), collection.identity.spec
    capsys.readouterr()
    for source, copy in ((tmp_path / "out", tmp_path / "copy"), (imported, tmp_path / "copy2")):
        assert main(["import", str(source), "--collection", str(copy)]) == 0
        assert f"with the model these vectors record: {spec}" in capsys.readouterr().err
        with Collection.open(copy) as collection:
            assert collection.identity.key() == key and collection.info().vectors == 23


def test_round_trip_keeps_names_that_are_not_utf8(ingested, tmp_path, tiny_model_dir):
    (_, paths, _, vectors), (_, copied_paths, _, copied_vectors) = round_trip(ingested, tmp_path, str(tiny_model_dir))
    assert copied_paths == paths and any(path.endswith(LATIN1) for path in paths)
    np.testing.assert_allclose(copied_vectors, vectors, atol=1e-3)


def test_out_must_be_new_empty_or_an_earlier_export(imported, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("a file")
    (tmp_path / "empty").mkdir()
    with Collection.open(imported) as collection:
        with pytest.raises(CollectionError, match="is not empty"):
            export_embeddings(collection, tmp_path / "busy")
        with pytest.raises(CollectionError, match="it is a file"):
            export_embeddings(collection, tmp_path / "file")
        assert export_embeddings(collection, tmp_path / "empty").shards == 1
        export_embeddings(collection, tmp_path / "again", shard_rows=5)
        assert export_embeddings(collection, tmp_path / "again", shard_rows=20).shards == 2  # replaced whole
    assert os.listdir(tmp_path / "busy") == ["notes.txt"] and (tmp_path / "file").read_text() == "a file"
    assert sorted(os.listdir(tmp_path / "again" / "img_emb")) == ["img_emb_0.npy", "img_emb_1.npy"]
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []  # nothing left aside


def test_an_interrupted_export_leaves_no_out_and_keeps_an_earlier_one(imported, tmp_path):
    def stop(done: int, total: int) -> None:
        if done >= 10:
            raise KeyboardInterrupt

    with Collection.open(imported) as collection:
        with pytest.raises(KeyboardInterrupt):
            export_embeddings(collection, tmp_path / "out", shard_rows=5, progress=stop)
        assert os.listdir(tmp_path) == []  # no OUT, no hidden partial folder
        export_embeddings(collection, tmp_path / "out", shard_rows=5)
        before = {p.name: p.read_bytes() for p in (tmp_path / "out" / "img_emb").iterdir()}
        with pytest.raises(KeyboardInterrupt):
            export_embeddings(collection, tmp_path / "out", shard_rows=20, progress=stop)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "img_emb").iterdir()} == before


_KILLED_MID_EXPORT = textwrap.dedent("""
    import os, signal, sys
    from mmretrieval.collection.collection import Collection
    from mmretrieval.collection.exports import export_embeddings

    def die(done, total):
        if done >= 10:
            os.kill(os.getpid(), signal.SIGKILL)

    with Collection.open(sys.argv[1]) as collection:
        export_embeddings(collection, sys.argv[2], shard_rows=5, progress=die)
""")


def test_sigkill_mid_export_leaves_no_out_and_the_next_run_cleans_up(imported, tmp_path):
    child = subprocess.run([sys.executable, "-c", _KILLED_MID_EXPORT, str(imported), str(tmp_path / "out")],
                           env={**os.environ, "PYTHONPATH": os.getcwd()}, capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = os.listdir(tmp_path)
    assert "out" not in left and len(left) == 1 and left[0].endswith(".partial")  # hidden, never taken for OUT
    with Collection.open(imported) as collection:
        assert export_embeddings(collection, tmp_path / "out").rows == 23
    assert os.listdir(tmp_path) == ["out"]


def test_a_collection_without_vectors_is_refused(tmp_path, tiny_encoder):
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as collection:
        with pytest.raises(CollectionError, match="no embedded image"):
            export_embeddings(collection, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_without_pyarrow_the_error_says_what_to_install(imported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with Collection.open(imported) as collection:
        with pytest.raises(CollectionError, match=r"mmretrieval\[import\]"):
            export_embeddings(collection, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_json_summary_and_one_line_refusal(imported, tmp_path, capsys):
    assert main(["export", str(tmp_path / "out"), "--collection", str(imported), "--shard-rows", "10", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["rows"], summary["shards"], summary["dtype"]) == (23, 3, "float16")
    assert "exported 23 float16 vectors in 3 shards" in captured.err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("x")
    assert main(["export", str(tmp_path / "taken"), "--collection", str(imported)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("mmr export: error:") and "is not empty" in error and "\n" not in error
    with pytest.raises(SystemExit) as exited:  # argparse's refusal
        main(["export", str(tmp_path / "o2"), "--collection", str(imported), "--shard-rows", "0"])
    assert exited.value.code == 2 and "--shard-rows: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_the_command_line_loads_no_export_code_until_export_runs():
    probe = ("import sys; from mmretrieval.cli import build_parser; build_parser(); "
             "print([m for m in ('mmretrieval.collection.exports', 'pyarrow') if m in sys.modules])")
    child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.stdout.strip() == "[]", child.stderr
