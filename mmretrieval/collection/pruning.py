"""Pruning: the catalog rows whose file is gone, found a page at a time and deleted, and the rule for gone.

:class:`PrunedRows` is mixed into :class:`~mmretrieval.collection.catalog.Catalog` beside
:class:`~mmretrieval.collection.places.VectorPlaces`. Memory: one page of rows (:data:`PRUNE_PAGE`) and the ids of
the rows going, whatever the collection's size.
"""

from __future__ import annotations

import errno
import itertools
import os
import sqlite3
import stat
from contextlib import AbstractContextManager
from typing import Iterable, Iterator, Sequence

from .migrations import NOT_OK
from .sql_keys import IN_LIST_SIZE, key_range

PRUNE_PAGE = 10_000  # rows under a pruned folder read per query
_NOT_OK_STATUSES = ("pending", "failed", "skipped")  # every status but ``ok``, in the order a prune reads them


class PrunedRows:
    """Deleting the rows of vanished files (needs ``transaction``, ``_query``, ``_bump_generation``)."""

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...  # provided by Catalog
    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]: ...
    def _bump_generation(self) -> int: ...

    def prune_missing(self, folders: Sequence[bytes] = (), paths: Iterable[bytes] = (),
                      keep_under: Sequence[bytes] = (), not_ok_only: bool = False) -> int:
        """Delete rows whose file is gone, only under ``folders`` (each an absolute path ending in a separator,
        as bytes) or among ``paths``, never under ``keep_under`` (folders that could not be listed); returns how
        many went. The caller has checked that the folders are there: nothing else is pruned. What counts as gone
        is :func:`vanished`'s rule (an image row goes once its path names no regular file).

        The rows under a folder are read a page at a time in path order (the prefix is a range of the path
        index), so a prune over 10 M rows holds one page and the ids of the rows going, not every path.
        ``not_ok_only`` looks only at rows that are not ``ok`` (pending, failed, skipped; read along the status
        index): an ingest prunes those before it embeds, so that it never decodes a file that is gone, and the
        rest after, so that the vectors of moved files are there to be reused by content hash.
        """
        gone: set[int] = set()

        def check(rows: list[tuple]) -> None:
            gone.update(id_ for id_, path, status in rows
                        if not any(path.startswith(kept) for kept in keep_under) and vanished(path, status))

        for folder in folders:
            if not_ok_only:
                for status in _NOT_OK_STATUSES:
                    for rows in self._not_ok_rows_under(folder, statuses=(status,)):
                        check([(id_, path, status) for id_, path in rows])
            else:
                for rows in self._rows_under(folder):
                    check(rows)
        given = iter(paths)  # a stream: the entries of a list file are never held whole
        condition = f" AND {NOT_OK}" if not_ok_only else ""
        while chunk := list(itertools.islice(given, IN_LIST_SIZE)):
            check(self._query(f"SELECT id, path, status FROM images WHERE path IN ({','.join('?' * len(chunk))})"
                              f"{condition}", chunk))
        if gone:
            with self.transaction() as db:
                db.executemany("DELETE FROM images WHERE id = ?", [(id_,) for id_ in sorted(gone)])
                self._bump_generation()
        return len(gone)

    def _rows_under(self, folder: bytes) -> Iterator[list[tuple[int, bytes, str]]]:
        """Pages of ``(id, path, status)`` of the rows under ``folder`` (ending in a separator), in path order."""
        after, upper = key_range(folder)
        while rows := self._query(f"SELECT id, path, status FROM images WHERE path > ? AND path < ? ORDER BY path "
                                  f"LIMIT {PRUNE_PAGE}", (after, upper)):
            yield rows
            after = rows[-1][1]

    def _not_ok_rows_under(self, prefix: bytes, statuses: Sequence[str] = _NOT_OK_STATUSES
                           ) -> Iterator[list[tuple[int, bytes]]]:
        """Pages of ``(id, path)`` of the rows with one of ``statuses`` (none ``ok``) whose path starts with
        ``prefix``, a status at a time in id order (the status index holds only rows that are not ``ok``: no sort,
        no pass over the ``ok`` ones)."""
        for status in statuses:
            after = -1
            while page := self._query(f"SELECT id, path FROM images WHERE {NOT_OK} AND status = ? AND id > ? "
                                      f"ORDER BY id LIMIT {PRUNE_PAGE}", (status, after)):
                yield [(id_, path) for id_, path in page if path.startswith(prefix)]
                after = page[-1][0]


def vanished(path: bytes, status: str) -> bool:
    """Whether a row at ``path`` is gone. An image row (``ok``, ``pending``, ``failed``) is gone once its path names
    no regular file, following links: deleted, a folder or FIFO now there, or a link whose file is gone. A
    ``skipped`` row records something the walk met but never opened (a folder it could not list, a FIFO, a broken
    link) and is gone only once nothing is at its path. A path that cannot be looked at now (permissions, an I/O
    error) is not gone: a prune never deletes what it could not check."""
    try:
        info = os.lstat(path) if status == "skipped" else os.stat(path)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return True
    except OSError as exc:
        return exc.errno == errno.ELOOP  # a loop of links names no file
    return status != "skipped" and not stat.S_ISREG(info.st_mode)
