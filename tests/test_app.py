"""The web UI through its Python handlers and its HTTP API, against a small collection built here.

Handlers are called directly where that is enough; the file-route probes and the API go through a
real server on a free local port (gradio_client and raw HTTP), as a script or an attacker would.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ui_support import SCENE_COUNT, build_test_collection, free_port, running_app


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory, tiny_model_dir):
    """A collection of generated scenes (plus one broken file) ingested with the tiny model."""
    root = tmp_path_factory.mktemp("ui-collection")
    build_test_collection(root, str(tiny_model_dir))
    return root


@pytest.fixture(scope="module")
def context(collection_dir, tiny_encoder):
    from mmretrieval.collection.collection import Collection
    from mmretrieval.ui.context import AppContext
    from mmretrieval.ui.server import DEMO_QUERIES

    collection = Collection.open(collection_dir / "collection", model=tiny_encoder, device="cpu")
    yield AppContext(collection=collection, encoder=tiny_encoder, title="test collection",
                     example_queries=DEMO_QUERIES[:2], map_labels=("circle", "square"))
    collection.close()


@pytest.fixture(scope="module")
def server(context):
    with running_app(context) as url:
        yield url


class _Select:
    """Stands in for gr.SelectData: the gallery index the user clicked."""

    def __init__(self, index):
        self.index = index


def test_text_search_returns_scored_thumbnails_sorted_best_first(search, collection_dir):
    gallery, hits, confidence, ids, status = search.search("a red circle", None, "", 5, -1)
    assert confidence["level"] in ("weak", "fair", "clear")
    assert confidence["top_score"] == pytest.approx(hits[0]["score"], abs=1e-6)  # hits show 6 decimals
    assert confidence["noise_low"] <= confidence["noise_high"] and confidence["message"].split(":")[0] in status
    assert len(gallery) == len(hits) == len(ids) == 5
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    image, caption = gallery[0]
    assert isinstance(image, Image.Image) and max(image.size) <= 192
    assert caption == f"{hits[0]['score']:.3f} · {Path(hits[0]['file']).name}"
    assert all(Path(hit["file"]).parent == collection_dir / "images" for hit in hits)
    assert "5 results" in status


def test_search_k_larger_than_collection_returns_only_real_images(search):
    _, hits, _, ids, _ = search.search("a shape", None, "", 200, -1)
    assert len(ids) == len(set(ids)) == SCENE_COUNT  # the broken file is not an image result


def test_threshold_and_negative_text(search):
    _, all_hits, _, _, _ = search.search("a blue square", None, "", 24, -1)
    cutoff = all_hits[5]["score"]
    _, kept, _, _, _ = search.search("a blue square", None, "", 24, cutoff)
    assert kept and all(hit["score"] >= cutoff for hit in kept) and len(kept) < len(all_hits)
    _, negated, _, _, _ = search.search("a blue square", None, "striped", 24, -1)
    assert [h["score"] for h in negated] != [h["score"] for h in all_hits]


def test_image_query_upload_finds_that_image_first(search, collection_dir, tmp_path):
    source = collection_dir / "images" / "scene-007.png"
    upload = tmp_path / "upload.png"
    shutil.copy(source, upload)
    _, hits, _, _, status = search.search("", str(upload), "", 3, -1)
    assert hits[0]["file"] == str(source) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert "image" in status


def test_an_upload_the_browser_cannot_draw_becomes_an_upright_jpeg_the_search_then_uses(search, collection_dir,
                                                                                        tmp_path):
    from mmretrieval.images.formats import ensure_openers

    ensure_openers()
    scene = Image.open(collection_dir / "images" / "scene-007.png").convert("RGB")
    heic, tiff, png = tmp_path / "IMG_0007.HEIC", tmp_path / "scan.tif", tmp_path / "shot.png"
    scene.save(heic, "HEIF", quality=95)
    scene.transpose(Image.Transpose.ROTATE_90).save(tiff, "TIFF", tiffinfo={274: 6})  # stored on its side
    scene.save(png)
    assert search.show_upload(str(png)) == str(png)  # drawn as it is
    assert search.show_upload(None) is None
    for upload in (heic, tiff):
        shown = Path(search.show_upload(str(upload)))
        assert shown.suffix == ".jpg" and shown.stem == upload.stem and shown != upload
        with Image.open(shown) as copy:
            assert copy.format == "JPEG" and copy.size == scene.size  # upright
            assert np.abs(np.asarray(copy, dtype=np.int16) - np.asarray(scene, dtype=np.int16)).mean() < 4
        _, hits, *_ = search.search("", str(shown), "", 1, -1)
        assert Path(hits[0]["file"]).name == "scene-007.png"
    corrupt = tmp_path / "broken.heic"
    corrupt.write_bytes(heic.read_bytes()[:200])
    with pytest.raises(gr.Error, match="uploaded image cannot be used"):
        search.show_upload(str(corrupt))
    bomb = tmp_path / "bomb.tif"
    Image.new("1", (14_000, 14_000)).save(bomb, compression="group4")  # 196 MP, past Pillow's own error limit
    with pytest.raises(gr.Error, match="more than 50 megapixels"):
        search.show_upload(str(bomb))


def test_similar_and_result_details(search, collection_dir):
    _, hits, _, ids, _ = search.search("a green triangle", None, "", 4, -1)
    placed_before = sorted(search.ctx.export_dir.rglob("*"))
    preview, details, selected, original = search.select_result(ids, _Select(1))
    # A click shows the image and copies nothing: Gradio would keep a copy of the original for an hour.
    assert original is None and sorted(search.ctx.export_dir.rglob("*")) == placed_before
    assert selected == ids[1]
    original = search.original(str(selected))  # the "Get the original file" button, with the Image id box's text
    assert Path(original).name == Path(hits[1]["file"]).name  # the original file, under its own name
    assert Path(original).read_bytes() == Path(hits[1]["file"]).read_bytes()
    assert isinstance(preview, Image.Image)
    assert Path(hits[1]["file"]).name in details and "64 × 64 px" in details
    _, similar_hits, _, similar_ids, status = search.similar(selected, 5, -1)
    assert len(similar_ids) == 5 and selected not in similar_ids
    assert "more like image" in status


def test_pages_walk_the_ranking_of_the_search_they_repeat(search):
    """Next and Previous show the results after (before) the page shown, for the search that made it, whatever
    the boxes say since; past the last result the shown page stays."""
    args = ["a blue square", None, "", 10, -1, "", "", "", "", ""]
    _, all_hits, _, all_ids, _ = search.search(*args[:3], SCENE_COUNT, -1)
    page = {"kind": "search", "args": args, "offset": 0}
    _, hits, confidence, ids, status, page = search.turn_page(page, True)
    assert ids == all_ids[10:20] and page["offset"] == 10
    assert status.startswith("Results 11–20 for 'a blue square'")
    assert confidence["top_score"] == pytest.approx(all_hits[0]["score"], abs=1e-6)  # judged on the best hit
    *_, ids, status, page = search.turn_page(page, True)
    assert ids == all_ids[20:SCENE_COUNT] and status.startswith(f"Results 21–{SCENE_COUNT} for")
    past_the_end = search.turn_page(page, True)  # said in an info toast (not a red error); nothing changes
    assert len(past_the_end) == 6 and all(output == gr.skip() for output in past_the_end)
    *_, ids, status, page = search.turn_page(page, False)
    assert ids == all_ids[10:20] and page["offset"] == 10
    *_, ids, status, page = search.turn_page({**page, "offset": 5}, False)
    assert ids == all_ids[:10] and page["offset"] == 0 and status.startswith("10 results")
    _, _, _, similar_ids, _ = search.similar(all_ids[0], SCENE_COUNT, -1)
    *_, ids, status, page = search.turn_page({"kind": "similar", "args": [all_ids[0], 5, -1], "offset": 0}, True)
    assert ids == similar_ids[5:10] and status.startswith(f"Results 6–10 for more like image {all_ids[0]}")
    with pytest.raises(gr.Error, match="Search first"):
        search.turn_page(None, True)
    with pytest.raises(gr.Error, match="Pages stop at result 2000"):
        search.turn_page({"kind": "search", "args": [*args[:3], 200, *args[4:]], "offset": 1800}, True)


def test_a_label_alone_lists_its_images_most_probable_first(search, manage, context):
    """The CLI and the API list a label's images with no query; the page said "Type a query"."""
    manage.label_collection("star, cross", "default", True, 0.0, "alone", True, progress=lambda *a, **k: None)
    expected = [hit.id for hit in context.collection.labelled("alone:star", k=5)]
    _, hits, _, ids, status = search.search("", None, "", 5, -1, "alone:star")
    assert ids == expected and len(ids) == 5 and "the label's probabilities" in status
    assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)
    with pytest.raises(gr.Error, match="set filters alone to list their images"):
        search.search("", None, "blue", 5, -1, "alone:star")  # a negative needs a query to move away from
    manage.remove_label_set("alone")


def test_a_folder_or_dates_alone_list_their_images_newest_first(search, context, collection_dir):
    """No query, a folder and a date range: the images taken then, newest first, dated under each thumbnail, and
    no score (none in the JSON either); pages go on from where the last ended."""
    folder = str(collection_dir / "images")
    expected = [hit.id for hit in context.collection.browse(k=12, path_prefix=folder + "/", after="1990")]
    assert len(expected) == 12
    gallery, hits, confidence, ids, status = search.search("", None, "", 5, 0.3, None, folder, "1990")
    assert ids == expected[:5] and all(hit["score"] is None for hit in hits) and confidence["top_score"] is None
    photos = context.collection.photos(ids)
    assert [caption for _, caption in gallery] == [
        f"{photos[i].taken_at[:16].replace('T', ' ')} {photos[i].taken_at[19:]} · "  # the minute, then the offset
        f"{Path(context.collection.image_path(i)).name}" for i in ids]
    assert all(photos[i].taken_at[19:] for i in ids)  # files dated by their mtime: this machine's offset
    assert status.startswith("5 results for no query among images under") and "newest first; taken on " in status
    assert "threshold is not used" in status  # 0.3 was ignored, and it says so
    page = {"kind": "search", "args": ["", None, "", 5, 0.3, None, folder, "1990"], "offset": 0}
    *_, ids, status, page = search.turn_page(page, True)
    assert ids == expected[5:10] and status.startswith("Results 6–10 for no query")
    oldest = [hit.id for hit in context.collection.browse(k=5, path_prefix=folder + "/", oldest_first=True)]
    _, _, _, ids, status = search.search("", None, "", 5, -1, None, folder, "", "", "", True)
    assert ids == oldest and ids != expected[:5] and "oldest first" in status
    with pytest.raises(gr.Error, match="set filters alone to list their images"):
        search.search("", None, "", 5, -1, None, "", "")  # no query and no filter: nothing to list
    # the date boxes' errors name the boxes as the page does, not the command line's --after and --before
    with pytest.raises(gr.Error, match="“Taken from” '2023-13-45' is not a date; use YYYY"):
        search.search("", None, "", 5, -1, None, folder, "2023-13-45")
    with pytest.raises(gr.Error, match="“Taken from” '2023' is not earlier than “Taken before” '2021': no photo"):
        search.search("", None, "", 5, -1, None, folder, "2023", "2021")


def test_empty_query_bad_id_and_bad_upload_are_readable_errors(search, tmp_path):
    with pytest.raises(gr.Error, match="Type a query"):
        search.search("   ", None, "", 5, -1)
    with pytest.raises(gr.Error, match="No image is selected: click a search result"):
        search.similar(None, 5, -1)
    with pytest.raises(gr.Error, match="0 is not an image id"):
        search.similar(0, 5, -1)
    with pytest.raises(gr.Error, match="no image with id 999999"):
        search.image_info(999999)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(gr.Error, match="query image cannot be used"):
        search.search("", str(corrupt), "", 5, -1)


def test_decompression_bomb_upload_is_refused_before_decoding(search, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)  # 144 megapixels, a few kB on disk
    assert bomb.stat().st_size < 100_000
    with pytest.raises(gr.Error, match="more than 50 megapixels, the most an upload may have"):
        search.zero_shot(str(bomb), "circle, square", "default", False)


def test_zero_shot_probabilities_for_the_bar_chart(search, collection_dir):
    image = str(collection_dir / "images" / "scene-000.png")
    chart, table, summary = search.zero_shot(image, "circle\nsquare\nstar", "default", False)
    assert chart.count('class="mmr-bar-value"') == 3 and "bar length from 0 to 1.00" in chart
    assert list(table.columns) == ["label", "probability"]
    assert sorted(table["label"]) == ["circle", "square", "star"]
    assert table["probability"].sum() == pytest.approx(1.0, abs=1e-4)
    assert table["probability"].is_monotonic_decreasing
    _, multi, multi_summary = search.zero_shot(image, "circle, square", "imagenet", True)
    assert ((multi["probability"] > 0) & (multi["probability"] < 1)).all()
    assert "multi-label" in multi_summary
    with pytest.raises(gr.Error, match="Type at least one label"):
        search.zero_shot(image, " , ", "default", False)
    _, single, single_summary = search.zero_shot(image, "circle", "default", False)
    assert single["probability"].tolist() == [pytest.approx(1.0)] and "single label, softmax always" in single_summary


def test_labels_come_from_an_uploaded_file_instead_of_the_box(manage, search, collection_dir, tmp_path, monkeypatch):
    """A pasted list of thousands of labels froze the page (5,000 lines: 76 s): a file of them can be uploaded,
    read as `--labels @FILE` reads one (one a line, commas kept, # comments), and used instead of the box."""
    from mmretrieval.ui import label_input

    image = str(collection_dir / "images" / "scene-000.png")
    vocabulary = ["\ufeff# my classes", "circle", "tench, Tinca tinca", "", *(f"class {n}" for n in range(997))]
    label_file = tmp_path / "labels.txt"
    label_file.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    _, table, _ = search.zero_shot(image, "square, star", "none", False, str(label_file))
    assert len(table) == 999 and {"circle", "tench, Tinca tinca"} <= set(table["label"])
    assert "square" not in set(table["label"])
    _, counts, _, csv_path, _ = manage.label_collection("square, star", "none", False, 0.5, "from-file", False,
                                                       str(label_file), progress=lambda *a, **k: None)
    assert counts["label"].tolist()[:2] == ["circle", "tench, Tinca tinca"] and len(counts) == 999
    assert counts["count"].sum() == SCENE_COUNT
    manage.remove_label_set("from-file")  # the other tests' collection

    comments = tmp_path / "comments.txt"
    comments.write_text("# nothing but a comment\n\n", encoding="utf-8")
    with pytest.raises(gr.Error, match="or upload a file of them"):
        search.zero_shot(image, "", "default", False, str(comments))
    latin = tmp_path / "latin-1.txt"
    latin.write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(gr.Error, match="not UTF-8 text .byte 3 is not.: save it as UTF-8"):
        search.zero_shot(image, "", "default", False, str(latin))
    monkeypatch.setattr(label_input, "MAX_LABEL_FILE_BYTES", 1000)
    with pytest.raises(gr.Error, match="a label file may have at most"):
        search.zero_shot(image, "", "default", False, str(label_file))


def test_label_collection_counts_samples_and_csv(manage, search):
    chart, counts, samples, csv_path, summary = manage.label_collection("circle, square, star", "default", False, 0.5,
                                                                 progress=lambda *a, **k: None)
    assert counts["count"].sum() == SCENE_COUNT
    assert "bar length from 0 to" in chart and "--labels" not in summary and "None" not in summary
    assert set(counts["label"]) == {"circle", "square", "star"}
    assert samples and all(caption.split(" (")[0] in {"circle", "square", "star"} for _, caption in samples)
    exported = pd.read_csv(csv_path)
    assert len(exported) == SCENE_COUNT
    _, hits, _, _, _ = search.search("a shape", None, "", 3, -1)
    assert all(len(hit["labels"]) == 1 for hit in hits)
    *_, tints_csv, _ = manage.label_collection("red, blue", "default", False, 0.5, label_set="tints",
                                                 progress=lambda *a, **k: None)
    tints = pd.read_csv(tints_csv)  # the download holds this run's set, by its own label names
    assert len(tints) == SCENE_COUNT and set(tints["label"]) <= {"red", "blue"}
    # each run's file is its own: two sessions labelling at once got one shared path, which the later run
    # overwrote before Gradio had copied the earlier one's (a soak test handed a user the other's labels)
    assert tints_csv != csv_path and set(pd.read_csv(csv_path)["label"]) <= {"circle", "square", "star"}


def test_a_big_vocabulary_gets_samples_of_its_most_common_labels_only(manage, monkeypatch):
    """One search per label under the collection's lock: 1,000 labels took 27 s and returned 3,997 images."""
    from mmretrieval.ui import collection_handlers

    from mmretrieval.models import zeroshot

    monkeypatch.setattr(collection_handlers, "SAMPLED_LABELS", 3)
    monkeypatch.setattr(zeroshot, "CLASSES_PER_CHUNK", 3)
    vocabulary = "\n".join(["red", "blue", "green", "yellow", "purple", "orange", "circle, round"])
    steps: list[tuple[object, str]] = []
    _, counts, samples, _, _ = manage.label_collection(
        vocabulary, "default", False, 0.5, label_set="many", replace=True,
        progress=lambda done, desc="", **k: steps.append((done, desc)))
    assert [done for done, desc in steps if desc == "Embedding the labels"] == [(0, 7), (3, 7), (6, 7), (7, 7)]
    assert len(counts) == 7 and counts["count"].sum() == SCENE_COUNT  # the table keeps every label
    given = counts[counts["count"] > 0].sort_values("count", ascending=False, kind="stable")
    shown = {caption.rsplit(" (", 1)[0] for _, caption in samples}
    assert shown == set(given["label"][:3]), (shown, given)


def test_a_label_set_is_removed_from_the_label_tab_and_leaves_the_filters(manage, search, context):
    from mmretrieval.ui.widgets import label_choices

    manage.label_collection("red, blue", "default", False, 0.5, label_set="passing", progress=lambda *a, **k: None)
    assert any(choice.startswith("passing:") for choice in label_choices(context)[1:])
    chart, counts, samples, csv_file, summary = manage.remove_label_set(" passing ")
    assert "Removed label set" in summary and "passing" in summary
    assert (chart, len(counts), samples, csv_file) == ("", 0, [], None)  # the removed set's run is off the tab
    assert not any(choice.startswith("passing:") for choice in label_choices(context)[1:])
    _, hits, _, _, _ = search.search("a shape", None, "", 5, -1)
    assert hits and not any(label.startswith("passing:") for hit in hits for label in hit["labels"])
    with pytest.raises(gr.Error, match="no label set 'passing'"):
        manage.remove_label_set("passing")
    with pytest.raises(gr.Error, match="Type the name of the label set"):
        manage.remove_label_set("  ")


def test_the_label_filters_follow_the_sets_and_drop_a_removed_label(manage, context):
    """Each page asks for the filters' choices when it loads (they were drawn once, at start-up), and a value
    whose label went is unselected (a search with it failed)."""
    from mmretrieval.ui.layout import _label_updates, build_app

    app = build_app(context)
    kinds = {component["id"]: component["type"] for component in app.config["components"]}
    loads = [d for d in app.config["dependencies"] if d["targets"] and d["targets"][0][1] == "load"]
    # the two label filters, refreshed on every page load
    assert any([kinds[output] for output in d["outputs"]] == ["dropdown", "dropdown"] for d in loads)
    manage.label_collection("red, blue", "default", False, 0.5, label_set="tint", progress=lambda *a, **k: None)
    kept, dropped = _label_updates(context, ("tint:red", "nope:gone"))
    assert "tint:red" in kept["choices"] and kept["value"] == "tint:red" and dropped["value"] == ""
    manage.remove_label_set("tint")
    after, = _label_updates(context, ("tint:red",))
    assert "tint:red" not in after["choices"] and after["value"] == ""


def test_labels_and_templates_typed_in_the_browser_never_name_a_server_file(manage, search, maps, collection_dir,
                                                                            tmp_path):
    """On the command line @FILE reads labels and a template name may be a file; from the browser (perhaps
    another machine) either would read this server's files, and an error message could quote them."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the secret line\n")
    for call in (lambda: manage.label_collection(f"@{secret}", "default", False, 0.5, progress=lambda *a, **k: None),
                 lambda: search.zero_shot(str(collection_dir / "images" / "scene-000.png"), f"cat, @{secret}"),
                 lambda: maps.collection_map(f"@{secret}", "pca")):
        with pytest.raises(gr.Error, match="a label cannot start with '@' here") as refused:
            call()
        assert "secret line" not in str(refused.value)
    with pytest.raises(gr.Error, match="Unknown template set") as refused:
        manage.label_collection("cat, dog", str(secret), False, 0.5, progress=lambda *a, **k: None)
    assert "secret line" not in str(refused.value)


def test_collection_info_lists_the_failed_file(manage):
    info, failures = manage.collection_info()
    assert f"model: `{manage.ctx.collection.info().model_spec}`" in info
    assert f"{SCENE_COUNT} ok" in info
    assert list(failures["path"].map(lambda p: Path(p).name)) == ["broken.png"]
    assert failures["reason"].iloc[0]


def test_the_failed_files_table_is_a_page_and_says_so(manage, monkeypatch):
    from mmretrieval.ui import collection_handlers

    info, _ = manage.collection_info()
    assert "mmr info --failures" not in info
    monkeypatch.setattr(collection_handlers, "FAILURES_SHOWN", 0)  # the one failed file is now over the page
    info, failures = manage.collection_info()
    assert failures.empty and list(failures.columns) == ["path", "reason", "message"]
    assert "the table lists the first 0 of 1 failed or skipped files; `mmr info --failures` lists them all" in info


def test_the_ingest_summary_tells_skips_from_failures_and_from_earlier_failures():
    from mmretrieval.ingest.batches import IngestSummary
    from mmretrieval.ui.collection_handlers import describe_ingest

    summary = IngestSummary(embedded=3, failed={"truncated": 1}, skipped={"symlink_loop": 2})
    text = describe_ingest(summary, Path("/photos"), failed_here=5)
    assert "- failed in this run: 1 (1 truncated)" in text
    assert ("- skipped in this run (not regular files, links that loop, break or leave the folder, unreadable "
            "folders): 2 (2 symlink_loop)") in text
    assert "- still failed from earlier ingests (unchanged, so not retried): 2;" in text
    assert "skipped" not in describe_ingest(IngestSummary(embedded=3), Path("/photos"), failed_here=0)


def test_ingest_another_folder_with_progress(manage, search, tmp_path):
    from ui_support import write_scene_folder as write

    extra = tmp_path / "extra"
    write(extra, count=3)
    calls = []
    summary, info, failures = manage.ingest(str(extra), progress=lambda *a, **k: calls.append(a))
    assert calls, "ingest must report progress"
    assert "Ingested" in summary
    _, hits, _, _, _ = search.search("a shape", None, "", 200, -1)
    assert sum(Path(hit["file"]).parent == extra for hit in hits) == 3
    with pytest.raises(gr.Error, match="not a folder"):
        manage.ingest(str(tmp_path / "missing"), progress=lambda *a, **k: None)


def test_search_answers_while_an_ingest_runs_and_a_second_ingest_is_refused(manage, search, tmp_path):
    import threading

    from ui_support import write_scene_folder as write

    write(tmp_path / "slow", count=3)
    started, release = threading.Event(), threading.Event()

    def held_progress(*args, **kwargs):  # the ingest stops at its first batch report until released
        if isinstance(args[0], tuple):
            started.set()
            release.wait(timeout=30)

    ingest = threading.Thread(target=manage.ingest, args=(str(tmp_path / "slow"),), kwargs={"progress": held_progress})
    ingest.start()
    try:
        assert started.wait(timeout=30)
        _, hits, _, _, _ = search.search("a shape", None, "", 3, -1)  # would wait for the ingest under one lock
        assert len(hits) == 3 and ingest.is_alive()
        with pytest.raises(gr.Error, match="This app is writing this collection already") as refused:  # not
            # "another process": the holder named in the lock file is this one
            manage.ingest(str(tmp_path / "slow"), progress=lambda *a, **k: None)
        assert "--wait" not in str(refused.value)  # the command line's way to wait is no use here
    finally:
        release.set()
        ingest.join(timeout=60)
    assert not ingest.is_alive()


def test_ingest_is_refused_when_reachable_from_other_machines(context, tmp_path):
    from dataclasses import replace

    from mmretrieval.ui.collection_handlers import CollectionHandlers
    from mmretrieval.ui.server import ServeConfig, is_local_only

    assert is_local_only(ServeConfig()) and not is_local_only(ServeConfig(host="0.0.0.0"))
    assert not is_local_only(ServeConfig(share=True))
    handlers = CollectionHandlers(replace(context, allow_ingest=False))
    with pytest.raises(gr.Error, match="reachable from other machines"):
        handlers.ingest(str(tmp_path), progress=lambda *a, **k: None)


def test_labelling_is_refused_when_reachable_from_other_machines_without_a_login(context, collection_dir):
    """A client on the LAN of an app served with --host 0.0.0.0 deleted the owner's label set and wrote another
    (a security walkthrough): only ingesting was off there."""
    from dataclasses import replace

    from mmretrieval.ui.collection_handlers import CollectionHandlers
    from mmretrieval.ui.server import ServeConfig, open_context

    handlers = CollectionHandlers(replace(context, allow_labelling=False))
    sets_before = context.collection.info().label_sets
    with pytest.raises(gr.Error, match="Labelling from the browser is off .* --auth-file"):
        handlers.label_collection("red, blue", "default", False, 0.0, "lan", False, progress=lambda *a, **k: None)
    with pytest.raises(gr.Error, match="Labelling from the browser is off"):
        handlers.remove_label_set("default")
    assert context.collection.info().label_sets == sets_before
    for config, labelling in ((ServeConfig(), True), (ServeConfig(host="0.0.0.0"), False),
                              (ServeConfig(share=True, logins=(("ann", "secret"),)), True)):
        opened = open_context(replace(config, collection=collection_dir / "collection"))
        try:
            assert (opened.allow_labelling, opened.allow_ingest) == (labelling, config == ServeConfig())
        finally:
            opened.collection.close()


def test_logins_file_lines_and_refusals(tmp_path, caplog):
    from mmretrieval.errors import MMRError
    from mmretrieval.ui.server import read_logins

    logins = tmp_path / "logins"
    logins.write_text("# the team\nann:pass:with:colons\n\n  bob :x\n")
    logins.chmod(0o600)
    with caplog.at_level("WARNING"):
        assert read_logins(logins) == (("ann", "pass:with:colons"), ("bob", "x"))
    assert caplog.text == ""
    logins.chmod(0o644)
    with caplog.at_level("WARNING"):
        read_logins(logins)
    assert "can be read by other users" in caplog.text
    logins.write_bytes(b"\xef\xbb\xbfann: spaced pw \n")  # a byte-order mark; the password as it is
    assert read_logins(logins) == (("ann", " spaced pw "),)
    for text, message in (("ann\n", "line 1: expected USER:PASSWORD"), ("ann:\n", "line 1"), (":pw\n", "line 1"),
                          ("# nobody\n", "holds no USER:PASSWORD line"),
                          ("ann:a\nann:b\n", "line 2: 'ann' is named twice")):
        logins.write_text(text)
        with pytest.raises(MMRError, match=message):
            read_logins(logins)
    with pytest.raises(MMRError, match="cannot read the --auth-file"):
        read_logins(tmp_path / "missing")


def test_an_app_with_logins_answers_only_those_who_log_in(context):
    from dataclasses import replace

    from gradio_client import Client

    from mmretrieval.ui.layout import build_app
    from mmretrieval.ui.server import ServeConfig, launch
    from ui_support import free_port

    app = build_app(replace(context, allow_ingest=False))
    host, port = launch(app, ServeConfig(host="127.0.0.1", port=free_port(), logins=(("ann", "secret"),),
                                         allowed_hosts=("photos.example",)))
    try:
        url = f"http://{host}:{port}/"
        assert httpx.get(url + "gradio_api/info").status_code == 401
        assert httpx.post(url + "login", data={"username": "ann", "password": "wrong"}).status_code == 400
        assert httpx.post(url + "login", data={"username": "ann", "password": "secret"}).status_code == 200
        # a page rebound to 127.0.0.1 under its own name cannot even try passwords (Gradio's login alone let it)
        rebound = {"Host": f"attacker.example:{port}"}
        assert httpx.post(url + "login", data={"username": "ann", "password": "secret"},
                          headers=rebound).status_code == 403
        proxied = {"Host": "photos.example"}  # a TLS proxy here that passes its own name on (--allowed-host)
        assert httpx.post(url + "login", data={"username": "ann", "password": "secret"},
                          headers=proxied).status_code == 200
        client = Client(url, auth=("ann", "secret"), verbose=False)
        _, hits, _, _ = client.predict("a circle", None, "", 2, -1, api_name="/search")
        assert len(hits) == 2
    finally:
        app.close()


def test_http_api_named_endpoints(server):
    from gradio_client import Client

    client = Client(server + "/", verbose=False)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/search", "/similar", "/image_info", "/zero_shot", "/label_collection", "/ingest",
                 "/collection_info", "/map"):
        assert name in endpoints
    gallery, hits, _, status = client.predict("a red circle", None, "", 3, -1, api_name="/search")
    assert len(gallery) == 3 and all(item["caption"].split(" · ")[0].replace(".", "").isdigit() for item in gallery)
    similar_gallery, similar_hits, _, _ = client.predict(hits[0]["id"], 2, -1, api_name="/similar")
    assert len(similar_hits) == 2 and hits[0]["id"] not in [hit["id"] for hit in similar_hits]
    # the groups (for the tab's pages) stay in the session: a script gets the review, the summary and the export
    review, summary, files = client.predict(0.0001, "least alike first", api_name="/duplicates")
    assert "keep (suggested)" in review and "of near-duplicates" in summary and len(files) == 2


def test_server_keeps_serving_after_bad_requests(server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(server + "/", verbose=False)
    with pytest.raises(AppError, match="Type a query"):
        client.predict("", None, "", 3, -1, api_name="/search")
    with pytest.raises(AppError, match="no image with id"):
        client.predict(123456, api_name="/image_info")
    assert httpx.post(f"{server}/gradio_api/call/search", content=b"{not json").status_code >= 400
    assert httpx.get(f"{server}/gradio_api/info").status_code == 200
    _, hits, _, _ = client.predict("a blue star", None, "", 2, -1, api_name="/search")
    assert len(hits) == 2


@pytest.mark.parametrize("side_px, message", [
    (12_000, "more than 50 megapixels"),  # 144 Mpx: past our limit, under Pillow's hard one (decode_image refuses)
    (14_000, "decompression bomb"),  # 196 Mpx: Pillow refuses already while Gradio opens the upload
    (None, "not an image format"),  # not an image at all
])
def test_bad_uploads_get_a_readable_error_and_the_server_stays_up(server, tmp_path, side_px, message):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    upload = tmp_path / "upload.png"
    if side_px:
        Image.new("1", (side_px, side_px)).save(upload)
    else:
        upload.write_bytes(b"GIF89a but then garbage" * 10)
    client = Client(server + "/", verbose=False)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(upload)), "circle, square", "default", False, api_name="/zero_shot")
    with pytest.raises(AppError, match=message):
        client.predict("", handle_file(str(upload)), "", 3, -1, api_name="/search")
    _, hits, _, _ = client.predict("a circle", None, "", 2, -1, api_name="/search")
    assert len(hits) == 2


def test_an_api_call_cannot_name_a_server_file_as_its_image(server, tmp_path):
    """Gradio checks a file's folder only when the request marks it as Gradio's file: left unmarked, a path used
    to be opened wherever it was (a private image classified; which files exist, told by the errors)."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(secret)
    client = Client(server + "/", verbose=False)
    for named in (str(secret), str(tmp_path / "nothere.png"), "/etc/hostname", "/root"):
        with pytest.raises(AppError, match="must be a file uploaded to this app"):
            client.predict({"path": named}, "circle, square", "default", False, api_name="/zero_shot")
        with pytest.raises(AppError, match="must be a file uploaded to this app"):
            client.predict("", {"path": named}, "", 3, -1, api_name="/search")
    _, hits, _, _ = client.predict("a circle", None, "", 2, -1, api_name="/search")
    assert len(hits) == 2


@pytest.mark.parametrize("route", ["/gradio_api/file=", "/file=", "/gradio_api/file/", "/gradio_api/file=../../.."])
def test_file_routes_refuse_files_outside_the_collection(server, route, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    for target in ("/etc/passwd", str(secret)):
        response = httpx.get(f"{server}{route}{target}")
        assert response.status_code in (400, 403, 404), (route, target, response.status_code)
        assert b"root:" not in response.content and b"do not serve me" not in response.content


@pytest.mark.parametrize("host", ["attacker.example", "192.168.1.20", "127.0.0.1.evil.example"])
def test_requests_addressed_to_another_host_name_are_refused(server, host):
    # A DNS-rebinding page reaches 127.0.0.1 under its own name: it must get nothing, API calls included.
    port = server.rsplit(":", 1)[1]
    headers = {"Host": f"{host}:{port}"}
    assert httpx.get(f"{server}/", headers=headers).status_code == 403
    call = httpx.post(f"{server}/gradio_api/call/search", json={"data": ["a", None, "", 3, -1]}, headers=headers)
    assert call.status_code == 403
    for name in ("127.0.0.1", "localhost"):
        assert httpx.get(f"{server}/", headers={"Host": f"{name}:{port}"}).status_code == 200


def test_file_routes_refuse_even_collection_originals(server, collection_dir):
    # Images go out only as server-side renders in Gradio's cache; the originals are never a file route.
    original = collection_dir / "images" / "scene-000.png"
    assert httpx.get(f"{server}/gradio_api/file={original}").status_code in (403, 404)


def test_upload_size_limit(server, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + os.urandom(21 * 1024 * 1024))
    with open(big, "rb") as handle:
        response = httpx.post(f"{server}/gradio_api/upload", files={"files": ("big.png", handle, "image/png")},
                              timeout=60)
    assert response.status_code == 413
    small = io.BytesIO()
    Image.new("RGB", (8, 8)).save(small, format="PNG")
    ok = httpx.post(f"{server}/gradio_api/upload", files={"files": ("ok.png", small.getvalue(), "image/png")})
    assert ok.status_code == 200


def test_app_and_ui_import_without_loading_anything(tmp_path):
    import subprocess
    import sys

    code = ("import sys, importlib.util; import mmretrieval.ui.layout; "
            "print('mmretrieval.collection.collection' in sys.modules, 'faiss' in sys.modules); "
            "spec = importlib.util.spec_from_file_location('app', 'app.py'); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parent.parent,
                            env={**os.environ, "MMR_DEMO_DIR": str(tmp_path / "demo")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"], result.stderr  # the UI alone pulls in no collection/FAISS
    assert not (tmp_path / "demo").exists()  # importing app.py builds nothing


def test_serve_options_parse_with_safe_defaults():
    import argparse

    from mmretrieval.cli import build_parser
    from mmretrieval.ui.server import add_serve_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = config_from_args(parser.parse_args([]))
    assert (config.host, config.port, config.share, config.collection) == ("127.0.0.1", 7860, False, None)
    assert config.precision == "auto"
    args = build_parser().parse_args(["serve", "--collection", "/tmp/c", "--port", str(free_port()), "--share",
                                      "--precision", "fp32"])
    assert config_from_args(args).share and config_from_args(args).collection == Path("/tmp/c")
    assert config_from_args(args).precision == "fp32"


def test_demo_collection_is_built_once_and_finishes_after_a_crash(tmp_path, tiny_model_dir):
    from mmretrieval import demo
    from mmretrieval.collection.collection import Collection

    config = demo.DemoConfig(count=12, model=str(tiny_model_dir), image_size=48)
    root = tmp_path / "demo"
    root.mkdir()
    demo.write_scenes(root, config)  # a build that died after writing the scenes, before ingesting
    (root / "images" / "scene-00003.png").unlink()  # ... and before one scene was written
    assert not demo.is_ready(root, config)

    stages: list[tuple[str, int, int]] = []
    directory = demo.ensure_demo_collection(root, config, device="cpu", progress=lambda *call: stages.append(call))
    assert demo.is_ready(root, config)
    assert ("scenes", 12, 12) in stages and stages[-1][0] == "ingest" and stages[-1][1] == stages[-1][2]
    captions = (root / "images" / "scene-00003.txt").read_text()
    with Collection.open(directory, device="cpu") as collection:
        assert collection.info().counts.get("ok") == 12
        hit = collection.search("a shape", k=12)[0]
        assert hit.caption and hit.caption == Path(hit.path).with_suffix(".txt").read_text()
    assert captions and not list(root.glob("**/.*.tmp-*"))

    stages.clear()
    assert demo.ensure_demo_collection(root, config, device="cpu", progress=lambda *call: stages.append(call)) == directory
    assert stages == []  # cached: nothing redone
    assert not demo.is_ready(root, demo.DemoConfig(count=13, model=str(tiny_model_dir), image_size=48))


@pytest.mark.slow
def test_demo_example_queries_find_what_they_say(tmp_path, shapes_encoder):
    """The first screen's examples, through the UI's search, with the bundled model on a small demo build."""
    from mmretrieval import demo
    from mmretrieval.collection.collection import Collection
    from mmretrieval.ui.context import AppContext
    from mmretrieval.ui.search_handlers import SearchHandlers
    from mmretrieval.ui.server import DEMO_QUERIES

    directory = demo.ensure_demo_collection(tmp_path / "demo", demo.DemoConfig(count=400), device="cpu")
    captions = pd.read_csv(tmp_path / "demo" / "captions.csv")["caption"]
    with Collection.open(directory, model=shapes_encoder, device="cpu") as collection:
        handlers = SearchHandlers(AppContext(collection=collection, encoder=shapes_encoder))
        # (query, words a matching caption has, how many of the top 5 must match); the best hit must match too.
        # 400 scenes hold only a few orange stars on stripes, and the model ranks "a … star" (one) above "two …
        # stars" that share the words.
        expectations = [(DEMO_QUERIES[0], ("red", "circle"), 4), (DEMO_QUERIES[1], ("three", "blue", "squares"), 4),
                        (DEMO_QUERIES[2], ("orange", "star", "striped"), 2)]
        _, _, confidence, _, status = handlers.search("zorbly quaxx fnord", None, "", 5, -1)
        assert confidence["level"] == "weak" and "Weak match" in status  # gibberish stands out no more than noise
        for query in DEMO_QUERIES:
            _, _, confidence, _, status = handlers.search(query, None, "", 5, -1)
            assert confidence["level"] in ("fair", "clear") and "match:" in status, (query, confidence)
        for query, words, wanted in expectations:
            _, hits, _, _, _ = handlers.search(query, None, "", 5, -1)
            matching = [hit["caption"] for hit in hits if all(word in hit["caption"] for word in words)]
            available = sum(all(word in caption for word in words) for caption in captions)
            assert len(matching) >= min(wanted, available), (query, available, [hit["caption"] for hit in hits])
            assert all(word in hits[0]["caption"] for word in words), (query, hits[0]["caption"])


def _raw_call(server: str, endpoint: str, data) -> tuple[str, object]:
    """POST /gradio_api/call/<endpoint> as a script without gradio_client would; returns (event, payload)."""
    import json

    posted = httpx.post(f"{server}/gradio_api/call/{endpoint}", json={"data": data}, timeout=60)
    assert posted.status_code == 200, posted.text
    stream = httpx.get(f"{server}/gradio_api/call/{endpoint}/{posted.json()['event_id']}", timeout=120).text
    events = [line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("event: ")]
    payloads = [line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("data: ")]
    return events[-1], json.loads(payloads[-1])


def test_http_api_names_every_argument_and_output_and_makes_optional_ones_optional(server):
    from gradio_client import Client

    client = Client(server + "/", verbose=False)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name, endpoint in endpoints.items():
        assert not [r["label"] for r in endpoint["returns"] if r["label"].startswith("value_")], name
        assert not [p["label"] for p in endpoint["parameters"] if p["label"].startswith("parameter_")], name
    search_parameters = {p["parameter_name"]: p["parameter_has_default"] for p in endpoints["/search"]["parameters"]}
    assert list(search_parameters) == ["text", "image", "negative", "k", "threshold", "label", "folder", "after",
                                      "before", "camera", "oldest"]
    assert [name for name in list(search_parameters)[1:] if not search_parameters[name]] == []
    _, hits, confidence, status = client.predict("a red circle", api_name="/search")  # optional arguments left out
    assert confidence["level"] in ("weak", "fair", "clear")
    assert len(hits) == 24 and "24 results" in status
    event, payload = _raw_call(server, "search", ["a red circle"])  # raw HTTP: /search without negative
    assert event == "complete" and len(payload[1]) == 24


def _every_endpoint(server):
    from gradio_client import Client

    return Client(server + "/", verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]


def test_http_api_wrong_types_and_counts_get_our_own_message_on_every_endpoint(server):
    endpoints = _every_endpoint(server)
    assert len(endpoints) >= 9
    for name, endpoint in endpoints.items():
        parameters = endpoint["parameters"]
        event, payload = _raw_call(server, name.strip("/"), [None] * (len(parameters) + 2))
        assert event == "error" and f"{name} takes at most {len(parameters)} arguments" in payload["error"], name
        if parameters:
            event, payload = _raw_call(server, name.strip("/"), [{"not": "this"}] * len(parameters))
            assert event == "error" and payload["error"].startswith(f"{name}: {parameters[0]['parameter_name']} must be"), (name, payload)
        required = [p["parameter_name"] for p in parameters if not p["parameter_has_default"]]
        if required:
            event, payload = _raw_call(server, name.strip("/"), [])
            assert event == "error" and f"{name} needs {required[0]}" in payload["error"], (name, payload)
    event, payload = _raw_call(server, "search", ["a red circle", None, "", "many", -1])
    assert payload["error"] == "/search: k must be a number from 0 to 200, got 'many' (str)"
    event, payload = _raw_call(server, "zero_shot", [None, "a, b", "no such set", False])
    assert "templates must be one of" in payload["error"]
    # out of a slider's range, or not one of a radio's choices: named by the argument (Gradio's own message named
    # none, "Value 500 is greater than maximum value 200.", and logged a traceback)
    event, payload = _raw_call(server, "search", ["a red circle", None, "", 500, -1])
    assert event == "error" and payload["error"].startswith("/search: k must be a number from 0 to 200, got 500")
    event, payload = _raw_call(server, "search", ["a red circle", None, "", 5, 2])
    assert event == "error" and "threshold must be a number from -1 to 1, got 2" in payload["error"]
    event, payload = _raw_call(server, "duplicates", [0.9, "sideways"])
    assert event == "error" and payload["error"].startswith("/duplicates: order must be one of")
    event, payload = _raw_call(server, "search", ["a blue star", None, "", 2, -1])  # still serving
    assert event == "complete" and len(payload[1]) == 2


def test_original_files_by_catalog_id_only(server, search, collection_dir):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    _, hits, _, ids, _ = search.search("a shape", None, "", 3, -1)
    client = Client(server + "/", verbose=False, download_files=False)
    original = client.predict(ids[0], api_name="/original")
    served = httpx.get(original["url"])
    assert served.status_code == 200 and served.content == Path(hits[0]["file"]).read_bytes()
    assert original["orig_name"] == Path(hits[0]["file"]).name
    with pytest.raises(AppError, match="no image with id 99999"):
        client.predict(99999, api_name="/original")
    with pytest.raises(AppError, match="must be a number"):
        client.predict("/etc/passwd", api_name="/original")  # a path is never taken for an image


def test_download_originals_zip_has_the_results_under_their_own_names(search, collection_dir):
    import zipfile

    _, hits, _, ids, _ = search.search("a shape", None, "", 5, -1)
    archive, note = search.originals_zip(ids)
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == sorted(Path(hit["file"]).name for hit in hits)
        assert opened.read(Path(hits[0]["file"]).name) == Path(hits[0]["file"]).read_bytes()
    assert note.startswith("5 original files")
    with pytest.raises(gr.Error, match="no results to download"):
        search.originals_zip([])


def test_re_ingesting_a_folder_reports_its_earlier_failures(manage, collection_dir):
    summary, _, failures = manage.ingest(str(collection_dir / "images"), progress=lambda *a, **k: None)
    assert "failed in this run: 0" in summary
    assert "still failed from earlier ingests (unchanged, so not retried): 1" in summary
    assert "broken.png" in set(failures["path"].map(lambda p: Path(p).name))


def test_search_filters_by_label_set_and_folder(manage, search, collection_dir, monkeypatch):
    _, _, _, _, summary = manage.label_collection("red, blue", "default", True, 0.0, "colours", False,
                                                   progress=lambda *a, **k: None)
    assert "label set **colours**" in summary and "Other label sets are kept" in summary
    _, hits, confidence, _, status = search.search("a shape", None, "", 200, -1, "colours:red", "")
    assert len(hits) == manage.ctx.collection.info().vectors and all("colours:red" in hit["labels"] for hit in hits)
    assert "among images labelled 'colours:red'" in status and confidence["level"] == "not calibrated"
    folder = str(collection_dir / "images")
    _, in_folder, _, _, status = search.search("a shape", None, "", 200, -1, "", folder)
    hits = in_folder
    assert len(hits) == SCENE_COUNT and all(Path(hit["file"]).parent == collection_dir / "images" for hit in hits)
    _, hits, _, _, _ = search.search("a shape", None, "", 200, -1, "", folder + "-not")  # a prefix, not a folder
    assert hits == []
    with pytest.raises(gr.Error, match="not an absolute path"):
        search.search("a shape", None, "", 5, -1, "", "images")
    monkeypatch.setenv("HOME", str(collection_dir))  # ~ is the server's home, as ingest from the browser reads it
    _, from_home, _, _, _ = search.search("a shape", None, "", 200, -1, "", "~/images")
    assert [hit["id"] for hit in from_home] == [hit["id"] for hit in in_folder]
    with pytest.raises(gr.Error, match="no label set has label 'nope'"):
        search.search("a shape", None, "", 5, -1, "nope", "")
    _, similar_hits, _, _, _ = search.similar(in_folder[0]["id"], 5, -1, "colours:blue", folder)
    assert similar_hits and all("colours:blue" in hit["labels"] for hit in similar_hits)


@pytest.fixture(scope="module")
def maps(context):
    from mmretrieval.ui.map_handlers import MapHandlers

    return MapHandlers(context)


def test_map_lays_out_every_image_once_per_generation_and_colours_by_label(maps, context):
    import json

    value, note = maps.collection_map("circle, square", "pca")
    data = json.loads(value)
    total = context.collection.info().vectors
    assert len(data["points"]["ids"]) == len(data["points"]["x"]) == total
    assert {entry["label"] for entry in data["legend"]} <= {"circle", "square"}
    assert sum(entry["count"] for entry in data["legend"]) == total
    assert np.isfinite(data["points"]["x"]).all() and "PCA map of" in note and "computed now and cached" in note
    cached = list((context.collection.directory / "map-cache").glob("pca-g*.npz"))
    assert len(cached) == 1
    again, again_note = maps.collection_map("red, blue", "pca")
    assert "from the cache" in again_note and json.loads(again)["points"]["x"] == data["points"]["x"]
    assert json.loads(again)["version"] > data["version"]  # a new value, so the page redraws


def test_map_colours_colour_words_as_themselves():
    from mmretrieval.ui.map_view import COLOUR_WORDS, colours_for

    colours = colours_for(["red", "colours:blue", "light green", "cat", "dog", "(no labels)"], "(no labels)")
    assert colours["red"] == COLOUR_WORDS["red"] and colours["colours:blue"] == COLOUR_WORDS["blue"]
    assert colours["light green"] == COLOUR_WORDS["green"]
    assert colours["cat"] != colours["dog"] and colours["cat"] not in COLOUR_WORDS.values()


def test_map_click_lasso_and_hover_take_only_ids_on_the_map(maps, context):
    import json

    data = json.loads(maps.collection_map("", "pca")[0])
    ids = data["points"]["ids"]
    clicked, gallery, note = maps.map_select(_Select(ids[0]))
    assert clicked == ids[0] and "details" in note
    _, gallery, note = maps.map_select(_Select(ids[:5] + [999_999]))  # an id not on the map is ignored
    assert len(gallery) == 5 and note.startswith("5 images selected")
    _, gallery, note = maps.map_select(_Select([999_999]))
    assert gallery == [] and "No point" in note
    for bad in ("../../etc/passwd", ["/etc/passwd"], 999_999):
        with pytest.raises(gr.Error):
            maps.map_select(_Select(bad))
    from mmretrieval.ui.layout import _details_of_clicked
    from mmretrieval.ui.search_handlers import SearchHandlers

    # a lasso before any click leaves no image to detail: nothing is shown, and no "No image selected" error
    assert all(isinstance(value, type(gr.skip())) for value in _details_of_clicked(SearchHandlers(context), None))
    assert _details_of_clicked(SearchHandlers(context), ids[0])[2] == ids[0]
    card = maps.map_thumbnail(ids[0])
    assert card["src"].startswith("data:image/webp;base64,") and card["name"].endswith(".png")
    assert maps.map_thumbnail("/etc/passwd") == {"name": "", "src": ""} == maps.map_thumbnail(999_999)


def test_map_filters_and_stored_labels(maps, manage, context, collection_dir):
    import json

    manage.label_collection("star, cross", "default", False, 0.5, "default", True, progress=lambda *a, **k: None)
    value, note = maps.collection_map("", "pca")
    legend = {entry["label"] for entry in json.loads(value)["legend"]}
    assert legend <= set(context.collection.info().labels) | {"(no labels)"} and "stored labels" in note
    assert legend - {"(no labels)"}
    folder = str(collection_dir / "images")
    only = json.loads(maps.collection_map("", "pca", "", folder)[0])
    assert len(only["points"]["ids"]) == SCENE_COUNT
    with pytest.raises(gr.Error, match="not an absolute path"):
        maps.collection_map("", "pca", "", "images")
    with pytest.raises(gr.Error, match="unknown map method"):
        maps.collection_map("", "spiral")


def test_the_map_colours_by_one_label_sets_labels_when_asked(maps, manage, context):
    """The map coloured by each image's most probable stored label of every set at once, with no way to choose."""
    import json

    manage.label_collection("star, cross", "default", False, 0.5, "first", True, progress=lambda *a, **k: None)
    manage.label_collection("red, blue", "default", True, 0.0, "second", True, progress=lambda *a, **k: None)
    for name, labels in (("first", {"star", "cross"}), ("second", {"red", "blue"})):
        value, note = maps.collection_map("", "pca", label_set=name)
        legend = {entry["label"] for entry in json.loads(value)["legend"]}
        assert legend and legend <= labels and f"label set {name}" in note
    with pytest.raises(gr.Error, match="no label set 'third'"):
        maps.collection_map("", "pca", label_set="third")
    for name in ("first", "second"):
        manage.remove_label_set(name)


def test_a_label_set_made_after_start_up_colours_the_map_over_http(server):
    """The set choice's options were drawn at start-up, with no set: the API's checks refused every name (and a
    left-out argument), so a script could colour the map by no set made later. (After the map tests, whose first
    layout must be computed, not cached.)"""
    from gradio_client import Client

    client = Client(server + "/", verbose=False)
    client.predict("star, cross", "default", False, 0.5, "late", True, api_name="/label_collection")
    value, note = client.predict("", "pca", "", "", "", "", "", "late", api_name="/map")
    assert "label set late" in note
    client.predict("late", api_name="/remove_label_set")


def test_past_the_palette_the_legend_names_the_largest_labels_and_folds_the_rest():
    """236 labels drew 236 legend entries in 16 colours, so colours no longer told labels apart."""
    import json

    from mmretrieval.ui.map_view import LEGEND_KEYS, OTHER_COLOUR, PALETTE, map_value

    labels = [f"label {n:02d}" for n in range(40) for _ in range(40 - n)] + ["(no labels)"] * 5
    ids = np.arange(len(labels))
    data = json.loads(map_value(ids, np.zeros((len(labels), 2), np.float32), labels, "(no labels)", 1))
    shown = [entry for entry in data["legend"] if not entry.get("folded")]
    assert [entry["label"] for entry in shown] == [f"label {n:02d}" for n in range(LEGEND_KEYS)] + ["(no labels)"]
    assert len({entry["colour"] for entry in shown}) == len(shown) and len(PALETTE) == LEGEND_KEYS
    folded = [entry for entry in data["legend"] if entry.get("folded")]
    assert {entry["colour"] for entry in folded} == {OTHER_COLOUR} and len(folded) == 40 - LEGEND_KEYS
    assert data["other"] == {"labels": 40 - LEGEND_KEYS, "count": sum(entry["count"] for entry in folded),
                             "colour": OTHER_COLOUR}
    few = json.loads(map_value(ids[:3], np.zeros((3, 2), np.float32), ["a", "b", "c"], "(no labels)", 1))
    assert few["other"]["labels"] == 0 and not any(entry.get("folded") for entry in few["legend"])


def test_each_page_answers_clicks_on_the_map_it_drew(maps, monkeypatch):
    """The drawn map was one per server: a second page drawing a filtered map made the first page's clicks on
    points missing from it fail ("not on the map; draw it again")."""
    import json
    from types import SimpleNamespace

    first, second = SimpleNamespace(session_hash="first"), SimpleNamespace(session_hash="second")
    everything = json.loads(maps.collection_map("", "pca", request=first)[0])["points"]["ids"]
    # the second page's filters keep the first half of the points (whichever filter that is)
    monkeypatch.setattr(maps, "_filter", lambda ids, *filters: np.arange(len(ids)) < len(ids) // 2)
    narrowed = set(json.loads(maps.collection_map("", "pca", request=second)[0])["points"]["ids"])
    outside = next(image_id for image_id in everything if image_id not in narrowed)
    clicked, _, _ = maps.map_select(_Select(outside), request=first)  # the first page's map holds it
    assert clicked == outside
    with pytest.raises(gr.Error, match="not on the map"):
        maps.map_select(_Select(outside), request=second)
    with pytest.raises(gr.Error, match="Draw the map first"):
        maps.map_select(_Select(outside), request=SimpleNamespace(session_hash="third"))
    assert maps.map_thumbnail(outside)["src"]  # hover (no session) takes a point of any page's map


@pytest.mark.slow
def test_umap_map_is_cached_and_reused(tmp_path, tiny_model_dir):
    import json
    import warnings

    from ui_support import write_scene_folder

    from mmretrieval.collection.collection import Collection
    from mmretrieval.ui.context import AppContext
    from mmretrieval.ui.map_handlers import MapHandlers

    write_scene_folder(tmp_path / "images", count=40)
    with Collection.open(tmp_path / "c", model=str(tiny_model_dir), create=True, device="cpu") as collection:
        collection.ingest([tmp_path / "images"], workers=0)
        maps = MapHandlers(AppContext(collection=collection, encoder=collection.encoder))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value, note = maps.collection_map("", "umap")
        assert not [w for w in caught if "n_jobs" in str(w.message)]  # umap's, relayed as mmr's own
        assert "UMAP map of 40 images" in note and "computed now" in note
        assert len(json.loads(value)["points"]["ids"]) == 40
        assert "from the cache" in maps.collection_map("", "umap")[1]


def test_duplicates_tab_shows_groups_beside_the_keeper_and_exports_the_rest(context, tmp_path):
    from mmretrieval.ui.duplicate_handlers import DuplicateHandlers

    if not hasattr(context.collection, "duplicates"):
        pytest.skip("this build has no Collection.duplicates (mmr duplicates) yet")
    handlers = DuplicateHandlers(context)
    review, summary, files, _ = handlers.duplicates(0.0001)  # every image alike: one big group
    assert "keep (suggested)" in review and "1 group of near-duplicates" in summary  # one group, singular
    listed = Path(files[0]).read_text().splitlines()
    table = pd.read_csv(files[1])
    assert set(listed) == set(table.loc[table["role"] == "copy", "path"])
    assert (table["role"] == "keep").sum() == table["group"].nunique()
    assert all(Path(path).exists() for path in listed)  # exported, never deleted
    with pytest.raises(gr.Error, match="between 0 and 1"):
        handlers.duplicates(1.5)


def test_duplicates_tab_with_groups_shaped_like_mmr_duplicates(context, search):
    """The tab's review and export over groups shaped as collection/duplicates.py makes them (keeper first)."""
    from dataclasses import replace

    from mmretrieval.collection.duplicates import Copy, DuplicateGroup as Group
    from mmretrieval.ui.duplicate_handlers import DuplicateHandlers

    _, hits, _, _, _ = search.search("a shape", None, "", 6, -1)
    copies = [Copy(hit["id"], hit["file"], 1.0 if i % 3 == 0 else 0.97, 64, 64, Path(hit["file"]).stat().st_size, 0)
              for i, hit in enumerate(hits)]
    groups = [Group(tuple(copies[:3])), Group(tuple(copies[3:]))]

    class WithDuplicates:
        def __init__(self, collection):
            self._collection = collection
            self.asked = None

        def __getattr__(self, name):
            return getattr(self._collection, name)

        def duplicates(self, threshold=None, progress=None, prefer=()):
            self.asked, self.preferred = threshold, list(prefer)
            return groups

    stand_in = WithDuplicates(context.collection)
    handlers = DuplicateHandlers(replace(context, collection=stand_in))
    review, summary, files, _ = handlers.duplicates(0)
    assert stand_in.asked is None  # 0 asks for the model's default threshold
    assert review.count("keep (suggested)") == 2 and review.count("copy · similarity 0.970") == 4
    assert summary.startswith("2 groups of near-duplicates; 4 copies besides the suggested keepers")
    folder = str(Path(copies[0].path).parent)  # copies share names across folders: each cell names its folder
    assert review.count(f"in {folder}<") == 6 and f'title="{copies[0].path}"' in review
    assert f'alt="{Path(copies[0].path).name}"' in review
    listed = Path(files[0]).read_text().splitlines()
    assert listed == [copy.path for copy in copies[1:3] + copies[4:]]  # the keepers are not in the list
    table = pd.read_csv(files[1])
    assert list(table["role"]) == ["keep", "copy", "copy"] * 2 and list(table["id"]) == [c.id for c in copies]
    assert all(Path(copy.path).exists() for copy in copies)  # nothing deleted
    handlers.duplicates(0.9)
    assert stand_in.asked == 0.9 and stand_in.preferred == []
    library = Path(copies[0].path).parent
    _, summary, _, _ = handlers.duplicates(0.9, prefer=f" {library} \n\n~\n")  # one folder a line
    assert stand_in.preferred == [str(library), "~"]
    assert f"then one in `{library}`, else in `~`; then the most" in summary
    with pytest.raises(gr.Error, match="'photos' is not an absolute path"):
        handlers.duplicates(0.9, prefer="photos")


def test_duplicates_are_paged_and_the_loose_groups_may_come_first(context, search):
    """The page drew the 40 most alike groups only; the loose ones, which most need a look, were in the export
    alone. Pages and the order are drawn from the groups found, without searching again."""
    from dataclasses import replace

    from mmretrieval.collection.duplicates import Copy, DuplicateGroup as Group
    from mmretrieval.ui.duplicate_handlers import GROUPS_SHOWN, LEAST_ALIKE, MOST_ALIKE, DuplicateHandlers

    _, hits, _, _, _ = search.search("a shape", None, "", 2, -1)
    keep, copy = (Copy(hit["id"], hit["file"], 1.0, 64, 64, Path(hit["file"]).stat().st_size, 0) for hit in hits)
    count = GROUPS_SHOWN + 5
    groups = [Group((keep, replace(copy, score=round(1 - i / 1000, 3)))) for i in range(count)]  # most alike first
    handlers = DuplicateHandlers(context)
    first = handlers.page(groups, MOST_ALIKE, 1)
    assert first.count("keep (suggested)") == GROUPS_SHOWN and "Group 1 · lowest similarity 1.000" in first
    second = handlers.page(groups, MOST_ALIKE, 2)
    assert second.count("keep (suggested)") == 5 and f"Group {count} · lowest similarity 0.956" in second
    loose = handlers.page(groups, LEAST_ALIKE, 1)
    assert loose.index(f"Group {count} · lowest similarity 0.956") < loose.index(f"Group {count - 1} ·")
    assert loose.count("keep (suggested)") == GROUPS_SHOWN and "Group 1 ·" not in loose
    assert handlers.page(groups, MOST_ALIKE, 99) == second  # past the end: the last page
    assert handlers.page([], MOST_ALIKE, 1) == gr.skip()  # "No near-duplicates" stays on the page


def test_search_filters_by_date_and_camera(search):
    _, recent, _, _, status = search.search("a shape", None, "", 200, -1, "", "", "2000", "", "")
    assert recent and "taken from '2000'" in status  # scenes without EXIF are dated by their file's mtime
    _, old, _, _, _ = search.search("a shape", None, "", 200, -1, "", "", "", "2000", "")
    assert old == []
    _, by_camera, _, _, _ = search.search("a shape", None, "", 200, -1, "", "", "", "", "Canon")
    assert by_camera == []  # generated PNGs have no camera
    with pytest.raises(gr.Error, match="“Taken from” .not a date. is not a date"):
        search.search("a shape", None, "", 5, -1, "", "", "not a date", "", "")


def test_map_filters_by_date_and_camera(maps, context):
    import json

    everything = json.loads(maps.collection_map("", "pca")[0])["points"]["ids"]
    recent = json.loads(maps.collection_map("", "pca", "", "", "2000", "", "")[0])["points"]["ids"]
    assert recent == everything  # scenes are dated by their files' mtime (now)
    with pytest.raises(gr.Error, match="No image on the map matches"):
        maps.collection_map("", "pca", "", "", "", "", "Canon")


def test_the_host_check_reads_ports_ipv6_case_and_malformed_headers():
    from mmretrieval.ui.server import _host_name

    for header, name in ((b"127.0.0.1:7860", "127.0.0.1"), (b"[::1]:7860", "::1"), (b"LocalHost", "localhost"),
                         (b"[::1", ""), (b"", ""), (b"evil.example:80", "evil.example")):
        assert _host_name({"headers": [(b"host", header)]}) == name


def test_allowed_host_names_are_read_as_host_headers_are():
    from mmretrieval.ui.server import add_serve_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = config_from_args(parser.parse_args(["--allowed-host", " Photos.Example. ", "--allowed-host", "[::2]"]))
    assert config.allowed_hosts == ("photos.example", "::2")
