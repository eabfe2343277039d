"""Crash-safe file writes: write under a temporary name, fsync, rename over the target, fsync the directory.

A reader (or a process restarted after SIGKILL or a power cut) sees either the old file or the new one,
never a truncated mix. New files get the mode the process umask allows (``0666 & ~umask``), as ``open``
would give them: the temporary is created with mode 0666 and the kernel applies the umask. FAISS's own ``write_index`` is not atomic, so the index goes through here too.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or unlink in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is fsynced and renamed over ``target``.

    On an exception the temporary file is removed and ``target`` is left as it was. ``durable=False`` skips
    the fsyncs: still never a half-written ``target``, but a power cut may lose the file (for bulk files
    that are cheap to make again).
    """
    target = Path(target)
    tmp = _create_temporary(target)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)


def _create_temporary(target: Path) -> Path:
    # Not tempfile.mkstemp: it forces mode 0600 whatever the umask, so shared collections became private.
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name next to {target}")


def atomic_write_bytes(target: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``target`` atomically (and durably, unless ``durable=False``)."""
    with atomic_path(target, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically and durably."""
    atomic_write_bytes(target, text.encode("utf-8"))


def remove_stale_temporaries(directory: str | os.PathLike, name_glob: str) -> list[Path]:
    """Delete temporaries that :func:`atomic_path` left for targets matching ``name_glob`` in ``directory``.

    A process killed mid-write (SIGKILL, power cut) leaves its ``.<name>.<random>.tmp`` behind. Call this only
    while holding the lock every writer of those targets holds (a collection's :func:`exclusive_lock`): then
    no write is in progress and every such temporary is stale. (Judging by age instead let two processes
    unlink each other's files.)

    Returns:
        The paths removed.
    """
    removed = []
    for path in Path(directory).glob(f".{name_glob}.*.tmp"):
        try:
            if path.is_file():
                path.unlink()
                removed.append(path)
        except OSError:
            continue  # gone already, or not ours to remove: it only costs disk space
    return removed


@contextmanager
def exclusive_lock(path: str | os.PathLike, busy_message: str | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the ``with`` block.

    The operating system drops the lock when its holder dies, SIGKILL included, so a crash never leaves a
    collection locked. With no ``busy_message`` it waits for another holder instead of failing.

    Raises:
        CollectionError: another process holds the lock (``busy_message`` says what to do).
    """
    import fcntl

    from .errors import CollectionError

    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (fcntl.LOCK_NB if busy_message else 0))
        except BlockingIOError as exc:
            raise CollectionError(busy_message) from exc
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read a megabyte at a time (for checksummed manifests and model identities)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
