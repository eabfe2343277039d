"""``mmr eval`` on user data sets, as a user's walkthrough found it: a labelled folder is walked as ``mmr classify``
walks one (hidden litter passed over, extensionless and RAW files found, linked class folders by classify's rule),
folder names become label text with ``_`` read as a space (and the report says so), and a captioned set names the
files it left out and leaves out recall@k that k or fewer images make 1 by construction."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil

import pytest

from mmretrieval.cli import main
from mmretrieval.errors import MMRError
from mmretrieval.ingest.batches import SourceFile
from mmretrieval.ingest.reader import discover
from mmretrieval.training import scenes
from mmretrieval.training.datasets import read_captioned, read_labelled_folder
from mmretrieval.training.evaluate import captions_report, folder_report

APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # a macOS resource fork: not an image
TEMPLATES = ("a photo of a {} shape.",)


def _draw(path, colour, seed):
    scenes.render(scenes.Scene(colour, "square", 1, "large", "plain", "center"), random.Random(seed)).save(path, "PNG")
    return path


@pytest.fixture
def colour_set(tmp_path):
    """ROOT/red and ROOT/blue, four squares each."""
    root = tmp_path / "set"
    for colour in ("red", "blue"):
        (root / colour).mkdir(parents=True)
        for i in range(4):
            _draw(root / colour / f"{i}.png", colour, i)
    return root


def _littered(root, copy):
    """``root`` as a Mac and a photo manager leave it: an AppleDouble fork beside every image, thumbnails of red
    squares in a hidden folder of the blue class."""
    shutil.copytree(root, copy)
    for image in list(copy.glob("*/*.png")):
        (image.parent / f"._{image.name}").write_bytes(APPLEDOUBLE)
    (copy / "blue" / ".thumbnails").mkdir()
    for i in range(3):
        _draw(copy / "blue" / ".thumbnails" / f"{i}.png", "red", 10 + i)
    return copy


def _classify_sees(root):
    """What ``mmr classify ROOT`` would decode below ROOT's class folders: the reference for the eval's walk."""
    return sorted(found.path for found in discover([root])
                  if isinstance(found, SourceFile) and os.path.dirname(found.path) != os.path.abspath(root))


def test_hidden_files_and_folders_are_not_images_of_a_class(colour_set, tmp_path):
    littered = _littered(colour_set, tmp_path / "littered")
    classes, items = read_labelled_folder(littered)
    assert classes == ["blue", "red"] and len(items) == 8
    assert not any(part.startswith(".") for item in items for part in item.path.relative_to(littered).parts)
    assert sorted(str(item.path) for item in items) == _classify_sees(littered)


def test_extensionless_and_raw_files_are_found_as_classify_finds_them(colour_set):
    _draw(colour_set / "red" / "IMG_0001", "red", 20)  # no extension: sniffed, as classify does
    (colour_set / "blue" / "photo.dng").write_bytes(b"II*\x00" + bytes(60))  # RAW: a candidate by its extension
    (colour_set / "blue" / "notes.txt").write_text("not an image\n")
    (colour_set / "loose.png").write_bytes((colour_set / "red" / "0.png").read_bytes())  # directly in ROOT: unused
    classes, items = read_labelled_folder(colour_set)
    found = {item.path.name: classes[item.label] for item in items}
    assert found["IMG_0001"] == "red" and found["photo.dng"] == "blue"
    assert "notes.txt" not in found and "loose.png" not in found and len(items) == 10
    assert sorted(str(item.path) for item in items) == _classify_sees(colour_set)


def test_linked_class_folders_follow_classifys_rule(colour_set, tmp_path):
    """A class folder that is a link counts as classify's walk counts it: one leading outside ROOT, or to a folder
    walked under its real path, is passed over and named (its images would be a second copy, or not ROOT's); one
    the walk follows (to a folder inside ROOT it does not walk otherwise) is a class."""
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(colour_set / "red", elsewhere)
    (colour_set / "round").symlink_to(elsewhere)  # outside ROOT
    (colour_set / "crimson").symlink_to("red")  # the red class again
    (colour_set / ".store" / "green").mkdir(parents=True)
    for i in range(2):
        _draw(colour_set / ".store" / "green" / f"{i}.png", "green", i)
    (colour_set / "green").symlink_to(".store/green")
    skipped = []
    classes, items = read_labelled_folder(colour_set, on_skipped=skipped.append)
    assert classes == ["blue", "green", "red"]
    assert sorted(classes[item.label] for item in items) == ["blue"] * 4 + ["green"] * 2 + ["red"] * 4
    assert sorted((os.path.basename(s.path), s.reason) for s in skipped) == [
        ("crimson", "symlink_loop"), ("round", "link_outside_root")]
    assert sorted(str(item.path) for item in items) == _classify_sees(colour_set)


def test_folder_report_is_the_same_with_and_without_mac_litter(shapes_encoder, colour_set, tmp_path):
    """The walkthrough's repro: 20 images became 25, 20 of them 'undecodable', and top-1 fell."""
    littered = _littered(colour_set, tmp_path / "littered")
    clean = folder_report(shapes_encoder, str(colour_set), TEMPLATES)
    mac = folder_report(shapes_encoder, str(littered), TEMPLATES)
    assert clean["images"] == mac["images"] == 8 and mac["undecodable"] == 0
    assert mac["top1"] == clean["top1"] and mac["mean_per_class_recall"] == clean["mean_per_class_recall"]


def test_eval_names_passed_over_class_folders_and_shows_each_folders_label_text(capsys, colour_set, tmp_path):
    for colour in ("red", "blue"):
        (colour_set / colour).rename(colour_set / f"{colour}_square")
    (tmp_path / "elsewhere").mkdir()
    (colour_set / "round").symlink_to(tmp_path / "elsewhere")
    status = main(["eval", "--folder", str(colour_set), "--json", "--device", "cpu", "--templates", "none"])
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert status == 0 and report["zeroshot_images"] == 8 and report["zeroshot_classes"] == 2
    assert report["zeroshot_class_texts"] == {"blue_square": "blue square", "red_square": "red square"}
    assert f"{colour_set / 'round'}" in err and "links outside the folder" in err and "Traceback" not in err

    main(["eval", "--folder", str(colour_set), "--device", "cpu", "--templates", "none"])
    tsv = capsys.readouterr().out
    assert all(len(line.split("\t")) == 2 for line in tsv.splitlines()) and "zeroshot_top1\t" in tsv


def test_eval_help_says_how_a_folder_name_becomes_label_text(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "_ read as a space" in text and "golden_retriever" in text


def test_a_missing_captioned_file_is_named_and_trivial_recall_is_left_out(shapes_encoder, tmp_path, caplog):
    for name, colour in (("red.png", "red"), ("blue.png", "blue")):
        _draw(tmp_path / name, colour, 0)
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("path,caption\nred.png,a red square\nblue.png,a blue square\ngone.png,a green square\n")
    left_out = []
    with caplog.at_level(logging.WARNING, logger="mmretrieval"):
        report = captions_report(shapes_encoder, str(csv_file), on_left_out=left_out.append)
    assert [(os.path.basename(f.path), f.reason) for f in left_out] == [("gone.png", "missing")]
    assert report["images"] == 2 and report["undecodable"] == 1 and "recall@1" in report
    assert "recall@5" not in report and "recall@10" not in report  # over 2 images every caption's image is in a top 5
    assert "recall@5, recall@10 left out" in caplog.text and "2 images" in caplog.text


def test_eval_captions_names_the_missing_file_on_stderr(capsys, tmp_path):
    for name, colour in (("red.png", "red"), ("blue.png", "blue")):
        _draw(tmp_path / name, colour, 0)
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("path,caption\nred.png,a red square\nblue.png,a blue square\ngone.png,a green square\n")
    status = main(["eval", "--captions", str(csv_file), "--json", "--device", "cpu"])
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert status == 0 and report["retrieval_images"] == 2 and "retrieval_recall@10" not in report
    assert f"mmr eval: {tmp_path / 'gone.png'}: left out: missing" in err
    assert "recall@5, recall@10 left out" in err and "Traceback" not in err


def test_a_captioned_folder_is_walked_as_classify_walks_it(tmp_path):
    _draw(tmp_path / "a.png", "red", 0)
    (tmp_path / "a.txt").write_text("a red square\n")
    _draw(tmp_path / "scan", "blue", 0)  # no extension: sniffed
    (tmp_path / "scan.txt").write_text("a blue square\n")
    (tmp_path / "._a.png").write_bytes(APPLEDOUBLE)
    (tmp_path / "._a.txt").write_text("a fork's caption\n")
    (tmp_path / ".thumbnails").mkdir()
    _draw(tmp_path / ".thumbnails" / "a.png", "red", 1)
    (tmp_path / ".thumbnails" / "a.txt").write_text("a thumbnail\n")
    items = read_captioned(tmp_path)
    assert sorted((item.path.name, item.captions) for item in items) == [
        ("a.png", ("a red square",)), ("scan", ("a blue square",))]


def test_two_folders_with_one_label_text_are_refused_by_name(capsys, colour_set):
    (colour_set / "red").rename(colour_set / "dark_red")
    (colour_set / "dark red").mkdir()  # the same label: every image of one would count as wrong
    _draw(colour_set / "dark red" / "0.png", "red", 20)
    status = main(["eval", "--folder", str(colour_set), "--device", "cpu", "--templates", "none"])
    err = capsys.readouterr().err
    assert status == 2 and "'dark red' and 'dark_red' both read as the label 'dark red'" in err, err
    assert "Traceback" not in err


def test_a_labelled_folder_that_cannot_be_listed_is_an_error_by_name(colour_set, monkeypatch):
    from pathlib import Path

    listed = Path.iterdir

    def refused(self):
        if self == colour_set:
            raise PermissionError(13, "Permission denied", str(self))
        return listed(self)

    monkeypatch.setattr(Path, "iterdir", refused)
    with pytest.raises(MMRError, match=r"cannot list the labelled folder .*: Permission denied"):
        read_labelled_folder(colour_set)


def test_an_image_directly_in_the_labelled_folder_is_named_as_left_out(colour_set, capsys):
    _draw(colour_set / "stray.png", "red", 99)
    assert main(["eval", "--folder", str(colour_set), "--model", "builtin:shapes", "--device", "cpu",
                 "--templates", TEMPLATES[0], "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["zeroshot_images"] == 8
    assert (f"mmr eval: {colour_set / 'stray.png'}: left out: no_class: directly in the labelled folder, in no class "
            "subfolder (ROOT/<class>/<image>)") in captured.err.splitlines()
