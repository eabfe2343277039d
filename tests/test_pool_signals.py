"""Signals to a whole process group while the decoding pool runs: Ctrl-C in a terminal reaches the workers too,
and ``kill -9 -PGID`` (or an OOM kill of a container) takes Python's resource tracker along with the pool.
Linux only: the tests look into ``/dev/shm`` and ``/proc``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mmretrieval.ingest.chunks import new_shared_memory, remove_leftover_shared_memory
from test_ingest import write_good_images

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/dev/shm and /proc are Linux's")

# Decodes slowly in two workers, and says so once the first result is in: the test then signals the group.
_SLOW_POOL = """
import sys, time
from pathlib import Path
from mmretrieval.images.preprocess import ImagePreparer
from mmretrieval.ingest.batches import DecodeTask
from mmretrieval.ingest.pool import DecodePool
from mmretrieval.ingest.reader import decode_file


def slow_decode(task, preparer):
    time.sleep(0.3)
    return decode_file(task, preparer)


if __name__ == "__main__":
    paths = sorted(Path(sys.argv[1]).glob("*.jpg")) * 50
    pool = DecodePool(ImagePreparer('{"size": 32}'), workers=2, decode=slow_decode)
    try:
        for number, batch in enumerate(pool.batches([DecodeTask(i, str(p)) for i, p in enumerate(paths)], 4)):
            if number == 0:
                print("decoding", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
"""


def _start_slow_pool(tmp_path) -> subprocess.Popen:
    write_good_images(tmp_path / "photos", 4)
    script = tmp_path / "slow_pool.py"
    script.write_text(_SLOW_POOL)
    pool = subprocess.Popen([sys.executable, str(script), str(tmp_path / "photos")], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert pool.stdout.readline() == "decoding\n", pool.stderr.read()
    return pool


def _blocks_of(pid: int) -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith(f"mmr_{pid}_")}


def test_ctrl_c_stops_the_pool_without_a_traceback_from_its_workers(tmp_path):
    pool = _start_slow_pool(tmp_path)
    os.killpg(pool.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the parent and every worker get it
    out, err = pool.communicate(timeout=60)
    assert (pool.returncode, out) == (130, "interrupted\n")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_a_killed_groups_shared_memory_is_removed_by_the_next_run(tmp_path):
    pool = _start_slow_pool(tmp_path)
    assert _blocks_of(pool.pid), "the pool's chunks and headers are named after it"
    os.killpg(pool.pid, signal.SIGKILL)  # the resource tracker dies too: nobody unlinks the blocks
    pool.wait()
    leftovers = _blocks_of(pool.pid)
    assert leftovers  # what used to stay in /dev/shm until a reboot
    mine = new_shared_memory(16)  # a live process's block is not touched
    try:
        assert not set(remove_leftover_shared_memory()) & leftovers  # too young: a maker may not hold them yet
        assert set(remove_leftover_shared_memory(min_age_s=0)) >= leftovers
        assert not _blocks_of(pool.pid) and mine.name in os.listdir("/dev/shm")
    finally:
        mine.close()
        mine.unlink()


def test_a_held_block_is_kept_whatever_process_id_its_name_gives(tmp_path):
    """Containers of one pod share /dev/shm but not process ids: a live block there may name a process id that
    has ended here. Its maker's lock keeps it."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True).stdout.strip()
    mine = new_shared_memory(16)
    elsewhere = f"/dev/shm/mmr_{ended}_{mine.name.rsplit('_', 1)[1]}"
    os.rename(f"/dev/shm/{mine.name}", elsewhere)  # as another namespace's maker would name it
    try:
        assert os.path.basename(elsewhere) not in remove_leftover_shared_memory(min_age_s=0)
        assert os.path.exists(elsewhere)
        mine.close()  # its maker is done with it: now it is a leftover
        assert os.path.basename(elsewhere) in remove_leftover_shared_memory(min_age_s=0)
    finally:
        mine.close()
        if os.path.exists(elsewhere):
            os.unlink(elsewhere)
        from multiprocessing import resource_tracker

        resource_tracker.unregister(f"/{mine.name}", "shared_memory")  # renamed away: nothing for it to unlink


def _forkserver_importing_numpy(parent: int, timeout_s: float = 120.0) -> int | None:
    """The pid of ``parent``'s forkserver once it has mapped numpy (its preload, ``ingest.reader``, is being
    imported), polled every millisecond; None if ``parent`` ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) != parent:
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if b"multiprocessing.forkserver" not in cmdline.read():
                        continue
                with open(f"/proc/{entry}/maps") as maps:
                    if "numpy" in maps.read():
                        return int(entry)
            except (OSError, IndexError, ValueError):
                continue
        if not os.path.exists(f"/proc/{parent}"):
            return None
        time.sleep(0.001)
    return None


def test_ctrl_c_while_the_workers_forkserver_starts_prints_no_traceback(tmp_path):
    """The forkserver imports the decoding code before it serves; a Ctrl-C then printed a KeyboardInterrupt
    traceback from that import (and the header of the worker being started leaked)."""
    write_good_images(tmp_path / "photos", 4)
    command = [sys.executable, "-m", "mmretrieval.cli", "classify", str(tmp_path / "photos"), "--labels",
               "red circle,blue square", "--workers", "2", "--device", "cpu"]
    classify = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": os.getcwd(), "HF_HUB_OFFLINE": "1"})
    caught = _forkserver_importing_numpy(classify.pid)
    os.killpg(classify.pid, signal.SIGINT)
    _, err = classify.communicate(timeout=120)
    assert caught is not None, "the forkserver was not seen importing its preload"
    assert classify.returncode == 130 and "interrupted" in err, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "leaked" not in err, err


_AFTER_A_POOL = """
import multiprocessing, signal, sys
from mmretrieval.images.preprocess import ImagePreparer
from mmretrieval.ingest.batches import DecodeTask
from mmretrieval.ingest.pool import DecodePool


def report(queue):
    queue.put(signal.getsignal(signal.SIGINT) is signal.default_int_handler)


if __name__ == "__main__":
    list(DecodePool(ImagePreparer('{"size": 32}'), workers=1).run([DecodeTask(1, sys.argv[1])]))
    context = multiprocessing.get_context("forkserver")  # the same forkserver, now serving the caller's process
    queue = context.Queue()
    process = context.Process(target=report, args=(queue,))
    process.start()
    print("interruptible" if queue.get(timeout=60) else "deaf to Ctrl-C")
    process.join()
"""


def test_the_callers_own_forkserver_processes_still_get_ctrl_c(tmp_path):
    """The forkserver is one per process: what the pool's preload does to SIGINT must not reach the processes that
    the caller's own code starts from it afterwards (forkserver is Python 3.14's default on Linux)."""
    write_good_images(tmp_path / "photos", 1)
    script = tmp_path / "after_a_pool.py"
    script.write_text(_AFTER_A_POOL)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "photos" / "good00.jpg")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.stdout.strip() == "interruptible", done.stderr


# Slows the forkserver's own start-up, before any module it is told to preload: the interpreter's import of
# multiprocessing.forkserver (the `-c` code it runs) waits here, with the pid written where the test looks.
_SLOW_FORKSERVER_START = """
import os, sys, time


class _SlowForkserver:
    def find_spec(self, name, path=None, target=None):
        if name == "multiprocessing.forkserver" and sys.argv == ["-c"]:
            with open(os.environ["SLOW_FORKSERVER_PID"] + ".tmp", "w") as marker:
                marker.write(str(os.getpid()))
            os.rename(os.environ["SLOW_FORKSERVER_PID"] + ".tmp", os.environ["SLOW_FORKSERVER_PID"])
            time.sleep(2)
        return None


sys.meta_path.insert(0, _SlowForkserver())
"""


def test_ctrl_c_before_the_forkserver_imports_anything_is_dropped(tmp_path):
    """A Ctrl-C while the forkserver's interpreter is still starting, before its first preloaded module can ignore
    it, killed the forkserver with a KeyboardInterrupt traceback; the pool must not notice it at all."""
    write_good_images(tmp_path / "photos", 1)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_SLOW_FORKSERVER_START)
    script = tmp_path / "after_a_pool.py"
    script.write_text(_AFTER_A_POOL)
    marker = tmp_path / "forkserver.pid"
    pool = subprocess.Popen([sys.executable, str(script), str(tmp_path / "photos" / "good00.jpg")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{os.getcwd()}",
                                 "SLOW_FORKSERVER_PID": str(marker)})
    deadline = time.monotonic() + 60
    while not marker.exists() and pool.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), "the forkserver was not seen starting"
    os.kill(int(marker.read_text()), signal.SIGINT)
    out, err = pool.communicate(timeout=120)
    assert pool.returncode == 0 and out.strip() == "interruptible", err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_the_feeders_put_survives_a_get_that_a_signal_cut_short():
    """A SIGTERM raised inside the consumer's Queue.get took an item without notifying the feeder's put, which then
    waited forever while the consumer, unwinding, drained an empty queue: `mmr ingest` hung after SIGTERM in CI.
    The handoff's put looks again for room (here the item is taken as the interrupted get took it: no notify), and
    gives up once the consumer has stopped."""
    import threading

    from mmretrieval.ingest.pool import Handoff

    stop = threading.Event()
    handoff = Handoff(1, stop)
    handoff.put("first")
    done = threading.Event()
    putter = threading.Thread(target=lambda: (handoff.put("second"), done.set()), daemon=True)
    putter.start()
    time.sleep(0.3)
    assert not done.is_set()  # no room yet
    with handoff.queue.mutex:
        handoff.queue.queue.popleft()  # taken, and nobody told the waiting put
    assert done.wait(2) and handoff.get(timeout=1) == "second"

    handoff.put("third")
    stop.set()  # the consumer is gone: a put into a full queue returns instead of waiting for it
    started = time.monotonic()
    handoff.put("fourth")
    assert time.monotonic() - started < 1


def test_a_second_ctrl_c_while_the_pool_stops_still_frees_its_shared_memory(tmp_path, monkeypatch):
    """A terminal sends Ctrl-C to the whole group, and people press it twice: the second one, landing while the
    pool waited for its feeder to stop the workers, escaped that wait, so the shared memory was never freed (the
    resource tracker warned of 13 leaked blocks) and Python printed an ignored-exception traceback. The second
    one is let go: the pool is stopping already."""
    from mmretrieval.images.preprocess import ImagePreparer
    from mmretrieval.ingest import pool as pool_module
    from mmretrieval.ingest.batches import DecodeTask
    from mmretrieval.ingest.pool import DecodePool

    paths = write_good_images(tmp_path / "photos", 4) * 250  # the feeder is still at work after the first batch
    get = pool_module.Handoff.get
    pressed = []

    def second_ctrl_c(self, timeout=None):
        if timeout is not None and not pressed:  # the first wait of the stop
            pressed.append(True)
            raise KeyboardInterrupt
        return get(self, timeout) if timeout is not None else get(self)

    monkeypatch.setattr(pool_module.Handoff, "get", second_ctrl_c)
    pool = DecodePool(ImagePreparer('{"size": 32}'), workers=1)
    batches = pool.batches([DecodeTask(i, str(path)) for i, path in enumerate(paths)], 4)
    next(batches)
    batches.close()  # the first Ctrl-C's unwinding, as a consumer stopping early
    assert pressed and not _blocks_of(os.getpid())
