"""Crash-safe file writes: write under a temporary name, fsync, rename over the target, fsync the directory.

A reader (or a process restarted after SIGKILL or a power cut) sees either the old file or the new one,
never a truncated mix; folders that a command fills (:func:`folder_built_aside`) work the same way.
Temporaries carry their owner (host and process id), so a later run removes those whose owner died. New files
get the mode the process umask allows (``0666 & ~umask``), as ``open`` would give them: the temporary is created
with mode 0666 and the kernel applies the umask. FAISS's own ``write_index`` is not atomic, so the index goes
through here too.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import logging
import os
import secrets
import shutil
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    from .errors import Busy

logger = logging.getLogger(__name__)


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
        tmp = _aside(target, "tmp", digits=12)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name next to {target}")


def _aside(target: str | os.PathLike, kind: str, digits: int = 8) -> Path:
    """A new hidden name beside ``target`` for this process: ``.NAME.<host~pid>.<random>.<kind>``, the form
    :func:`orphans` reads the owner back from."""
    target = Path(target)
    return target.parent / f".{target.name}.{_owner()}.{secrets.token_hex(digits // 2)}.{kind}"


def _owner() -> str:
    """This process, as the names of its temporaries give it: ``host~pid``."""
    return f"{_host()}~{os.getpid()}"


def _host() -> str:
    return socket.gethostname().split(".")[0].replace("~", "-") or "localhost"


def _owner_died(rest: str) -> bool:
    """Whether a temporary whose name goes on with ``rest`` (``host~pid.…``) was left by an ended process of
    this host. Another host's, or a name without an owner, is never judged dead: a run elsewhere on a shared
    folder may still be writing it."""
    host, tilde, pid = rest.split(".", 1)[0].rpartition("~")
    return bool(tilde) and host == _host() and pid.isdigit() and process_ended(int(pid))


def process_ended(pid: int) -> bool:
    """Whether no process of this machine has the id ``pid`` (any more). Another user's is alive, not ended."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def orphans(target: str | os.PathLike) -> list[Path]:
    """What writes of ``target`` by processes that died (SIGKILL, power cut) left beside it: temporary files of
    :func:`atomic_path` and the hidden folders of :func:`folder_built_aside` and :func:`scratch_folder`.
    A live process's are not listed."""
    target = Path(target)
    try:
        candidates = [entry for entry in target.parent.iterdir() if entry.name.startswith(f".{target.name}.")]
    except OSError:
        return []
    return [entry for entry in candidates if _owner_died(entry.name[len(target.name) + 2:])]


def remove_orphans(target: str | os.PathLike) -> list[Path]:
    """Delete the :func:`orphans` of ``target``; a folder moved aside by :func:`folder_built_aside` whose place is
    still empty is put back instead.

    A live process's temporaries are kept, so this needs no lock. Returns the paths removed.
    """
    removed = []
    for entry in orphans(target):
        if entry.name.endswith(".old") and entry.is_dir() and not os.path.lexists(target):
            try:  # the folder itself, renamed aside by a fill that died before the new one took its place
                os.rename(entry, target)
                logger.warning("restored %s, which an interrupted run had moved aside", target)
                continue
            except OSError:
                pass
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            continue  # not ours to remove: it only costs disk space
    return removed


MARKER_NAME = ".mmr-made"  # in a folder that a command filled: which command (it may replace the folder)


# (the entry's path inside the folder, as parts; the entry) -> whether the maker would have written it there
MadeHere = Callable[[tuple[str, ...], os.DirEntry], bool]


def check_fillable_folder(out: str | os.PathLike, maker: str, made_here: MadeHere) -> Path:
    """``out`` (a symlink resolved) if :func:`folder_built_aside` may fill it for ``maker``: a new name, an empty
    folder, or a folder that ``maker`` filled before (it is replaced) and that holds nothing else: every file in
    it passes ``made_here`` (a file someone put in a review folder would otherwise be deleted with it).

    Raises:
        CollectionError: ``out`` is a file, or a folder holding anything else (mixing would lose track of
            what is whose; nothing of it is deleted).
    """
    from .errors import CollectionError

    out = Path(out).expanduser()
    if out.is_symlink() and out.is_dir():
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise CollectionError(f"cannot fill {out}: it is a file, not a folder")
    if not out.is_dir():
        return out
    try:
        with os.scandir(out) as entries:
            if next(entries, None) is None:  # empty
                return out
        made_by = (out / MARKER_NAME).read_text(encoding="utf-8").strip()
    except FileNotFoundError:  # not filled by any of our commands
        made_by = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise CollectionError(f"cannot fill {out}: {getattr(exc, 'strerror', None) or exc}") from exc
    if made_by != maker:
        made = f" (made by {made_by})" if made_by else ""
        raise CollectionError(f"{out} is not empty{made}: its files would mix with these; choose a new folder, or "
                              f"empty it first (a folder that {maker} made is replaced)")
    try:
        stranger = _first_stranger(out, made_here)
    except OSError as exc:
        raise CollectionError(f"cannot fill {out}: {getattr(exc, 'strerror', None) or exc}") from exc
    if stranger is not None:
        raise CollectionError(f"{out} was made by {maker}, which replaces it whole, but it now also holds {stranger}, "
                              "which it did not make: move that out first, or choose a new folder (nothing of it "
                              "is deleted)")
    return out


def _first_stranger(out: Path, made_here: MadeHere) -> Path | None:
    """The first file (not a folder) in ``out`` that ``made_here`` refuses; the marker excepted. None if none."""
    pending: list[tuple[str, tuple[str, ...]]] = [(str(out), ())]
    while pending:
        folder, parts = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                inside = (*parts, entry.name)
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, inside))
                elif inside != (MARKER_NAME,) and not made_here(inside, entry):
                    return Path(entry.path)
    return None


def name_within_limit(prefix: str, name: str, limit_bytes: int = 255) -> str:
    """``prefix + name``, the name's stem shortened (its extension kept) where the whole would pass a file name's
    limit (255 bytes on ext4, APFS, btrfs): a prefix must not make a legal name too long to create."""
    stem, extension = os.path.splitext(name)
    if len(os.fsencode(prefix + extension)) >= limit_bytes:
        stem, extension = name, ""
    while stem and len(os.fsencode(prefix + stem + extension)) > limit_bytes:
        stem = stem[:-1]  # a character at a time: never half of one
    return prefix + (stem or "x") + extension


@contextmanager
def folder_built_aside(out: str | os.PathLike, maker: str, made_here: MadeHere) -> Iterator[Path]:
    """Yield a hidden sibling folder to fill; on success it becomes ``out``, replacing an empty folder or one
    that ``maker`` filled before (:func:`check_fillable_folder`, checked again here).

    An interrupted run leaves ``out`` as it was, and at most its hidden ``.NAME.partial…`` sibling, which the
    next run's :func:`remove_orphans` deletes.

    Raises:
        CollectionError: ``out`` cannot be filled.
        OSError: the folders cannot be written.
    """
    out = check_fillable_folder(out, maker, made_here)
    out.parent.mkdir(parents=True, exist_ok=True)
    missing = not os.path.lexists(out)
    remove_orphans(out)
    if missing and os.path.lexists(out):  # put back from where a killed run had moved it: check it as well
        check_fillable_folder(out, maker, made_here)
    partial = _aside(out, "partial")
    partial.mkdir()  # the umask's mode, as the folder itself would get
    try:
        (partial / MARKER_NAME).write_text(maker + "\n", encoding="utf-8")
        yield partial
        check_fillable_folder(out, maker, made_here)  # nothing else moved in meanwhile
        old = _swap_in(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out.parent)


def _swap_in(partial: Path, out: Path) -> Path | None:
    """Put ``partial`` in the place of ``out``; returns where the folder that was ``out`` went (None: there was
    none). On Linux one ``renameat2(RENAME_EXCHANGE)`` swaps them, so ``out`` never goes missing; elsewhere it is
    renamed aside first, and if this process dies before ``partial`` takes its place, :func:`remove_orphans`
    (run before the next fill) puts it back."""
    if not out.is_dir():
        os.rename(partial, out)
        return None
    if _exchange(partial, out):
        return partial  # which now holds the old folder
    old = _aside(out, "old")
    os.rename(out, old)
    try:
        os.rename(partial, out)
    except BaseException:
        os.rename(old, out)
        raise
    return old


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where that is not
    available (another system, an old kernel or C library, a file system without it)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(first), None, str(second))


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    if sys.platform != "linux":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library before glibc 2.28, say
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


@contextmanager
def scratch_folder(target: str | os.PathLike,
                   keep: Callable[[Path], bool] = lambda scratch: False) -> Iterator[Path]:
    """Yield a new hidden folder beside ``target``, named as its temporaries are (``.NAME.<owner>.<random>.partial``),
    and delete it when the block ends, whether or not it raised, unless ``keep(folder)`` is true then (it holds
    what a later run must take up): a place to write files that are then renamed into place. One that SIGKILL
    or a power cut left is among the :func:`orphans` of ``target``.
    """
    scratch = _aside(target, "partial")
    scratch.mkdir()  # the umask's mode
    try:
        yield scratch
    finally:
        if not keep(scratch):
            shutil.rmtree(scratch, ignore_errors=True)


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
def exclusive_lock(path: str | os.PathLike, busy_message: str | None = None,
                   busy: type[Busy] | None = None, waiting_note: str | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` for the ``with`` block: a file (created if missing), or a folder
    (locked itself, so that nothing is added to it).

    The operating system drops the lock when its holder dies, SIGKILL included, so a crash never leaves a
    collection locked. With no ``busy_message`` it waits for another holder instead of failing, and logs
    ``waiting_note`` (a warning) if it has to.

    Raises:
        CollectionBusy: another process holds the lock (``busy_message`` says what to do); ``busy`` names
            another :class:`~mmretrieval.errors.Busy` to raise instead.
    """
    import fcntl

    from .errors import CollectionBusy

    flags = os.O_RDONLY if os.path.isdir(path) else os.O_RDWR | os.O_CREAT | os.O_APPEND
    descriptor = os.open(path, flags | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            if busy_message:
                raise (busy or CollectionBusy)(busy_message) from exc
            if waiting_note:
                logger.warning("%s", waiting_note)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read a megabyte at a time (for checksummed manifests and model identities)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
