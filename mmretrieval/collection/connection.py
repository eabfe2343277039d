"""Connections to a catalog's SQLite file, and what to say when one cannot be made.

A writable connection uses WAL with ``synchronous=FULL``. A read-only one must still see a writer's commits,
which SQLite reads from the WAL through its shared-memory file (``-shm``): where that file cannot be made, the
catalog opens without it only when no commit can be missed. Opening errors are sorted so that only a file that
is not SQLite is ever called something to move away: a full disk says so, and anything else names the error.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Callable

from ..errors import CatalogFull, CollectionError

_MMAP_BYTES = 2 << 30  # catalog bytes SQLite may map; address space, not memory
# new catalogs' page size: a quarter of the B-tree pages to split and write per inserted row of SQLite's
# default 4 KiB; a 10 M import ran at 191,762 vectors/s instead of 175,803
_PAGE_BYTES = 16_384
_SQLITE_HEADER = b"SQLite format 3\0"  # how every SQLite database file begins
_WAL_HEADER_BYTES = 32  # a WAL no longer than its header holds no commits
# SQLite's side files need tens of KiB: with less free than this, a write that failed is the disk being full
_LOW_SPACE_BYTES = 1 << 20
# SQLite's primary result codes (sqlite3 names them from Python 3.11 only)
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 8, 10, 11, 13, 14


def connect(path: Path, writable: bool, check: Callable[[sqlite3.Connection], None] | None = None
            ) -> sqlite3.Connection:
    """A connection to the catalog at ``path``, made writable (and the file with it) or read-only; ``check`` sees it
    before any setting is made (a writable open puts the file in WAL mode: not what another program's database
    should get), and may raise."""
    if not writable:
        db = _connect_read_only(path)
        try:
            if check is not None:
                check(db)
        except BaseException:
            db.close()
            raise
        return db
    new = not path.exists()
    pragmas = [f"page_size={_PAGE_BYTES}"] if new else []  # (a page size is fixed once a database is in WAL mode)
    return _open(str(path), *pragmas, "journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", check=check)


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """Read-only, and never without the WAL's commits. SQLite reads the WAL through its shared-memory file
    (``-shm``), which it makes beside the catalog if missing. Where it cannot (a folder not writable, a full
    disk), a catalog whose WAL is empty opens ``immutable`` (which ignores the WAL); on a read-only file system,
    where no process can be writing, the WAL is indexed in this process's memory instead (``EXCLUSIVE``, and no
    locks: ``unix-none``); anywhere else it is refused, with the fix."""
    if not path.is_file():
        raise CollectionError(f"no catalog at {path}")
    uri = path.absolute().as_uri()
    try:  # still seeing a writer's commits
        return _open(f"{uri}?mode=ro")
    except sqlite3.OperationalError as exc:
        if _primary_code(exc) not in (None, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CANTOPEN):
            raise  # busy, or damaged: not a -shm that cannot be made
        no_shm = exc
    if not _wal_has_commits(path):
        return _open(f"{uri}?immutable=1")
    if os.statvfs(path.parent).f_flag & os.ST_RDONLY:  # no locks needed: no process can write here
        return _open(f"{uri}?mode=ro&vfs=unix-none", "locking_mode=EXCLUSIVE")  # (EXCLUSIVE: the index in memory)
    raise CollectionError(
        f"{path.name}-wal in {path.parent} holds commits that SQLite reads only through {path.name}-shm, which "
        f"it cannot make there ({no_shm}); open the collection once where its folder is writable (any mmr "
        f"command copies the WAL into the catalog), or copy {path.name}-shm along with the catalog and its WAL"
    ) from no_shm


def _open(target: str, *pragmas: str, check: Callable[[sqlite3.Connection], None] | None = None
          ) -> sqlite3.Connection:
    """A connection to ``target`` (a path, or a ``file:`` URI) that has passed ``check``, set ``pragmas`` and read
    the schema, so that a catalog SQLite cannot read fails here, not at its first query; closed again if it does."""
    db = sqlite3.connect(target, uri=target.startswith("file:"), isolation_level=None, check_same_thread=False,
                         timeout=30)
    try:
        if check is not None:
            check(db)
        for pragma in pragmas:
            db.execute(f"PRAGMA {pragma}")
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return _mapped(db)
    except BaseException:
        db.close()
        raise


def _wal_has_commits(path: Path) -> bool:
    """Whether the catalog's WAL may hold commits not in the database file (a longer one may hold only
    checkpointed ones: telling those apart would mean reading it as SQLite does)."""
    try:
        return os.path.getsize(f"{path}-wal") > _WAL_HEADER_BYTES
    except FileNotFoundError:
        return False


def open_error(path: Path, exc: sqlite3.DatabaseError) -> CollectionError:
    """What to tell the user when SQLite cannot open the catalog at ``path``. Only a file that is not a SQLite
    database is to be moved away; a full disk is named as such; anything else names the error and no remedy
    that would throw away labels and imports."""
    code = _primary_code(exc)
    if not _is_sqlite_file(path):
        return CollectionError(f"{path} is not a SQLite database ({exc}), so not a catalog: restore it from a "
                               "backup (README: Backups), or re-ingest into a new --collection")
    free_bytes = shutil.disk_usage(path.parent).free
    if code == _SQLITE_FULL or (code in (None, _SQLITE_IOERR) and free_bytes < _LOW_SPACE_BYTES):
        return CatalogFull(f"the disk holding {path.parent} is full ({free_bytes:,} bytes free), so SQLite cannot "
                           f"write beside the catalog ({exc}); the catalog is unharmed: free some space there and "
                           "run the command again")
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)  # (Python 3.11+)
    remedy = ("; restore it from a backup (README: Backups), or re-ingest into a new --collection"
              if code == _SQLITE_CORRUPT else "")  # (sqlite3's .recover failed on a catalog cut short, tried)
    return CollectionError(f"cannot open the catalog {path}: {exc} ({name}); the file is left as it was{remedy}")


def _is_sqlite_file(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except OSError:
        return True  # unreadable is no proof that it is something else
    return header in (_SQLITE_HEADER, b"")  # (SQLite makes an empty file a database)


def is_corrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying the database is damaged (SQLITE_CORRUPT, any of its extended codes), which a
    command meets only when a query reaches a damaged page: the face that shows it names `mmr check` and a backup."""
    return isinstance(exc, sqlite3.DatabaseError) and _primary_code(exc) == _SQLITE_CORRUPT


def _primary_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of ``exc`` (its extended code's low byte); None before Python 3.11."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def checkpoint_wal(path: Path) -> None:
    """Copy what the WAL holds into the database, not waiting for readers or the writer (``PASSIVE``)."""
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        db.close()


def _mapped(db: sqlite3.Connection) -> sqlite3.Connection:
    """Read the catalog through a memory map (page cache, not a copy per read): a query re-ranking 800
    candidates of a 10 M collection looks up their places in 3 ms instead of 6 (SQLite caps the size)."""
    db.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
    return db


class ClosedConnection:
    """Stands in for the connection of a closed catalog, so that every use of it (in :mod:`.catalog`, :mod:`.places`,
    :mod:`.label_sets`) says what happened and what to do, not sqlite3's "Cannot operate on a closed database"."""

    def __init__(self, directory: Path):
        self._directory = directory

    def __getattr__(self, name: str) -> object:
        raise CollectionError(f"the collection at {self._directory} was closed (close() or the end of its `with` "
                              "block); open it again with Collection.open to use it")
