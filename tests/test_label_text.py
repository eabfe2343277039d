"""Findings of a walk through the text of labels and queries: `mmr label --organize` gives every label a folder of
its own (cleaned names that clash get a numbered suffix, long ones are cut to fit), so a label set is never saved
by a run whose organize then fails on a name; labels that differ only in Unicode normalisation are merged as
case-only ones are; text past what the text tower reads is flagged (queries, labels) and labels that differ only
there are refused; label text, set names and label filters that are not UTF-8 are refused with their bytes shown,
never a raw UnicodeEncodeError from SQLite."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from mmretrieval.errors import CollectionError, QueryError

NOT_UTF8 = os.fsdecode(b"r\xffed")  # what Python makes of a Latin-1 command-line argument: 'r\udcffed'


@pytest.fixture()
def collection_dir(tmp_path, tiny_encoder):
    """Six scenes (and one corrupt file) ingested with the tiny model; the directory, the collection closed."""
    from ui_support import write_scene_folder

    from mmretrieval.collection.collection import Collection

    write_scene_folder(tmp_path / "images", count=6)
    with Collection.open(tmp_path / "c", model=tiny_encoder, create=True, device="cpu") as opened:
        opened.ingest([tmp_path / "images"], workers=0)
    return tmp_path / "c"


def _label(collection_dir: Path, *options: str) -> int:
    from mmretrieval.cli import main

    return main(["label", "--collection", str(collection_dir), "--device", "cpu", *options])


def _placed(out: Path) -> dict[str, set[int]]:
    """Folder name -> the ids of the images linked in it (``<id>-<name>``)."""
    return {folder.name: {int(link.name.split("-", 1)[0]) for link in folder.iterdir()}
            for folder in out.iterdir() if folder.is_dir()}


def _assigned(exported: Path) -> dict[str, set[int]]:
    """Label -> the ids that the export says have it (the reference the folders are checked against)."""
    found: dict[str, set[int]] = {}
    for line in exported.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for pair in record["labels"]:
            found.setdefault(pair["label"], set()).add(record["id"])
    return found


# -- 1. folder names are one per label ---------------------------------------------------------------------------
def test_labels_whose_cleaned_names_clash_get_folders_of_their_own(collection_dir, tmp_path, capsys):
    """The walkthrough: --labels 'a/b,a_b,red' put the images of 'a/b' and of 'a_b' into one folder a_b/."""
    out, exported = tmp_path / "sorted", tmp_path / "run.jsonl"
    labels = ["a/b", "a_b", "red", "..", "_"]
    assert _label(collection_dir, "--labels", ",".join(labels), "--multi-label", "--threshold", "0",
                  "--out", str(exported), "--organize", str(out)) == 0
    err = capsys.readouterr().err
    assert "labels 'a/b' and 'a_b' make the same folder name ('a_b'): the images labelled 'a_b' go into 'a_b-2'" in err
    assert "labels '..' and '_' make the same folder name ('_')" in err

    from mmretrieval.collection.labelling import label_folders

    folders = label_folders(labels)
    assert folders == {"a/b": "a_b", "a_b": "a_b-2", "red": "red", "..": "_", "_": "_-2"}
    assigned = _assigned(exported)
    assert set(assigned) == set(labels) and all(len(ids) == 6 for ids in assigned.values())  # threshold 0: all
    assert _placed(out) == {folders[label]: ids for label, ids in assigned.items()}


def test_folder_names_stay_apart_ignoring_case_and_after_their_suffix():
    from mmretrieval.collection.labelling import label_folders

    folders = label_folders(["a/b", "a_b", "A_B", "a_b-2", "x:y"])
    assert folders == {"a/b": "a_b", "a_b": "a_b-2", "A_B": "A_B-3", "a_b-2": "a_b-2-2", "x:y": "x_y"}
    compared = [unicodedata.normalize("NFC", name).casefold() for name in folders.values()]
    assert len(set(compared)) == len(compared)  # distinct on a case-insensitive file system too


# -- 2. and 3. long labels are cut to fit, so organize does not fail after the set is saved -----------------------
def test_long_labels_get_folders_cut_to_255_bytes_and_kept_apart():
    from mmretrieval.collection.labelling import label_folders

    labels = ["x" * 300 + "1", "x" * 300 + "2", "é" * 200, "a " * 200 + "b"]
    folders = label_folders(labels)
    assert len(set(folders.values())) == len(labels)
    assert all(len(os.fsencode(name)) <= 255 for name in folders.values())
    assert folders["x" * 300 + "1"] == "x" * 255 and folders["x" * 300 + "2"] == "x" * 253 + "-2"
    assert folders["é" * 200] == "é" * 127  # 254 bytes: whole characters only
    assert not folders["a " * 200 + "b"].endswith(" ")


def test_a_label_too_long_for_a_file_name_is_organized_and_the_run_succeeds(collection_dir, tmp_path, capsys):
    """The walkthrough: a 300-character label failed --organize with '[Errno 36] File name too long' (exit 2) after
    the set was saved, and the re-run was refused: the set exists already."""
    out, exported = tmp_path / "sorted", tmp_path / "run.jsonl"
    long_label = "z" + "x" * 299
    assert _label(collection_dir, "--set", "long", "--labels", f"{long_label},blue", "--multi-label",
                  "--threshold", "0", "--out", str(exported), "--organize", str(out)) == 0
    err = capsys.readouterr().err
    assert "File name too long" not in err and "is too long for a folder name (300 bytes, at most 255)" in err
    assert _placed(out) == {"z" + "x" * 254: _assigned(exported)[long_label], "blue": _assigned(exported)["blue"]}


# -- 4. Unicode normalisation ------------------------------------------------------------------------------------
COMPOSED, DECOMPOSED = "caf\u00e9", "cafe\u0301"  # NFC and NFD "café"


def test_labels_that_differ_only_in_unicode_normalisation_are_one_label_with_a_warning():
    from mmretrieval.models.label_text import normalise_labels, parse_labels

    assert unicodedata.normalize("NFC", DECOMPOSED) == COMPOSED and COMPOSED != DECOMPOSED
    with pytest.warns(UserWarning, match=r"labels 'café' and 'cafe\\u0301' differ only in Unicode normalisation"):
        assert parse_labels(f"{COMPOSED},{DECOMPOSED},blue") == [COMPOSED, "blue"]
    with pytest.warns(UserWarning, match="differ only in Unicode normalisation"):
        assert normalise_labels([DECOMPOSED, COMPOSED.upper()]) == [DECOMPOSED]


def test_the_label_and_classify_commands_merge_them_too(collection_dir, tmp_path, capsys):
    from mmretrieval.cli import main
    from mmretrieval.collection.collection import Collection

    assert _label(collection_dir, "--labels", f"{COMPOSED},{DECOMPOSED},blue") == 0
    assert "differ only in Unicode normalisation" in capsys.readouterr().err
    with Collection.open(collection_dir, device="cpu") as opened:
        assert [s.labels for s in opened.label_sets()] == [(COMPOSED, "blue")]
    assert main(["classify", str(tmp_path / "images" / "scene-000.png"), "--labels", f"{DECOMPOSED},{COMPOSED},blue",
                 "--model", str(Collection.open(collection_dir).identity.spec), "--device", "cpu", "--workers", "0"]) == 0
    out, err = capsys.readouterr()
    assert "differ only in Unicode normalisation" in err and COMPOSED not in out.split("\t")[1]


# -- 5. text past what the model reads ---------------------------------------------------------------------------
def test_unread_texts_are_those_with_more_tokens_than_the_model_reads(tiny_encoder):
    from mmretrieval.models.encoder import readable_tokens, unread_note, unread_texts

    readable = tiny_encoder.tokenizer.context_length - 2  # the tiny model's context is 16
    assert readable_tokens(tiny_encoder) == readable == 14
    texts = [" ".join(["big"] * n) + " red" for n in range(8, 20)] + ["é" * 40, "a red circle", ""]
    expected = [text for text in texts if len(tiny_encoder.tokenizer.encode(text)) > readable]  # brute force
    assert unread_texts(tiny_encoder, texts) == expected and "a red circle" not in expected and expected
    assert "only the first 14 tokens (about 10 words)" in unread_note(tiny_encoder, texts)
    assert unread_note(tiny_encoder, ["a red circle"]) == ""


def test_a_tokenizer_that_cannot_count_flags_texts_past_sixty_words():
    from mmretrieval.models.encoder import LONG_TEXT_WORDS, unread_note, unread_texts
    from mmretrieval.ui.search_handlers import LONG_QUERY_WORDS

    class HuggingFaceLike:
        tokenizer = object()  # no open_clip encode() to count tokens with

    assert LONG_QUERY_WORDS == LONG_TEXT_WORDS  # the UI's number is the library's
    long, short = "word " * (LONG_TEXT_WORDS + 1), "word " * LONG_TEXT_WORDS
    assert unread_texts(HuggingFaceLike(), [short, long]) == [long]
    assert f"more than {LONG_TEXT_WORDS} words" in unread_note(HuggingFaceLike(), [long])


def test_labels_that_differ_only_past_what_the_model_reads_are_refused(tiny_encoder):
    """The walkthrough: --labels '<80 words> red,<80 words> blue' gave two identical label vectors."""
    from mmretrieval.models.zeroshot import ZeroShotClassifier

    padding = " ".join(["big"] * 20)
    red, blue = f"{padding} red", f"{padding} blue"
    vectors = tiny_encoder.encode_texts([f"a photo of a {red}.", f"a photo of a {blue}."])
    np.testing.assert_array_equal(vectors[0], vectors[1])  # what the refusal spares the user: one vector for both
    with pytest.raises(QueryError, match=r"labels 'big big big .*red' and 'big big big .*blue' read the same to the "
                                         r"model: it reads only the first 14 tokens"):
        ZeroShotClassifier.build(tiny_encoder, [red, blue, "green"])
    with pytest.warns(UserWarning, match=r"labels 'red big .*', 'big big .*blue' are longer than the model reads: it "
                                         r"reads only the first 14 tokens"):
        classifier = ZeroShotClassifier.build(tiny_encoder, [f"red {padding}", blue, "green"])
    assert classifier.labels == (f"red {padding}", blue, "green")


def test_the_label_command_warns_of_a_long_label_and_refuses_two_it_cannot_tell_apart(collection_dir, capsys):
    padding = "big " * 20
    assert _label(collection_dir, "--labels", f"{padding}red,{padding}blue") == 2
    err = capsys.readouterr().err
    assert "read the same to the model" in err and "Traceback" not in err
    assert _label(collection_dir, "--labels", f"{padding}red,blue") == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "longer than the model reads" in line]
    assert len(warning) == 1 and warning[0].startswith("mmr label: warning: label 'big big")


def test_the_search_warning_names_a_query_longer_than_the_model_reads(collection_dir, capsys):
    """What `mmr search` prints for the walkthrough's "<80 words> blue square" (cli/common.py's helper)."""
    from mmretrieval.cli.common import warn_unread_query
    from mmretrieval.collection.collection import Collection
    from mmretrieval.collection.query import parse_query

    with Collection.open(collection_dir, device="cpu") as opened:
        warn_unread_query(opened, parse_query("big " * 80 + "blue square", [], []))
        assert capsys.readouterr().err == ("mmr search: warning: The query is longer than the model reads: only the "
                                           "first 14 tokens (about 10 words) are read, the rest is ignored. Put the "
                                           "words that matter first.\n")
        warn_unread_query(opened, parse_query("blue square", [], ["big " * 80]))  # a --not text is read too
        assert "longer than the model reads" in capsys.readouterr().err
        warn_unread_query(opened, parse_query("blue square", [], []))
        assert capsys.readouterr().err == ""


def test_mmr_search_warns_of_a_query_longer_than_the_model_reads(collection_dir, capsys):
    """The walkthrough: "<80 words> blue square" and "<80 words> red circle" scored alike without a word."""
    from mmretrieval.cli import main

    argv = ["--collection", str(collection_dir), "--device", "cpu"]
    assert main(["search", "big " * 80 + "blue square", *argv]) == 0
    assert "mmr search: warning: The query is longer than the model reads" in capsys.readouterr().err
    assert main(["search", "blue square", *argv]) == 0
    assert "longer than the model reads" not in capsys.readouterr().err


# -- 6. text that is not UTF-8 -----------------------------------------------------------------------------------
def test_labels_and_set_names_that_are_not_utf8_are_refused_with_their_bytes_shown(collection_dir, capsys):
    assert _label(collection_dir, "--labels", f"{NOT_UTF8},blue") == 2
    err = capsys.readouterr().err
    assert r"mmr label: error: label 'r\xffed' is not UTF-8 text" in err and "UnicodeEncodeError" not in err
    assert _label(collection_dir, "--set", os.fsdecode(b"b\xffad"), "--labels", "red,blue") == 2
    err = capsys.readouterr().err
    assert r"mmr label: error: label set name 'b\xffad' is not UTF-8 text" in err and "UnicodeEncodeError" not in err
    assert _label(collection_dir, "--remove", os.fsdecode(b"b\xffad")) == 2
    assert r"label set name 'b\xffad' is not UTF-8 text" in capsys.readouterr().err

    from mmretrieval.collection.collection import Collection

    with Collection.open(collection_dir, device="cpu") as opened:
        assert opened.label_sets() == []  # nothing was saved
        with pytest.raises(CollectionError, match=r"label set name 'b\\xffad' is not UTF-8"):
            opened.label("red, blue", label_set=os.fsdecode(b"b\xffad"))
        with pytest.raises(QueryError, match=r"label 'r\\xffed' is not UTF-8"):
            opened.label(["red", NOT_UTF8])


def test_a_label_filter_that_is_not_utf8_is_refused(collection_dir, capsys):
    from mmretrieval.cli import main

    assert _label(collection_dir, "--labels", "red,blue") == 0
    capsys.readouterr()
    assert main(["search", "red", "--collection", str(collection_dir), "--device", "cpu", "--label", NOT_UTF8]) == 2
    err = capsys.readouterr().err
    assert r"mmr search: error: label filter 'r\xffed' is not UTF-8 text" in err and "UnicodeEncodeError" not in err


def test_classify_refuses_them_too_rather_than_read_another_character():
    """The tokenizer would read the byte as U+FFFD and classify with a label the user never typed."""
    from mmretrieval.models.label_text import normalise_labels, parse_labels

    with pytest.raises(QueryError, match=r"label 'r\\xffed' is not UTF-8 text"):
        parse_labels(f"{NOT_UTF8},blue")
    with pytest.raises(QueryError, match=r"label 'x\\ud800' is not UTF-8 text"):  # a lone surrogate of the API
        normalise_labels(["x\ud800"])


def test_a_file_of_no_labels_and_a_bare_at_sign_are_named(tmp_path):
    """``@empty.txt`` said only "no labels given", and ``@`` alone "cannot read labels from : Is a directory"."""
    from mmretrieval.errors import QueryError
    from mmretrieval.models.label_text import parse_labels

    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(QueryError, match=f"no labels given \\({empty} held none, one a line\\)"):
        parse_labels([f"@{empty}"])
    with pytest.raises(QueryError, match="'@' names no file: write @FILE"):
        parse_labels(["@"])
    assert parse_labels([f"@{empty}", "cat,dog"]) == ["cat", "dog"]
