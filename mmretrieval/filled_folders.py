"""Folders that a command fills and may later replace whole: ``mmr label --organize``, ``mmr duplicates
--organize``, ``mmr export``. A folder is filled under a hidden name beside it (:func:`folder_built_aside`) and
then takes the place of the old one in one step where Linux allows it (``renameat2`` with ``RENAME_EXCHANGE``);
a marker file says which command made it, and a folder holding anything that command would not have written is
never replaced (:func:`check_fillable_folder`).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .atomic import aside_path, fsync_dir, remove_orphans
from .errors import CollectionError

MARKER_NAME = ".mmr-made"  # in a folder that a command filled: which command (it may replace the folder)


# (the entry's path inside the folder, as parts; the entry) -> whether the maker would have written it there
MadeHere = Callable[[tuple[str, ...], os.DirEntry], bool]


def check_can_make_in(folder: Path, what: str) -> None:
    """Refuse, before any work is done for it, a folder that takes no new file or folder (a read-only disk,
    ``/proc``, no permission): a labelling run must not end in a failed write and a label set a retry is refused.

    Raises:
        CollectionError: naming ``what`` was to be done and why it cannot.
    """
    try:
        os.rmdir(tempfile.mkdtemp(dir=folder, prefix=".mmr-check-"))
    except OSError as exc:
        raise CollectionError(f"cannot {what}: {folder} takes no new files ({exc.strerror or exc})") from exc


def check_fillable_folder(out: str | os.PathLike, maker: str, made_here: MadeHere) -> Path:
    """``out`` (a symlink resolved) if :func:`folder_built_aside` may fill it for ``maker``: a new name, an empty
    folder, or a folder that ``maker`` filled before (it is replaced) and that holds nothing else: every file in
    it passes ``made_here`` (a file someone put in a review folder would otherwise be deleted with it).

    Raises:
        CollectionError: ``out`` is a file, or a folder holding anything else (mixing would lose track of
            what is whose; nothing of it is deleted).
    """
    out = Path(out).expanduser()
    if out.is_symlink() and out.is_dir():
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise CollectionError(f"cannot fill {out}: it is a file, not a folder")
    if out.absolute().parent.is_dir():  # (a parent that is not there yet is made; a wrong one fails as before)
        check_can_make_in(out.absolute().parent, f"fill {out}")  # the folder is built beside it
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

    An interrupted run leaves ``out`` as it was, or (killed after the swap) the new one, and at most a hidden
    ``.NAME.…partial`` sibling, which the next run's :func:`~mmretrieval.atomic.remove_orphans` deletes. Where
    there is no ``RENAME_EXCHANGE`` (not Linux), a run killed between its two renames leaves ``out`` missing
    and the old folder in a hidden ``.NAME.…old`` sibling, which the next run puts back first.

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
    partial = aside_path(out, "partial")
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
    old = aside_path(out, "old")
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
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):  # EPERM: some seccomp sandboxes
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
