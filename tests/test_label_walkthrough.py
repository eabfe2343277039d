"""Findings of a walk through `mmr label`: an export lists exactly the images the run scored (not every embedded
image, not those ingested later, with an empty CSV row for a scored image that got no label), the record of what
was scored follows replaced and removed sets, runs that die, and images that are pruned or change later; and
:meth:`Collection.label` checks its threshold and templates as the command line does."""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
from pathlib import Path

import pytest

from mmretrieval.errors import QueryError


@pytest.fixture()
def dataset(tmp_path):
    """``ds/circle`` (4 scenes) and ``ds/square`` (3 scenes), each with a corrupt file that fails to embed."""
    from ui_support import write_scene_folder

    write_scene_folder(tmp_path / "ds" / "circle", count=4)
    write_scene_folder(tmp_path / "ds" / "square", count=3)
    return tmp_path / "ds"


@pytest.fixture()
def collection(tmp_path, dataset, tiny_encoder):
    from mmretrieval.collection.collection import Collection

    with Collection.open(tmp_path / "c", model=tiny_encoder, create=True, device="cpu") as opened:
        opened.ingest([dataset], workers=0)
        yield opened


def _ids_under(collection, folder: Path) -> list[int]:
    return sorted(int(i) for i in collection.catalog.ids_with_prefix(f"{folder}{os.sep}"))


def _jsonl(path: Path) -> dict[int, list[str]]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {record["id"]: [pair["label"] for pair in record["labels"]] for record in records}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_cli_export_lists_only_the_images_the_run_scored(collection, dataset, tmp_path, capsys):
    """The walkthrough: `mmr label --prefix ds/circle --out run.jsonl` listed ds/square's images too, with []."""
    from mmretrieval.cli import main

    out = tmp_path / "run.jsonl"
    collection.close()  # the command opens it itself
    assert main(["label", "--collection", str(tmp_path / "c"), "--labels", "circle,square", "--device", "cpu",
                 "--prefix", str(dataset / "circle"), "--out", str(out)]) == 0
    capsys.readouterr()
    from mmretrieval.collection.collection import Collection

    with Collection.open(tmp_path / "c", read_only=True) as reader:
        circles, squares = _ids_under(reader, dataset / "circle"), _ids_under(reader, dataset / "square")
    assert len(circles) == 4 and len(squares) == 3
    exported = _jsonl(out)
    assert sorted(exported) == circles  # ds/square was never scored
    assert all(len(labels) == 1 for labels in exported.values())  # single-label: each its best label


def test_images_ingested_after_the_run_are_not_in_its_export(collection, dataset, tmp_path):
    from ui_support import write_scene_folder

    collection.label("circle, square", path_prefix=str(dataset / "circle"), label_set="shapes")
    write_scene_folder(dataset / "later", count=2)
    collection.ingest([dataset / "later"], workers=0)
    collection.export_labels(tmp_path / "shapes.jsonl", "shapes")
    assert sorted(_jsonl(tmp_path / "shapes.jsonl")) == _ids_under(collection, dataset / "circle")
    collection.export_labels(tmp_path / "every.jsonl")  # every set: still only what some run scored
    assert sorted(_jsonl(tmp_path / "every.jsonl")) == _ids_under(collection, dataset / "circle")


def test_a_scored_image_with_no_label_is_an_empty_jsonl_list_and_an_empty_csv_row(collection, dataset, tmp_path):
    """Multi-label with a cutoff no probability reaches: every scored image is in both files, without a label."""
    summary = collection.label("circle, square", multi_label=True, threshold=1.0, label_set="none",
                               path_prefix=str(dataset / "square"))
    assert summary.images == 3 and sum(summary.counts.values()) == 0
    squares = _ids_under(collection, dataset / "square")
    collection.export_labels(tmp_path / "none.jsonl", "none")
    assert _jsonl(tmp_path / "none.jsonl") == {i: [] for i in squares}
    assert collection.export_labels(tmp_path / "none.csv", "none") == 3
    rows = _csv(tmp_path / "none.csv")
    assert [int(row["id"]) for row in rows] == squares  # joinable to ground truth: one row per scored image
    assert all(row["label"] == "" and row["probability"] == "" and row["path"] for row in rows)


def test_csv_rows_are_the_assignments_plus_one_per_scored_image_without_any(collection, tmp_path):
    """A cutoff between the images' best probabilities: images over it have a row per label they reached, the
    others one empty row."""
    collection.label("circle, square", multi_label=True, threshold=0.0, label_set="all")
    best = sorted({pairs[0][1] for pairs in collection.catalog.labels_of(collection.catalog.vector_ids().tolist(),
                                                                         "all").values()})
    assert len(best) >= 2, best
    cutoff = (best[-1] + best[-2]) / 2  # the best image reaches it, the next best does not
    collection.label("circle, square", multi_label=True, threshold=cutoff, label_set="half")
    collection.export_labels(tmp_path / "half.csv", "half")
    collection.export_labels(tmp_path / "half.jsonl", "half")
    by_id = _jsonl(tmp_path / "half.jsonl")
    assert sorted(by_id) == sorted(collection.catalog.vector_ids().tolist())  # every image was scored
    rows = _csv(tmp_path / "half.csv")
    expected = [(i, label) for i in sorted(by_id) for label in (by_id[i] or [""])]
    assert [(int(row["id"]), row["label"]) for row in rows] == expected
    assert any(not labels for labels in by_id.values()) and any(labels for labels in by_id.values())


def test_replacing_or_removing_a_set_replaces_or_removes_what_it_scored(collection, dataset, tmp_path):
    collection.label("circle, square", label_set="shapes", path_prefix=str(dataset / "circle"))
    collection.label("circle, square", label_set="shapes", path_prefix=str(dataset / "square"), replace=True)
    collection.export_labels(tmp_path / "shapes.jsonl", "shapes")
    assert sorted(_jsonl(tmp_path / "shapes.jsonl")) == _ids_under(collection, dataset / "square")

    collection.label("circle, square", label_set="other", path_prefix=str(dataset / "circle"))
    collection.remove_label_set("shapes")
    assert collection.catalog.select("SELECT COUNT(*) FROM label_scored WHERE label_set = 'shapes'") == [(0,)]
    collection.export_labels(tmp_path / "every.jsonl")
    assert sorted(_jsonl(tmp_path / "every.jsonl")) == _ids_under(collection, dataset / "circle")


def test_a_run_that_dies_half_way_records_nothing_and_keeps_what_the_set_scored(collection, dataset, monkeypatch):
    from mmretrieval.collection import label_sets, labelling

    collection.label("circle, square", label_set="shapes", path_prefix=str(dataset / "circle"))
    scored = collection.catalog.select("SELECT image_id FROM label_scored WHERE label_set = 'shapes' ORDER BY 1")
    assert [i for i, in scored] == _ids_under(collection, dataset / "circle")
    monkeypatch.setattr(labelling, "_CHUNK", 2)
    calls = []
    real_add = label_sets.LabelSetWriter.add

    def add(self, assignments):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed half-way")
        real_add(self, assignments)

    monkeypatch.setattr(label_sets.LabelSetWriter, "add", add)
    with pytest.raises(RuntimeError):
        collection.label("circle, square", label_set="shapes", replace=True)  # every image, this time
    monkeypatch.setattr(label_sets.LabelSetWriter, "add", real_add)
    assert collection.catalog.select("SELECT image_id FROM label_scored WHERE label_set = 'shapes' "
                                     "ORDER BY 1") == scored
    collection.label("circle, square", label_set="shapes", replace=True)  # a later run starts from nothing staged
    assert len(collection.catalog.select("SELECT 1 FROM label_scored WHERE label_set = 'shapes'")) == 7


def test_pruned_and_changed_images_leave_the_export_and_touched_ones_stay(collection, dataset, tmp_path):
    from mmretrieval.training import scenes

    collection.label("circle, square", multi_label=True, threshold=1.0, label_set="none")
    circles = sorted((dataset / "circle").glob("scene-*.png"))
    rows = collection.catalog.rows(_ids_under(collection, dataset / "circle"))
    id_of = {Path(row.path).name: i for i, row in rows.items()}
    circles[0].unlink()  # gone: pruned
    scenes.generate(99, 7, held_out="include", size=64).image.save(circles[1])  # new bytes: a new vector
    os.utime(circles[2], ns=(10**18, 10**18))  # the same bytes, a new mtime: its scoring still holds
    collection.ingest([dataset / "circle"], workers=0, prune=True)
    collection.export_labels(tmp_path / "none.jsonl", "none")
    exported = _jsonl(tmp_path / "none.jsonl")
    assert id_of[circles[0].name] not in exported and id_of[circles[1].name] not in exported
    assert id_of[circles[2].name] in exported and exported[id_of[circles[2].name]] == []
    assert sorted(exported) == sorted(set(collection.catalog.vector_ids().tolist()) - {id_of[circles[1].name]})


def _as_made_by_the_previous_version(catalog_path: Path) -> None:
    """What mmretrieval before the record of scored images left: no ``label_scored`` table, nor its triggers."""
    db = sqlite3.connect(catalog_path)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND sql LIKE '%label_scored%'"
                              ).fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.execute("DROP TABLE label_scored")
    db.commit()
    db.close()


def test_a_set_labelled_before_scoring_was_recorded_exports_as_it_did(collection, dataset, tmp_path):
    """A catalog of the previous version, read-only (no table to add) and then writable (the table is added, empty):
    its sets name no scored image, so JSON lines list every embedded image as before and the CSV the assignments."""
    from mmretrieval.collection.catalog import Catalog
    from mmretrieval.collection.labelling import export_labels

    collection.label("circle, square", multi_label=True, threshold=1.0, label_set="old",
                     path_prefix=str(dataset / "circle"))
    catalog_path = collection.catalog.path
    every = sorted(collection.catalog.vector_ids().tolist())
    collection.close()
    _as_made_by_the_previous_version(catalog_path)

    reader = Catalog(catalog_path, writable=False)
    try:
        assert export_labels(reader, tmp_path / "old.jsonl", "old") == 7
        assert _jsonl(tmp_path / "old.jsonl") == {i: [] for i in every}  # today's behaviour: every image
        assert export_labels(reader, tmp_path / "old.csv", "old") == 0 and _csv(tmp_path / "old.csv") == []
        assert export_labels(reader, tmp_path / "every.jsonl") == 7
    finally:
        reader.close()

    writer = Catalog(catalog_path)  # adds the table; the old set still has no record of what it scored
    try:
        assert writer.select("SELECT COUNT(*) FROM label_scored") == [(0,)]
        export_labels(writer, tmp_path / "old2.jsonl", "old")
        assert _jsonl(tmp_path / "old2.jsonl") == {i: [] for i in every}
    finally:
        writer.close()


def test_label_refuses_a_threshold_the_command_line_refuses(collection):
    for bad in (5, -1, 1.5, math.nan, math.inf, "0.5", True):
        with pytest.raises(QueryError, match="threshold"):
            collection.label("circle, square", multi_label=True, threshold=bad, label_set="bad")
    with pytest.raises(QueryError, match="threshold applies with multi_label"):
        collection.label("circle, square", threshold=0.9, label_set="bad")
    assert "bad" not in {s.name for s in collection.label_sets()}  # nothing was written
    assert collection.label("circle, square", multi_label=True, threshold=0, label_set="zero").threshold == 0.0
    assert collection.label("circle, square", multi_label=True, label_set="half").threshold == 0.5
    assert collection.label("circle, square", label_set="single").threshold is None


def test_label_takes_one_template_string_as_zero_shot_build_does(collection, tiny_encoder):
    from mmretrieval.models.zeroshot import ZeroShotClassifier

    ZeroShotClassifier.build(tiny_encoder, ["circle", "square"], "a drawing of a {}.")  # accepted there
    one = collection.label("circle, square", "a drawing of a {}.", multi_label=True, threshold=0.0, label_set="one")
    listed = collection.label("circle, square", ["a drawing of a {}."], multi_label=True, threshold=0.0,
                              label_set="listed")
    ids = collection.catalog.vector_ids().tolist()
    assert one.images == listed.images == 7
    assert collection.catalog.labels_of(ids, "one") == collection.catalog.labels_of(ids, "listed")
    with pytest.raises(QueryError, match="unknown template set 'drawing'"):
        collection.label("circle, square", "drawing", label_set="unknown")
    with pytest.raises(QueryError, match="exactly one"):
        collection.label("circle, square", "a {} and a {}", label_set="two")


def test_the_cli_summary_counts_images_with_no_label_and_prints_json(collection, tmp_path, capsys):
    from mmretrieval.cli import main

    collection.close()
    argv = ["label", "--collection", str(tmp_path / "c"), "--labels", "circle,square", "--device", "cpu",
            "--multi-label", "--threshold", "1.0", "--set", "strict", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["label_set"] == "strict" and summary["images"] == 7  # every image embedded; none reaches 1.0
    assert summary["unlabelled"] == 7 and summary["counts"] == {"circle": 0, "square": 0}
    assert "7 with no label above 1.0" in captured.err
