"""Signals to a whole process group while the decoding pool runs: Ctrl-C in a terminal reaches the workers too,
and ``kill -9 -PGID`` (or an OOM kill of a container) takes Python's resource tracker along with the pool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from mmretrieval.ingest.chunks import new_shared_memory, remove_leftover_shared_memory
from test_ingest import write_good_images

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
        assert set(remove_leftover_shared_memory()) >= leftovers
        assert not _blocks_of(pool.pid) and mine.name in os.listdir("/dev/shm")
    finally:
        mine.close()
        mine.unlink()
