"""The collection commands, in-process: stdout carries only results, errors are one line with exit 2."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from mmretrieval.cli import main
from test_ingest import write_good_images


@pytest.fixture()
def built(tmp_path, tiny_model_dir, capsys):
    write_good_images(tmp_path / "photos", 5)
    (tmp_path / "photos" / "bad.jpg").write_text("not an image")
    collection = str(tmp_path / "col")
    status = main(["ingest", str(tmp_path / "photos"), "--collection", collection, "--model", str(tiny_model_dir),
                   "--device", "cpu", "--workers", "0", "--batch-size", "2"])
    captured = capsys.readouterr()
    assert status == 0 and captured.out == ""
    assert "embedded 5, unchanged 0, duplicates 0, pruned 0, failed 1 (not_an_image 1)" in captured.err
    return tmp_path, collection


def test_search_prints_score_tab_path(built, capsys):
    tmp_path, collection = built
    assert main(["search", "a red circle", "--collection", collection, "-k", "3", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3
    for line in lines:
        score, path = line.split("\t")
        assert -1 <= float(score) <= 1 and path.startswith(str(tmp_path / "photos"))
    # the match hint goes to stderr (stdout stays clean for pipes); five images are too few to judge by
    assert "Too few images (5) to say how far a match stands out" in captured.err
    assert (Path(collection) / "confidence.npz").is_file()


def test_search_judges_only_plain_text_queries(built, capsys):
    tmp_path, collection = built
    photos = tmp_path / "photos"
    for extra in (["--not", "blue"], ["--prefix", str(photos)], ["--image", str(photos / "good01.jpg")]):
        assert main(["search", "a red circle", "--collection", collection, "--device", "cpu", *extra]) == 0
        assert "match:" not in capsys.readouterr().err, extra


def test_search_json_with_image_and_negative(built, capsys, monkeypatch):
    tmp_path, collection = built
    monkeypatch.setenv("MMR_COLLECTION", collection)
    image = str(tmp_path / "photos" / "good01.jpg")
    assert main(["search", "2:shapes", "--image", image, "--not", "blue", "--json", "-k", "50"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 5 and {"path", "score", "id"} <= set(rows[0])


def test_similar_and_threshold_with_no_hits_exits_1(built, capsys):
    tmp_path, collection = built
    image = str(tmp_path / "photos" / "good00.jpg")
    assert main(["similar", image, "--collection", collection, "-k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["search", "x", "--collection", collection, "--threshold", "0.999"]) == 1


def test_errors_are_one_line_without_traceback(tmp_path, built, capsys):
    _, collection = built
    assert main(["search", "x", "--collection", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "mmr ingest" in err
    assert main(["search", "--collection", collection]) == 2
    assert "positive term" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "missing-folder"), "--collection", collection]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_index_rebuild_and_info_json(built, capsys):
    _, collection = built
    assert main(["index", "--collection", collection, "--type", "hnsw", "--hnsw-m", "16"]) == 0
    assert "built hnsw index over 5 vectors" in capsys.readouterr().err
    assert main(["info", "--collection", collection, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["index_type"] == "hnsw" and info["index_params"]["hnsw_m"] == 16
    assert info["counts"] == {"ok": 5, "failed": 1} and info["vectors"] == 5
    assert main(["search", "x", "--collection", collection, "-k", "10"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5


def test_label_exports_and_organizes(built, capsys):
    tmp_path, collection = built
    out = tmp_path / "labels.csv"
    assert main(["label", "--collection", collection, "--labels", "circle,square", "--out", str(out),
                 "--organize", str(tmp_path / "sorted"), "--copy"]) == 0
    counts = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert set(counts) == {"circle", "square"} and sum(map(int, counts.values())) == 5
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5 and {r["label"] for r in rows} <= {"circle", "square"}
    copied = list((tmp_path / "sorted").rglob("*.jpg"))
    assert len(copied) == 5 and not any(p.is_symlink() for p in copied)
    assert main(["search", "x", "--collection", collection, "--label", rows[0]["label"], "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert hits and all(h["labels"][0] == rows[0]["label"] for h in hits)


def _fails_in_one_line(capsys, argv: list[str], *needles: str) -> str:
    """Run ``mmr argv``: exit 2 with one specific ``error:`` line naming ``needles``, never a traceback."""
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2 and "error:" in err and "Traceback" not in err and "-v for details" not in err, err
    assert all(needle in err for needle in needles), err
    return err


def test_similar_with_a_non_numeric_id(built, capsys):
    _, collection = built
    _fails_in_one_line(capsys, ["similar", "abc", "--id", "--collection", collection], "'abc'", "--id")


def test_label_export_into_a_missing_folder(built, capsys):
    tmp_path, collection = built
    out = tmp_path / "no-such-dir" / "x.csv"
    _fails_in_one_line(capsys, ["label", "--collection", collection, "--labels", "a,b", "--out", str(out)],
                       str(out))


def test_label_checks_its_outputs_first_and_exports_only_its_own_set(built, capsys):
    tmp_path, collection = built
    for bad, needle in ((tmp_path / "labels.xlsx", ".csv or .jsonl"), (tmp_path / "gone" / "l.csv", "does not exist"),
                        (Path("/proc/l.csv"), "/proc takes no new files")):  # a folder there that takes no file
        _fails_in_one_line(capsys, ["label", "--collection", collection, "--labels", "a,b", "--set", "shapes",
                                    "--out", str(bad)], needle)
    _fails_in_one_line(capsys, ["label", "--collection", collection, "--labels", "a,b", "--set", "shapes",
                                "--organize", str(tmp_path / "photos" / "good00.jpg")], "not a folder")
    _fails_in_one_line(capsys, ["label", "--collection", collection, "--labels", "a,b", "--set", "shapes",
                                "--copy"], "--copy needs --organize DIR")  # it was ignored in silence
    _fails_in_one_line(capsys, ["label", "--collection", collection, "--labels", "a,b", "--set", "shapes",
                                "--organize", "/proc/by-label"], "cannot fill /proc/by-label: /proc takes no new files")
    assert main(["info", "--collection", collection, "--json"]) == 0
    assert not json.loads(capsys.readouterr().out)["labels"]  # nothing was labelled: a retry is not refused
    labels = tmp_path / "labels.txt"
    labels.write_text("# shapes, one per line\ncircle\nsquare, or a box\n")
    assert main(["label", "--collection", collection, "--labels", "red,blue"]) == 0  # the default set
    assert main(["label", "--collection", collection, "--labels", f"@{labels}", "--set", "shapes",
                 "--out", str(tmp_path / "shapes.jsonl"), "--organize", str(tmp_path / "sorted")]) == 0
    capsys.readouterr()
    exported = [json.loads(line) for line in (tmp_path / "shapes.jsonl").read_text().splitlines()]
    assert len(exported) == 5 and all(len(record["labels"]) == 1 for record in exported)  # single-label: one each
    assert {entry["label"] for record in exported for entry in record["labels"]} <= {"circle", "square, or a box"}
    organized = {folder.name: len(list(folder.iterdir())) for folder in (tmp_path / "sorted").iterdir()
                 if folder.is_dir()}
    assert set(organized) <= {"circle", "square, or a box"} and sum(organized.values()) == 5


def test_organizing_again_replaces_the_earlier_folders_and_never_mixes_with_other_files(built, capsys):
    tmp_path, collection = built
    sorted_dir = tmp_path / "sorted"
    assert main(["label", "--collection", collection, "--labels", "circle,square", "--organize", str(sorted_dir)]) == 0
    assert {p.name for p in sorted_dir.iterdir() if p.is_dir()} <= {"circle", "square"}
    assert main(["label", "--collection", collection, "--labels", "red,blue", "--replace",
                 "--organize", str(sorted_dir)]) == 0
    capsys.readouterr()
    folders = {p.name: len(list(p.iterdir())) for p in sorted_dir.iterdir() if p.is_dir()}
    assert set(folders) <= {"red", "blue"} and sum(folders.values()) == 5  # no link left under circle or square
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    _fails_in_one_line(capsys, ["label", "--collection", collection, "--labels", "a,b", "--set", "other",
                                "--organize", str(tmp_path / "mine")], "is not empty")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_organize_skips_and_reports_deleted_sources(built, capsys, monkeypatch):
    from mmretrieval.collection import labelling
    from mmretrieval.collection.collection import Collection

    tmp_path, collection = built
    (tmp_path / "photos" / "good00.jpg").unlink()
    assert main(["label", "--collection", collection, "--labels", "circle,square",
                 "--organize", str(tmp_path / "sorted"), "--copy"]) == 0
    err = capsys.readouterr().err
    assert "placed 4 files" in err and "skipped 1 source file(s) that are missing" in err and "good00.jpg" in err
    assert len(list((tmp_path / "sorted").rglob("*.jpg"))) == 4
    (tmp_path / "photos" / "good01.jpg").unlink()
    monkeypatch.setattr(labelling, "MISSING_EXAMPLES", 1)  # counted, not all held: a drive may be unmounted
    with Collection.open(collection) as opened:
        organized = opened.organize(tmp_path / "again")
    assert (organized.placed, organized.missing, len(organized.missing_examples)) == (3, 2, 1)


def test_collection_path_that_is_a_file(tmp_path, capsys):
    write_good_images(tmp_path / "photos", 1)
    (tmp_path / "afile").write_text("x")
    _fails_in_one_line(capsys, ["ingest", str(tmp_path / "photos"), "--collection", str(tmp_path / "afile")],
                       str(tmp_path / "afile"), "not a directory")


def test_ivf_on_a_tiny_or_empty_collection_builds_flat(built, tmp_path, capsys):
    _, collection = built
    assert main(["index", "--collection", collection, "--type", "ivf"]) == 0
    assert "built flat index over 5 vectors" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "col" / "index.json").read_text())
    assert manifest["index_type"] == "flat" and "ivf" in manifest["note"] and "too few" in manifest["note"]
    (tmp_path / "empty").mkdir()
    assert main(["ingest", str(tmp_path / "empty"), "--collection", str(tmp_path / "ecol"),
                 "--model", "builtin:shapes"]) == 1  # nothing found, but the (empty) collection is made
    assert main(["index", "--collection", str(tmp_path / "ecol"), "--type", "ivf"]) == 0
    assert "built flat index over 0 vectors" in capsys.readouterr().err


def test_index_and_compact_print_their_summary_as_json_on_request(built, capsys):
    """Of the commands that change a collection, only these two had no machine-readable summary."""
    tmp_path, collection = built
    assert main(["index", "--collection", collection, "--type", "hnsw", "--hnsw-m", "16", "--json"]) == 0
    out, err = capsys.readouterr()
    built_index = json.loads(out)
    assert built_index == {"index_type": "hnsw", "params": {**built_index["params"], "hnsw_m": 16}, "count": 5,
                           "recall": built_index["recall"], "memory_bytes": built_index["memory_bytes"], "note": None}
    assert 0 < built_index["recall"] <= 1 and f"recall@10 {built_index['recall']:.3f}" in err  # ef_search tuned
    assert built_index["memory_bytes"] > 0 and "built hnsw index over 5 vectors" in err
    (tmp_path / "photos" / "good00.jpg").unlink()
    assert main(["ingest", str(tmp_path / "photos"), "--collection", collection, "--prune", "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["compact", "--collection", collection, "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["rows_reclaimed"] == 1 and summary["rows_copied"] == 4 and "1 dead rows reclaimed" in err


def test_a_pq_m_above_the_dimension_is_refused_in_one_line(built, capsys):
    """FAISS's own C++ assertion came through ('!(d % M == 0)' failed), unlike every other bad index option."""
    _, collection = built
    _fails_in_one_line(capsys, ["index", "--collection", collection, "--type", "ivfpq", "--pq-m", "40"],
                       "--pq-m 40: a code splits each 32-d vector into pq-m parts, so it is at most 32")


def test_a_recall_target_for_an_exact_index_is_refused_or_kept_for_later(built, capsys):
    """It was accepted and ignored in silence: a flat index is exact."""
    _, collection = built
    _fails_in_one_line(capsys, ["index", "--collection", collection, "--type", "flat", "--recall-target", "0.9"],
                       "--recall-target: a flat index is exact")
    assert main(["index", "--collection", collection, "--recall-target", "0.9"]) == 0  # auto, 5 vectors: flat
    assert "note: a flat index is exact; --recall-target 0.9 is kept for the ivf, hnsw or ivfpq index" in \
        capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--hnsw-m", "-5"), ("--nlist", "0"), ("--nprobe", "-1"),
                                         ("--ef-search", "0")])
def test_invalid_index_parameters(built, capsys, flag, value):
    _, collection = built
    kind = "ivf" if flag in ("--nlist", "--nprobe") else "hnsw"
    _fails_in_one_line(capsys, ["index", "--collection", collection, "--type", kind, flag, value], flag, value)


def test_ivf_collection_pruned_to_empty_without_manifest_still_opens(built, capsys):
    tmp_path, collection = built
    assert main(["index", "--collection", collection, "--type", "ivf"]) == 0
    for path in (tmp_path / "photos").iterdir():
        path.unlink()
    (tmp_path / "photos" / "album").mkdir()  # not empty: an emptied root is refused, as an unmounted drive's
    assert main(["ingest", str(tmp_path / "photos"), "--collection", collection, "--prune", "--workers", "0"]) == 0
    (tmp_path / "col" / "index.json").unlink()
    capsys.readouterr()
    assert main(["info", "--collection", collection, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vectors"] == 0


def test_custom_index_parameters_survive_automatic_rebuilds(built, capsys):
    from mmretrieval.collection.collection import Collection

    tmp_path, collection = built
    _fails_in_one_line(capsys, ["index", "--collection", collection, "--type", "flat", "--nlist", "4"],
                       "--nlist: not a parameter of the flat index type")  # it was ignored in silence
    _fails_in_one_line(capsys, ["index", "--collection", collection, "--type", "hnsw", "--nprobe", "4", "--pq-m",
                                "8"], "--nprobe, --pq-m: not a parameter of the hnsw index type")
    assert main(["index", "--collection", collection, "--type", "hnsw", "--ef-search", "300", "--hnsw-m", "16"]) == 0
    capsys.readouterr()
    assert main(["info", "--collection", collection, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["index_recall"] is None  # parameters given: no recall measured
    assert main(["info", "--collection", collection]) == 0
    out = capsys.readouterr().out
    assert "\nindex_recall\t-\n" in out and "\nindex_saved\tyes\n" in out  # not -1.0, not True
    (tmp_path / "photos" / "good00.jpg").unlink()  # an HNSW index cannot remove: the prune rebuilds it
    assert main(["ingest", str(tmp_path / "photos"), "--collection", collection, "--prune", "--workers", "0"]) == 0
    (tmp_path / "col" / "index.json").unlink()  # and so does a lost manifest, on first use
    capsys.readouterr()
    assert main(["info", "--collection", collection, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)  # info never builds an index only to describe it
    assert info["index_type"] == "none" and info["index_saved"] is False and info["vectors"] == 4
    with Collection.open(collection) as col:
        col.load_index()
        info = col.info().to_dict()
    assert info["index_vectors"] == 4 and info["index_type"] == "hnsw"
    assert info["index_params"] == {"hnsw_m": 16, "ef_search": 300}


@pytest.mark.parametrize("share", ["on", "off"])
def test_ingest_decoding_on_the_device_with_or_without_shared_jpegs(tmp_path, tiny_model_dir, capsys, share):
    write_good_images(tmp_path / "photos", 6)
    (tmp_path / "photos" / "bad.jpg").write_text("not an image")
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(tmp_path / "col"), "--model",
                 str(tiny_model_dir), "--device", "cpu", "--workers", "1", "--batch-size", "2",
                 "--device-decode", "on", "--share-jpegs", share]) == 0
    assert "embedded 6, unchanged 0, duplicates 0, pruned 0, failed 1 (not_an_image 1)" in capsys.readouterr().err


def test_ingest_in_bf16_where_the_cpu_has_it_and_a_clear_error_where_not(tmp_path, tiny_model_dir, capsys,
                                                                          monkeypatch):
    import sys

    import torch

    from mmretrieval.models.precision import native_bf16

    write_good_images(tmp_path / "photos", 4)
    native = native_bf16(torch.device("cpu"))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the tip is for a person at a terminal
    scores = {}
    for precision in ("auto", "bf16"):
        collection = str(tmp_path / precision)
        status = main(["ingest", str(tmp_path / "photos"), "--collection", collection, "--model", str(tiny_model_dir),
                       "--device", "cpu", "--workers", "0", "--precision", precision])
        err = capsys.readouterr().err
        if precision == "bf16" and not native:
            assert status == 2 and "--precision bf16: this CPU has neither AVX512-BF16 nor AMX" in err
            return
        assert status == 0 and "embedded 4," in err
        assert ("tip: this CPU computes bf16 natively" in err) == (native and precision == "auto")
        assert main(["search", "a red circle", "--collection", collection, "--json", "-k", "4"]) == 0
        scores[precision] = {row["path"]: row["score"] for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert scores["auto"].keys() == scores["bf16"].keys()
    assert max(abs(scores["auto"][path] - scores["bf16"][path]) for path in scores["auto"]) < 2e-2


@pytest.mark.parametrize("argv, needle", [
    (["ingest", "x", "--timeout", "-5"], "--timeout: must be a number of seconds above 0, got -5"),
    (["ingest", "x", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["ingest", "x", "--workers", "-1"], "--workers: must be at least 0, got -1"),
    (["label", "--labels", "a,b", "--threshold", "-0.5"], "--threshold: must be a probability from 0 to 1"),
    (["classify", "x.png", "--labels", "a,b", "--top-k", "0"], "--top-k: must be at least 1, got 0"),
    (["classify", "x.png", "--labels", "a,b", "--threshold", "nan"], "--threshold: not a number: 'nan'"),
    (["serve", "--port", "99999"], "--port: must be a port number from 0 to 65535"),
    (["serve", "--max-file-size", "lots"], "--max-file-size: must be a whole number and b, kb, mb, gb or tb"),
    (["compact", "--min-waste", "2"], "--min-waste: must be a probability from 0 to 1, got 2"),
    (["info", "--dim", "3"], "unrecognized arguments: --dim 3 (see mmr info --help)"),  # no hint about queries
])
def test_out_of_range_options_are_refused_by_name(argv, needle, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--collection", "unused"] if argv[0] in ("ingest", "label", "compact", "info") else argv)
    assert exited.value.code == 2 and needle in capsys.readouterr().err


@pytest.mark.parametrize("command", ["ingest", "index"])
def test_a_folder_after_ray_is_not_taken_for_the_clusters_address(command, tmp_path, capsys):
    """--ray's address is optional, so `mmr ingest --ray photos` took the folder for the cluster and then asked for
    a SOURCE; now the folder is named, and how to write the option."""
    from mmretrieval.cli.common import ray_address

    with pytest.raises(SystemExit) as exited:
        main([command, "--ray", str(tmp_path), "--collection", str(tmp_path / "col")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"--ray: '{tmp_path}' is a folder here, taken as the cluster's address" in err
    assert "put --ray last, or write --ray=ADDRESS" in err
    assert [ray_address(text) for text in ("auto", "10.0.0.5:6379", "ray://head:10001", "")] == [
        "auto", "10.0.0.5:6379", "ray://head:10001", ""]


def test_k_below_one_is_refused_naming_the_option(built, capsys):
    tmp_path, collection = built
    for command in (["similar", str(tmp_path / "photos" / "good00.jpg")], ["search", "red"], ["duplicates"]):
        with pytest.raises(SystemExit) as refused:
            main([*command, "--collection", collection, "-k", "0"])
        assert refused.value.code == 2  # the option's name, not the API's argument "k"
        assert f"mmr {command[0]}: error: argument -k: must be at least 1, got 0" in capsys.readouterr().err


def test_search_mistakes_are_named_and_empty_results_said(built, capsys):
    tmp_path, collection = built
    base = ["--collection", collection]
    _fails_in_one_line(capsys, ["search", "circle", "--not", str(tmp_path / "nope.jpg"), *base],
                       "nope.jpg", "does not exist")  # a typo in a path never becomes a text term
    _fails_in_one_line(capsys, ["similar", str(tmp_path / "photos"), *base], "is a folder, not an image file")
    _fails_in_one_line(capsys, ["search", "circle", "--gps", *base], "--gps", "--json")
    assert main(["search", "circle", "--threshold", "0.999", *base]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "mmr search: no results" in captured.err


def test_a_model_that_cannot_load_leaves_no_collection_behind(tmp_path, capsys):
    target = tmp_path / "new.mmr"
    _fails_in_one_line(capsys, ["ingest", str(tmp_path), "--collection", str(target), "--model",
                                "ViT-B-32:laion2b_s34b_b79k"], "ViT-B-32")
    assert not target.exists()  # so a later plain `mmr ingest` cannot quietly pick the default model


def test_search_hint_judges_the_best_score_it_printed(tmp_path, tiny_model_dir, capsys):
    write_good_images(tmp_path / "photos", 12)
    collection = str(tmp_path / "col")
    assert main(["ingest", str(tmp_path / "photos"), "--collection", collection, "--model", str(tiny_model_dir),
                 "--device", "cpu", "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["search", "a red circle", "--collection", collection, "-k", "3", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    judged = re.search(r"(Weak|Fair|Clear) match: the best score (-?[0-9.]+) stands", captured.err)
    assert judged and float(judged.group(2)) == pytest.approx(float(captured.out.split("\t")[0]), abs=6e-4)


def test_a_first_ray_ingest_whose_cluster_does_not_answer_makes_no_collection(tmp_path, capsys):
    # It plans its files (pending rows) before it connects: those alone must not pin the model.
    pytest.importorskip("ray")
    write_good_images(tmp_path / "photos", 2)
    new = tmp_path / "new.mmr"
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(new), "--ray", "127.0.0.1:1"]) == 2
    assert "cannot connect to the Ray cluster at 127.0.0.1:1" in capsys.readouterr().err and not new.exists()


def test_a_new_collection_holding_planned_rows_is_kept_when_its_first_ingest_fails(tmp_path, tiny_model_dir):
    # A --ray run plans its files, then workers write results that only a re-run commits: removing the folder on
    # an error (or Ctrl-C) would throw that work away.
    from mmretrieval.collection.collection import Collection
    from mmretrieval.ingest.reader import discover
    from mmretrieval.ingest.planning import plan

    write_good_images(tmp_path / "photos", 2)
    new = tmp_path / "new.mmr"
    with pytest.raises(KeyboardInterrupt):
        with Collection.open(new, model=str(tiny_model_dir), create=True, device="cpu") as collection:
            plan(collection.catalog, discover([tmp_path / "photos"]))
            raise KeyboardInterrupt
    with Collection.open(new) as kept:
        assert kept.catalog.counts_by_status() == {"pending": 2}


def test_ingest_exit_status_says_whether_anything_made_it_in(built, capsys):
    tmp_path, collection = built
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.jpg").write_text("not an image")
    (tmp_path / "broken" / "b.png").write_bytes(b"")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt.bak").write_text("no images here")
    options = ["--collection", collection, "--device", "cpu", "--workers", "0"]
    assert main(["ingest", str(tmp_path / "broken"), *options]) == 2
    err = capsys.readouterr().err
    assert "failed 2 (empty_file 1, not_an_image 1)" in err and "every file failed" in err
    assert main(["ingest", str(tmp_path / "nothing"), *options]) == 1
    assert "no image files found in " + str(tmp_path / "nothing") in capsys.readouterr().err
    # into a new collection without --model, a run that found nothing makes none: it would only pin the demo model
    new = tmp_path / "new.mmr"
    assert main(["ingest", str(tmp_path / "nothing"), "--collection", str(new), "--device", "cpu",
                 "--workers", "0"]) == 1
    assert "no collection was made" in capsys.readouterr().err and not new.exists()
    listed = tmp_path / "list.txt"  # entries that are gone are skipped, as `mmr info` counts them
    listed.write_text(f"{tmp_path / 'gone.jpg'}\n")
    assert main(["ingest", str(listed), *options]) == 2
    assert "failed 0 (none), skipped 1 (missing 1)" in capsys.readouterr().err
    assert main(["info", "--collection", collection, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["skipped"] == 1
    # nothing new, but the photos are in: a re-run is a success, and so is a run that only prunes
    assert main(["ingest", str(tmp_path / "photos"), *options]) == 0
    (tmp_path / "photos" / "good00.jpg").unlink()
    for extra in (tmp_path / "photos").iterdir():
        extra.unlink()
    (tmp_path / "photos" / "album").mkdir()  # not empty (an empty root is refused, as an unmounted drive's)
    assert main(["ingest", str(tmp_path / "photos"), "--prune", *options]) == 0
    assert "pruned 6" in capsys.readouterr().err


def test_info_failures_lists_each_file_that_did_not_embed_a_page_at_a_time(built, capsys, monkeypatch):
    from mmretrieval.collection import catalog

    tmp_path, collection = built
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "empty.png").write_bytes(b"")
    (tmp_path / "more" / "short.jpg").write_bytes(b"\xff\xd8\xff")
    assert main(["ingest", str(tmp_path / "more"), "--collection", collection, "--workers", "0"]) == 2
    capsys.readouterr()
    listed = tmp_path / "list.txt"  # a skip, listed after the failures
    listed.write_text(f"{tmp_path / 'gone.jpg'}\n")
    assert main(["ingest", str(listed), "--collection", collection, "--workers", "0"]) == 2
    monkeypatch.setattr(catalog, "FAILURE_PAGE", 1)  # four rows over four pages
    assert main(["info", "--collection", collection, "--failures"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [Path(path).name for path, *_ in lines] == ["bad.jpg", "empty.png", "short.jpg", "gone.jpg"]
    assert [reason for _, reason, _ in lines[:2]] == ["not_an_image", "empty_file"] and lines[3][1] == "missing"
    assert all(reason and message for _, reason, message in lines)
    assert main(["info", "--collection", collection, "--failures", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["path"] for row in rows] == [path for path, *_ in lines]


def test_a_query_that_starts_with_a_dash_gets_told_how_to_pass_it(built, capsys):
    _, collection = built
    with pytest.raises(SystemExit) as exited:  # a usage error, as argparse's own
        main(["search", "red", "-circle", "--collection", collection])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "mmr search: error: unrecognized arguments: -circle; a query or path that starts with '-' goes at the end, "
        "after '--' (see mmr search --help)"]
    assert main(["search", "--collection", collection, "-k", "2", "--", "-circle"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    with pytest.raises(SystemExit):
        main(["info", "--collection", collection, "extra"])
    assert capsys.readouterr().err.startswith("mmr info: error: unrecognized arguments: extra (see")
    with pytest.raises(SystemExit):  # the dashed path is taken for an option, so the IMAGE seems missing
        main(["similar", "-k", "2", "-x.png", "--collection", collection])
    assert capsys.readouterr().err.splitlines() == [
        "mmr similar: error: the following arguments are required: IMAGE; a query or path that starts with '-' "
        "goes at the end, after '--' (see mmr similar --help)"]
    assert main(["similar", "x.png"]) == 2  # no collection (not even the default one) gets no such hint
    err = capsys.readouterr().err
    assert "no --collection given" in err and "after '--'" not in err
    with pytest.raises(SystemExit):  # a southern latitude looks like an option to argparse
        main(["search", "red", "--near", "-33.86,151.21,10", "--collection", collection])
    assert capsys.readouterr().err.splitlines() == [
        "mmr search: error: argument --near: expected one argument; a value that starts with '-' is given as "
        "--near=VALUE (e.g. --near=-33.86,151.21,10) (see mmr search --help)"]
    assert main(["search", "red", "--near=-33.86,151.21,10", "--collection", collection]) == 1  # taken: no photo there
    assert "error" not in capsys.readouterr().err


def test_a_double_dash_file_name_gets_the_same_hint(built, tmp_path, capsys, monkeypatch):
    _, collection = built
    hint = "; a query or path that starts with '-' goes at the end, after '--'"
    with pytest.raises(SystemExit):  # taken for an option, so the IMAGE seems missing
        main(["similar", "--double.png", "--collection", collection])
    assert capsys.readouterr().err.splitlines() == [
        f"mmr similar: error: the following arguments are required: IMAGE{hint} (see mmr similar --help)"]
    with pytest.raises(SystemExit):
        main(["ingest", "x.png", "--double.png", "--collection", collection])
    assert capsys.readouterr().err.splitlines() == [
        f"mmr ingest: error: unrecognized arguments: --double.png{hint} (see mmr ingest --help)"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "--notes").write_text("a file without an extension")
    with pytest.raises(SystemExit):
        main(["ingest", "--notes", "--collection", collection])
    assert hint in capsys.readouterr().err
    for argv in (["info", "--near=1.5"], ["info", "--nothing"], ["similar", "--threshold=0.5"]):  # options, not names
        with pytest.raises(SystemExit):
            main([*argv, "--collection", collection])
        assert "after '--'" not in capsys.readouterr().err
    assert main(["similar", "--collection", collection, "-k", "1", "--", "--double.png"]) == 2  # the way: no such file
    assert "query image --double.png does not exist" in capsys.readouterr().err


def test_an_error_naming_a_file_with_line_breaks_is_still_one_line(built, capsys):
    from mmretrieval.cli import _show_warning
    from mmretrieval.errors import CollectionError
    from mmretrieval.ingest.reader import discover

    _, collection = built
    assert main(["similar", "no\nsuch\r.png", "--collection", collection]) == 2
    assert capsys.readouterr().err.splitlines() == ["mmr similar: error: query image no\\nsuch\\r.png does not exist"]
    assert main(["ingest", "no\nsuch\u2028.png", "--collection", collection]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [err.rstrip("\n")] and "source no\\nsuch\\u2028.png does not exist" in err
    with pytest.raises(SystemExit):
        main(["info", "--collection", collection, "a\nb"])
    assert capsys.readouterr().err.splitlines() == ["mmr info: error: unrecognized arguments: a\\nb (see mmr info --help)"]
    _show_warning(UserWarning("two\nlines"), UserWarning, "x.py", 1)
    assert capsys.readouterr().err == "mmr: warning: two\\nlines\n"
    with pytest.raises(CollectionError, match="source no\nsuch.png does not exist"):  # the library's own message
        list(discover(["no\nsuch.png"]))
    new = str(built[0] / "new-collection")  # no word of a new collection that is not made
    assert main(["ingest", "no-such-folder", "--collection", new]) == 2
    assert capsys.readouterr().err == ("mmr ingest: error: source no-such-folder does not exist; pass folders, image "
                                       "files or .txt/.csv lists\n")
    assert not Path(new).exists()
    assert main(["ingest", str(built[0] / "usb"), "--prune", "--collection", built[1]]) == 2  # a drive not mounted
    assert "missing (an unmounted drive?); nothing was deleted" in capsys.readouterr().err  # not the typo message


def test_json_lines_are_utf8_and_give_back_a_non_utf8_name(tmp_path, tiny_model_dir, capsys):
    import os

    from mmretrieval.cli.common import json_line

    name = os.fsdecode(b"caf\xe9 \xff.jpg")  # not UTF-8: the bytes live on as surrogate escapes
    line = json_line({"path": name, "caption": "déjà vu"})
    assert "déjà vu" in line and "\\udce9" in line
    assert os.fsencode(json.loads(line.encode("utf-8").decode("utf-8"))["path"]) == b"caf\xe9 \xff.jpg"
    photos = tmp_path / "photos"
    write_good_images(photos, 2)
    os.rename(photos / "good00.jpg", os.path.join(os.fsencode(photos), b"caf\xe9.jpg"))
    collection = str(tmp_path / "col")
    assert main(["ingest", str(photos), "--collection", collection, "--model", str(tiny_model_dir),
                 "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["search", "a shape", "--collection", collection, "--json"]) == 0
    rows = [json.loads(line.encode("utf-8")) for line in capsys.readouterr().out.splitlines()]  # strict UTF-8
    assert sorted(os.path.basename(os.fsencode(row["path"])) for row in rows) == [b"caf\xe9.jpg", b"good01.jpg"]


def test_a_new_collection_without_model_says_it_gets_the_demo_model(tmp_path, capsys):
    write_good_images(tmp_path / "photos", 1)
    collection = str(tmp_path / "col")
    for run in range(2):
        assert main(["ingest", str(tmp_path / "photos"), "--collection", collection, "--workers", "0"]) == 0
        told = "a new collection with the bundled demo model builtin:shapes" in capsys.readouterr().err
        assert told == (run == 0)  # said when it is chosen, not on every later ingest
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(tmp_path / "other"), "--model",
                 "builtin:shapes", "--workers", "0"]) == 0
    assert "bundled demo model" not in capsys.readouterr().err


@pytest.mark.parametrize("repeated", [["--label", "a", "--label", "b"], ["--prefix", "/x", "--prefix", "/y"],
                                      ["--after", "2024", "--after", "2025"], ["--threshold", "0.1", "--threshold", "0.2"]])
def test_a_filter_given_twice_is_refused_not_half_dropped(built, capsys, repeated):
    _, collection = built
    with pytest.raises(SystemExit) as exited:
        main(["search", "x", "--collection", collection, *repeated])
    assert exited.value.code == 2
    assert f"mmr search: error: {repeated[0]} given twice; give it once" in capsys.readouterr().err


@pytest.mark.parametrize("threshold", ["2", "-1.5", "nan"])
def test_search_threshold_must_be_a_cosine(built, capsys, threshold):
    _, collection = built
    with pytest.raises(SystemExit):
        main(["search", "x", "--collection", collection, "--threshold", threshold])
    assert "--threshold" in capsys.readouterr().err


def test_serve_names_a_host_or_port_it_cannot_listen_on_before_opening_anything(tmp_path, capsys):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--collection", str(tmp_path / "none"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"mmr serve: error: cannot listen on 127.0.0.1:{port}: Address already in use" in err
    assert main(["serve", "--collection", str(tmp_path / "none"), "--host", "999.1.1.1"]) == 2
    assert "cannot listen on 999.1.1.1:7860" in capsys.readouterr().err  # not "no collection at ..."


def test_a_threshold_without_multi_label_is_refused_not_ignored(built, capsys):
    tmp_path, collection = built
    image = str(tmp_path / "photos" / "good00.jpg")
    for command in (["classify", image], ["label", "--collection", collection]):
        assert main([*command, "--labels", "a,b", "--threshold", "0.9"]) == 2
        assert "--threshold applies with --multi-label" in capsys.readouterr().err
        assert main([*command, "--labels", "a,b", "--threshold", "0.9", "--multi-label"]) == 0


def test_with_no_collection_named_commands_use_the_default_one(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """`--collection` was required of every command (rclip keeps one database and needs no option): with neither
    it nor $MMR_COLLECTION, ingest and import make the default collection, and the other commands use it."""
    from mmretrieval.cache import default_collection_dir

    monkeypatch.delenv("MMR_COLLECTION", raising=False)
    monkeypatch.setenv("MMR_DATA_DIR", str(tmp_path / "data"))
    default = default_collection_dir()
    assert default == tmp_path / "data" / "collection"
    assert main(["search", "x"]) == 2
    assert (f"no --collection given, and the default collection {default} does not exist yet: `mmr ingest FOLDER "
            "--model SPEC` makes it") in capsys.readouterr().err
    write_good_images(tmp_path / "photos", 2)
    assert main(["ingest", str(tmp_path / "photos"), "--workers", "0"]) == 2  # not with the demo model by default
    assert "the default collection" in capsys.readouterr().err and not default.exists()
    assert main(["ingest", str(tmp_path / "photos"), "--model", str(tiny_model_dir), "--workers", "0"]) == 0
    assert f"mmr ingest: the default collection is {default} (--collection DIR" in capsys.readouterr().err
    assert main(["search", "a red circle", "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["ingest", str(tmp_path / "photos"), "--workers", "0"]) == 0
    assert "the default collection is" not in capsys.readouterr().err
    monkeypatch.setenv("MMR_COLLECTION", "")  # set but empty: unset, as mmr serve took it
    assert main(["info"]) == 0 and str(default) in capsys.readouterr().out
    monkeypatch.setenv("MMR_COLLECTION", str(tmp_path / "named"))
    assert main(["info"]) == 2
    assert str(tmp_path / "named") in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("MMR_COLLECTION", str(tmp_path / "afile"))  # blamed on an option the user never gave
    assert main(["ingest", str(tmp_path / "photos")]) == 2
    assert capsys.readouterr().err.rstrip().endswith(
        f"as --collection (the collection is $MMR_COLLECTION's: {tmp_path / 'afile'})")
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(tmp_path / "afile")]) == 2
    assert "MMR_COLLECTION" not in capsys.readouterr().err  # named on the command line: no word of the variable


def test_mmr_serve_serves_the_default_collection_once_made(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from mmretrieval.cache import default_collection_dir
    from mmretrieval.cli import serve_cmd

    monkeypatch.delenv("MMR_COLLECTION", raising=False)
    monkeypatch.setenv("MMR_DATA_DIR", str(tmp_path / "data"))
    served: list = []
    monkeypatch.setattr(serve_cmd, "run", lambda args: served.append(args.collection) or 0)
    assert main(["serve"]) == 0 and served == [None]  # no default collection yet: the demo, and it says so
    assert "no default collection yet" in capsys.readouterr().err
    write_good_images(tmp_path / "photos", 1)
    assert main(["ingest", str(tmp_path / "photos"), "--model", str(tiny_model_dir), "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["serve"]) == 0 and served[-1] == default_collection_dir()
    assert "serving the default collection" in capsys.readouterr().err
    assert main(["serve", "--demo"]) == 0 and served[-1] is None
    assert main(["serve", "--demo", "--collection", str(tmp_path)]) == 2
    # --demo-dir (once --data-dir, easily taken for $MMR_DATA_DIR) serves the demo from there; the default
    # collection was served instead, and the option ignored
    assert main(["serve", "--demo-dir", str(tmp_path / "demo")]) == 0 and served[-1] is None
    assert main(["serve", "--data-dir", str(tmp_path / "demo")]) == 0 and served[-1] is None


def test_a_demo_folder_is_refused_beside_a_collection_to_serve(tmp_path):
    from mmretrieval.errors import MMRError
    from mmretrieval.ui.server import ServeConfig, open_context

    with pytest.raises(MMRError, match="--demo-dir is where the demo collection is built and cached; leave it out to "
                                       f"serve {tmp_path / 'col'}, or leave out --collection"):
        open_context(ServeConfig(collection=tmp_path / "col", data_dir=tmp_path / "demo"))
    assert not (tmp_path / "col").exists() and not (tmp_path / "demo").exists()


def test_info_failures_writes_a_non_utf8_name_as_its_bytes_on_a_strict_stdout(built, capsys, monkeypatch):
    import io
    import os
    import sys

    tmp_path, collection = built
    bad = os.path.join(os.fsencode(tmp_path / "photos"), b"caf\xe9.jpg")
    with open(bad, "wb") as handle:
        handle.write(b"not an image")
    assert main(["ingest", str(tmp_path / "photos"), "--collection", collection, "--workers", "0"]) == 0
    capsys.readouterr()
    with capsys.disabled():
        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")  # as a UTF-8 terminal's
        monkeypatch.setattr(sys, "stdout", out)
        assert main(["info", "--collection", collection, "--failures"]) == 0
        out.flush()
        written = out.buffer.getvalue()
        monkeypatch.undo()
    assert any(line.startswith(bad + b"\tnot_an_image\t") for line in written.splitlines())


def test_serve_listens_on_ipv6_hosts_where_the_machine_has_them():
    import socket

    from mmretrieval.cli.serve_cmd import _check_can_listen

    _check_can_listen("127.0.0.1", 0)
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return  # no IPv6 loopback on this machine: nothing of ours to check
    _check_can_listen("::1", 0)  # was refused: create_server defaulted to IPv4


def test_sigterm_unwinds_an_ingest_like_ctrl_c_and_a_rerun_finishes(tmp_path, tiny_model_dir):
    """`kill` (SIGTERM) stops the ingest as Ctrl-C does: workers stopped, shared memory released (Python's default
    died on the spot and the resource tracker warned of leaked shared memory), exit 143, saying how many images it
    saved; a re-run finishes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mmretrieval.collection.collection import Collection
    from mmretrieval.errors import CollectionError
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 1200)
    command = [sys.executable, "-m", "mmretrieval.cli", "ingest", str(tmp_path / "photos"), "--collection",
               str(tmp_path / "col"), "--model", str(tiny_model_dir), "--device", "cpu", "--batch-size", "1",
               "--workers", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ok = 0
    deadline = time.monotonic() + 120
    while not ok and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if (tmp_path / "col" / "catalog.sqlite").exists():
            try:
                with Collection.open(tmp_path / "col", read_only=True) as col:
                    ok = col.catalog.counts_by_status().get("ok", 0)
            except CollectionError:  # still being made: the catalog file, then its schema, then its model
                continue
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "mmr ingest: terminated (SIGTERM)" in err
    assert "leaked" not in err and "Traceback" not in err
    with Collection.open(tmp_path / "col", read_only=True) as col:
        kept = col.catalog.counts_by_status().get("ok", 0)
    assert 0 < kept < 1200  # it really stopped mid-way
    # and it says so, with the count the catalog holds (not the last line the progress bar happened to print)
    assert (f"mmr ingest: {kept} of 1200 images were done and saved before the interrupt; run the same command "
            f"again to do the {1200 - kept} left") in err, err
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    with Collection.open(tmp_path / "col", read_only=True) as col:
        assert col.catalog.counts_by_status() == {"ok": 1200}


def test_version_module_entry_and_no_dash_hint_for_a_missing_command(capsys):
    import os
    import subprocess
    import sys
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"mmr {version('mmretrieval')}"
    for argv, missing in (([], "COMMAND"), (["classify"], "SOURCE, --labels")):
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err
        assert f"the following arguments are required: {missing}" in err and "after '--'" not in err
    run = subprocess.run([sys.executable, "-m", "mmretrieval", "--help"], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0 and run.stdout.startswith("usage: mmr")


def test_max_pixels_fails_larger_images_and_says_how_to_raise_it(tmp_path, tiny_model_dir, capsys):
    """--max-pixels reaches the decoding processes: a 128x128 scene is refused at 4,000 pixels, with the limit and
    the option in its reason; the default lets it through."""
    from test_ingest import write_good_images

    write_good_images(tmp_path / "photos", 2)
    base = ["ingest", str(tmp_path / "photos"), "--model", str(tiny_model_dir), "--device", "cpu", "--workers", "1"]
    assert main([*base, "--collection", str(tmp_path / "small"), "--max-pixels", "4000"]) == 2
    capsys.readouterr()
    assert main(["info", "--collection", str(tmp_path / "small"), "--failures"]) == 0
    failures = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [reason for _, reason, _ in failures] == ["decompression_bomb"] * 2
    assert "16384 pixels, over the limit of 4000 pixels" in failures[0][2] and "--max-pixels" in failures[0][2]
    assert main([*base, "--collection", str(tmp_path / "default")]) == 0


def test_a_prefix_naming_a_folder_matches_inside_it_only(built, capsys):
    tmp_path, collection = built
    write_good_images(tmp_path / "photos-old", 2)  # its name starts with the other folder's
    assert main(["ingest", str(tmp_path / "photos-old"), "--collection", collection, "--workers", "0"]) == 0
    capsys.readouterr()

    def found(prefix):
        assert main(["search", "a photo", "--collection", collection, "-k", "50", "--prefix", prefix]) == 0
        return [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]

    inside = found(str(tmp_path / "photos"))
    assert len(inside) == 5 and all(Path(path).parent == tmp_path / "photos" for path in inside)
    assert len(found(str(tmp_path / "photos-"))) == 2  # text that names no folder stays a prefix of the path


def test_rclip_habits_get_our_way_to_do_the_same(built, capsys):
    """What an rclip user types: `-n 3` and `-f` were refused with a hint about queries starting with '-'; a query
    naming an image was searched as the text of its path, in silence; paths for `xargs` came only as TSV, whose
    escapes break `cut -f2` on a name with a backslash; a deleted file came first with no word about it."""
    tmp_path, collection = built
    photos = tmp_path / "photos"
    odd = photos / "back\\slash.jpg"
    odd.write_bytes((photos / "good01.jpg").read_bytes())
    assert main(["ingest", str(photos), "--collection", collection, "--workers", "0"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["search", "red", "--collection", collection, "-t", "3", "-f", "-n"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "for -t (as in rclip) use -k N" in err and "for -f (as in rclip) use --null" in err
    assert "for -n (as in rclip) leave it out: mmr search never indexes" in err
    with pytest.raises(SystemExit):  # the long forms, and rclip's query algebra
        main(["search", "red circle", "+", "x.png", "-", "blue", "--top", "3", "--collection", collection])
    err = capsys.readouterr().err
    assert "for + (as in rclip) use --image IMG" in err and "for - (as in rclip) use --not TEXT_OR_IMG" in err
    assert "for --top (as in rclip) use -k N" in err and "after '--'" not in err
    assert "after '--'" not in err
    with pytest.raises(SystemExit):  # the likeliest first mistake: a query of several words, unquoted
        main(["search", "red", "circle", "--collection", collection])
    assert "unrecognized arguments: circle; a query of several words is quoted, as in mmr search 'a red circle'" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit):  # two images: not a query to quote
        main(["search", image := str(photos / "good01.jpg"), image, "--collection", collection])
    assert "; an example image is given with --image IMG" in capsys.readouterr().err

    image = str(photos / "good01.jpg")
    assert main(["search", image, "--collection", collection, "--device", "cpu", "-k", "50", "--null"]) == 0
    captured = capsys.readouterr()
    assert f"is read as text, though it names a file; to search by that image use --image {image}" in captured.err
    paths = captured.out.split("\0")
    assert paths[-1] == "" and len(paths) - 1 == 6 and str(odd) in paths  # every image, names whole

    (photos / "good02.jpg").unlink()
    assert main(["search", "red", "--collection", collection, "--device", "cpu", "-k", "50", "--json"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 6  # the gone file's vector is still stored
    assert "one of these files no longer exists where the collection has it (`mmr ingest --prune`" in captured.err
    with pytest.raises(SystemExit):
        main(["search", "red", "--collection", collection, "--json", "--null"])


def test_compact_names_small_sizes_in_a_unit_that_shows_them():
    from mmretrieval.cli.upkeep_cmds import _bytes_text

    assert [_bytes_text(n) for n in (0, 900, 50_000, 3 * 2**20, 5 * 2**30)] == [
        "0 bytes", "900 bytes", "48.8 KiB", "3.0 MiB", "5.0 GiB"]


def test_a_first_ray_ingest_that_ray_refuses_to_join_makes_no_collection(tmp_path, capsys):
    """An address Ray itself refuses (a bad format; reachable ports with a token refused went the same way) was
    only found after planning: the collection stayed, pinned to its model, with every row pending."""
    pytest.importorskip("ray")
    write_good_images(tmp_path / "photos", 2)
    new = tmp_path / "new.mmr"
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(new), "--ray", "garbage"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to the Ray cluster at garbage" in err and "Give --ray HOST:PORT" in err
    assert "token" not in err and not new.exists()


@pytest.mark.parametrize("command, silenced", [("similar", True), ("info", False)])
def test_commands_that_decode_images_silence_pillows_size_warning(tmp_path, command, silenced):
    """Pillow warns "could be decompression bomb DOS attack" about every photo over 89.5 MP: the commands that
    decode images here (our own limit decides) turn it off, once, where the command starts; the others leave
    Pillow and the warning filters alone."""
    import warnings

    from PIL import Image

    args = [command, str(tmp_path / "x.jpg")] if command == "similar" else [command]
    main([*args, "--collection", str(tmp_path / "none")])  # fails (no collection): the filter is set before
    ignored = any(action == "ignore" and category is Image.DecompressionBombWarning
                  for action, _, category, _, _ in warnings.filters)
    assert ignored == silenced


def test_a_renamed_file_is_counted_as_moved_not_as_a_duplicate(built, capsys):
    """A renamed photo reuses its vector, as a copy does; the summary called it a duplicate, which sent a user
    looking for copies that were not there."""
    tmp_path, collection = built
    photos = tmp_path / "photos"
    (photos / "good00.jpg").rename(photos / "renamed.jpg")
    shutil.copy2(photos / "good01.jpg", photos / "copy.jpg")
    assert main(["ingest", str(photos), "--collection", collection, "--prune", "--json", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "embedded 0, unchanged 5, duplicates 1, moved 1, pruned 1, failed 0 (none)" in captured.err, captured.err
    summary = json.loads(captured.out)
    assert (summary["duplicates"], summary["moved"], summary["pruned"]) == (1, 1, 1)


@pytest.mark.parametrize(("last", "said"), [
    (None, "stopped before any image was embedded"),
    ((0, 0), "stopped before any image was embedded"),  # a prune with nothing to embed: "0 of 0" said nothing
    ((3, 10), "3 of 10 images were done and saved before the interrupt; run the same command again to do the 7 left"),
    ((10, 10), "all 10 images were done and saved; run the same command again to finish"),
])
def test_an_interrupted_ingest_says_what_was_left(last, said, capsys):
    from mmretrieval.cli.ingest_cmd import _say_what_is_kept

    _say_what_is_kept(last)
    assert said in capsys.readouterr().err


def test_files_in_a_folder_that_cannot_be_read_are_not_called_gone(built, capsys, monkeypatch):
    """A folder made unreadable (chmod 000): its files are there, only not visible to this user; the search said
    "5 of these files no longer exist" (os.path.lexists is False on EACCES). Root reads any folder, so the
    refusal is made here."""
    import os

    tmp_path, collection = built
    photos = str(tmp_path / "photos")
    def unreadable(look):
        def refused(path, *args, **kwargs):
            if os.fsdecode(path).startswith(photos + os.sep):
                raise PermissionError(13, "Permission denied", path)
            return look(path, *args, **kwargs)
        return refused

    monkeypatch.setattr(os, "stat", unreadable(os.stat))  # either way of looking is refused
    monkeypatch.setattr(os, "lstat", unreadable(os.lstat))
    assert main(["search", "red", "--collection", collection, "--device", "cpu", "-k", "50"]) == 0
    assert "no longer exist" not in capsys.readouterr().err
