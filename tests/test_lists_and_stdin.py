"""List files and standard input: a name that is not UTF-8 survives a list, ``-`` reads paths and ``@-`` labels
from standard input (only the command line reads it), and ``mmr label --out`` names such a file by its bytes."""

from __future__ import annotations

import io
import json
import os
import random
import sys
from pathlib import Path

import pytest

from mmretrieval.cli import main
from mmretrieval.training import scenes

pytestmark = pytest.mark.skipif(sys.platform in ("win32", "darwin"),
                                reason="needs a file system that accepts any bytes in a name")

BAD_NAME = b"bad\xff.png"  # not UTF-8: os.fsdecode keeps the 0xff byte as the surrogate escape '\udcff'
BOM = b"\xef\xbb\xbf"


def _save_scene(path: str | bytes, colour: str, shape: str = "circle") -> None:
    image = scenes.render(scenes.Scene(colour, shape, 1, "large", "plain", "center"), random.Random(1))
    with open(path, "wb") as handle:
        image.save(handle, format="PNG")


@pytest.fixture
def photos(tmp_path) -> tuple[Path, str, str]:
    """A folder with ``sub/good.png`` and ``bad\\xff.png``; returns it and the two absolute paths as str."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    _save_scene(str(folder / "sub" / "good.png"), "red")
    bad = os.path.join(os.fsencode(folder), BAD_NAME)
    _save_scene(bad, "blue")
    return folder, str(folder / "sub" / "good.png"), os.fsdecode(bad)


def _stdin(monkeypatch, data: bytes) -> None:
    """Standard input holding ``data``, with the byte stream (``sys.stdin.buffer``) the command line reads."""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = main([os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def _classified(out: str) -> dict[bytes, str]:
    """``mmr classify --json`` lines as original path bytes -> label."""
    return {os.fsencode(row["path"]): row["label"] for row in map(json.loads, out.splitlines())}


# -- 1. list files keep names that are not UTF-8 --------------------------------------------------------------
def test_a_txt_list_keeps_a_non_utf8_name_and_its_documented_rules(photos):
    """BOM, a comment, a blank line, surrounding whitespace, CRLF, a path relative to the list's folder, and an
    absolute path whose name is not UTF-8: every file is found."""
    from mmretrieval.ingest.batches import SourceFile
    from mmretrieval.ingest.reader import discover

    folder, good, bad = photos
    listing = folder / "list.txt"
    listing.write_bytes(BOM + b"# one comment\n\n   sub/good.png  \r\n" + os.fsencode(bad) + b"\n" + BAD_NAME + b"\n")
    found = list(discover([str(listing)]))
    assert all(isinstance(item, SourceFile) for item in found), found
    assert [item.path for item in found] == [good, bad, bad]
    assert os.fsencode(found[1].path) == os.path.join(os.fsencode(folder), BAD_NAME)


def test_a_csv_list_keeps_a_non_utf8_path_and_makes_its_caption_readable(photos):
    from mmretrieval.ingest.reader import discover

    folder, good, bad = photos
    listing = folder / "list.csv"
    listing.write_bytes(BOM + b"path,caption\n" + BAD_NAME + b",caf\xe9 au lait\nsub/good.png,plain\n")
    found = list(discover([str(listing)]))
    assert [(item.path, item.caption) for item in found] == [(bad, "caf\ufffd au lait"), (good, "plain")]


def test_a_name_with_spaces_around_it_is_found_in_a_list_where_the_file_has_them(photos):
    """Spaces around a listed name are stripped, unless the file's own name has them: ``mmr label --out`` writes
    ``trail.png `` as it is, and its CSV read back as a list said "cannot stat .../trail.png"."""
    from mmretrieval.ingest.reader import discover

    folder, good, _ = photos
    _save_scene(str(folder / "trail.png "), "green")
    (folder / "list.csv").write_text('path\n"trail.png "\n  sub/good.png \n')
    (folder / "list.txt").write_text("trail.png \n sub/good.png\n")
    for listing in ("list.csv", "list.txt"):
        found = list(discover([str(folder / listing)]))
        assert [item.path for item in found] == [str(folder / "trail.png "), good], listing


def test_classify_and_ingest_take_a_list_naming_a_non_utf8_file(photos, tmp_path, tiny_model_dir, capsys):
    folder, good, bad = photos
    listing = tmp_path / "list.txt"
    listing.write_bytes(os.fsencode(good) + b"\n" + os.fsencode(bad) + b"\n")
    status, out, err = _run(capsys, "classify", listing, "--labels", "red,blue", "--json", "--device", "cpu",
                            "--workers", "0")
    assert status == 0, err
    assert _classified(out) == {os.fsencode(good): "red", os.fsencode(bad): "blue"}
    status, _, err = _run(capsys, "ingest", listing, "--collection", tmp_path / "col", "--model", tiny_model_dir,
                          "--device", "cpu", "--workers", "0")
    assert status == 0 and "embedded 2," in err and "failed 0" in err, err


# -- 2. standard input: paths with -, labels with @- ------------------------------------------------------------
def test_classify_reads_paths_from_stdin(photos, monkeypatch, capsys):
    """Relative paths from the current folder, a list's rules, a missing file reported, a non-UTF-8 name found."""
    folder, good, bad = photos
    monkeypatch.chdir(folder)
    _stdin(monkeypatch, BOM + b"# from find\n  sub/good.png \n\n" + BAD_NAME + b"\r\ngone.png\n")
    status, out, err = _run(capsys, "classify", "-", "--labels", "red,blue", "--json", "--device", "cpu",
                            "--workers", "0")
    assert status == 0, err
    assert _classified(out) == {os.fsencode(good): "red", os.fsencode(bad): "blue"}
    assert f"{folder / 'gone.png'}: skipped: cannot stat" in err  # as a missing file in a .txt list
    assert "- does not exist" not in err


def test_paths_ending_with_nul_are_taken_exactly(photos, tmp_path, monkeypatch, capsys):
    """``find -print0 | mmr classify --null -``: a name holding a newline or a leading space is one path; a NUL list
    is not stripped or read for comments."""
    from mmretrieval.ingest.reader import PathStream, discover

    folder, good, bad = photos
    odd = folder / "two\nlines.png"
    _save_scene(str(odd), "blue")
    spaced = folder / " lead.png"
    _save_scene(str(spaced), "red")
    monkeypatch.chdir(folder)
    listing = b"\0".join([b"sub/good.png", os.fsencode(odd), b" lead.png", BAD_NAME, b"#kept.png"]) + b"\0"
    pieces = [listing[:7], listing[7:30], listing[30:]]  # a pipe's blocks split names anywhere
    found = list(discover([PathStream(pieces, base=str(folder), null=True)]))
    assert [item.path for item in found[:4]] == [good, str(odd), str(spaced), bad]
    assert found[4].reason == "missing" and found[4].path == str(folder / "#kept.png")
    _stdin(monkeypatch, listing)
    status, out, err = _run(capsys, "classify", "--null", "-", "--labels", "red,blue", "--json", "--device", "cpu",
                            "--workers", "0")
    assert status == 0, err
    assert _classified(out) == {os.fsencode(good): "red", os.fsencode(odd): "blue", os.fsencode(spaced): "red",
                                os.fsencode(bad): "blue"}
    status, _, err = _run(capsys, "classify", good, "--null", "--labels", "red,blue")
    assert status == 2 and "--null is for the paths on standard input (-)" in err, err
    assert "find DIR -print0 | mmr classify --null - --labels" in err  # its own command, not ingest's
    status, _, err = _run(capsys, "classify", "-", "-", "--labels", "red,blue")
    assert status == 2 and "- (the paths on standard input) given twice" in err and "@-" not in err, err
    status, _, err = _run(capsys, "classify", "-", "--labels", "@-")
    assert status == 2 and "standard input given twice (- and --labels @- each read it)" in err, err


def test_ingest_reads_paths_from_stdin_and_refuses_prune_with_it(photos, tmp_path, tiny_model_dir, monkeypatch,
                                                                 capsys):
    folder, good, bad = photos
    monkeypatch.chdir(folder)
    collection = tmp_path / "col"
    _stdin(monkeypatch, b"sub/good.png\n" + BAD_NAME + b"\n")
    status, _, err = _run(capsys, "ingest", "-", "--collection", collection, "--model", tiny_model_dir,
                          "--device", "cpu", "--workers", "0")
    assert status == 0 and "embedded 2," in err, err
    _stdin(monkeypatch, b"sub/good.png\n")
    status, _, err = _run(capsys, "ingest", "-", "--collection", collection, "--prune")
    assert status == 2 and "--prune" in err and "standard input" in err, err


def test_labels_from_stdin_for_classify_and_label(photos, tmp_path, tiny_model_dir, monkeypatch, capsys):
    """``@-`` reads labels as ``@FILE`` does: a BOM, comments and blank lines skipped, commas kept."""
    folder, good, bad = photos
    labels = BOM + b"# colours\nred\n\nblue, or navy\n"
    _stdin(monkeypatch, labels)
    status, out, err = _run(capsys, "classify", good, "--labels", "@-", "--json", "--device", "cpu", "--workers", "0")
    assert status == 0, err
    assert _classified(out) == {os.fsencode(good): "red"}
    collection = tmp_path / "col"
    assert _run(capsys, "ingest", folder, "--collection", collection, "--model", tiny_model_dir, "--device", "cpu",
                "--workers", "0")[0] == 0
    _stdin(monkeypatch, labels)
    status, out, err = _run(capsys, "label", "--collection", collection, "--labels", "@-")
    assert status == 0, err
    counts = dict(line.split("\t") for line in out.splitlines())
    assert set(counts) == {"red", "blue, or navy"} and sum(map(int, counts.values())) == 2


@pytest.mark.parametrize("argv", [
    ["classify", "-", "-", "--labels", "a,b"],
    ["classify", "-", "--labels", "@-"],
    ["classify", "x.png", "--labels", "@-", "--labels", "@-"],
    ["ingest", "-", "-"],
    ["label", "--labels", "@-", "--labels", "@-"],
])
def test_stdin_given_twice_is_refused(argv, tmp_path, monkeypatch, capsys):
    _stdin(monkeypatch, b"a.png\n")
    monkeypatch.chdir(tmp_path)
    collection = ["--collection", str(tmp_path / "col")] if argv[0] != "classify" else ["--device", "cpu"]
    status, out, err = _run(capsys, *argv, *collection)
    assert status == 2 and out == "" and "standard input" in err and "twice" in err, err
    assert not (tmp_path / "col").exists()


def test_a_stream_of_paths_ingests_through_the_api_and_is_refused_with_prune(photos, tmp_path, tiny_encoder):
    from mmretrieval.collection.collection import Collection
    from mmretrieval.errors import CollectionError
    from mmretrieval.ingest.reader import PathStream

    folder, good, _ = photos
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        summary = col.ingest(PathStream(io.BytesIO(b"sub/good.png\n"), base=str(folder)), workers=0)
        assert summary.embedded == 1 and [row.path for row in col.catalog.rows([1]).values()] == [good]
        with pytest.raises(CollectionError, match="--prune cannot take its files from -, which is read once"):
            col.ingest([str(folder), PathStream(io.BytesIO(b""), base=str(folder))], prune=True, workers=0)
        assert col.catalog.counts_by_status() == {"ok": 1}


def test_the_library_reads_stdin_only_when_handed_it(tmp_path, monkeypatch):
    """A source or label file named ``-`` is that file; a stream is read only when passed, as it comes."""
    from mmretrieval.ingest.batches import SourceFile
    from mmretrieval.ingest.reader import PathStream, discover
    from mmretrieval.models.label_text import parse_labels

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"library code read standard input ({name})")

    monkeypatch.setattr("sys.stdin", Untouchable())
    monkeypatch.chdir(tmp_path)
    _save_scene(str(tmp_path / "-"), "red")
    assert [item.path for item in discover(["-"])] == [str(tmp_path / "-")]
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "-").write_text("cat\ndog\n")
    monkeypatch.chdir(tmp_path / "labels")
    assert parse_labels("@-") == ["cat", "dog"]
    assert parse_labels(["@-", io.BytesIO(b"\xef\xbb\xbfbird, small\n# no\n")]) == ["cat", "dog", "bird, small"]

    lines_read = []

    def lines():  # 10 M paths are never read whole: the first file comes after the first line
        for number in range(10_000_000):
            lines_read.append(number)
            yield b"-\n"

    found = discover([PathStream(lines(), base=str(tmp_path))])
    assert isinstance(next(found), SourceFile) and len(lines_read) == 1


# -- 3. label --out names a non-UTF-8 file by its bytes ----------------------------------------------------------
def test_label_out_keeps_non_utf8_names_and_its_csv_feeds_classify(photos, tmp_path, tiny_model_dir, capsys):
    folder, good, bad = photos
    collection = tmp_path / "col"
    assert _run(capsys, "ingest", folder, "--collection", collection, "--model", tiny_model_dir, "--device", "cpu",
                "--workers", "0")[0] == 0
    csv_out, jsonl_out = tmp_path / "l.csv", tmp_path / "l.jsonl"
    for out in (csv_out, jsonl_out):
        status, _, err = _run(capsys, "label", "--collection", collection, "--labels", "star,circle", "--set", "s2",
                              "--replace", "--out", out)
        assert status == 0, err
    written = csv_out.read_bytes()
    assert os.path.join(os.fsencode(folder), BAD_NAME) in written and "\ufffd".encode() not in written
    records = [json.loads(line) for line in jsonl_out.read_bytes().decode("utf-8").splitlines()]  # valid UTF-8
    assert sorted(os.fsencode(record["path"]) for record in records) == sorted(map(os.fsencode, (good, bad)))
    status, out, err = _run(capsys, "classify", csv_out, "--labels", "red,blue", "--json", "--device", "cpu",
                            "--workers", "0")
    assert status == 0 and "skipped" not in err, err
    assert _classified(out) == {os.fsencode(good): "red", os.fsencode(bad): "blue"}


def test_a_multi_label_out_csv_feeds_classify_each_image_once(photos, tmp_path, tiny_model_dir, capsys):
    """``label --multi-label --out`` writes an image's labels on consecutive rows; as a list, each names one image
    once. A repeat further down is still read (a list is a stream: no set of every path seen is kept)."""
    from mmretrieval.ingest.reader import discover

    folder, good, bad = photos
    collection = tmp_path / "col"
    assert _run(capsys, "ingest", folder, "--collection", collection, "--model", tiny_model_dir, "--device", "cpu",
                "--workers", "0")[0] == 0
    csv_out = tmp_path / "multi.csv"
    status, _, err = _run(capsys, "label", "--collection", collection, "--labels", "red,blue,circle,shape",
                          "--multi-label", "--threshold", "0", "--out", csv_out)
    assert status == 0, err
    rows = csv_out.read_bytes().splitlines()[1:]
    assert len(rows) == 8, rows  # threshold 0: every label of both images
    status, out, err = _run(capsys, "classify", csv_out, "--labels", "red,blue", "--json", "--device", "cpu",
                            "--workers", "0")
    assert status == 0, err
    assert sorted(os.fsencode(json.loads(line)["path"]) for line in out.splitlines()) == sorted(
        map(os.fsencode, (good, bad)))
    listing = tmp_path / "again.txt"
    listing.write_bytes(b"\n".join(map(os.fsencode, (good, good, bad, good))) + b"\n")
    assert [item.path for item in discover([str(listing)])] == [good, bad, good]


def test_labels_from_a_closed_stdin_are_one_clear_error(photos, monkeypatch, capsys):
    _, good, _ = photos
    monkeypatch.setattr("sys.stdin", None)  # `<&-`
    status, _, err = _run(capsys, "classify", good, "--labels", "@-")
    assert status == 2 and "--labels @- reads labels from standard input, and this process has none" in err, err


def test_a_listed_file_out_of_reach_keeps_its_vector_and_labels_until_a_prune(tmp_path, tiny_encoder):
    """A list naming embedded files on a drive that is not mounted this time: they were turned into "missing"
    skips, their vectors and labels dropped, without --prune. Now they are counted as skipped and kept as they
    were; a prune of the list removes them (once they are gone for good), and a new path missing is recorded, except
    by a prune, which would count it pruned on every run."""
    from mmretrieval.collection.collection import Collection
    from test_ingest import write_good_images

    drive = tmp_path / "drive"
    paths = write_good_images(drive, 3)
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{path}\n" for path in paths) + f"{drive}/never.jpg\n")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        assert col.ingest([listed], workers=0).embedded == 3
        col.label(["red", "blue"])
        ids = col.catalog.vector_ids().tolist()
        before = col.label_of(ids)
        drive.rename(tmp_path / "unplugged")
        summary = col.ingest([listed], workers=0)
        assert summary.skipped == {"missing": 4} and summary.pruned == 0
        assert col.catalog.vector_ids().tolist() == ids and col.label_of(ids) == before
        assert [row.path for row in col.failures()] == [f"{drive}/never.jpg"]  # a path never embedded: recorded
        assert col.ingest([listed], workers=0, prune=True).pruned == 4  # gone for good: the prune's call
        assert col.catalog.vector_ids().tolist() == []
        again = col.ingest([listed], workers=0, prune=True)  # nothing left to prune: no row made only to go
        assert again.pruned == 0 and again.skipped == {"missing": 4} and not list(col.failures())
