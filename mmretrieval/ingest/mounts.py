"""Drives and shares mounted inside a library: a prune must not take an unmounted drive's images for deleted ones.

An ingest notes the folders it walks that lie on another file system than the folder holding them (mount points,
:func:`~.reader.discover`) in the catalog's ``mount_points`` table. A later ``--prune`` keeps the rows under a
noted folder that is not a mount point now (a drive unplugged, a share not mounted after a reboot: the folder is
then missing, empty, or holds whatever lay under the mount point), and the summary names it; its rows are pruned
once the folder is mounted again, or forgotten (``--forget-mount``). A source folder that is itself empty is
refused whole (:func:`.planning.prune_scope`), noted or not, unless ``--forget-mount`` names it.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from ..collection.catalog import Catalog, encode_path
from ..errors import CollectionError

SEP = os.sep.encode()


def folder_key(path: str) -> bytes:
    """The catalog key of folder ``path``, ending in a separator (as the prune's folders are)."""
    return encode_path(os.path.abspath(path)).rstrip(SEP) + SEP


def folder_name(key: bytes) -> str:
    """The folder a :func:`folder_key` names, as typed (no trailing separator)."""
    return os.fsdecode(key.rstrip(SEP)) or os.sep


def record(catalog: Catalog, mount_points: Sequence[str]) -> None:
    """Note the mount points a walk found (:func:`~.reader.discover`'s ``mount_points``)."""
    if mount_points:
        catalog.record_mount_points([folder_key(path) for path in mount_points], time.time_ns())


def unmounted(catalog: Catalog, folders: Sequence[bytes], anywhere: bool = False) -> list[bytes]:
    """The noted mount points that a prune of ``folders`` (keys ending in a separator) reaches, not mounted now,
    under which the collection holds rows: each once, in path order. A prune reaches a mount point at or under one
    of ``folders``, and one above it (a folder inside the drive pruned alone); with ``anywhere``, every one (a
    prune of listed files, which may lie anywhere)."""
    return [noted for noted in _reached(catalog, folders, anywhere)
            if not os.path.ismount(os.fsdecode(noted)) and catalog.holds_rows_under(noted)]


def forget(catalog: Catalog, paths: Sequence[str], folders: Sequence[bytes], anywhere: bool = False) -> None:
    """Forget the noted mount points ``paths`` (``--forget-mount``), so that a prune of ``folders`` prunes the rows
    under them like any others.

    Raises:
        CollectionError: a path that is no noted mount point a prune of ``folders`` reaches (the message lists
            those there are).
    """
    keys = [folder_key(path) for path in paths]
    noted = _reached(catalog, folders, anywhere)
    unknown = [path for path, key in zip(paths, keys) if key not in noted]
    if unknown:
        known = ", ".join(folder_name(key) for key in noted) or "none"
        raise CollectionError(f"--forget-mount {unknown[0]}: no drive was seen mounted there under the folders "
                              f"pruned (those seen: {known}); nothing was changed")
    catalog.forget_mount_points(keys)


def is_noted(catalog: Catalog, folder: bytes) -> bool:
    """Whether ``folder`` (a key ending in a separator) is a noted mount point."""
    return folder in catalog.mount_points_under(folder)


def _reached(catalog: Catalog, folders: Sequence[bytes], anywhere: bool) -> list[bytes]:
    noted = catalog.mount_points_under(SEP)  # every one: a library has a few drives, not thousands
    return [key for key in noted if anywhere or any(key.startswith(folder) or folder.startswith(key)
                                                    for folder in folders)]
