"""What the Python API does with bad input: query vectors, k and thresholds, a closed or forked collection,
unknown label sets, bad open options, and a demo built under a relative folder."""

from __future__ import annotations

import csv
import logging
import multiprocessing
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmretrieval import demo
from mmretrieval.collection.collection import Collection
from mmretrieval.errors import CollectionError, ModelNotCachedError, ModelSpecError, QueryError
from test_ingest import write_good_images


@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("api")
    write_good_images(root / "photos", 6)
    with Collection.open(root / "col", model=tiny_encoder, create=True) as col:
        col.ingest([root / "photos"], workers=0)
        yield col


def _unit(collection: Collection) -> np.ndarray:
    return collection.query_vector("a red square")


# -- 1. query vectors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, needle", [
    (lambda v: np.full_like(v, np.nan), "finite"),
    (lambda v: np.where(np.arange(len(v)) == 0, np.inf, v), "finite"),
    (lambda v: np.zeros_like(v), "zero"),
    (lambda v: v[:16], "16"),
    (lambda v: np.zeros(0, np.float32), "0"),
    (lambda v: v.astype(str), "numbers"),
    (lambda v: v > 0, "numbers"),
    (lambda v: np.stack([v, v]), "shape"),
])
@pytest.mark.parametrize("method", ["search", "nearest"])
def test_a_bad_query_vector_is_a_query_error(collection, make, needle, method):
    vector = make(_unit(collection))
    with pytest.raises(QueryError, match=needle) as caught:
        getattr(collection, method)(vector, k=3)
    if needle == "16":
        assert "32" in str(caught.value)  # both dimensions named


@pytest.mark.parametrize("method", ["search", "nearest"])
def test_a_query_vector_is_normalised_to_unit_length(collection, method):
    unit = _unit(collection)
    expected = [(h.id, round(h.score, 5)) for h in getattr(collection, method)(unit, k=6)]
    assert max(abs(s) for _, s in expected) < 0.999  # real cosines, not clipped ones
    for scaled in (unit * 10, (unit * 1000).astype(np.float64), unit[None, :] * 0.01):
        assert [(h.id, round(h.score, 5)) for h in getattr(collection, method)(scaled, k=6)] == expected
    ones = getattr(collection, method)(np.ones(32, np.int64), k=6)
    ids, vectors = collection.vectors()  # as stored: scores are cosines with them at unit length
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected_ones = dict(zip(ids.tolist(), (vectors @ (np.ones(32) / np.sqrt(32))).tolist()))
    np.testing.assert_allclose([h.score for h in ones], [expected_ones[h.id] for h in ones], atol=1e-5)


# -- 2. k and threshold --------------------------------------------------------------------------------------------
def _calls(collection):
    ids, _ = collection.vectors()
    return {
        "search": lambda **kw: collection.search("red", **kw),
        "similar": lambda **kw: collection.similar(int(ids[0]), **kw),
        "nearest": lambda **kw: collection.nearest(_unit(collection), **kw),
        "duplicates": lambda **kw: collection.duplicates(**kw),
    }


@pytest.mark.parametrize("method", ["search", "similar", "nearest", "duplicates"])
def test_k_may_be_any_integer_but_not_a_bool_str_or_float(collection, method):
    call = _calls(collection)[method]
    assert call(k=np.int64(2)) == call(k=2)
    assert call(k=np.int32(2)) == call(k=2)
    for bad in (True, "5", 2.5, 0, -1, None):
        with pytest.raises(QueryError, match=r"\bk\b") as caught:
            call(k=bad)
        assert repr(bad) in str(caught.value) or str(bad) in str(caught.value)


@pytest.mark.parametrize("method", ["search", "similar", "nearest", "duplicates"])
def test_a_threshold_must_be_a_number(collection, method):
    call = _calls(collection)[method]
    assert call(threshold=np.float32(0.5)) == call(threshold=0.5)
    for bad in ("0.5", float("nan"), True, [0.5]):
        with pytest.raises(QueryError, match="threshold"):
            call(threshold=bad)


def test_a_duplicate_threshold_outside_a_cosine_is_a_query_error(collection):
    for bad in (0.0, 1.5):
        with pytest.raises(QueryError, match="threshold"):
            collection.duplicates(bad)


# -- 3. closing ------------------------------------------------------------------------------------------------------
def _digest_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("mmr-segment-digest") and t.is_alive()}


def _mapped(folder: Path) -> bool:
    return str(folder) in Path("/proc/self/maps").read_text()


def test_a_closed_collection_says_to_open_it_again_and_lets_go_of_its_files(tmp_path, tiny_encoder):
    write_good_images(tmp_path / "photos", 3)
    before = _digest_threads()
    col = Collection.open(tmp_path / "col", model=tiny_encoder, create=True)
    col.ingest([tmp_path / "photos"], workers=0)
    assert col.search("red", k=2)
    ours = _digest_threads() - before
    segments = tmp_path / "col" / "segments"
    assert ours and _mapped(segments)  # the case is real: a hashing thread and mapped segments
    col.close()
    col.close()  # closing twice is harmless
    assert not any(t.is_alive() for t in ours)
    assert not _mapped(segments)
    for use in (lambda: col.search("red"), col.info, lambda: col.similar(1), lambda: col.vectors(),
                lambda: col.ingest([tmp_path / "photos"], workers=0)):
        with pytest.raises(CollectionError, match="closed.*open it again"):
            use()
    with Collection.open(tmp_path / "col") as again:  # nothing lost
        assert again.info().vectors == 3
    with pytest.raises(CollectionError, match="closed"):
        again.info()


# -- 4. fork and pickle ---------------------------------------------------------------------------------------------
def test_a_forked_child_is_told_to_open_the_collection_again(collection, tmp_path):
    assert collection.search("red", k=2)  # FAISS and torch have run in the parent
    report = tmp_path / "child.txt"

    def child() -> None:
        try:
            collection.search("red", k=2)
            report.write_text("no error")
        except CollectionError as exc:
            report.write_text(f"CollectionError: {exc}")
        except BaseException as exc:  # noqa: BLE001 - the parent reports whatever happened
            report.write_text(f"{type(exc).__name__}: {exc}")

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout=60)
    if process.is_alive():
        process.kill()
        process.join()
        pytest.fail("the forked child hung instead of refusing the inherited collection")
    assert process.exitcode == 0
    message = report.read_text()
    assert message.startswith("CollectionError") and "fork" in message, message
    assert "Collection.open" in message and "spawn" in message and f"process {os.getpid()}" in message


def test_pickling_a_collection_gives_the_same_advice(collection):
    with pytest.raises(TypeError, match="Collection.open.*spawn"):
        pickle.dumps(collection)


# -- 5. label sets and ~ ----------------------------------------------------------------------------------------------
def test_export_and_organize_refuse_an_unknown_label_set_and_expand_tilde(collection, tmp_path, monkeypatch):
    collection.label("red,blue", label_set="colours", replace=True)
    with pytest.raises(QueryError, match="'nope'.*colours"):
        collection.export_labels(tmp_path / "out.csv", label_set="nope")
    assert not (tmp_path / "out.csv").exists()
    with pytest.raises(QueryError, match="'nope'.*colours"):
        collection.organize(tmp_path / "sorted", label_set="nope")
    assert not (tmp_path / "sorted").exists()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert collection.export_labels("~/l.csv", label_set="colours") == 6
    assert (tmp_path / "l.csv").is_file()
    assert collection.organize("~/sorted", label_set="colours").placed == 6


# -- 6. precision, device, and what a query image error covers --------------------------------------------------------
@pytest.mark.parametrize("option, needle", [({"precision": "fp16"}, "fp16"), ({"device": "tpu"}, "tpu")])
def test_open_refuses_an_unknown_precision_or_device_before_anything_is_made(collection, tmp_path, option, needle):
    with pytest.raises(ModelSpecError, match=needle):
        Collection.open(tmp_path / "new", create=True, **option)
    assert not (tmp_path / "new").exists()
    with pytest.raises(ModelSpecError, match=needle):
        Collection.open(collection.directory, **option)


def test_a_model_that_cannot_load_is_not_blamed_on_the_query_image(collection, tmp_path, monkeypatch):
    import mmretrieval.models.encoder as module  # where a collection's model loads from

    def unavailable(*args, **kwargs):
        raise ModelNotCachedError("the weights are not cached")

    monkeypatch.setattr(module, "load_encoder", unavailable)
    with Collection.open(collection.directory) as col:  # no model given: it loads on first use
        with pytest.raises(ModelNotCachedError):
            col.similar(Image.new("RGB", (8, 8)))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(QueryError, match="cannot use"):
        collection.similar(broken)


# -- 7. the demo under a relative folder -------------------------------------------------------------------------------
def test_demo_scenes_under_a_relative_root_are_found_by_their_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    list_file = demo.write_scenes(Path("scenes"), demo.DemoConfig(count=3, image_size=32))
    with open(list_file, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    assert all((Path(list_file).parent / row["path"]).is_file() for row in rows)  # how list paths are resolved


def test_a_relative_demo_folder_builds_a_full_demo(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    config = demo.DemoConfig(count=3, model=str(tiny_model_dir), image_size=32)
    directory = demo.ensure_demo_collection(Path("reldemo"), config, device="cpu")
    assert demo.is_ready(tmp_path / "reldemo", config)
    with Collection.open(directory) as col:
        assert col.info().vectors == 3


def test_a_demo_build_that_embedded_nothing_is_not_marked_ready(tmp_path, monkeypatch, tiny_model_dir):
    def no_scenes(root, config, *, progress=None):
        list_file = Path(root) / "captions.csv"
        list_file.write_text("path,caption\n/nowhere/scene.png,nothing\n")
        return list_file

    monkeypatch.setattr(demo, "write_scenes", no_scenes)
    config = demo.DemoConfig(count=1, model=str(tiny_model_dir), image_size=32)
    with pytest.raises(CollectionError, match="embedded no"):
        demo.ensure_demo_collection(tmp_path / "demo", config, device="cpu")
    assert not (tmp_path / "demo" / demo.MARKER_NAME).exists()


# -- 8. an index type that could not be built is a warning ---------------------------------------------------------
def test_an_ivf_index_over_too_few_vectors_warns_that_flat_was_built(collection, caplog):
    with caplog.at_level(logging.WARNING, logger="mmretrieval.collection.upkeep_methods"):
        manifest = collection.rebuild_index("ivf")
    assert manifest.index_type == "flat"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ivf" in m and "flat" in m and "too few" in m for m in warned), warned
    collection.rebuild_index("auto")


def test_a_model_may_be_a_path_and_anything_else_is_refused_by_name(tmp_path, tiny_model_dir):
    with Collection.open(tmp_path / "by-path", model=tiny_model_dir, create=True) as col:  # a Path, not a str
        assert col.identity.spec == str(tiny_model_dir)
    with pytest.raises(ModelSpecError, match="model must be a model spec .* got int 42"):
        Collection.open(tmp_path / "by-number", model=42, create=True)
    assert not (tmp_path / "by-number").exists()
