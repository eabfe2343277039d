"""Every message ``mmr`` prints on stderr (summaries and notes as well as errors) is one line that shows a file name
which is not UTF-8 by its bytes (``caf\\xe9``), never as a ``\\udcNN`` surrogate that printing writes or fails on;
and a warning the library logs or warns reads as the command's own: ``mmr label: warning: ...``."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmretrieval.cli import main

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="file names of any bytes are Linux's")

SURROGATE = re.compile("[\ud800-\udfff]")


def _named(folder: Path, raw: bytes) -> Path:
    """``folder / raw`` for a name given as bytes (held as os.fsdecode holds it: surrogate escapes)."""
    return Path(os.fsdecode(os.path.join(os.fsencode(folder), raw)))


def _lines(err: str) -> list[str]:
    """stderr's lines, checked to hold no surrogate (a non-UTF-8 name printed as it is held in memory)."""
    assert not SURROGATE.search(err), err
    return err.splitlines()


@pytest.fixture()
def collection_dir(tmp_path, tiny_encoder):
    """Four generated scenes ingested with the tiny model; the directory, the collection closed."""
    from mmretrieval.collection.collection import Collection
    from mmretrieval.demo import DemoConfig, write_scenes

    write_scenes(tmp_path / "scenes", DemoConfig(count=4))
    with Collection.open(tmp_path / "c", model=tiny_encoder, create=True, device="cpu") as opened:
        opened.ingest([tmp_path / "scenes" / "images"], workers=0)
    return tmp_path / "c"


@pytest.fixture()
def root_logging():
    """Put back the root logger's level and handlers that messages_to_stderr changes."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


# -- summaries that name a user's path ---------------------------------------------------------------------------
def test_ingest_names_a_non_utf8_source_without_images_by_its_bytes(tmp_path, tiny_model_dir, capsys):
    source = _named(tmp_path, b"caf\xe9")
    source.mkdir()
    assert main(["ingest", str(source), "--collection", str(tmp_path / "col"), "--model", str(tiny_model_dir),
                 "--device", "cpu", "--workers", "0"]) == 1
    assert f"mmr ingest: no image files found in {tmp_path}/caf\\xe9" in _lines(capsys.readouterr().err)


def test_classify_names_a_non_utf8_folder_without_images_by_its_bytes(tmp_path, tiny_model_dir, capsys):
    folder = _named(tmp_path, b"caf\xe9")
    folder.mkdir()
    assert main(["classify", str(folder), "--labels", "red,blue", "--model", str(tiny_model_dir), "--device", "cpu",
                 "--workers", "0"]) == 1
    assert _lines(capsys.readouterr().err) == [f"mmr classify: no images found in {tmp_path}/caf\\xe9"]


def test_label_organize_into_a_non_utf8_folder_names_it_by_its_bytes(collection_dir, tmp_path, capsys):
    """The run succeeds (the summary printed its surrogate, or failed on it, after the links were made)."""
    out = _named(tmp_path, b"sort\xff")
    assert main(["label", "--collection", str(collection_dir), "--labels", "red,blue", "--organize", str(out),
                 "--device", "cpu"]) == 0
    lines = _lines(capsys.readouterr().err)
    assert f"placed 4 files under {tmp_path}/sort\\xff" in lines
    assert "labelled 4 images into set 'default'" in lines
    assert sum(len(os.listdir(folder)) for folder in out.iterdir() if folder.is_dir()) == 4  # a folder per label


def test_app_py_names_a_non_utf8_collection_by_its_bytes(tmp_path, capsys, root_logging):
    """``python app.py``'s error line, as ``mmr serve``'s."""
    from mmretrieval.cli.serve_cmd import main as app_main

    missing = _named(tmp_path, b"caf\xe9") / "col"
    assert app_main(["--collection", str(missing), "--port", "0"]) == 2
    (line,) = _lines(capsys.readouterr().err)
    assert line.startswith("app.py: error: ") and f"{tmp_path}/caf\\xe9" in line


# -- the library's warnings, as the command's ----------------------------------------------------------------------
def test_an_organize_folder_clash_is_a_warning_of_the_label_command(collection_dir, tmp_path, capsys):
    """mmretrieval.collection.labelling logs it; it printed as 'WARNING mmretrieval.collection.labelling: ...'."""
    assert main(["label", "--collection", str(collection_dir), "--labels", "a/b,a_b", "--multi-label", "--threshold",
                 "0", "--organize", str(tmp_path / "sorted"), "--device", "cpu"]) == 0
    lines = _lines(capsys.readouterr().err)
    assert ("mmr label: warning: labels 'a/b' and 'a_b' make the same folder name ('a_b'): the images labelled 'a_b' "
            "go into 'a_b-2'") in lines
    assert not [line for line in lines if line.startswith("WARNING ")]


def test_a_label_merge_is_a_warning_of_the_label_command(collection_dir, capsys):
    """Labels that differ only in Unicode normalisation are merged, with a warning named by the command."""
    assert main(["label", "--collection", str(collection_dir), "--labels", "caf\u00e9,cafe\u0301,blue",
                 "--device", "cpu"]) == 0
    warned = [line for line in _lines(capsys.readouterr().err) if "differ only in Unicode normalisation" in line]
    assert len(warned) == 1 and warned[0].startswith("mmr label: warning: labels 'café' and 'cafe\\u0301' differ")


def test_a_big_vocabulary_warns_a_few_labels_by_name_and_the_rest_in_one_line(collection_dir, tmp_path, capsys):
    """2,000 labels typed in two cases, organized: it was one warning a label (1,000 merges, 144 folder clashes
    in the walkthrough's run); now three by name and one line for the rest, for each kind."""
    from mmretrieval.models.label_text import WARNINGS_SHOWN

    labels = tmp_path / "labels.txt"
    words = [f"w{n:03d}" for n in range(50)]
    labels.write_text("\n".join([*words, *(word.upper() for word in words),  # 50 case merges
                                 *(f"{word}/x" for word in words), *(f"{word}_x" for word in words)]))  # 50 clashes
    assert main(["label", "--collection", str(collection_dir), "--labels", f"@{labels}", "--multi-label",
                 "--threshold", "0", "--set", "big", "--organize", str(tmp_path / "sorted"), "--device", "cpu"]) == 0
    warned = [line for line in _lines(capsys.readouterr().err) if line.startswith("mmr label: warning: ")]
    merged = [line for line in warned if "differ only in case" in line]
    assert len(merged) == WARNINGS_SHOWN + 1 and merged[-1] == (
        f"mmr label: warning: {50 - WARNINGS_SHOWN} more labels differ only in case or Unicode normalisation from an "
        "earlier one, and were merged into it likewise")
    renamed = [line for line in warned if "folder" in line]
    assert len(renamed) == WARNINGS_SHOWN + 1 and renamed[-1] == (
        f"mmr label: warning: {50 - WARNINGS_SHOWN} more labels got another folder than their own name (too long, "
        "or the name another label's folder has)")


def test_logged_records_read_as_the_commands_messages(capsys, root_logging):
    from mmretrieval.cli import messages_to_stderr

    ours, theirs = logging.getLogger("mmretrieval.test"), logging.getLogger("somelib")
    messages_to_stderr(verbose=False, prog="mmr label")
    ours.warning("cannot list %s", os.fsdecode(b"caf\xe9/two\nlines"))
    ours.error("gave up")
    ours.info("a detail for -v")
    theirs.warning("a library's own warning, for -v")
    theirs.critical("a library's last word")
    assert _lines(capsys.readouterr().err) == ["mmr label: warning: cannot list caf\\xe9/two\\nlines",
                                               "mmr label: error: gave up",
                                               "CRITICAL somelib: a library's last word"]
    messages_to_stderr(verbose=True, prog="mmr label")  # -v: details and other libraries' records, named
    ours.info("a detail")
    ours.warning("still the command's")
    theirs.warning("theirs")
    assert _lines(capsys.readouterr().err) == ["INFO mmretrieval.test: a detail",
                                               "mmr label: warning: still the command's",
                                               "WARNING somelib: theirs"]


def _exit_of_mmr_info(tmp_path: Path, hook: str, registered: str) -> subprocess.CompletedProcess:
    """``mmr info`` on no collection (status 2) run as a program, with an exit handler ``hook`` (Python
    statements) registered ``before`` the program starts or ``after`` the command's work."""
    script = ("import atexit, os, signal, sys, time\n"
              f"def hook():\n    {hook}\n"
              "sys.argv = ['mmr', 'info', '--collection', sys.argv[1]]\n"
              "import mmretrieval.cli as cli\n"
              "work = cli.main\n"
              "def main():\n    status = work()\n    atexit.register(hook)\n    return status\n"
              + ("atexit.register(hook)\n" if registered == "before" else "cli.main = main\n")
              + "cli.command()\n")
    return subprocess.run([sys.executable, "-c", script, str(tmp_path / "none")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_a_ctrl_c_while_a_finished_command_exits_ends_it_at_once_without_a_traceback(tmp_path):
    """A Ctrl-C as the summary appeared met torch's exit handler: a KeyboardInterrupt traceback under the summary
    (an import walkthrough, 2 of 6 tries). Here an exit handler that would hang 60 s sends the SIGINT itself: the
    process ends then, quietly, with the command's status (a review: ignoring the Ctrl-C left such a hang
    unstoppable)."""
    started = time.monotonic()
    done = _exit_of_mmr_info(tmp_path, "os.kill(os.getpid(), signal.SIGINT); time.sleep(60); print('hung')", "after")
    assert time.monotonic() - started < 30 and "hung" not in done.stdout
    assert done.returncode == 2  # main's status
    assert "no collection at" in done.stderr and "Traceback" not in done.stderr
    assert "KeyboardInterrupt" not in done.stderr


def test_a_ctrl_c_after_the_last_exit_handler_does_not_kill_a_finished_command(tmp_path):
    """After the exit handlers the interpreter puts SIGINT's default action back in place of a Python handler: a
    Ctrl-C then killed the process, status 130 with no message, after every result was out (a concurrency
    walkthrough, 7 of 30 tries). Here the last handler does what the interpreter does, then sends the SIGINT."""
    hook = ("if callable(signal.getsignal(signal.SIGINT)): signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
            "    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2)")
    done = _exit_of_mmr_info(tmp_path, hook, "before")
    assert done.returncode == 2 and "no collection at" in done.stderr  # main's status, not a death by SIGINT
