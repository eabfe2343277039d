"""What a Python API walkthrough found (a developer embedding the library), each pinned by a test: a race between
threads, and arguments that were taken without a check and did harm (an empty source ingested the working folder, a
negative batch size hung, a bad pixel limit failed good files for good)."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

from mmretrieval.models import text_tower


def test_two_threads_first_text_queries_share_one_whole_tokenizer(monkeypatch):
    """Two collections' first text queries on two threads: one met open_clip's tokenizer module half made (it was
    listed in sys.modules before it ran) and failed with an AttributeError, in 7 of 8 runs."""
    import importlib.util

    monkeypatch.delitem(sys.modules, "mmretrieval._open_clip_tokenizer", raising=False)
    made = importlib.util.spec_from_file_location

    def slow_spec(*args, **kwargs):  # the module takes a while to run, as its BPE merges do on a busy machine
        spec = made(*args, **kwargs)
        run = spec.loader.exec_module
        spec.loader.exec_module = lambda module: (time.sleep(0.3), run(module))[1]
        return spec

    monkeypatch.setattr(importlib.util, "spec_from_file_location", slow_spec)
    results: list = []

    def tokenize() -> None:
        try:
            results.append(text_tower._tokenizer(77, None)(["a red circle"]).shape)
        except Exception as exc:  # noqa: BLE001 (the test reports whatever a thread met)
            results.append(exc)

    threads = [threading.Thread(target=tokenize) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [(1, 77)] * 3, results


@pytest.mark.parametrize("setting, value, message", [
    ("batch_size", -3, "batch_size must be a whole number of at least 1 (None: by the device), got -3"),  # hung
    ("batch_size", 2.5, "batch_size must be a whole number of at least 1"),
    ("workers", 2.5, "workers must be a whole number of at least 0"),
    ("max_pixels", "x", "max_pixels must be a whole number of at least 1, got 'x'"),  # every file 'corrupt'
    ("max_pixels", 0, "max_pixels must be a whole number of at least 1, got 0"),
    ("timeout_s", 0, "timeout_s must be a number of seconds above 0, got 0"),
    ("timeout_s", float("nan"), "timeout_s must be a number of seconds above 0, got nan"),
    ("prune", "no", "prune must be True or False, got 'no'"),  # truthy: it pruned
    ("checksum", "x", "checksum must be True or False"),
])
def test_an_ingest_setting_out_of_range_is_refused_before_a_row_is_written(tmp_path, tiny_encoder, setting, value,
                                                                          message):
    from mmretrieval.collection.collection import Collection
    from mmretrieval.errors import SettingError
    from mmretrieval.ingest.files import embed_files
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 2)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        with pytest.raises(SettingError, match=message.replace("(", r"\(").replace(")", r"\)")):
            col.ingest([tmp_path / "photos"], **{setting: value})
        assert col.catalog.counts_by_status() == {}  # nothing recorded as the files' fault
        assert col.ingest([tmp_path / "photos"], workers=0).embedded == 2
    if setting in ("batch_size", "workers", "max_pixels", "timeout_s"):
        with pytest.raises(SettingError, match=setting):
            next(embed_files(tiny_encoder, tmp_path / "photos", **{setting: value}))


def test_an_empty_source_is_refused_not_taken_for_the_working_folder(tmp_path, tiny_encoder, monkeypatch):
    """``ingest("")`` embedded every image under the working folder (322 files in the walkthrough);
    ``embed_files(encoder, "")`` called that folder missing."""
    from mmretrieval.collection.collection import Collection
    from mmretrieval.errors import CollectionError
    from mmretrieval.ingest.files import embed_files
    from test_ingest import write_good_images

    write_good_images(tmp_path / "cwd", 2)
    monkeypatch.chdir(tmp_path / "cwd")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        for sources in ("", [tmp_path / "cwd", ""]):
            with pytest.raises(CollectionError, match="an empty source names no file or folder.*'.' is the current"):
                col.ingest(sources, workers=0)
        for sources in ([], ()):  # no source at all read as a run that found nothing: all zeros, no word
            with pytest.raises(CollectionError, match="no source given: pass folders"):
                col.ingest(sources, workers=0)
        assert col.catalog.counts_by_status() == {}
        assert col.ingest(".", workers=0).embedded == 2  # the way to say it
    with pytest.raises(CollectionError, match="an empty source"):
        next(embed_files(tiny_encoder, ""))
    with pytest.raises(CollectionError, match="no source given"):
        next(embed_files(tiny_encoder, []))


def test_a_dim_that_is_not_a_whole_number_and_a_spec_that_is_not_text_are_refused(tiny_model_dir):
    """``dim=64.0`` made an encoder that encoded nothing (a TypeError) and a collection stamped 64.0-d that no ingest
    could fill; ``dim=True`` made 1-d vectors; a path object as the spec raised AttributeError."""
    from pathlib import Path

    from mmretrieval.errors import ModelSpecError
    from mmretrieval.models.encoder import load_encoder

    for dim in (64.0, True, "64"):
        with pytest.raises(ModelSpecError, match=f"dim must be a whole number of dimensions, got {dim!r}"):
            load_encoder(str(tiny_model_dir), device="cpu", dim=dim)
    with pytest.raises(ModelSpecError, match="a model spec is text or a model folder's path, got None"):
        load_encoder(None, device="cpu")
    encoder = load_encoder(Path(tiny_model_dir), device="cpu")
    assert encoder.encode_texts(["red"]).shape == (1, encoder.dim)


def test_ids_and_block_sizes_are_checked_as_k_is(tmp_path, tiny_encoder):
    """``iter_vectors(0)`` yielded nothing (an empty collection, as far as the caller could tell), a negative size
    every vector at once, 1.5 a raw sqlite3 error; ``vectors("12")`` read ids 1 and 2; ``image_path(2**70)`` an
    OverflowError."""
    from mmretrieval.collection.collection import Collection
    from mmretrieval.errors import QueryError
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 3)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        for rows in (0, -1, 1.5, True):
            with pytest.raises(QueryError, match="block_rows must be"):
                next(col.iter_vectors(rows))
        assert [len(ids) for ids, _ in col.iter_vectors(2)] == [2, 1]
        for ids in ("12", 3, b"1"):
            with pytest.raises(QueryError, match="ids must be a list of catalog ids"):
                col.vectors(ids)
        with pytest.raises(QueryError, match="a catalog id is a whole number, got 'x'"):
            col.label_of(["x"])
        with pytest.raises(QueryError, match="no catalog id is as large as"):
            col.image_path(2**70)
        found, vectors = col.vectors(np.array([1, 2]))
        assert found.tolist() == [1, 2] and vectors.shape[0] == 2


def test_one_folder_to_prefer_alone_is_one_folder(tmp_path, tiny_encoder):
    """``duplicates(prefer="/some/dir")`` took each letter for a folder ('/' then 't')."""
    import shutil

    from mmretrieval.collection.collection import Collection
    from test_ingest import write_good_images

    write_good_images(tmp_path / "a", 1)
    (tmp_path / "b").mkdir()
    shutil.copyfile(next((tmp_path / "a").iterdir()), tmp_path / "b" / "copy.jpg")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "a", tmp_path / "b"], workers=0)
        for prefer in (str(tmp_path / "b"), tmp_path / "b"):
            (group,) = col.duplicates(prefer=prefer)
            assert group.paths[0] == str(tmp_path / "b" / "copy.jpg")


def test_a_second_writer_thread_is_told_it_is_this_process_not_another(tmp_path, tiny_encoder):
    """Threads sharing a Collection: the second writer was told "another process is writing", named the caller's
    own process, and given command-line advice; a writer nested in one thread's writer block, told to wait, waited
    for itself for ever."""
    from lock_holder import held_by_another_thread
    from mmretrieval.collection.collection import Collection
    from mmretrieval.errors import CollectionBusy
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 2)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
    for wait in (False, True):
        with Collection.open(tmp_path / "col", model=tiny_encoder, wait=wait) as col, col.writing():
            with pytest.raises(CollectionBusy, match="this thread already holds .*ingest.lock: a write inside another "
                                                     "write's block"):
                col.label(["red", "green"])  # nested, in this thread: refused, waiting or not
    with Collection.open(tmp_path / "col", model=tiny_encoder) as col:
        with held_by_another_thread(col.writing):
            with pytest.raises(CollectionBusy, match="another thread of this process holds .*ingest.lock: run the two "
                                                     r"one after the other \(a collection's writers take turns when "
                                                     r"they wait for each other: Collection.open\(..., wait=True\)\)"
                               ) as refused:
                col.label(["red", "green"])
            assert "another process" not in str(refused.value)
        col.label(["red", "green"])  # its turn now


def test_queries_of_the_wrong_kind_say_what_a_query_is(tmp_path, tiny_encoder, caplog):
    """A path, a PIL image or a list of words given to search() was called a bad vector; Query("red") iterated the
    letters; similar(4.0) raised a TypeError; info() on a closed collection logged its error as a warning first."""
    from pathlib import Path

    from PIL import Image

    from mmretrieval import Query, Term, parse_query
    from mmretrieval.collection.collection import Collection
    from mmretrieval.errors import CollectionError, QueryError
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 3)
    image = sorted((tmp_path / "photos").iterdir())[0]
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        for query in (Path(image), Image.open(image), ["red", "circle"], None):
            with pytest.raises(QueryError, match="a query is text, a Query or a vector, got .*; an image is searched "
                                                 r"with similar\(image\)"):
                col.search(query)
        for bad in (4.0, True, np.zeros(4)):
            with pytest.raises(QueryError, match="similar.. takes a catalog id, a path or a PIL image"):
                col.similar(bad)
        with pytest.raises(QueryError, match="a Query's positives are Terms, got 'red'; parse_query"):
            Query("red")
        with pytest.raises(QueryError, match="term weight '2' must be a positive number"):
            Term(text="red", weight="2")
        with pytest.raises(QueryError, match="a term's text is a str, got 5"):
            Term(text=5)
        assert Query(Term(text="red")).positives == (Term(text="red"),)  # one Term alone is one term
        assert len(Query(Term(text=word) for word in ("red", "blue")).positives) == 2  # any iterable of Terms
        with pytest.raises(QueryError, match="a Query's positives are Terms, got 5"):
            Query(5)
        mixed = parse_query("2:red", images=[image], negatives=["blue"])
        assert len(col.search(mixed, k=2)) == 2
        assert [hit.id for hit in col.similar(image)] == [hit.id for hit in col.similar(str(image))] == \
            [hit.id for hit in col.similar(os.fsencode(image))]  # a path as bytes, as ingest takes them
    caplog.clear()
    with pytest.raises(CollectionError, match="was closed"):
        col.info()
    assert not [record for record in caplog.records if "closed" in record.getMessage()]


def test_image_data_given_to_encode_images_is_told_how_to_decode_it(tmp_path, tiny_encoder):
    """Bytes meant a path (ValueError: embedded null byte); a BytesIO was read line by line, each line a "path"."""
    import io

    from mmretrieval import decode_image
    from mmretrieval.errors import QueryError
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 1)
    data = next((tmp_path / "photos").iterdir()).read_bytes()
    for given in (data, io.BytesIO(data), [data], open(next((tmp_path / "photos").iterdir()), "rb")):
        with pytest.raises(QueryError, match=r"image data .*not a path; decode it|decode them first: "
                                             r"mmretrieval.decode_image\(data\).image"):
            tiny_encoder.encode_images(given)
    from_data = tiny_encoder.encode_images(decode_image(data).image)
    from_path = tiny_encoder.encode_images(next((tmp_path / "photos").iterdir()))
    assert float(from_data[0] @ from_path[0]) > 0.99  # the same picture (a file is decoded in draft mode)
    assert tiny_encoder.encode_images(os.fsencode(next((tmp_path / "photos").iterdir()))).shape == from_path.shape


def test_a_model_that_cannot_be_the_collections_is_refused_before_it_loads(tmp_path, tiny_encoder, monkeypatch):
    """Opening a builtin:shapes collection with ViT-B-32:openai tried to download ViT-B-32 only to refuse it."""
    from mmretrieval.collection import opening
    from mmretrieval.collection.collection import Collection
    from mmretrieval.errors import CollectionError
    from mmretrieval.models.encoder import load_encoder

    shapes = load_encoder("builtin:shapes", device="cpu")
    Collection.open(tmp_path / "col", model=shapes, create=True).close()
    monkeypatch.setattr(opening, "_load", lambda spec, **settings: pytest.fail(f"loaded {spec}"))
    with pytest.raises(CollectionError, match="was built with builtin:shapes .*, you asked for ViT-B-32:openai; leave "
                                              "out --model"):
        Collection.open(tmp_path / "col", model="ViT-B-32:openai")


def test_compaction_and_index_settings_out_of_range_are_refused(tmp_path, tiny_encoder):
    """``compact(min_waste_ratio=-1)`` rewrote every segment; a negative memory budget or a recall target given as
    text reached the sizing code."""
    from mmretrieval.collection.collection import Collection
    from mmretrieval.errors import CollectionError
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 2)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
        for ratio in (-1, 1.5, "x", float("nan")):
            with pytest.raises(CollectionError, match="min_waste_ratio is a share of dead rows from 0 to 1"):
                col.compact(ratio)
        with pytest.raises(CollectionError, match="a memory budget is a positive number of bytes, got -1"):
            col.rebuild_index(memory_budget_bytes=-1)
        with pytest.raises(CollectionError, match="recall target must be in .0, 1., got '0.9'"):
            col.rebuild_index(recall_target="0.9")
        assert col.compact(0.5).segments_rewritten == col.compact(1).segments_rewritten == 0  # 1: none


def test_a_collection_opens_by_a_bytes_path_and_refuses_a_policy_that_is_not_one(tmp_path, tiny_encoder):
    import os

    from mmretrieval.collection.collection import Collection
    from mmretrieval.errors import CollectionError

    Collection.open(tmp_path / "col", model=tiny_encoder, create=True).close()
    with Collection.open(os.fsencode(tmp_path / "col")) as col:  # a TypeError, though ingest took bytes sources
        assert col.directory == tmp_path / "col"
    with pytest.raises(CollectionError, match="index_policy is an IndexPolicy .*, got 'flat'; an index type"):
        Collection.open(tmp_path / "col", index_policy="flat")
    with pytest.raises(CollectionError, match="a collection is a folder's path, got 5"):
        Collection.open(5)


def test_a_vector_the_model_gives_as_nan_fails_its_image_and_is_not_stored(tmp_path, tiny_model_dir, monkeypatch):
    """A NaN vector was stored (a review): it answers every query with NaN, and re-embedding gives it again."""
    from mmretrieval.collection.collection import Collection
    from mmretrieval.models.encoder import load_encoder
    from model_faults import nan_at_row
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 4)
    encoder = load_encoder(str(tiny_model_dir), device="cpu")
    nan_at_row(monkeypatch, 0)
    with Collection.open(tmp_path / "col", model=encoder, create=True) as col:
        summary = col.ingest([tmp_path / "photos"], workers=0, batch_size=2)
        assert summary.embedded == 2 and summary.failed == {"model_output": 2}  # the first of each batch of two
        assert col.catalog.vector_count() == 2 and col.check().problems == ()
        (failure, *_) = col.failures()
        assert failure.reason == "model_output" and "try --precision fp32" in failure.message


def test_a_collection_whose_folder_was_deleted_says_so(tmp_path, tiny_encoder):
    """info() and ingest() raised a bare FileNotFoundError, and search() said to restore manifest.json from a
    backup (ops walkthrough); nothing is made again on disk."""
    import shutil

    from mmretrieval import Collection
    from mmretrieval.errors import CollectionError
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 2)
    folder = tmp_path / "col"
    with Collection.open(folder, model=tiny_encoder, create=True) as collection:
        collection.ingest([tmp_path / "photos"], workers=0)
        shutil.rmtree(folder)
        for call in (collection.info, lambda: collection.search("red"), lambda: collection.similar(1),
                     lambda: collection.ingest([tmp_path / "photos"], workers=0), collection.check):
            with pytest.raises(CollectionError, match=f"the collection {folder} is gone: its folder was deleted or "
                                                      "moved since it was opened"):
                call()
    assert not folder.exists()


@pytest.mark.parametrize("how", ["moved", "deleted"])
def test_a_collection_moved_or_deleted_during_an_ingest_stops_it_before_a_wrong_place_is_recorded(
        tmp_path, tiny_encoder, monkeypatch, how):
    """The chaos walkthrough renamed the folder after an ingest's second append: the run went on, made a new
    segments/ at the old path, recorded places in it in the moved catalog and exited 0; 30 images of the moved
    collection then had other images' vectors. Deleted, it exited 0 and left segments/ and index.json behind."""
    import shutil

    from mmretrieval import Collection
    from mmretrieval.collection.segments import SegmentStore
    from mmretrieval.errors import CollectionError
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 8)
    folder, moved = tmp_path / "col", tmp_path / "elsewhere"
    append, calls = SegmentStore.append, []

    def append_then_lose_the_folder(self, ids, vectors):
        placed = append(self, ids, vectors)
        calls.append(len(ids))
        if len(calls) == 2:  # under the run's feet, as `mv` or `rm -r` in another terminal
            shutil.move(folder, moved) if how == "moved" else shutil.rmtree(folder)
        return placed

    monkeypatch.setattr(SegmentStore, "append", append_then_lose_the_folder)
    with Collection.open(folder, model=tiny_encoder, create=True) as collection:
        with pytest.raises(CollectionError, match=f"the collection {folder} was moved or deleted while this command "
                                                  "was writing to it"):
            collection.ingest([tmp_path / "photos"], workers=0, batch_size=2)
    assert len(calls) == 2 and not folder.exists()  # nothing made again at the old path
    if how == "moved":
        monkeypatch.setattr(SegmentStore, "append", append)
        with Collection.open(moved) as collection:
            assert collection.check().problems == ()
            assert collection.ingest([tmp_path / "photos"], workers=0).embedded == 4  # the two batches it kept
            assert collection.check().problems == () and collection.catalog.vector_count() == 8


@pytest.mark.parametrize("writer", ["ingest", "compact"])
def test_a_writer_on_a_handle_whose_folder_now_holds_another_collection_touches_neither(tmp_path, tiny_encoder,
                                                                                       writer):
    """The review's case: A open (a server, a notebook), A moved away and B moved to its path. The writer's
    clean-up and compaction go by path: B lost its segments' rows to A's catalog's view of them, and A lost its
    vectors. Both are refused now, before anything is written."""
    import shutil

    from mmretrieval import Collection
    from mmretrieval.errors import CollectionError
    from test_ingest import write_good_images

    write_good_images(tmp_path / "a", 3)
    write_good_images(tmp_path / "b", 5, seed=7)
    with Collection.open(tmp_path / "B", model=tiny_encoder, create=True) as other:
        other.ingest([tmp_path / "b"], workers=0)
    with Collection.open(tmp_path / "A", model=tiny_encoder, create=True) as collection:
        collection.ingest([tmp_path / "a"], workers=0)
        shutil.move(tmp_path / "A", tmp_path / "A-moved")
        shutil.move(tmp_path / "B", tmp_path / "A")
        with pytest.raises(CollectionError, match="was moved or deleted while this command was writing to it"):
            collection.ingest([tmp_path / "a"], workers=0) if writer == "ingest" else collection.compact()
    for folder, count in (("A", 5), ("A-moved", 3)):  # B, now at A's path, and A where it went: both whole
        with Collection.open(tmp_path / folder) as reopened:
            assert reopened.catalog.vector_count() == count and reopened.check().problems == ()
