"""Opening a catalog where SQLite cannot write its side files: a read-only copy whose WAL holds commits is read
whole or refused, never served without them; a full disk is named as such, and readers still read; only a file
that is not a SQLite database is called unreadable."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

from mmretrieval.cli import main
from mmretrieval.collection.catalog import CATALOG_NAME, Catalog, CatalogFull, encode_path
from mmretrieval.collection.collection import Collection
from mmretrieval.errors import CollectionError
from test_ingest import write_good_images

_READER = textwrap.dedent("""
    import os, sys
    from mmretrieval.collection.catalog import Catalog
    from mmretrieval.errors import CollectionError

    if os.geteuid() == 0:  # root writes anywhere: become nobody, for whom the folder is truly read-only
        os.setgid(65534)
        os.setuid(65534)
    try:
        catalog = Catalog(sys.argv[1], writable=False)
    except CollectionError as exc:
        print("refused:", exc)
    else:
        print("rows:", catalog.pending_count())
""")


def _add_rows(catalog: Catalog, first: int, count: int) -> None:
    catalog.mark_pending([(encode_path(f"/photos/{i:03d}.png"), 1, 1, None) for i in range(first, first + count)])


def _copy_with_commits_in_wal(tmp_path: Path) -> Path:
    """A copy of a catalog, as of a killed writer: 3 rows in the database file, 2 more only in its WAL, no -shm."""
    (tmp_path / "col").mkdir()
    with_wal = tmp_path / "col" / CATALOG_NAME
    catalog = Catalog(with_wal)
    _add_rows(catalog, 0, 3)
    catalog.close()  # the last connection checkpoints: these rows are in the database file
    catalog = Catalog(with_wal)
    _add_rows(catalog, 3, 2)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "col", copy, ignore=shutil.ignore_patterns("*-shm"))  # open: the WAL still there
    catalog.close()
    assert (copy / f"{CATALOG_NAME}-wal").stat().st_size > 32 and not (copy / f"{CATALOG_NAME}-shm").exists()
    return copy


def _read_where_no_shm_can_be_made(folder: Path) -> str:
    """What a reader for whom ``folder`` is not writable (root: as nobody) gets from its catalog."""
    os.chmod(folder, 0o555)
    try:
        script = folder.parent / "reader.py"
        script.write_text(_READER)
        child = subprocess.run([sys.executable, str(script), str(folder / CATALOG_NAME)], capture_output=True,
                               text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert child.returncode == 0, child.stderr
        return child.stdout.strip()
    finally:
        os.chmod(folder, 0o755)


@pytest.fixture
def shared_tmp():
    """A folder outside pytest's private tmp, so that another user (nobody) can reach it."""
    base = Path(tempfile.mkdtemp(prefix="mmr-catalog-open-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base)


def test_wal_with_commits_in_an_unwritable_folder_is_refused_with_the_fix(shared_tmp):
    copy = _copy_with_commits_in_wal(shared_tmp)
    answer = _read_where_no_shm_can_be_made(copy)
    assert answer.startswith("refused:"), answer  # not "rows: 3", the database file without its WAL
    assert f"{CATALOG_NAME}-wal" in answer and "writable" in answer and f"{CATALOG_NAME}-shm" in answer
    assert Catalog(copy / CATALOG_NAME).pending_count() == 5  # opened once where writable: all there


def test_unwritable_folder_without_wal_commits_still_opens(shared_tmp):
    (shared_tmp / "col").mkdir()
    catalog = Catalog(shared_tmp / "col" / CATALOG_NAME)
    _add_rows(catalog, 0, 3)
    catalog.close()
    assert _read_where_no_shm_can_be_made(shared_tmp / "col") == "rows: 3"


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def mounts():
    """Mount points to unmount when the test ends; skips the test where it may not mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a read-only or full file system needs root")
    points: list[Path] = []
    yield points
    for point in reversed(points):  # lazily if busy (a failed test may still hold a file there): detached all the same
        if subprocess.run(["umount", str(point)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(point)], check=True)


def test_wal_with_commits_on_a_read_only_file_system_is_read_whole(tmp_path, mounts):
    copy = _copy_with_commits_in_wal(tmp_path)
    (tmp_path / "ro").mkdir()
    try:
        _mount("--bind", str(copy), str(tmp_path / "ro"))
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot bind-mount here: {exc.stderr.strip()}")
    mounts.append(tmp_path / "ro")
    _mount("-o", "remount,bind,ro", str(tmp_path / "ro"))
    with closing(Catalog(tmp_path / "ro" / CATALOG_NAME, writable=False)) as catalog:
        assert catalog.pending_count() == 5 and catalog.get_meta("schema") is not None


def test_a_file_that_is_not_sqlite_is_the_only_one_to_re_ingest_for(tmp_path):
    (tmp_path / CATALOG_NAME).write_bytes(b"not a database, but long enough to have a header" * 100)
    with pytest.raises(CollectionError, match="not a SQLite database.*restore it from a backup .README: Backups., or re-ingest "
                                              "into a new --collection"):
        Catalog(tmp_path / CATALOG_NAME)


@pytest.mark.parametrize("loss", ["moved away", "emptied", "no model recorded"])
def test_a_lost_catalog_is_not_started_afresh_beside_its_vectors(tmp_path, tiny_encoder, tiny_model_dir, loss,
                                                                 capsys):
    """A new catalog would number the images afresh: the old index would then name the wrong images, and the old
    segments would be removed as an interrupted write's leftovers (a walkthrough saw both)."""
    folder = tmp_path / "col"
    write_good_images(tmp_path / "photos", 3)
    with Collection.open(folder, model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)  # saves the index on its way out
    if loss == "moved away":
        (folder / CATALOG_NAME).rename(tmp_path / "old.sqlite")
    elif loss == "emptied":
        (folder / CATALOG_NAME).write_bytes(b"")
    else:
        with closing(Catalog(folder / CATALOG_NAME)) as catalog, catalog.transaction():
            catalog.set_meta("model_identity", "")
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(CollectionError, match=f"the catalog of {folder} is (missing|empty|without the model it was "
                                              "made with), but the folder still holds "
                                              "segments/ and index.json from one.*start over: move the folder away"):
        Collection.open(folder, model=tiny_encoder, create=True)
    for command in (["ingest", str(tmp_path / "photos")], ["info"], ["search", "red"]):
        assert main([*command, "--collection", str(folder)]) != 0
        err = capsys.readouterr().err
        assert "still holds segments/ and index.json" in err
        assert "a new collection with the bundled demo model" not in err  # announced, then refused, it was
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_folder_with_an_index_json_of_its_own_is_no_lost_catalog(tmp_path, tiny_encoder):
    """Only a collection's own segments and index manifest count as a lost catalog's: a project's index.json, or a
    folder named segments/ holding videos, is nothing of ours."""
    (tmp_path / "project" / "segments").mkdir(parents=True)
    (tmp_path / "project" / "index.json").write_text('{"name": "my site"}')
    (tmp_path / "project" / "segments" / "intro.mp4").write_bytes(b"x")
    with pytest.raises(CollectionError, match="no collection at"):
        Collection.open(tmp_path / "project")
    (tmp_path / "project" / "index.json").unlink()
    with Collection.open(tmp_path / "project", model=tiny_encoder, create=True) as col:
        assert col.catalog.vector_count() == 0
    assert (tmp_path / "project" / "segments" / "intro.mp4").read_bytes() == b"x"


@pytest.mark.parametrize("theirs", [["index.json"], ["index-1.faiss", "index-2.faiss"], ["confidence.npz"]])
def test_a_new_collection_is_not_made_over_files_it_would_replace(tmp_path, tiny_encoder, theirs, capsys):
    """Saving an index replaces index.json and removes every other index-*.faiss: a folder of another tool's FAISS
    indexes passed as --collection lost them."""
    folder = tmp_path / "work"
    folder.mkdir()
    for name in theirs:
        (folder / name).write_bytes(b"someone else's " + name.encode())
    write_good_images(tmp_path / "photos", 3)
    with pytest.raises(CollectionError, match=f"{folder} holds {', '.join(theirs)}, which a new collection there "
                                              "would overwrite or remove; pass a new or empty folder"):
        Collection.open(folder, model=tiny_encoder, create=True)
    assert main(["ingest", str(tmp_path / "photos"), "--collection", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "would overwrite or remove" in err
    assert ("is the match hint's cache, maybe of a collection removed from there: delete it" in err) == \
        (theirs == ["confidence.npz"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(theirs)
    (folder / "catalog.sqlite").write_bytes(b"")  # an empty catalog beside them (a failed copy): the same
    with pytest.raises(CollectionError, match="would overwrite or remove"):
        Collection.open(folder, model=tiny_encoder, create=True)


@pytest.mark.parametrize("text, said", [("{}", "it lacks model_key, dim, index_type, params, count, generation"),
                                         ("[1, 2]", "it holds a JSON list, not an object"),
                                         ('{"model_key": "x", "dim": 2, "index_type": "flat", "params": {}, '
                                          '"count": 0, "generation": 0, "colour": "red"}',
                                          "it has fields an index manifest has not (colour)")])
def test_another_programs_index_json_is_named_as_such_not_as_a_python_error(tmp_path, text, said, caplog):
    """A folder holding another tool's index.json was refused rightly, after a warning that quoted Python's
    "Manifest.__init__() missing 6 required positional arguments"."""
    from mmretrieval.collection.index_manifest import read_manifest

    (tmp_path / "index.json").write_text(text)
    with caplog.at_level(logging.WARNING):
        assert read_manifest(tmp_path) is None
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [f"unreadable index manifest {tmp_path / 'index.json'}: {said}, so it is not one that mmr wrote"]


def test_another_programs_sqlite_database_is_not_made_a_catalog(tmp_path, tiny_encoder):
    import sqlite3

    with closing(sqlite3.connect(tmp_path / CATALOG_NAME)) as db:
        db.execute("CREATE TABLE albums (name TEXT)")
        db.execute("INSERT INTO albums VALUES ('summer')")
        db.commit()
    before = (tmp_path / CATALOG_NAME).read_bytes()
    for writable in (True, False):
        with pytest.raises(CollectionError, match="is a SQLite database but not an mmretrieval catalog .it holds "
                                                  "tables albums, and no catalog schema version."):
            Catalog(tmp_path / CATALOG_NAME, writable=writable)
    with pytest.raises(CollectionError, match="not an mmretrieval catalog"):
        Collection.open(tmp_path, model=tiny_encoder, create=True)
    assert (tmp_path / CATALOG_NAME).read_bytes() == before


def test_a_catalog_cut_short_is_named_with_the_way_out(tmp_path):
    """A truncated catalog got an error with no remedy (crash walkthrough)."""
    import sqlite3

    with closing(sqlite3.connect(tmp_path / CATALOG_NAME)) as db:
        db.execute("PRAGMA page_size = 1024")
        db.execute("CREATE TABLE t (x BLOB)")
        db.executemany("INSERT INTO t VALUES (randomblob(900))", [()] * 50)
        db.commit()
    with open(tmp_path / CATALOG_NAME, "r+b") as handle:
        handle.truncate(4096)
    with pytest.raises(CollectionError, match="malformed.*the file is left as it was; restore it from a backup "
                                              r"\(README: Backups\), or re-ingest into a new --collection"):
        Catalog(tmp_path / CATALOG_NAME)


def test_a_catalog_with_no_tables_yet_opened_read_only_may_be_a_first_ingest_under_way(tmp_path):
    """What a reader meets between a first ingest's creating the file and its tables: told to try again."""
    import sqlite3

    sqlite3.connect(tmp_path / CATALOG_NAME).close()  # an empty database, as SQLite makes it first
    with pytest.raises(CollectionError, match="has no tables yet.*a first ingest may be creating it"):
        Catalog(tmp_path / CATALOG_NAME, writable=False)


_SMALL_FILES = textwrap.dedent("""
    import resource, signal, sys
    from mmretrieval.collection.catalog import Catalog
    from mmretrieval.errors import CollectionError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # too small for SQLite's shared-memory file
    try:
        Catalog(sys.argv[1])
    except CollectionError as exc:
        print(type(exc).__name__, exc)
""")


def test_other_failures_name_the_file_and_the_error_and_advise_no_deletion(tmp_path):
    Catalog(tmp_path / CATALOG_NAME).close()
    script = tmp_path / "small_files.py"
    script.write_text(_SMALL_FILES)
    child = subprocess.run([sys.executable, str(script), str(tmp_path / CATALOG_NAME)], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("CollectionError ") and str(tmp_path / CATALOG_NAME) in child.stdout
    assert "I/O error" in child.stdout and "move it away" not in child.stdout and "re-ingest" not in child.stdout


def test_full_disk_is_named_and_readers_still_read(tmp_path, mounts, tiny_encoder, capsys):
    write_good_images(tmp_path / "photos", 3)
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True) as col:
        col.ingest([tmp_path / "photos"], workers=0)
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk))
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc.stderr.strip()}")
    mounts.append(disk)
    shutil.copytree(tmp_path / "col", disk / "col")
    with open(disk / "fill", "wb", buffering=0) as fill, pytest.raises(OSError, match="No space"):
        while True:
            fill.write(bytes(65_536))
    with pytest.raises(CatalogFull, match=re.escape(f"{disk / 'col'} is full (0 bytes free)") + ".*unharmed"):
        Catalog(disk / "col" / CATALOG_NAME)
    with pytest.raises(CatalogFull):
        Collection.open(disk / "col", writer="ingest")
    with Collection.open(disk / "col") as col:  # a reader: read-only, as on a read-only disk
        assert col.catalog.writable is False and col.catalog.counts_by_status() == {"ok": 3}
        assert len(col.search("x", k=10)) == 3
    capsys.readouterr()
    assert main(["info", "--collection", str(disk / "col")]) == 0
    assert "ok=3" in capsys.readouterr().out
    (disk / "fill").unlink()
    with Collection.open(disk / "col", writer="ingest") as col:
        assert col.catalog.writable and col.catalog.counts_by_status() == {"ok": 3}


_LIMITED_INGEST = textwrap.dedent("""
    import resource, sys
    from mmretrieval.cli import main

    resource.setrlimit(resource.RLIMIT_FSIZE, (40 << 10, resource.RLIM_INFINITY))  # `ulimit -f 40`
    sys.exit(main(["ingest", sys.argv[1], "--collection", sys.argv[2], "--workers", "0"]))
""")


def test_a_first_ingest_that_cannot_write_its_catalog_leaves_no_collection(tmp_path):
    """Past a file size limit the new catalog cannot be written: the folder made for it must not stay behind
    with a 16 KB catalog that pins the model the user may be about to change."""
    write_good_images(tmp_path / "photos", 2)
    new = tmp_path / "new"
    done = subprocess.run([sys.executable, "-c", _LIMITED_INGEST, str(tmp_path / "photos"), str(new)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "catalog" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not new.exists()
