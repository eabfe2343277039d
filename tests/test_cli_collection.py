"""The collection commands, in-process: stdout carries only results, errors are one line with exit 2."""

from __future__ import annotations

import csv
import json

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
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line in lines:
        score, path = line.split("\t")
        assert -1 <= float(score) <= 1 and path.startswith(str(tmp_path / "photos"))


def test_search_json_with_image_and_negative(built, capsys, monkeypatch):
    tmp_path, collection = built
    monkeypatch.setenv("MMR_COLLECTION", collection)  # read when the parser is built
    image = str(tmp_path / "photos" / "good01.jpg")
    assert main(["search", "2:shapes", "--image", image, "--not", "blue", "--json", "-k", "50"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 5 and {"path", "score", "id"} <= set(rows[0])


def test_similar_and_threshold_with_no_hits_exits_1(built, capsys):
    tmp_path, collection = built
    image = str(tmp_path / "photos" / "good00.jpg")
    assert main(["similar", image, "--collection", collection, "-k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["search", "x", "--collection", collection, "--threshold", "1.5"]) == 1


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
