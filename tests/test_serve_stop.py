"""Stopping the server (Ctrl-C, SIGTERM) while the web UI ingests: Gradio's own wait swallowed both, the process
exited 0 with the ingest thread still inside torch and died of SIGABRT ("terminate called without an active
exception"), leaving its export folders in $TMPDIR. Now the run is cut short as Ctrl-C cuts a command short, the
server exits 130 or 143, and the next ingest finishes what it left."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mmretrieval.cli import main
from test_ingest import write_good_images
from ui_support import build_test_collection, free_port

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="signals as Linux sends them")
REPO = Path(__file__).resolve().parent.parent
IMAGES = 600  # enough that the signal arrives while they are being embedded


def _pending(collection: Path) -> int:
    with sqlite3.connect(f"file:{collection / 'catalog.sqlite'}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM images WHERE status = 'pending'").fetchone()[0]


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_web_ui_ingest_stops_the_server_cleanly(tmp_path, tiny_model_dir, signum, status):
    from gradio_client import Client

    collection = build_test_collection(tmp_path / "built", str(tiny_model_dir))
    folder = tmp_path / "more"
    write_good_images(folder, IMAGES)
    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--collection", str(collection), "--device", "cpu", "--port",
         str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(server_tmp), "GRADIO_TEMP_DIR": str(server_tmp)})
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.submit(str(folder), api_name="/ingest")
        while _pending(collection) == 0 and time.monotonic() < deadline:  # planned: embedding has begun
            time.sleep(0.05)
        assert _pending(collection) > 0, "the ingest was not seen running"
        server.send_signal(signum)
        _, err = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == status, err
    assert "stopping took longer" not in err, err  # ended on its own, not by exit_by_deadline (whose dump says where)
    assert "terminate called" not in err and "Traceback" not in err, err
    assert not list(server_tmp.glob("mmr-ui-export-*"))  # this run's exports went with it
    assert main(["ingest", str(folder), "--collection", str(collection), "--workers", "0"]) == 0
    assert _pending(collection) == 0
    with sqlite3.connect(collection / "catalog.sqlite") as db:
        under = db.execute("SELECT COUNT(*) FROM images WHERE status = 'ok' AND instr(CAST(path AS TEXT), ?) = 1",
                           (str(folder),)).fetchone()[0]
    assert under == IMAGES


def test_a_killed_servers_export_folder_is_removed_by_the_next_one(tmp_path, monkeypatch):
    """A server killed with SIGKILL cannot remove its export folder (originals, zips, CSVs); the next one does,
    and leaves a live server's and another program's folders alone."""
    import tempfile

    from mmretrieval.ui.context import new_export_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f"mmr-ui-export-{dead.stdout.strip()}-abcd"
    (left / "original-1").mkdir(parents=True)
    live = tmp_path / f"mmr-ui-export-{os.getppid()}-efgh"
    live.mkdir()
    unrelated = tmp_path / "mmr-ui-export-notapid-x"
    unrelated.mkdir()
    mine = new_export_dir()
    assert not left.exists() and live.exists() and unrelated.exists()
    assert mine.parent == tmp_path and mine.name.startswith(f"mmr-ui-export-{os.getpid()}-")


def test_a_stopping_process_that_python_cannot_end_exits_by_its_deadline_and_says_where_it_was():
    """exit_by_deadline, the stopping server's last resort: a thread that never ends keeps Python's exit waiting
    for ever; the deadline exits with the stop's status and prints where that thread was."""
    script = (
        "import threading, time\n"
        "from mmretrieval.cli.serve_cmd import exit_by_deadline\n"
        "def stuck_in_a_run():\n"
        "    time.sleep(600)\n"
        "threading.Thread(target=stuck_in_a_run).start()\n"
        "exit_by_deadline(1.0, 143)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    assert time.monotonic() - started < 60
    assert "stopping took longer than 1 s" in done.stderr
    assert "stuck_in_a_run" in done.stderr  # the dump names the function it waited for


def test_a_signal_that_another_thread_takes_still_stops_the_serving_wait():
    """The kernel may give SIGTERM to any thread that does not block it; the main thread's sleep then goes on, and
    Python runs the handler only when it wakes. A server slept an hour at a time and so stayed up after SIGTERM
    (one CI run in eight). Here the main thread blocks SIGTERM, so that only the other thread can take it."""
    script = (
        "import signal, sys, threading, time\n"
        "from mmretrieval.cli import Terminated, sigterm_unwinds\n"
        "from mmretrieval.cli.serve_cmd import wait_for_a_signal\n"
        "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()  # takes signals the main blocks\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
        "print('waiting', flush=True)\n"
        "try:\n"
        "    with sigterm_unwinds():\n"
        "        wait_for_a_signal()\n"
        "except Terminated:\n"
        "    sys.exit(143)\n"
    )
    waiting = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert waiting.stdout.readline() == "waiting\n"
        time.sleep(0.5)
        started = time.monotonic()
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=60) == 143
        assert time.monotonic() - started < 10
    finally:
        waiting.kill()
