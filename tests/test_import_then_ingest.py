"""An ingest of a folder whose vectors were imported (clip-retrieval's output) keeps those vectors: it reads each
file once for its size, time, hash and photo metadata, and embeds nothing; from then on the files are like any
other."""

from __future__ import annotations

import os

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")

from mmretrieval.collection.collection import Collection  # noqa: E402
from mmretrieval.collection.imports import import_embeddings  # noqa: E402
from mmretrieval.ingest.batches import IngestConfig  # noqa: E402
from mmretrieval.ingest.runner import run_ingest  # noqa: E402
from test_import import stored, unit_rows, write_shard  # noqa: E402
from test_ingest import write_good_images  # noqa: E402
from test_photo_metadata import jpeg_with, make_exif  # noqa: E402


def _no_model():
    raise AssertionError("the model was loaded")


def _imported(tmp_path, tiny_encoder, files: list) -> tuple[Collection, np.ndarray]:
    """A collection holding random vectors imported for ``files`` (so that a vector made again would differ)."""
    vectors = unit_rows(np.random.default_rng(4), len(files))
    write_shard(tmp_path / "emb", 0, [str(path) for path in files], vectors.astype(np.float16))
    col = Collection.open(tmp_path / "col", model=tiny_encoder, create=True)
    assert import_embeddings(col, tmp_path / "emb").rows_added == len(files)
    return col, vectors


def test_an_ingest_keeps_imported_vectors_and_records_the_files(tmp_path, tiny_encoder):
    photos = write_good_images(tmp_path / "photos", 3)
    dated = tmp_path / "photos" / "dated.jpg"
    dated.write_bytes(jpeg_with(make_exif(taken="2021:07:04 10:30:00", make="Canon", model="EOS R5")))
    files = [*photos, dated]
    col, vectors = _imported(tmp_path, tiny_encoder, files)
    with col:
        col.label("red, green")  # scored over the imported rows: that record must survive
        scored_before = col.catalog.select("SELECT COUNT(*) FROM label_scored")[0][0]
        summary = run_ingest(col.catalog, _no_model, [str(tmp_path / "photos")], IngestConfig(workers=0))
        assert (summary.embedded, summary.unchanged, summary.adopted, summary.duplicates) == (0, 4, 4, 0)
        by_path = stored(col)
        for path, vector in zip(files, vectors):
            np.testing.assert_allclose(by_path[str(path)], vector, atol=2e-3)
        for path in files:
            assert col.catalog.file_state(path)[1:] == (path.stat().st_size, path.stat().st_mtime_ns)
        assert col.catalog.counts_by_status() == {"ok": 4}
        image_id = col.catalog.id_of_path(dated)
        row, photo = col.catalog.rows([image_id])[image_id], col.photos([image_id])[image_id]
        assert (row.width, row.height) == (48, 32)
        assert photo.taken_local == "2021-07-04T10:30:00" and (photo.make, photo.model) == ("Canon", "EOS R5")
        assert col.catalog.select("SELECT COUNT(*) FROM label_scored")[0][0] == scored_before == 4
        assert col.label_of([image_id])[image_id]
        again = run_ingest(col.catalog, _no_model, [str(tmp_path / "photos")], IngestConfig(workers=0))
        assert (again.embedded, again.unchanged, again.adopted) == (0, 4, 0)
        photos[0].write_bytes(jpeg_with(make_exif(), colour=(1, 2, 3)))  # changed now: embedded like any file
        changed = col.ingest([tmp_path / "photos"], workers=0)
        assert (changed.embedded, changed.unchanged, changed.adopted) == (1, 3, 0)
        assert not np.allclose(stored(col)[str(photos[0])], vectors[0], atol=2e-3)


def test_an_imported_file_that_is_gone_or_no_image_keeps_its_vector(tmp_path, tiny_encoder):
    (tmp_path / "photos").mkdir()
    good, broken, gone = (tmp_path / "photos" / name for name in ("good.jpg", "broken.jpg", "gone.jpg"))
    good.write_bytes(jpeg_with(make_exif()))
    broken.write_bytes(b"not an image at all")
    gone.write_bytes(jpeg_with(make_exif(), colour=(9, 9, 9)))
    col, vectors = _imported(tmp_path, tiny_encoder, [good, broken, gone])
    with col:
        os.unlink(gone)
        summary = run_ingest(col.catalog, _no_model, [str(tmp_path / "photos")], IngestConfig(workers=0))
        assert (summary.embedded, summary.adopted, summary.failed) == (0, 2, {})
        by_path = stored(col)
        for path, vector in zip((good, broken, gone), vectors):
            np.testing.assert_allclose(by_path[str(path)], vector, atol=2e-3)
        broken_id = col.catalog.id_of_path(broken)
        assert col.catalog.file_state(broken)[1] == broken.stat().st_size
        assert col.catalog.rows([broken_id])[broken_id].width is None  # recorded, but it never decoded
        assert col.catalog.file_state(gone)[1:] == (0, 0)  # still imported: a later run looks again


def test_the_cli_says_what_it_kept(tmp_path, tiny_model_dir, capsys):
    from mmretrieval.cli import main

    photos = write_good_images(tmp_path / "photos", 2)
    write_shard(tmp_path / "emb", 0, [str(path) for path in photos],
                unit_rows(np.random.default_rng(1), 2).astype(np.float16))
    collection = str(tmp_path / "col")
    assert main(["import", str(tmp_path / "emb"), "--collection", collection, "--model", str(tiny_model_dir)]) == 0
    capsys.readouterr()
    assert main(["ingest", str(tmp_path / "photos"), "--collection", collection, "--workers", "0", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "2 imported images were found here: their vectors are kept" in err
    assert '"adopted": 2' in out and '"embedded": 0' in out
