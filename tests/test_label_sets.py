"""Label sets: separate runs kept apart, replaced only on request, streamed to the catalog chunk by chunk."""

from __future__ import annotations

import json
import sqlite3

import pytest

from mmretrieval.errors import CollectionError, QueryError


@pytest.fixture()
def collection(tmp_path, tiny_encoder):
    from ui_support import write_scene_folder

    from mmretrieval.collection.collection import Collection

    write_scene_folder(tmp_path / "images", count=9)
    with Collection.open(tmp_path / "c", model=tiny_encoder, create=True, device="cpu") as opened:
        opened.ingest([tmp_path / "images"], workers=0)
        yield opened


def test_runs_into_named_sets_are_kept_apart_and_replaced_only_on_request(collection):
    first = collection.label("circle, square", label_set="default")
    second = collection.label("red, blue", multi_label=True, threshold=0.0, label_set="colours")
    assert first.label_set == "default" and second.label_set == "colours"
    counts = collection.info().labels
    assert sum(counts.get(name, 0) for name in ("circle", "square")) == 9  # the first run is still there
    assert counts["colours:red"] == counts["colours:blue"] == 9
    assert [(s.name, s.labels, s.multi_label) for s in collection.label_sets()] == [
        ("default", ("circle", "square"), False), ("colours", ("red", "blue"), True)]

    with pytest.raises(CollectionError, match="label set 'colours' exists already; replace it on purpose"):
        collection.label("green, blue", label_set="colours")
    assert collection.info().labels["colours:red"] == 9  # a refused run changes nothing
    collection.label("green", label_set="colours", replace=True, multi_label=True, threshold=0.0)
    assert {name for name in collection.info().labels if name.startswith("colours:")} == {"colours:green"}

    some_id = int(collection.catalog.vector_ids()[0])
    names = [name for name, _ in collection.label_of([some_id])[some_id]]
    assert "colours:green" in names and any(name in ("circle", "square") for name in names)


def test_search_filters_by_set_and_label_or_by_label_in_any_set(collection):
    collection.label("circle, square", label_set="a")
    collection.label("circle, square", label_set="b", multi_label=True, threshold=0.0)
    in_b = collection.search("x", k=50, label="b:circle")
    assert len(in_b) == 9  # multi-label at threshold 0: every image
    counts_a = {s.name: s for s in collection.label_sets()}["a"].counts
    assert sum(counts_a.values()) == 9
    label, count = max(counts_a.items(), key=lambda item: item[1])
    in_a = collection.search("x", k=50, label=f"a:{label}")
    assert len(in_a) == count and all(f"a:{label}" in hit.labels for hit in in_a)
    assert len(collection.search("x", k=50, label=label)) == 9  # LABEL alone: that label in any set
    with pytest.raises(Exception, match="no label set has label 'c:circle'"):
        collection.search("x", label="c:circle")


def test_a_label_a_set_was_run_with_that_no_image_got_filters_to_nothing(collection, capsys):
    """A multi-label set may give a label to no image: filtering by it finds nothing (exit 1), where a label no
    set knows is an error that lists the labels of every set, those no image got included."""
    from mmretrieval.cli import main

    collection.label("zebra, giraffe", label_set="z", multi_label=True, threshold=1.0)
    assert collection.search("x", k=5, label="z:zebra") == [] and collection.search("x", k=5, label="giraffe") == []
    assert main(["search", "x", "--collection", str(collection.directory), "--label", "z:zebra"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(Exception, match="no label set has label 'z:okapi'; labels: .*'z:zebra', 'z:giraffe'"):
        collection.search("x", label="z:okapi")


def test_an_unknown_label_filter_names_the_closest_labels_not_every_label(collection):
    """With a vocabulary of thousands the error listed every label of every set (3 MB on one line); it names the
    same label but for case first, then those that read alike, at most ten."""
    from mmretrieval.collection.filters import LABELS_SHOWN

    vocabulary = [f"class {n:04d}" for n in range(2_000)] + ["red circle"]
    collection.label(vocabulary, label_set="big", multi_label=True, threshold=1.0)
    with pytest.raises(QueryError) as refused:
        collection.search("x", label="big:Red Circles")
    assert str(refused.value) == "no label set has label 'big:Red Circles'; closest: 'big:red circle' and 2,000 more"
    with pytest.raises(QueryError) as refused:  # a label without its set is compared with the sets' labels
        collection.search("x", label="Red Circles")
    assert str(refused.value) == "no label set has label 'Red Circles'; closest: 'big:red circle' and 2,000 more"
    with pytest.raises(QueryError) as refused:
        collection.search("x", label="big:class 00x7")
    message = str(refused.value)
    assert message.startswith("no label set has label 'big:class 00x7'; closest: 'big:class ")
    assert message.count("'big:class ") == 1 + LABELS_SHOWN and message.endswith(" and 1,991 more")
    with pytest.raises(QueryError) as refused:
        collection.search("x", label="okapi")
    assert str(refused.value) == ("no label set has label 'okapi'; labels: "
                                  + ", ".join(f"'big:class {n:04d}'" for n in range(LABELS_SHOWN))
                                  + f" and {2_001 - LABELS_SHOWN:,} more")


def test_a_label_filter_differing_only_in_case_takes_the_labels_alike(collection):
    """`--label 'Red Circle'` found nothing in a set labelled `red circle` (the error only suggested it): a filter
    that names no label exactly takes every label that differs from it only in case or Unicode form."""
    images = collection.directory.parent / "images"
    for name, labels, image in (("shapes", "Circle, square", 1), ("more", "circle, triangle", 2)):
        collection.label(labels, label_set=name, multi_label=True, threshold=0.0,
                         path_prefix=str(images / f"scene-00{image}"))
    in_shapes = {hit.id for hit in collection.search("x", k=50, label="shapes:Circle")}
    in_more = {hit.id for hit in collection.search("x", k=50, label="more:circle")}
    assert len(in_shapes) == len(in_more) == 1 and in_shapes != in_more
    assert {hit.id for hit in collection.search("x", k=50, label="shapes:CIRCLE")} == in_shapes
    assert {hit.id for hit in collection.search("x", k=50, label="SHAPES:circle")} == in_shapes
    assert {hit.id for hit in collection.search("x", k=50, label="CIRCLE")} == in_shapes | in_more
    assert {hit.id for hit in collection.search("x", k=50, label="more:Circle")} == in_more
    with pytest.raises(QueryError, match="no label set has label 'Shapes:Triangle'; closest: 'more:triangle'"):
        collection.search("x", k=50, label="Shapes:Triangle")  # another set's label
    assert {hit.id for hit in collection.search("x", k=50, label="circle")} == in_more  # an exact match first


def test_bad_set_names_are_refused(collection):
    for name in ("", "a:b", ".hidden", "x" * 65):
        with pytest.raises(CollectionError, match="a label set cannot be named"):
            collection.label("circle, square", label_set=name)


def test_assignments_are_streamed_per_chunk_and_a_failed_run_leaves_the_set_as_it_was(collection, monkeypatch):
    from mmretrieval.collection import label_sets, labelling

    collection.label("circle, square", label_set="shapes")
    before = collection.info().labels
    monkeypatch.setattr(labelling, "_CHUNK", 4)
    staged_sizes = []
    real_add = label_sets.LabelSetWriter.add

    def add(self, assignments):
        assignments = list(assignments)
        staged_sizes.append(len(assignments))
        if len(staged_sizes) == 2:
            raise RuntimeError("killed half-way")
        real_add(self, assignments)

    monkeypatch.setattr(label_sets.LabelSetWriter, "add", add)
    with pytest.raises(RuntimeError):
        collection.label("star, cross", label_set="shapes", replace=True)
    assert staged_sizes == [4, 4]  # one chunk of vectors at a time went to the catalog
    assert collection.info().labels == before  # the stored set is unchanged

    monkeypatch.setattr(label_sets.LabelSetWriter, "add", real_add)
    assert collection.catalog._query("SELECT COUNT(*) FROM labels_staging")[0][0] == 4  # the dead run's chunk
    collection.label("red, blue", label_set="other")  # any later run clears every dead run's rows, whatever their set
    assert collection.catalog._query("SELECT COUNT(*) FROM labels_staging")[0][0] == 0
    summary = collection.label("star, cross", label_set="shapes", replace=True)
    stored = collection.info().labels
    assert sum(summary.counts.values()) == 9 == sum(n for label, n in stored.items() if label.startswith("shapes:"))


def test_a_labelling_run_while_another_writer_works_is_refused(collection):
    from lock_holder import held_by_another_process
    from mmretrieval.collection.catalog import LOCK_NAME

    with held_by_another_process(collection.directory / LOCK_NAME):  # say, an ingest
        with pytest.raises(CollectionError, match="another process is writing .*; run mmr label when it is done"):
            collection.label("circle, square", label_set="shapes")
    assert "shapes" not in {s.name for s in collection.label_sets()}
    collection.label("circle, square", label_set="shapes")  # the lock is free again


def test_labels_of_a_version_2_catalog_become_the_default_set(tmp_path):
    from mmretrieval.collection.catalog import Catalog
    from mmretrieval.collection.label_sets import sets
    from mmretrieval.collection.migrations import SCHEMA_VERSION

    path = tmp_path / "catalog.sqlite"
    Catalog(path).close()
    db = sqlite3.connect(path)  # turn it into what version 2 wrote: labels without sets
    db.executescript("""
        DROP TABLE labels; DROP TABLE label_sets; DROP TABLE labels_staging;
        CREATE TABLE labels (image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE, label TEXT NOT NULL,
            probability REAL NOT NULL, PRIMARY KEY (image_id, label));
        INSERT INTO images(path, size, mtime_ns, status) VALUES (x'2f61', 1, 1, 'ok'), (x'2f62', 1, 1, 'ok');
        INSERT INTO labels VALUES (1, 'cat', 0.9), (2, 'dog', 0.8);
        UPDATE meta SET value = '2' WHERE key = 'schema';
    """)
    db.commit()
    db.close()
    catalog = Catalog(path)
    try:
        assert catalog.get_meta("schema") == str(SCHEMA_VERSION) and SCHEMA_VERSION >= 3  # 3 -> 4 added photos
        assert catalog.label_counts() == {"cat": 1, "dog": 1}
        assert catalog.labels_of([1, 2]) == {1: (("cat", 0.9),), 2: (("dog", 0.8),)}
        assert [(s.name, s.labels) for s in sets(catalog)] == [("default", ("cat", "dog"))]
    finally:
        catalog.close()
    Catalog(path).close()  # opening again changes nothing


def test_cli_label_set_and_replace_and_search_by_set(tmp_path, tiny_model_dir, capsys):
    import json

    from ui_support import write_scene_folder

    from mmretrieval.cli import main

    write_scene_folder(tmp_path / "images", count=6)
    collection = str(tmp_path / "c")
    assert main(["ingest", str(tmp_path / "images"), "--collection", collection, "--model", str(tiny_model_dir),
                 "--device", "cpu", "--workers", "0"]) == 0
    assert main(["label", "--collection", collection, "--labels", "red,blue", "--multi-label", "--threshold", "0",
                 "--set", "colours"]) == 0
    capsys.readouterr()
    assert main(["label", "--collection", collection, "--labels", "green,pink", "--set", "colours"]) == 2
    assert "label set 'colours' exists already" in capsys.readouterr().err
    assert main(["search", "x", "--collection", collection, "--label", "colours:red", "--json", "-k", "20"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 6 and all("colours:red" in hit["labels"] for hit in hits)
    assert main(["label", "--collection", collection, "--labels", "green,pink", "--set", "colours", "--replace"]) == 0
    capsys.readouterr()
    assert main(["search", "x", "--collection", collection, "--label", "red", "--json"]) == 2  # gone with its set


def test_a_label_set_is_removed_by_name_and_the_others_are_kept(collection, capsys):
    from mmretrieval.cli import main

    collection.label("circle, square", label_set="shapes")
    collection.label("red, blue", label_set="colours")
    directory = str(collection.directory)
    assert any(name.startswith("shapes:") for hit in collection.search("x", k=9) for name in hit.labels)
    assert main(["label", "--collection", directory, "--remove", "shapes"]) == 0
    assert "removed label set 'shapes' (9 labels given to images)" in capsys.readouterr().err
    assert [found.name for found in collection.label_sets()] == ["colours"]
    assert all(not name.startswith("shapes:") for hit in collection.search("x", k=9) for name in hit.labels)
    with pytest.raises(Exception, match="no label set 'shapes'.*label sets: colours"):
        collection.remove_label_set("shapes")
    assert main(["label", "--collection", directory, "--remove", "colours", "--labels", "a,b"]) == 2
    assert main(["label", "--collection", directory]) == 2
    err = capsys.readouterr().err
    assert "--remove deletes a label set; it takes none of --labels" in err and "--labels is required" in err
    assert [found.name for found in collection.label_sets()] == ["colours"]


def test_compact_gives_a_removed_sets_pages_back_to_the_disk(collection, capsys):
    """A removed set's rows left the catalog file as large as before (SQLite keeps free pages for reuse): 234 MB
    with 20,000 labels, 97% of it free. `mmr compact` rewrites the catalog, while this reader stays open."""
    import json

    from mmretrieval.cli import main

    collection.label("red, blue", label_set="colours")
    collection.label([f"thing {n}" for n in range(1500)], label_set="big", multi_label=True, threshold=0.0)
    directory = str(collection.directory)
    files = [collection.directory / name for name in ("catalog.sqlite", "catalog.sqlite-wal")]
    assert main(["label", "--collection", directory, "--remove", "big"]) == 0
    assert "`mmr compact` gives them back to the disk" in capsys.readouterr().err
    assert main(["info", "--collection", directory, "--json"]) == 0
    free = json.loads(capsys.readouterr().out)["catalog_free_bytes"]
    before = sum(path.stat().st_size for path in files if path.exists())  # (most of it may be in the WAL)
    assert free > 2**20

    assert main(["compact", "--collection", directory]) == 0
    err = capsys.readouterr().err
    assert err.startswith("catalog rewritten without its free pages: ") and "compacted" not in err
    assert sum(path.stat().st_size for path in files if path.exists()) <= before - free
    assert main(["info", "--collection", directory, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["catalog_free_bytes"] == 0 and info["label_sets"] == {"colours": 2}
    assert len(collection.search("x", k=9, label="colours:red")) == info["labels"].get("colours:red", 0)
    assert main(["compact", "--collection", directory]) == 0
    assert "nothing to compact" in capsys.readouterr().err


def test_a_big_vocabulary_is_scored_in_smaller_chunks_with_the_same_labels(collection, monkeypatch):
    """Scores of 4,096 images by 20,000 labels took 2 GB while they were made: a chunk holds at most
    _CHUNK_CELLS scores, and what it labels is the same as in one chunk."""
    from mmretrieval.collection import labelling

    vocabulary = [f"shape {n}" for n in range(6)] + ["circle", "square"]
    whole = collection.label(vocabulary, label_set="whole", multi_label=True, threshold=0.1)
    monkeypatch.setattr(labelling, "_CHUNK_CELLS", 2 * len(vocabulary))  # two images a chunk
    monkeypatch.setattr(labelling, "_CHUNK_MIN", 1)
    reported: list[tuple[int, int]] = []
    chunked = collection.label(vocabulary, label_set="chunked", multi_label=True, threshold=0.1,
                               progress=lambda done, total: reported.append((done, total)))
    assert chunked.counts == whole.counts and chunked.unlabelled == whole.unlabelled
    assert reported == [(done, 9) for done in (2, 4, 6, 8, 9)]
    ids = collection.catalog.vector_ids().tolist()
    labels = collection.label_of(ids)
    assert all({name.split(":", 1)[1] for name, _ in labels[i] if name.startswith("whole:")}
               == {name.split(":", 1)[1] for name, _ in labels[i] if name.startswith("chunked:")} for i in ids)


def test_info_names_every_set_with_its_vocabulary_even_one_that_labelled_nothing(collection, capsys):
    """A set that gave no image a label showed nowhere in `mmr info`; the web UI listed every label of every set
    as one bullet (half a megabyte with a 20,000-label vocabulary), now the sets."""
    from mmretrieval.cli import main
    from mmretrieval.ui.collection_handlers import describe_collection

    collection.label("circle, square", label_set="shapes")
    collection.label([f"class {n}" for n in range(300)], label_set="none", multi_label=True, threshold=1.0)
    info = collection.info()
    assert info.label_sets == {"shapes": 2, "none": 300}
    assert not [name for name in info.labels if name.startswith("none:")]
    assert main(["info", "--collection", str(collection.directory)]) == 0
    assert "label_sets\tshapes=2, none=300" in capsys.readouterr().out.splitlines()
    summary = describe_collection(info)
    assert "- label sets: shapes (2 labels), none (300 labels)" in summary and "class 7" not in summary


def test_too_little_disk_for_the_catalogs_rewrite_leaves_it_as_it_was(collection, monkeypatch):
    import shutil
    from collections import namedtuple

    from mmretrieval.collection import compaction

    collection.label([f"thing {n}" for n in range(500)], label_set="big", multi_label=True, threshold=0.0)
    collection.remove_label_set("big")
    free = compaction.catalog_space(collection.catalog).free_bytes
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(CollectionError, match="needs .* MiB of disk beside it .*left as it was"):
        collection.compact()
    assert compaction.catalog_space(collection.catalog).free_bytes == free
    monkeypatch.undo()
    assert collection.compact().catalog_bytes_freed >= free


def test_a_labels_images_are_listed_most_probable_first_with_no_query(collection, capsys):
    """`mmr search "" --label star` said a query needs a positive term: a label's images could not be listed."""
    from mmretrieval.cli import main

    collection.label("circle, square", label_set="shapes", multi_label=True, threshold=0.0)
    expected = sorted(((p, i) for i, labels in collection.label_of(collection.catalog.vector_ids().tolist()).items()
                       for name, p in labels if name == "shapes:circle"), key=lambda pair: (-pair[0], pair[1]))
    hits = collection.labelled("shapes:circle", k=50)
    assert [(hit.score, hit.id) for hit in hits] == [(pytest.approx(p), i) for p, i in expected] and len(hits) == 9
    assert [hit.id for hit in collection.labelled("Circle", k=3)] == [i for _, i in expected[:3]]  # any set, any case
    cut = expected[4][0]
    assert all(hit.score >= cut for hit in collection.labelled("shapes:circle", k=50, threshold=cut))
    with pytest.raises(QueryError, match="no label set has label 'triangle'"):
        collection.labelled("triangle")

    directory = str(collection.directory)
    assert main(["search", "--collection", directory, "--label", "circle", "-k", "4", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["id"] for row in rows] == [i for _, i in expected[:4]]
    assert main(["search", "--collection", directory, "--not", "red"]) == 2
    assert "with no query, --label LABEL lists that label's images" in capsys.readouterr().err


def test_a_reader_on_an_old_snapshot_does_not_hold_up_compact(collection, caplog):
    """The checkpoint after the rewrite waited 30 s for a reader holding an old snapshot (the web UI's server
    reading on), then said the space was given back while the file was as large as before."""
    import logging

    collection.label([f"thing {n}" for n in range(500)], label_set="big", multi_label=True, threshold=0.0)
    collection.remove_label_set("big")
    reader = sqlite3.connect(f"file:{collection.directory / 'catalog.sqlite'}?mode=ro", uri=True, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM images").fetchall()  # a snapshot from before the rewrite
    with caplog.at_level(logging.WARNING, logger="mmretrieval"):  # (the old code waited 30 s here, then said nothing)
        freed = collection.compact().catalog_bytes_freed
    assert freed > 0 and "a reader still reads the old one" in caplog.text
    (timeout,), = collection.catalog._query("PRAGMA busy_timeout")
    assert timeout > 0  # the catalog's own wait for other writers is back
    reader.execute("COMMIT")
    reader.close()
