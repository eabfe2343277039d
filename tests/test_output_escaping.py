"""Names in output read back as themselves: a TSV cell (and the web UI's list of copies) escapes reversibly, so a
file named ``x\\ty.png`` and one named ``x<TAB>y.png`` never print alike; every record stays one line for any
``splitlines()`` reader; ``mmr info``'s cells are escaped too, its sets of counts parse back into ``--json``'s."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from mmretrieval.cli import main
from mmretrieval.collection.collection import Collection
from mmretrieval.json_lines import json_line, tsv_text
from mmretrieval.training.copies import distinct_originals

# Every character str.splitlines() breaks at, the tab, and backslashes that look like escapes already.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
AWKWARD = ["plain.png", "x\\ty.png", "x\ty.png", "x\\\ty.png", "x\\\\ty.png", "trailing\\", "\\", "\\\\n",
           "a\\x2c b\\u2028", "esc\x1b[31mred", "del\x7f", "déjà vu ✓.jpg", os.fsdecode(b"caf\xe9 \xff.jpg"),
           "photo\u202egnp.exe", "\u2066isolated\u2069", "שלום.jpg",
           *(f"line{char}break.png" for char in LINE_BREAKS), LINE_BREAKS + "\t\\"]


def test_every_awkward_name_is_one_distinct_cell_that_reads_back_as_itself():
    from mmretrieval.json_lines import tsv_unescape

    cells = [tsv_text(name) for name in AWKWARD]
    assert len(set(cells)) == len(AWKWARD)  # no two names print alike
    assert tsv_text("x\\ty.png") == "x\\\\ty.png" and tsv_text("x\ty.png") == "x\\ty.png"
    for name, cell in zip(AWKWARD, cells):
        assert cell.splitlines() == [cell] and "\t" not in cell, name  # one field of one record
        assert tsv_unescape(cell) == name
    assert tsv_text("plain.png") == "plain.png" and tsv_text("déjà vu ✓.jpg") == "déjà vu ✓.jpg"
    assert tsv_text("photo\u202egnp.exe") == "photo\\u202egnp.exe"  # not shown as "photoexe.png" (a walkthrough)
    assert json_line("photo\u202egnp.exe") == '"photo\\u202egnp.exe"'  # --json too (a review)
    assert tsv_text("שלום.jpg") == "שלום.jpg"  # right-to-left text itself stays as it is
    for broken in ("a\\", "a\\q", "a\\x4", "a\\u20"):  # never written by tsv_text
        with pytest.raises(ValueError, match="starts no escape"):
            tsv_unescape(broken)


def test_a_json_line_stays_one_line_for_a_splitlines_reader():
    row = {"path": "\n".join(AWKWARD), "names": AWKWARD}
    line = json_line(row)
    assert line.splitlines() == [line] and json.loads(line) == row
    line.encode("utf-8")  # valid UTF-8 whatever the names


def _info_tsv(out: str) -> dict[str, object]:
    """``mmr info``'s lines read back with the documented rules: KEY<TAB>CELL, a set of counts split on ', ' and
    '=' (or '-' when empty), every part unescaped."""
    from mmretrieval.json_lines import tsv_unescape

    lines = out.splitlines()
    assert all(line.count("\t") == 1 for line in lines), lines
    parsed: dict[str, object] = {}
    for key, cell in (line.split("\t") for line in lines):
        if key in ("counts", "index_params", "imported", "bytes_on_disk", "label_sets", "labels"):
            pairs = [] if cell == "-" else [part.split("=") for part in cell.split(", ")]
            assert all(len(pair) == 2 for pair in pairs), cell
            parsed[key] = {tsv_unescape(name): int(tsv_unescape(count)) for name, count in pairs}
        elif key == "drives":  # folder=mounted or folder=not mounted
            pairs = [] if cell == "-" else [part.split("=") for part in cell.split(", ")]
            parsed[key] = {tsv_unescape(folder): tsv_unescape(state) for folder, state in pairs}
        else:
            parsed[key] = tsv_unescape(cell)
    return parsed


def _as_cell(value: object) -> object:
    """A JSON value of ``mmr info`` as its TSV cell reads: yes/no for a truth, ``-`` for none (a recall not
    measured), counts as their dict."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value if isinstance(value, dict) else "-" if value is None else str(value)


def test_info_tsv_escapes_every_cell_and_its_counts_parse_back_as_the_json(tmp_path, shapes_encoder, capsys):
    pictures = distinct_originals(2, seed=11, size=96)
    photos = tmp_path / "photos"
    photos.mkdir()
    for number, picture in enumerate(pictures):
        picture.save(photos / f"{number}.png")
    source = tmp_path / "old, x=1\nkept\\tlibrary"  # a folder name with every separator of the old cells
    with Collection.open(source, model=shapes_encoder, create=True) as col:
        col.ingest([photos], workers=0)
    assert main(["label", "--collection", str(source), "--labels", "warm=1,cold=2"]) == 0
    collection = tmp_path / "new\tone"
    assert main(["import", str(source), "--collection", str(collection), "--model", "builtin:shapes"]) == 0
    capsys.readouterr()
    described = {}
    for folder in (source, collection):
        assert main(["info", "--collection", str(folder), "--json"]) == 0
        expected = json.loads(capsys.readouterr().out)
        assert main(["info", "--collection", str(folder)]) == 0
        parsed = _info_tsv(capsys.readouterr().out)
        assert parsed == {key: _as_cell(value) for key, value in expected.items()}
        described[folder] = parsed
    assert described[source]["directory"] == str(source) and described[collection]["directory"] == str(collection)
    assert set(described[source]["labels"]) <= {"warm=1", "cold=2"} and sum(described[source]["labels"].values()) == 2
    assert described[collection]["imported"] == {str(source): 2}


def test_the_ui_list_of_copies_names_a_backslash_and_a_tab_apart_and_reads_back(tmp_path):
    pytest.importorskip("gradio")
    from mmretrieval.collection.duplicates import Copy, DuplicateGroup
    from mmretrieval.json_lines import tsv_unescape
    from mmretrieval.ui.duplicate_handlers import DuplicateHandlers, _left_out

    def copy(number: int, path: str) -> Copy:
        return Copy(number, path, 1.0 if number == 1 else 0.99, 8, 8, 100, 1)

    names = ["/lib/x\\ty.png", "/lib/x\ty.png", "/lib/line\u2028break.png", "/lib/plain.png"]
    group = DuplicateGroup(copies=(copy(1, "/lib/keep.png"), *(copy(n, name) for n, name in enumerate(names, 2))))
    handlers = DuplicateHandlers(SimpleNamespace(export_dir=tmp_path / "exports"))
    listed, table = handlers._export([group])
    lines = Path(listed).read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and [tsv_unescape(line) for line in lines[:-1]] == names
    assert len(set(lines)) == len(lines) and "/lib/plain.png" in lines  # a plain name is written as it is
    assert names[1] in Path(table).read_text(encoding="utf-8")  # the CSV holds the name whole
    (note,) = _left_out([group])
    assert note.startswith("3 paths in the list hold a backslash, a tab, a line break or another control character")


def test_a_logged_warning_naming_a_file_with_a_line_break_is_one_line(tmp_path, capsys):
    """The library logs a skipped folder by name; on the command line, that warning is one line too."""
    import logging

    from mmretrieval.cli import _log_to_stderr

    _log_to_stderr(verbose=False)
    logging.getLogger("mmretrieval.test").warning("cannot list %s", tmp_path / "two\nlines")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two\\nlines" in err


def test_a_message_shows_a_non_utf8_names_bytes_as_hex():
    """stderr wrote them as '\\udcff' (Python's backslashreplace of the surrogate escape), not as the byte."""
    from mmretrieval.json_lines import one_line

    assert one_line("exported to " + os.fsdecode(b"exp\xff") + "\n") == "exported to exp\\xff\\n"
    assert tsv_text(os.fsdecode(b"exp\xff")) == os.fsdecode(b"exp\xff")  # TSV keeps them for stdout's bytes
