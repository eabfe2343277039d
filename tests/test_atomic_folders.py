"""Folders filled aside and swapped in (mmretrieval.filled_folders), and what killed writers leave behind
(mmretrieval.atomic)."""

import os
import subprocess
import sys

import pytest

from mmretrieval.atomic import atomic_path, remove_orphans
from mmretrieval import filled_folders
from mmretrieval.filled_folders import check_fillable_folder, folder_built_aside
from mmretrieval.errors import CollectionError


def _dead_pid() -> int:
    """The id of a process that has ended (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_writers_leftovers_are_removed_and_a_live_ones_kept(tmp_path):
    target = tmp_path / "labels.csv"
    with atomic_path(target) as live:  # this process is writing it now
        live.write_text("partial")
        dead = _dead_pid()
        stale = [tmp_path / live.name.replace(f"~{os.getpid()}.", f"~{dead}.")]  # a temporary file
        stale.append(tmp_path / stale[0].name.replace(".tmp", ".partial"))  # a folder filled aside
        stale[0].write_text("left by SIGKILL")
        stale[1].mkdir()
        (stale[1] / "link").symlink_to(tmp_path / "labels.csv.orig")
        other_host = tmp_path / ".labels.csv.elsewhere~1.abcd.tmp"  # a run on another machine of a shared folder
        other_host.write_text("theirs")
        unrelated = tmp_path / ".labels.csv-notes"
        unrelated.write_text("mine")
        assert sorted(remove_orphans(target)) == sorted(stale)
        assert live.exists() and other_host.exists() and unrelated.exists()
    assert target.read_text() == "partial" and not live.exists()


def ANYTHING(inside, entry):  # a maker that may have written any file
    return True


def test_a_folder_is_filled_aside_and_replaces_only_what_its_maker_made(tmp_path):
    out = tmp_path / "by-label"
    with folder_built_aside(out, "maker A", ANYTHING) as folder:
        (folder / "red").mkdir()
        assert not out.exists()  # nothing shows until the folder is complete
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["red"]
    with folder_built_aside(out, "maker A", ANYTHING) as folder:  # a re-run replaces the earlier result
        (folder / "blue").mkdir()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["blue"]
    with pytest.raises(CollectionError, match=r"not empty \(made by maker A\)"):
        check_fillable_folder(out, "maker B", ANYTHING)
    with pytest.raises(KeyboardInterrupt), folder_built_aside(out, "maker A", ANYTHING) as folder:
        (folder / "green").mkdir()
        raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["blue"]  # an interrupted run changes nothing
    assert [p.name for p in tmp_path.iterdir()] == ["by-label"]


def test_a_folder_of_other_files_or_a_file_is_refused_and_a_link_is_followed(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(CollectionError, match="not empty: its files would mix"):
        check_fillable_folder(tmp_path / "mine", "maker A", ANYTHING)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CollectionError, match="is a file"):
        check_fillable_folder(tmp_path / "file", "maker A", ANYTHING)
    (tmp_path / "big").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "big")  # a link to a folder elsewhere: fill that folder
    with folder_built_aside(tmp_path / "link", "maker A", ANYTHING) as folder:
        (folder / "red").mkdir()
    assert (tmp_path / "link").is_symlink() and (tmp_path / "big" / "red").is_dir()


_KILLED_FILL = """
import os, signal, sys
from pathlib import Path
from mmretrieval import filled_folders as atomic

out, point = Path(sys.argv[1]), sys.argv[2]
if point == "between-renames":  # where there is no RENAME_EXCHANGE: killed after the old folder is moved aside
    atomic._exchange = lambda first, second: False
    rename, calls = os.rename, []
    def killing_rename(source, target):
        calls.append(source)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        rename(source, target)
    os.rename = killing_rename
else:  # killed just after the exchange, before the old folder is deleted
    exchange = atomic._exchange
    def killing_exchange(first, second):
        assert exchange(first, second), "RENAME_EXCHANGE is not available here"
        os.kill(os.getpid(), signal.SIGKILL)
    atomic._exchange = killing_exchange
with atomic.folder_built_aside(out, "maker A", lambda inside, entry: True) as folder:
    (folder / "new").mkdir()
"""


@pytest.mark.parametrize("point", ["between-renames", "after-exchange"])
def test_a_fill_killed_while_swapping_never_loses_the_folder(tmp_path, point):
    if point == "after-exchange" and filled_folders._renameat2() is None:
        pytest.skip("no renameat2 in this system's C library (not Linux): the two-rename case covers it")
    out = tmp_path / "by-label"
    with folder_built_aside(out, "maker A", ANYTHING) as folder:
        (folder / "old").mkdir()
    killed = subprocess.run([sys.executable, "-c", _KILLED_FILL, str(out), point], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    expected = "old" if point == "between-renames" else "new"
    if point == "after-exchange":  # one step: the new folder is in place at once
        assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["new"]
    remove_orphans(out)  # what the next run does first
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [expected]
    assert [p.name for p in tmp_path.iterdir()] == ["by-label"]
    with folder_built_aside(out, "maker A", ANYTHING) as folder:  # and the next fill replaces it as usual
        (folder / "next").mkdir()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["next"]
