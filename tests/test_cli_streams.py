"""`mmr` with the streams a script or a cron job hands it: closed, on a full disk, or taken by another writer."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mmretrieval.cli import EXIT_BUSY, main
from test_ingest import write_good_images


@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_model_dir) -> str:
    root = tmp_path_factory.mktemp("streams")
    write_good_images(root / "photos", 12)
    col = str(root / "col")
    assert main(["ingest", str(root / "photos"), "--collection", col, "--model", str(tiny_model_dir),
                 "--device", "cpu", "--workers", "0"]) == 0
    return col


def _search(collection: str) -> list[str]:
    return ["search", "a red circle", "--collection", collection, "-k", "3", "--device", "cpu"]


def test_with_stderr_closed_stdout_still_holds_only_the_results(collection, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stderr", None)  # what Python makes of `2>&-`; print(file=None) writes to stdout
    assert main(_search(collection)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(len(line.split("\t")) == 2 for line in lines), lines


@pytest.fixture()
def full_disk():
    """A stream on a full disk: every write that reaches it fails with ENOSPC."""
    stream = open("/dev/full", "w", buffering=1)
    yield stream
    try:
        stream.close()
    except OSError:  # what is left in its buffer has nowhere to go
        pass


def test_a_full_disk_under_stderr_loses_messages_not_results(collection, capsys, monkeypatch, full_disk):
    monkeypatch.setattr(sys, "stderr", full_disk)  # a log file on a full disk (`2>>/var/log/mmr.log`)
    assert main(_search(collection)) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_results_that_cannot_be_written_are_an_error_that_says_so(collection, capsys, monkeypatch, full_disk):
    monkeypatch.setattr(sys, "stdout", full_disk)
    assert main(["label", "--collection", collection, "--labels", "circle,square", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert ("mmr label: error: cannot write the results to stdout: No space left on device; the collection keeps "
            "what this run saved") in err
    monkeypatch.setattr(sys, "stdout", None)  # `>&-`
    assert main(["info", "--collection", collection]) == 2
    assert "mmr info: error: cannot write the results to stdout: Bad file descriptor (stdout is closed)" in \
        capsys.readouterr().err
    monkeypatch.undo()
    assert main(["info", "--collection", collection, "--json"]) == 0
    labels = json.loads(capsys.readouterr().out)["labels"]
    assert sum(labels.values()) == 12  # the label set was committed before the summary failed


def test_closed_descriptors_are_filled_so_no_file_takes_their_number(collection, tmp_path):
    """With fd 2 closed, the next file opened (the catalog) would be fd 2, and any C library's message to stderr
    would be written into it."""
    command = [sys.executable, "-m", "mmretrieval", "search", "a red circle", "--collection", collection, "-k", "3",
               "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", *command], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0 and len(run.stdout.splitlines()) == 3, run
    probe = ("import os, sys; from mmretrieval.cli.streams import guarded_streams\n"
             "with guarded_streams():\n"
             "    fd = os.open(sys.argv[1], os.O_RDONLY)\n"
             "print(fd, file=open(sys.argv[2], 'w'))\n")
    subprocess.run(["sh", "-c", 'exec "$@" 2>&- >&-', "sh", sys.executable, "-c", probe, collection,
                    str(tmp_path / "fd.txt")], env=env, timeout=120, check=True)
    assert int((tmp_path / "fd.txt").read_text()) > 2


def test_a_collection_another_process_writes_is_its_own_exit_status(collection, capsys):
    from lock_holder import held_by_another_process
    from mmretrieval.collection.catalog import LOCK_NAME

    with held_by_another_process(Path(collection) / LOCK_NAME):
        assert main(["compact", "--collection", collection]) == EXIT_BUSY == 75
    err = capsys.readouterr().err
    assert err.startswith(f"mmr compact: another process is writing {collection}") and "error" not in err
    assert main(["compact", "--collection", collection]) == 0


def test_with_wait_a_writer_waits_for_the_other_and_says_so(collection, capsys):
    """A cron job that would rather wait than retry on exit 75: ``--wait`` blocks until the other writer is done."""
    import threading
    import time

    from mmretrieval.atomic import exclusive_lock
    from mmretrieval.collection.catalog import LOCK_NAME

    held, released = threading.Event(), []

    def other_writer() -> None:
        with exclusive_lock(Path(collection) / LOCK_NAME):
            held.set()
            time.sleep(2)
            released.append(time.monotonic())

    thread = threading.Thread(target=other_writer)
    thread.start()
    held.wait()
    assert main(["label", "--collection", collection, "--labels", "circle,square", "--set", "waited", "--replace",
                 "--device", "cpu", "--wait"]) == 0
    finished = time.monotonic()
    thread.join()
    assert released and finished >= released[0]
    assert f"another process is writing {collection}; waiting for it to finish" in capsys.readouterr().err


def test_verbose_after_the_command_as_before_it(collection, capsys):
    assert main(["info", "--collection", collection, "-v"]) == 0
    assert main(["-v", "info", "--collection", collection]) == 0
    assert capsys.readouterr().out.count("directory\t") == 2
    help_text = subprocess.run([sys.executable, "-m", "mmretrieval", "--help"], capture_output=True, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout
    assert "75   another process is writing the collection" in help_text


@pytest.mark.parametrize("failure, says", [
    (sqlite3.OperationalError("database or disk is full"),
     "has 1.0 MB free now: free some space and run again (what was committed is kept)"),
    (OSError(errno.EMFILE, "Too many open files"), "raise the limit (ulimit -n 4096) or lower --workers"),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), "BrokenPipeError"),  # a worker's pipe, not `| head`: a failure
])
def test_a_failure_says_what_about_the_machine_caused_it(collection, tmp_path, capsys, monkeypatch, failure, says):
    from mmretrieval.collection.catalog import Catalog

    def fail(*args, **kwargs):
        raise failure

    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=2**20)
                        if os.fspath(path).startswith(collection) else real_usage(path))
    monkeypatch.setattr(Catalog, "mark_pending", fail)
    write_good_images(tmp_path / "more", 2, seed=5)
    assert main(["ingest", str(tmp_path / "more"), "--collection", collection, "--device", "cpu",
                 "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err


def test_a_full_disk_under_a_new_collection_does_not_say_that_anything_was_kept(tmp_path, capsys, monkeypatch):
    """The first ingest of a new collection failed on a full disk; the empty collection was removed, as it should
    be, and the message still said "what was committed is kept" (chaos walkthrough)."""
    from mmretrieval.collection.catalog import Catalog

    def fail(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=2**20)
                        if os.fspath(path).startswith(str(tmp_path)) else real_usage(path))
    monkeypatch.setattr(Catalog, "mark_pending", fail)
    write_good_images(tmp_path / "photos", 2)
    new = tmp_path / "new"
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(new), "--model", "builtin:shapes",
                 "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert f"the disk holding {tmp_path} has 1.0 MB free now" in err and f"({new} was not kept)" in err, err
    assert not new.exists() and "what was committed is kept" not in err


def _ingest_with_open_files(folder: Path, collection: Path, model: Path, soft: int, hard: int):
    """``mmr ingest --workers 2`` in a child whose open-file limit is ``soft`` (``ulimit -S -n``), under ``hard``."""
    import resource

    return subprocess.run(
        [sys.executable, "-m", "mmretrieval", "ingest", str(folder), "--collection", str(collection), "--model",
         str(model), "--device", "cpu", "--workers", "2"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))


def test_decoding_workers_fit_the_open_file_limit_or_are_refused_before_they_start(tmp_path, tiny_model_dir):
    """A soft limit under what the workers need is raised toward the hard one; a hard limit under it is refused
    at once, in one line. Running out midway had failed the run, and the resource tracker printed a traceback."""
    import resource

    write_good_images(tmp_path / "photos", 6)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    low = _ingest_with_open_files(tmp_path / "photos", tmp_path / "low", tiny_model_dir, 20, 20)
    assert low.returncode == 2, low.stderr
    assert "needs about" in low.stderr and "may open only 20 (ulimit -n)" in low.stderr, low.stderr
    assert "Traceback" not in low.stderr and "KeyError" not in low.stderr, low.stderr
    assert not (tmp_path / "low").exists()  # refused before a row went in: a re-run may still choose the model
    raised = _ingest_with_open_files(tmp_path / "photos", tmp_path / "raised", tiny_model_dir, 20, max(hard, 4096)
                                     if hard == resource.RLIM_INFINITY else hard)
    assert raised.returncode == 0 and "embedded 6," in raised.stderr, raised.stderr


def test_pruning_a_list_whose_files_are_all_gone_succeeds(tmp_path, tiny_model_dir, capsys):
    """A cron job that prunes a list of files: when all are gone, removing their rows was the whole job."""
    paths = write_good_images(tmp_path / "photos", 3, seed=9)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, paths)))
    col = str(tmp_path / "col")
    options = ["--collection", col, "--device", "cpu", "--workers", "0"]
    assert main(["ingest", str(listing), *options, "--model", str(tiny_model_dir)]) == 0
    for path in paths:
        path.unlink()
    assert main(["ingest", str(listing), *options, "--prune"]) == 0
    err = capsys.readouterr().err
    assert "pruned 3" in err and "every file failed" not in err, err


def test_ingest_json_summary_for_scripts(tmp_path, tiny_model_dir, capsys):
    write_good_images(tmp_path / "photos", 3, seed=11)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(tmp_path / "col"), "--model",
                 str(tiny_model_dir), "--device", "cpu", "--workers", "0", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"embedded": 3, "unchanged": 0, "duplicates": 0, "moved": 0, "failed": {"corrupt": 1},
                       "pruned": 0, "skipped": {}, "adopted": 0, "unmounted": []}


def test_an_export_whose_summary_cannot_be_written_says_the_export_is_complete(collection, tmp_path, capsys,
                                                                              monkeypatch, full_disk):
    monkeypatch.setattr(sys, "stdout", full_disk)
    assert main(["export", str(tmp_path / "out"), "--collection", collection, "--json"]) == 2
    assert "cannot write the results to stdout: No space left on device; the export folder is complete" in \
        capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "out" / "img_emb")) == ["img_emb_0.npy"]
