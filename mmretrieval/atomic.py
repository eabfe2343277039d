"""Crash-safe file writes: write under a temporary name, fsync, rename over the target, fsync the directory.

A reader (or a process restarted after SIGKILL or a power cut) sees either the old file or the new one,
never a truncated mix; folders that a command fills (:mod:`mmretrieval.filled_folders`) work the same way.
Temporaries carry their owner (host and process id), so a later run removes those whose owner died. New files
get the mode the process umask allows (``0666 & ~umask``), as ``open`` would give them: the temporary is created
with mode 0666 and the kernel applies the umask. FAISS's own ``write_index`` is not atomic, so the index goes
through here too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import threading
import time
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
        tmp = aside_path(target, "tmp", digits=12)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name next to {target}")


def aside_path(target: str | os.PathLike, kind: str, digits: int = 8) -> Path:
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
    :func:`atomic_path` and the hidden folders of :func:`scratch_folder` and of
    :func:`~mmretrieval.filled_folders.folder_built_aside`. A live process's are not listed."""
    target = Path(target)
    try:
        candidates = [entry for entry in target.parent.iterdir() if entry.name.startswith(f".{target.name}.")]
    except OSError:
        return []
    return [entry for entry in candidates if _owner_died(entry.name[len(target.name) + 2:])]


def remove_orphans(target: str | os.PathLike) -> list[Path]:
    """Delete the :func:`orphans` of ``target``; a folder moved aside by
    :func:`~mmretrieval.filled_folders.folder_built_aside` whose place is still empty is put back instead.

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


@contextmanager
def scratch_folder(target: str | os.PathLike,
                   keep: Callable[[Path], bool] = lambda scratch: False) -> Iterator[Path]:
    """Yield a new hidden folder beside ``target``, named as its temporaries are (``.NAME.<owner>.<random>.partial``),
    and delete it when the block ends, whether or not it raised, unless ``keep(folder)`` is true then (it holds
    what a later run must take up): a place to write files that are then renamed into place. One that SIGKILL
    or a power cut left is among the :func:`orphans` of ``target``.
    """
    scratch = aside_path(target, "partial")
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


_HELD: dict[str, int] = {}  # lock paths this process holds (real path -> the holding thread's ident)


@contextmanager
def exclusive_lock(path: str | os.PathLike, busy_message: str | None = None,
                   busy: type[Busy] | None = None, waiting_note: str | None = None,
                   announce: bool = False) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` for the ``with`` block: a file (created if missing), or a folder
    (locked itself, so that nothing is added to it).

    The operating system drops the lock when its holder dies, SIGKILL included, so a crash never leaves a
    collection locked. With no ``busy_message`` it waits for another holder instead of failing, and logs
    ``waiting_note`` (a warning) if it has to. With ``announce``, this process (:func:`this_process`) is written
    into a lock file while it holds it, and a refusal or a wait names a holder that did so and is still running.

    Raises:
        CollectionBusy: another process holds the lock (``busy_message`` says what to do); ``busy`` names
            another :class:`~mmretrieval.errors.Busy` to raise instead.
    """
    import fcntl

    from .errors import CollectionBusy

    is_file = not os.path.isdir(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND if is_file else os.O_RDONLY
    descriptor = os.open(path, flags | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = _running_holder(descriptor) if is_file else None
            held_by = f"; that is {holder[0]}" if holder else ""
            in_process = _HELD.get(os.path.realpath(path))
            if in_process == threading.get_ident():  # waiting would wait for itself, for ever
                raise (busy or CollectionBusy)(
                    f"this thread already holds {path}: a write inside another write's block (a collection's label() "
                    "within its writing(), say) would wait for itself; run it after that block") from exc
            if busy_message and in_process is not None:  # "another process" was this one
                busy_message, held_by = (f"another thread of this process holds {path}: run the two one after the "
                                         "other (a collection's writers take turns when they wait for each other: "
                                         "Collection.open(..., wait=True))"), ""
            if busy_message:
                refusal = (busy or CollectionBusy)(busy_message + held_by)
                refusal.holder, refusal.holder_pid = holder or ("", None)  # for a message of the caller's own
                raise refusal from exc
            if waiting_note:
                logger.warning("%s%s", waiting_note, held_by)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        if is_file:  # a line a killed holder left goes; this one's own, if it announces itself
            _rewrite(descriptor, this_process() if announce else "")
        held = os.path.realpath(path)
        _HELD[held] = threading.get_ident()
        try:
            yield
        finally:
            _HELD.pop(held, None)
            if is_file and announce:
                _rewrite(descriptor, "")
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def this_process() -> str:
    """This process as a lock's holder: its command, process id and start of holding (``mmr ingest (process
    1234, since 2026-12-07 14:05:09)``)."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    command = " ".join([program, *[word for word in sys.argv[1:3] if word.isidentifier()][:1]])  # mmr -v ingest
    return f"{command} (process {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})"


def _rewrite(descriptor: int, text: str) -> None:
    """Make the lock file hold ``text`` alone; it only informs, so a full disk does not stop the holder."""
    try:
        os.ftruncate(descriptor, 0)
        if text:
            os.write(descriptor, text.encode("utf-8", "replace"))
    except OSError:
        logger.debug("could not write the lock file's holder line", exc_info=True)


def _running_holder(descriptor: int) -> tuple[str, int] | None:
    """``(text, process id)`` that the lock file's holder wrote (:func:`this_process`), if that process runs."""
    try:
        text = os.pread(descriptor, 300, 0).decode("utf-8", "replace").strip()
    except OSError:
        return None
    match = re.search(r"\(process (\d+), since", text)
    if not match:
        return None
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:  # a holder killed before it could clear its line
        return None
    except OSError:  # another user's process: it runs
        pass
    return text, int(match[1])


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read a megabyte at a time (for checksummed manifests and model identities)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
