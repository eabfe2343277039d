"""Collections end to end: SIGKILL mid-ingest then resume equals a clean run; model mismatch refused;
k larger than the collection; corrupt and stale indexes rebuilt or caught up, never served; labelling."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import open_clip
import pytest
import torch

from conftest import TINY_MODEL_CFG
from mmretrieval.collection.collection import Collection
from mmretrieval.errors import CollectionError, QueryError
from mmretrieval.models.loading import save_model_dir
from test_ingest import write_good_images

_CHILD = textwrap.dedent("""
    import sys
    from mmretrieval.collection.collection import Collection

    def main():
        collection_dir, model_dir, folder = sys.argv[1:4]
        with Collection.open(collection_dir, model=model_dir, create=True, device="cpu") as col:
            col.ingest([folder], batch_size=4, workers=1,
                       progress=lambda done, total: print(done, total, flush=True))
        print("finished", flush=True)

    if __name__ == "__main__":
        main()
""")


def _ingest_in_child(script, collection_dir, model_dir, folder, kill_after_lines: int | None) -> bool:
    """Run an ingestion in a subprocess; SIGKILL it once it has printed that many progress lines."""
    child = subprocess.Popen([sys.executable, str(script), str(collection_dir), str(model_dir), str(folder)],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    lines = 0
    for line in child.stdout:
        lines += 1
        if kill_after_lines is not None and lines >= kill_after_lines:
            child.send_signal(signal.SIGKILL)
            break
    child.stdout.close()
    child.wait(timeout=60)
    return child.returncode == 0


def _snapshot(directory) -> dict[str, tuple]:
    with Collection.open(directory) as col:
        ids, vectors = col.vectors()
        rows = col.catalog.rows(ids.tolist())
        col.load_index()
        index_ids = sorted(col._indexes.index.ids().tolist())
        assert index_ids == sorted(ids.tolist())  # catalog and index agree
        assert col.info().index_vectors == len(ids)
        paths = [rows[i].path for i in ids.tolist()]
        assert len(paths) == len(set(paths))
        counts = col.catalog.counts_by_status()
        return {"counts": counts, **{path: tuple(np.round(v, 4)) for path, v in zip(paths, vectors)}}


def test_sigkill_at_several_points_then_resume_equals_clean_run(tmp_path, tiny_model_dir):
    folder = tmp_path / "photos"
    write_good_images(folder, 22)
    (folder / "broken.jpg").write_text("nope")
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    killed = tmp_path / "killed"
    # progress lines: 1 = planned (nothing embedded), 2 = first batch committed, ...
    for kill_after in (1, 2, 4):
        assert not _ingest_in_child(script, killed, tiny_model_dir, folder, kill_after)
    with Collection.open(killed) as col:
        assert 0 < col.catalog.counts_by_status().get("ok", 0) < 22  # the kills really interrupted work
    assert _ingest_in_child(script, killed, tiny_model_dir, folder, None)
    clean = tmp_path / "clean"
    with Collection.open(clean, model=str(tiny_model_dir), create=True, device="cpu") as col:
        col.ingest([folder], batch_size=4, workers=0)
    assert _snapshot(killed) == _snapshot(clean)


def test_sigkill_at_arbitrary_moments_then_resume_equals_clean_run(tmp_path, tiny_model_dir):
    # Kills at wall-clock delays after a batch, not at progress lines: they land inside decoding, embedding,
    # catalog transactions and index saves as they come. Whatever they hit, a final run must leave exactly
    # what a clean run leaves.
    folder = tmp_path / "photos"
    write_good_images(folder, 40)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    killed = tmp_path / "killed"
    for delay_s in (0.0005, 0.002, 0.005, 0.01, 0.03):
        child = subprocess.Popen([sys.executable, str(script), str(killed), str(tiny_model_dir), str(folder)],
                                 stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
        for _ in range(2):  # planning committed, then the first batch: from here on batches follow quickly
            child.stdout.readline()
        try:
            child.wait(timeout=delay_s)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
        child.stdout.close()
        child.wait(timeout=60)
    assert _ingest_in_child(script, killed, tiny_model_dir, folder, None)
    clean = tmp_path / "clean"
    with Collection.open(clean, model=str(tiny_model_dir), create=True, device="cpu") as col:
        col.ingest([folder], batch_size=4, workers=0)
    assert _snapshot(killed) == _snapshot(clean)


@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("col")
    write_good_images(root / "photos" / "a", 4)
    write_good_images(root / "photos" / "b", 3, seed=1)
    with Collection.open(root / "col", model=tiny_encoder, create=True) as col:
        col.ingest([root / "photos"], workers=0)
        yield col


def test_model_mismatch_is_refused(tmp_path, collection):
    torch.manual_seed(1)
    other = save_model_dir(open_clip.CLIP(**TINY_MODEL_CFG), TINY_MODEL_CFG, tmp_path / "other-model")
    with pytest.raises(CollectionError) as caught:
        Collection.open(collection.directory, model=str(other))
    message = str(caught.value)
    assert collection.identity.spec in message and str(other) in message and "--model" in message


def test_missing_collection_names_the_fix(tmp_path):
    with pytest.raises(CollectionError, match="mmr ingest"):
        Collection.open(tmp_path / "nothing-here")


def test_a_failed_first_ingest_leaves_no_collection_to_pin_the_model(tmp_path, tiny_encoder):
    new = tmp_path / "new"
    with pytest.raises(CollectionError, match="does not exist"):
        with Collection.open(new, model=tiny_encoder, create=True) as col:
            col.ingest([tmp_path / "typo"], workers=0)
    assert not new.exists()  # a re-run may still choose another model or --dim
    write_good_images(tmp_path / "photos", 2)
    with pytest.raises(CollectionError):  # something went in: the collection stays, whatever fails after
        with Collection.open(new, model=tiny_encoder, create=True) as col:
            col.ingest([tmp_path / "photos"], workers=0)
            col.ingest([tmp_path / "typo"], workers=0)
    with pytest.raises(CollectionError), Collection.open(new) as col:  # not made by this open: kept
        col.ingest([tmp_path / "typo"], workers=0)
    with Collection.open(new) as col:
        assert col.info().vectors == 2
    from lock_holder import held_by_another_thread
    from mmretrieval.atomic import exclusive_lock
    from mmretrieval.collection.catalog import LOCK_NAME

    raced = tmp_path / "raced"
    col = Collection.open(raced, model=tiny_encoder, create=True)
    # another first ingest (in another thread here), no row written yet, holds the lock
    with held_by_another_thread(lambda: exclusive_lock(raced / LOCK_NAME, "busy")):
        with pytest.raises(CollectionError, match="another thread of this process holds"), col:
            col.ingest([tmp_path / "photos"], workers=0)
    assert (raced / "catalog.sqlite").is_file()  # not removed from under the other writer
    existing = tmp_path / "existing-empty-folder"
    existing.mkdir()
    with pytest.raises(CollectionError), Collection.open(existing, model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "typo"], workers=0)
    assert existing.is_dir()  # a folder the user made is never removed


def test_k_larger_than_collection_returns_only_real_hits(collection):
    hits = collection.search("anything", k=1000)
    assert len(hits) == 7 and len({h.id for h in hits}) == 7
    assert all(collection.image_path(h.id) == type(collection.image_path(h.id))(h.path) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(collection.search("anything", k=1000, path_prefix=str(collection.directory.parent / "photos" / "b"))) == 3
    assert collection.search("anything", k=5, threshold=2.0) == []
    with pytest.raises(CollectionError):
        collection.image_path(10_000)


@pytest.mark.parametrize("as_type", [int, np.int64, np.int32])
def test_similar_leaves_out_the_query_image_whatever_the_id_type(collection, as_type):
    ids, _ = collection.vectors()
    query_id = ids[0]  # a numpy integer, as FAISS and catalog results give them
    hits = collection.similar(as_type(query_id), k=3)
    assert len(hits) == 3 and int(query_id) not in {hit.id for hit in hits}


def test_similar_to_a_path_changed_since_ingest_embeds_the_file_as_it_is(tmp_path, tiny_encoder):
    """The stored vector answered for the old picture: a file replaced (or made garbage) after its ingest."""
    from test_ingest import scene_jpeg

    photos = write_good_images(tmp_path / "photos", 6)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        changed = col.catalog.id_of_path(photos[0])
        photos[0].write_bytes(scene_jpeg(99, seed=5))

        def scores_near(vector):
            return [(hit.id, round(hit.score, 4)) for hit in col.nearest(vector, k=6) if hit.id != changed][:3]

        now = scores_near(tiny_encoder.encode_images([str(photos[0])])[0])
        stored = scores_near(col.vectors([changed])[1][0])
        assert now != stored  # the two answers can be told apart
        assert [(hit.id, round(hit.score, 4)) for hit in col.similar(str(photos[0]), k=3)] == now
        photos[1].write_bytes(b"not an image any more")
        with pytest.raises(QueryError, match="cannot use"):
            col.similar(str(photos[1]), k=3)


def test_scores_are_cosines_and_stop_at_one(collection):
    ids, vectors = collection.vectors()
    for image_id, stored in zip(ids.tolist(), vectors):  # float16 rows: their own cosine can round past 1
        best = collection.search(stored.astype(np.float32), k=1)[0]
        assert best.id == image_id and 0.999 <= best.score <= 1.0
    norms = np.linalg.norm(vectors.astype(np.float32), axis=1)
    assert norms.max() > 1.0  # some row's own cosine, unclipped, would exceed 1: the case is real here


def test_one_path_is_one_source_and_tilde_means_home(tmp_path, tiny_encoder, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_good_images(tmp_path / "pics", 3)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        summary = col.ingest("~/pics", workers=0)  # a string alone: not the sources "~", "/", "p", ...
        assert summary.embedded == 3 and not summary.failed and not summary.skipped
        query = next(iter(sorted((tmp_path / "pics").iterdir())))
        hits = col.similar(f"~/pics/{query.name}", k=5)
        assert len(hits) == 2 and str(query) not in {hit.path for hit in hits}  # the query image is left out


def test_corrupt_index_is_rebuilt_not_served(tmp_path, tiny_encoder, caplog):
    caplog.set_level(logging.WARNING)
    write_good_images(tmp_path / "photos", 5)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        expected = [h.id for h in col.search("x", k=5)]
        index_file = tmp_path / "col" / col._indexes.manifest.file
    data = bytearray(index_file.read_bytes())
    data[-20:] = b"\x00" * 20
    index_file.write_bytes(bytes(data))
    with Collection.open(tmp_path / "col", model=tiny_encoder) as col:
        assert [h.id for h in col.search("x", k=5)] == expected
        assert "checksum" in caplog.text  # found when the first search loaded it
    manifest = json.loads((tmp_path / "col" / "index.json").read_text())
    assert manifest["count"] == 5 and manifest["model_key"] == tiny_encoder.identity.key()


def test_stale_index_catches_up_on_open(tmp_path, tiny_encoder):
    write_good_images(tmp_path / "photos", 5)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        stale_manifest = (tmp_path / "col" / "index.json").read_text()
        stale_file = col._indexes.manifest.file
        stale_bytes = (tmp_path / "col" / stale_file).read_bytes()
        write_good_images(tmp_path / "photos" / "more", 2, seed=3)
        col.ingest([tmp_path / "photos"], workers=0)
    # a crash after the catalog commit but before the index was saved leaves the old index pair behind
    (tmp_path / "col" / stale_file).write_bytes(stale_bytes)
    (tmp_path / "col" / "index.json").write_text(stale_manifest)
    with Collection.open(tmp_path / "col", model=tiny_encoder) as col:
        assert len(col.search("x", k=100)) == 7
        assert col.info().generation == col.catalog.generation


def test_label_store_filter_and_export(tmp_path, collection):
    summary = collection.label("red,blue,green", multi_label=False)
    assert summary.images == 7 and sum(summary.counts.values()) == 7
    label, count = max(summary.counts.items(), key=lambda item: item[1])
    hits = collection.search("x", k=100, label=label)
    assert len(hits) == count and all(h.labels[0] == label for h in hits)
    with pytest.raises(QueryError, match="labels"):
        collection.search("x", label="purple")
    assert collection.export_labels(tmp_path / "labels.csv") == 7
    assert collection.export_labels(tmp_path / "labels.jsonl") == 7
    records = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert {r["labels"][0]["label"] for r in records} <= {"red", "blue", "green"}
    organized = collection.organize(tmp_path / "sorted")
    assert organized.placed == 7 and organized.missing == 0 and organized.missing_examples == () and len(list((tmp_path / "sorted" / label).iterdir())) == count
    multi = collection.label(["red", "blue"], multi_label=True, threshold=0.0, label_set="multi")
    assert multi.counts == {"red": 7, "blue": 7}


def test_info_reports_counts_index_and_sizes(collection):
    info = collection.info()
    assert info.counts == {"ok": 7} and info.vectors == 7 and info.index_type == "flat"
    assert info.dim == 32 and info.bytes_on_disk["catalog.sqlite"] > 0


def _fill_catalog(col: Collection, vectors: np.ndarray, folder_of) -> np.ndarray:
    """Store ``vectors`` as if ingested (no decoding), file i under ``folder_of(i)``; returns their ids."""
    from mmretrieval.collection.catalog import VectorWrite, encode_path

    paths = [os.path.join(str(col.directory.parent), folder_of(i), f"{i:05d}.png") for i in range(len(vectors))]
    col.catalog.mark_pending([(encode_path(p), 1, 1, None) for p in paths])
    ids = np.array([image_id for image_id, _ in col.catalog.pending()], dtype=np.int64)
    col.catalog.write_results([VectorWrite(int(i), f"h{i}", 1, 1, "PNG", v) for i, v in zip(ids, vectors)], [])
    return ids


def test_another_index_types_parameters_are_refused(tmp_path, tiny_encoder):
    from mmretrieval.errors import CollectionError

    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        with pytest.raises(CollectionError, match="--ef-search: not a parameter of the ivf index type"):
            col.rebuild_index("ivf", nlist=8, ef_search=16)  # it was ignored in silence


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_filtered_search_on_approximate_index_equals_brute_force(tmp_path, tiny_encoder, index_type):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    vectors = centres[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    query = vectors[0]
    far = set(np.argsort(vectors @ query)[:50].tolist())  # the 50 least like the query: one folder
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        ids = _fill_catalog(col, vectors, lambda i: "far" if i in far else "near")
        col.rebuild_index(index_type, **({"nlist": 64, "nprobe": 1} if index_type == "ivf" else {"ef_search": 16}))
        hits = col.similar(int(ids[0]), k=10, path_prefix=str(tmp_path / "far") + os.sep)
    allowed = np.array(sorted(far))
    stored = vectors.astype(np.float16).astype(np.float32)  # what the segments keep (float16 by default)
    expected = ids[allowed[np.argsort(-(stored[allowed] @ stored[0]), kind="stable")[:10]]].tolist()
    assert [h.id for h in hits] == expected


def test_labels_go_when_a_file_changes_fails_or_is_skipped(tmp_path, tiny_encoder):
    paths = write_good_images(tmp_path / "photos", 4)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        col.label("red,blue", multi_label=True, threshold=0.0)
        ids = [col.catalog.id_of_path(p) for p in paths]
        assert set(col.label_of(ids)) == set(ids)
        paths[0].write_bytes(paths[3].read_bytes() + b"\0")  # changed: re-embedded, the old labels are stale
        paths[1].write_text("no longer an image")  # failed
        paths[2].unlink()
        os.mkfifo(paths[2])  # skipped
        later = time.time_ns() + 10**9
        for path in paths[:2]:
            os.utime(path, ns=(later, later))
        col.ingest([tmp_path / "photos"], workers=0)
        assert set(col.label_of(ids)) == {ids[3]}
        assert col.catalog.label_counts() == {"red": 1, "blue": 1}


def test_index_temporaries_are_removed_only_by_a_writer_holding_the_lock(tmp_path, tiny_encoder):
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True):
        pass
    col_dir = tmp_path / "col"
    stale = [col_dir / ".index-3.faiss.k2j4h5g6.tmp", col_dir / ".index.json.a1b2c3d4.tmp"]
    kept = [col_dir / ".notes.txt.a1b2c3d4.tmp", col_dir / "index-x.tmp"]
    for path in stale + kept:
        path.write_bytes(b"partial")
    with Collection.open(col_dir, model=tiny_encoder) as col:  # a reader: may be racing a writer, removes nothing
        col.search("x", k=1)
        assert all(p.exists() for p in stale + kept)
        # a writer holds the lock, so no other save is in progress: every index temporary is stale
        col.rebuild_index()
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_a_second_concurrent_ingest_is_refused_and_a_dead_holder_frees_the_lock(tmp_path, tiny_encoder):
    import fcntl

    from mmretrieval.collection.catalog import LOCK_NAME
    from mmretrieval.errors import CollectionError

    write_good_images(tmp_path / "photos", 3)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        with open(tmp_path / "col" / LOCK_NAME, "a+b") as other:  # another ingest holds the lock
            fcntl.flock(other.fileno(), fcntl.LOCK_EX)
            with pytest.raises(CollectionError, match="another process is writing .*; run mmr ingest when it is done"):
                col.ingest([tmp_path / "photos"], workers=0)
        # the holder went away (closing its file is what the OS does when a process dies): ingest proceeds
        assert col.ingest([tmp_path / "photos"], workers=0).embedded == 3


_HOLDER = """
import sys, time
from mmretrieval.collection.collection import Collection
with Collection.open(sys.argv[1]) as col, col.writing():
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_refused_writer_is_told_which_process_holds_the_collection(tmp_path, tiny_model_dir, capsys):
    """The refusal said only "another process", and the lock file was empty: people went hunting for it."""
    import fcntl
    import subprocess
    import sys

    from mmretrieval.cli import main

    write_good_images(tmp_path / "photos", 3)
    col = str(tmp_path / "col")
    assert main(["ingest", str(tmp_path / "photos"), "--collection", col, "--model", str(tiny_model_dir)]) == 0
    (tmp_path / "holder.py").write_text(_HOLDER)
    holder = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), col], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline() == "holding\n"
        capsys.readouterr()
        assert main(["label", "--labels", "red,green", "--collection", col]) == 75
        assert f"run mmr label when it is done (or with --wait, which waits for it; in Python, Collection.open(..., " \
               f"wait=True)), or stop it (an interrupted ingest " \
               f"or import resumes where it stopped); that is holder.py (process {holder.pid}, since 20" \
               in capsys.readouterr().err
    finally:
        holder.kill()  # SIGKILL: its line stays in the lock file
        holder.wait()
    lock = tmp_path / "col" / "ingest.lock"
    assert f"process {holder.pid}" in lock.read_text()
    with open(lock, "a+b") as other:  # a holder that names nothing (flock(1) around a backup copy)
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        assert main(["label", "--labels", "red,green", "--collection", col]) == 75
        assert "that is" not in capsys.readouterr().err  # the dead process is not blamed
    assert main(["label", "--labels", "red,green", "--collection", col]) == 0
    assert lock.read_text() == ""  # the next holder wiped the dead one's line, and its own on leaving


def test_the_index_loads_on_first_use_and_a_busy_writer_is_refused_before(tmp_path, tiny_encoder, monkeypatch):
    import fcntl

    from mmretrieval.collection import upkeep
    from mmretrieval.collection.catalog import LOCK_NAME
    from mmretrieval.errors import CollectionError

    write_good_images(tmp_path / "photos", 3)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
    loads = []
    real_load = upkeep.IndexKeeper.load
    monkeypatch.setattr(upkeep.IndexKeeper, "load", lambda self: (loads.append(self), real_load(self)))
    with open(tmp_path / "col" / LOCK_NAME, "a+b") as other:  # another writer holds the lock
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        with pytest.raises(CollectionError, match="another process is writing .*; run mmr compact when it is done"):
            Collection.open(tmp_path / "col", writer="compact")
        with Collection.open(tmp_path / "col") as reader:  # a reader is not a writer: it opens
            info = reader.info()  # described as saved, without loading the index
            assert not loads and info.index_saved and info.index_vectors == 3
            assert len(reader.search("x", k=2)) == 2 and len(loads) == 1  # the first search loads it
