"""Planning an ingest: what the reader found against the catalog, before anything is decoded.

Files are compared by (path, size, mtime): unchanged ones are skipped (except those that failed for a transient
reason, such as a timeout), and so are touched ones (a new mtime, the same size, and bytes with the content hash
their vector was made from: :mod:`.touched`); new and changed ones are marked ``pending``, which also assigns
their ids; new ones that copy a file embedded elsewhere (a folder copied, moved or renamed) are stored with its
vector there and then (:mod:`.copies`); imported rows get their files' size, time and hash, keeping their vectors
(:mod:`.imported`). With ``--prune``, :func:`prune_scope` says which rows a run may delete and :func:`prune_vanished`
deletes those whose file is gone.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

from ..collection.catalog import Catalog, FileState, encode_path
from ..collection.planned_rows import Twin
from ..errors import CollectionError
from ..images.decode import DEFAULT_MAX_PIXELS, refused_pixels
from . import mounts
from .batches import SourceFile, Skipped, chunked
from .copies import find_copies, write_copies
from .imported import examine_files, is_imported
from .reader import LIST_SUFFIXES, PathStream, discover
from .touched import maybe_touched, unchanged_bytes

Progress = Callable[[int, int | None], None]  # (done, total, None when not known)

logger = logging.getLogger(__name__)

# Failures that say more about the moment than the file (a busy machine, a flaky disk, a file moved away while the
# run read it): retried every run that finds the file.
TRANSIENT_REASONS = frozenset({"decode_timeout", "decoder_crashed", "unreadable", "missing"})
PLAN_CHUNK = 10_000  # files looked up and marked pending per catalog transaction


def prune_vanished(catalog: Catalog, scope: PruneScope | None, skipped: Sequence[Skipped],
                   not_ok_only: bool = False) -> int:
    """Delete the rows of vanished files within ``scope`` (None: nothing), except under the folders that this
    run's walk could not list (``skipped``); ``not_ok_only``: only rows that are not ``ok``. Returns how many."""
    if scope is None:
        return 0
    unreadable = [encode_path(s.path) + os.sep.encode() for s in skipped if s.reason == "unreadable"]
    return catalog.prune_missing(scope.folders, scope.entries(), keep_under=[*unreadable, *scope.unmounted],
                                 not_ok_only=not_ok_only)


@dataclass(frozen=True)
class PruneScope:
    """What a ``--prune`` may delete: rows under these folders, or with these exact paths (catalog keys)."""

    folders: tuple[bytes, ...]  # absolute folder paths ending in a separator
    paths: tuple[bytes, ...]  # single files given
    lists: tuple[str, ...] = ()  # list files given: their entries count as files given
    unmounted: tuple[bytes, ...] = ()  # mount points under the folders, not mounted now: their rows are kept

    def entries(self) -> Iterator[bytes]:
        """The files given and the entries of the list files, read as a stream (a 10 M-line list is not held)."""
        yield from self.paths
        for list_file in self.lists:
            yield from (encode_path(item.path) for item in discover([list_file]))


def prune_scope(sources: Sequence[str | PathStream], catalog: Catalog,
                forget_mounts: Sequence[str] = ()) -> PruneScope:
    """The rows a prune of ``sources`` may touch; only the sources given, never the rest of the collection, and
    never the rows under a drive seen mounted inside them that is not mounted now (:mod:`.mounts`), unless
    ``forget_mounts`` names its folder.

    Raises:
        CollectionError: a source that is missing or unreadable, or a source folder that lists nothing where the
            collection holds images: its files may only be on a drive that is not mounted (whose mount point stays,
            empty), so nothing is pruned (the message names it); a ``forget_mounts`` folder where no drive was
            seen mounted.
    """
    folders: list[bytes] = []
    paths: list[bytes] = []
    lists: list[str] = []
    forgotten = {mounts.folder_key(path) for path in forget_mounts}  # gone for good: empty is no refusal there
    for source in sources:
        if isinstance(source, PathStream):
            raise CollectionError(f"--prune cannot take its files from {source}, which is read once; save the list "
                                  "to a .txt file and pass that")
        path = os.path.abspath(source)
        if not os.path.lexists(path):
            raise CollectionError(f"--prune refused: source {source} is missing (an unmounted drive?); nothing was "
                                  "deleted. Reconnect it, or leave out --prune; a folder renamed or deleted on purpose "
                                  "is pruned from the folder above it")
        if os.path.isdir(path):
            try:
                with os.scandir(path) as entries:
                    empty = next(entries, None) is None
            except OSError as exc:
                raise CollectionError(f"--prune refused: source folder {source} is unreadable ({exc.strerror}); "
                                      "nothing was deleted. Fix its permissions, or leave out --prune") from exc
            folder = mounts.folder_key(path)
            if empty and folder not in forgotten and catalog.holds_rows_under(folder):
                on_purpose = (f"if its drive is gone for good, add --forget-mount {source}" if mounts.is_noted(
                    catalog, folder) else "if you emptied it on purpose, prune from the folder above it")
                raise CollectionError(
                    f"--prune refused: source folder {source} is empty, but the collection holds images under it (a "
                    "drive not mounted, its mount point left empty?); nothing was deleted. Mount it again, or leave "
                    f"out --prune; {on_purpose}")
            folders.append(folder)
        elif os.path.splitext(path)[1].lower() in LIST_SUFFIXES:
            lists.append(path)
        else:
            paths.append(encode_path(path))
    anywhere = bool(paths or lists)  # listed files may lie under any drive
    if forget_mounts:
        mounts.forget(catalog, forget_mounts, folders, anywhere)
    unmounted = mounts.unmounted(catalog, folders, anywhere)
    for folder in unmounted:
        logger.warning("kept the images under %s: a drive was mounted there when it was ingested and is not now; "
                       "mount it and run again, or add --forget-mount %s to prune them", os.fsdecode(folder),
                       mounts.folder_name(folder))
    return PruneScope(tuple(folders), tuple(paths), tuple(lists), tuple(unmounted))


def unmounted_folders(scope: PruneScope | None) -> tuple[str, ...]:
    """The folders whose rows a prune kept as their drive is not mounted (:attr:`IngestSummary.unmounted`)."""
    return tuple(mounts.folder_name(folder) for folder in scope.unmounted) if scope else ()


def plan_sources(catalog: Catalog, sources: Sequence[str | PathStream], checksum: bool = False,
                 hashed: Progress | None = None, pruning: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Planned:
    """:func:`plan` over what :func:`~.reader.discover` finds in ``sources``; the mount points the walk met are
    noted in the catalog (:mod:`.mounts`), for later prunes. ``pruning``: a prune of ``sources`` follows, so
    listed paths that are missing and never had a row get none (see :meth:`~.Catalog.mark_skipped`).
    ``max_pixels``: the run's pixel limit; the files refused for more pixels than it passes are retried (the
    refusal's own advice is to raise it)."""
    catalog.forget_dropped_labels()  # labels left by files that changed are this run's to hand on
    found_mounts: list[str] = []
    planned = plan(catalog, discover(sources, found_mounts), walked_folders(sources), checksum, hashed,
                   new_missing=not pruning, max_pixels=max_pixels)
    mounts.record(catalog, found_mounts)
    return planned


def walked_folders(sources: Sequence[str | PathStream]) -> list[bytes]:
    """Catalog keys (no trailing separator) of the ``sources`` that are folders: what the walk reads."""
    return [encode_path(source) for source in sources if isinstance(source, str) and os.path.isdir(source)]


class Planned(NamedTuple):
    """What :func:`plan` found besides the files it marked ``pending``."""

    unchanged: int  # files skipped as unchanged (touched ones whose bytes are the same included)
    skipped: list[Skipped]  # what the reader would not open, recorded in the catalog
    aliases: int = 0  # new files the collection holds under another path to them: counted, not recorded (_Aliases)
    copies: int = 0  # new files stored with the vector of a file embedded elsewhere with the same bytes (.copies)
    moved: int = 0  # of the copies, those whose file embedded elsewhere is gone: moved or renamed
    adopted: int = 0  # imported rows whose files were read, their vectors kept (.imported); counted as unchanged


def plan(catalog: Catalog, found: Iterable[SourceFile | Skipped], walked: Sequence[bytes] = (),
         checksum: bool = False, hashed: Progress | None = None, new_missing: bool = True,
         max_pixels: int = DEFAULT_MAX_PIXELS) -> Planned:
    """Mark new and changed files ``pending`` and record skips.

    Streams: :data:`PLAN_CHUNK` files at a time are looked up in the catalog and marked (one transaction each),
    so planning 10 M files holds one chunk, not every path. A run killed mid-plan leaves some rows ``pending``,
    which the next run embeds like any other.

    Args:
        found: what the reader found (:func:`~.reader.discover`).
        walked: catalog keys of the folders ``found`` walked (:func:`walked_folders`): their skipped rows that
            the walk no longer skips are cleared (see :func:`stale_skips`).
        checksum: hash embedded files whose size and time are unchanged too, and embed again those whose bytes
            changed (a file replaced by one of the same size with its time copied over); reads every such file.
        hashed: ``(files hashed, None)`` as touched files, copies, imported rows' files (and, with ``checksum``,
            unchanged ones) are hashed: a mass touch or a checksum run reads the library before anything is embedded.
        new_missing: record a ``missing`` skip for a path that has no row (:meth:`~.Catalog.mark_skipped`).
    """
    planner = _Planner(catalog, checksum, hashed, max_pixels)
    skipped: dict[bytes, Skipped] = {}
    for chunk in chunked(found, PLAN_CHUNK):
        files: dict[bytes, SourceFile] = {}
        for item in chunk:
            key = encode_path(item.path)
            if isinstance(item, Skipped):
                skipped[key] = item
            else:
                files[key] = item  # a path listed twice keeps its last entry
        planner.plan_chunk(files)
    cleared = stale_skips(catalog, walked, skipped)
    if skipped or cleared:
        catalog.mark_skipped([(key, s.reason, s.message) for key, s in skipped.items()], cleared, new_missing)
    logger.info("planned: %d to embed, %d unchanged (%d imported rows read), %d copies, %d skipped, %d skips "
                "cleared, %d aliases", planner.marked - planner.copies, planner.unchanged, planner.adopted,
                planner.copies, len(skipped), len(cleared), planner.aliases)
    return Planned(planner.unchanged, list(skipped.values()), planner.aliases, planner.copies, planner.moved,
                   planner.adopted)


class _Planner:
    """One run's planning, chunk by chunk: its counts, the touched files and copies it hashes, the aliases it
    passes over."""

    def __init__(self, catalog: Catalog, checksum: bool, hashed: Progress | None, max_pixels: int):
        self._catalog, self._checksum, self._hashed = catalog, checksum, hashed
        self._max_pixels = max_pixels  # a file refused for more pixels than this passes is tried again
        self._aliases = None if catalog.is_empty() else _Aliases(catalog)  # a first ingest has none, nor copies
        self.unchanged = self.marked = self.aliases = self.copies = self.moved = self.adopted = self._hashed_count = 0
        self._count_lock = threading.Lock()

    def plan_chunk(self, files: dict[bytes, SourceFile]) -> None:
        """Mark what changed in ``files`` pending; hash what may only be touched, and new files that may copy an
        embedded one (stored with its vector, :mod:`.copies`); read imported rows' files; count the rest."""
        known = self._catalog.file_states_of(list(files))
        twins: dict[bytes, list[Twin]] = {}
        if self._aliases is not None:
            new = {key: (item.size, item.mtime_ns) for key, item in files.items() if key not in known}
            twins = self._catalog.twins(new) if new else {}
            held = self._aliases.held(files, known, twins)
            self.aliases += len(held)
            files = {key: item for key, item in files.items() if key not in held}
        to_mark, to_hash, to_adopt = [], [], []
        for key, item in files.items():
            state = known.get(key)
            if is_imported(state):
                to_adopt.append(key)
                continue
            same_stat = state is not None and (state.size, state.mtime_ns) == (item.size, item.mtime_ns)
            if maybe_touched(state, item.size) and (self._checksum or not same_stat):
                to_hash.append((key, state.content_hash, same_stat))
            elif same_stat and _settled(state, self._max_pixels):
                self._keep(key, item)
            else:
                to_mark.append(key)
        to_mark += self._changed_among(to_hash, files)
        if to_adopt:
            self._adopt(to_adopt, files)
        if to_mark:
            self._mark(to_mark, files, twins)

    def _changed_among(self, to_hash: list[tuple[bytes, str, bool]], files: dict[bytes, SourceFile]) -> list[bytes]:
        """Hash ``(path, stored hash, same size and time)`` files; keep (and record the new time of) those whose
        bytes are the same; return the others, to embed."""
        changed, touched = [], []
        for (key, _, same_stat), same in zip(to_hash, unchanged_bytes([c[:2] for c in to_hash], self._one_hashed)):
            if same is False:  # other bytes: embed them
                changed.append(key)
                continue
            # The same bytes; or unreadable now (a flaky mount): kept as it is, its vector and labels too, and
            # looked at again next run (a decode would fail it, and a failed row loses its vector).
            self._keep(key, files[key])
            if same and not same_stat:
                touched.append((key, files[key].mtime_ns))
        if touched:
            self._catalog.mark_touched(touched)
        return changed

    def _mark(self, keys: list[bytes], files: dict[bytes, SourceFile], twins: dict[bytes, list[Twin]]) -> None:
        """Mark ``keys`` pending, then store those that copy a twin's bytes with its vector (pending first, for
        their ids: a run killed in between embeds them next time)."""
        copies, moved = find_copies([key for key in keys if key in twins], twins, self._one_hashed)
        self._catalog.mark_pending([(key, files[key].size, files[key].mtime_ns, files[key].caption) for key in keys])
        self.marked += len(keys)
        if copies:
            written = write_copies(self._catalog, copies)
            self.copies += len(written)
            self.moved += len(written.keys() & moved)

    def _adopt(self, keys: list[bytes], files: dict[bytes, SourceFile]) -> None:
        """Record the files of imported rows, keeping their vectors; one that cannot be read now waits for the
        next run."""
        adopted = []
        for key, seen in zip(keys, examine_files([(key, files[key]) for key in keys], self._one_hashed)):
            self._keep(key, files[key])
            if seen is not None:
                adopted.append((key, seen))
        if adopted:
            self._catalog.adopt_imported(adopted)
            self.adopted += len(adopted)

    def _keep(self, key: bytes, item: SourceFile) -> None:
        self.unchanged += 1
        if item.caption is not None:
            self._catalog.set_caption(key, item.caption)

    def _one_hashed(self) -> None:
        if self._hashed is not None:
            with self._count_lock:  # (called from the hashing threads)
                self._hashed_count += 1
                self._hashed(self._hashed_count, None)


class _Aliases:
    """New files that the collection holds already under another path to them: reached through a link to a folder
    it ingested before (``mmr ingest w2``, then ``mmr ingest w2link``: each file catalogued twice), or the other
    way round (the link first, then ``w2``). The walk skips such a link within one run; this catches it across
    runs, and only counts them (reason ``alias``): no row is written, so nothing piles up in memory or in the
    catalog, and each run looks again. A file is held when the other path's row has the same size and time (the
    same file, not another card mounted at the same place): its real path's row, or a row of the same file name
    and size (a twin) whose real path is the new file. A folder is resolved once (cached), so millions of
    new files cost a ``realpath`` per folder."""

    _CACHED = 10_000  # folders whose real path is remembered

    def __init__(self, catalog: Catalog):
        self._catalog = catalog
        self._real: dict[bytes, bytes] = {}

    def held(self, files: dict[bytes, SourceFile], known: dict[bytes, FileState],
             twins: dict[bytes, list[Twin]]) -> set[bytes]:
        """Those of ``files`` that are new (not in ``known``) and held under their real path, or under a link
        to them (one of their ``twins``)."""
        real = {key: self._real_path(key) for key in files if key not in known}
        real = {key: path for key, path in real.items() if path != key}
        rows = self._catalog.file_states_of(list(real.values())) if real else {}
        held = {key for key, path in real.items() if path in rows and rows[path].status != "skipped"
                and (rows[path].size, rows[path].mtime_ns) == (files[key].size, files[key].mtime_ns)}
        return held | {key for key, rows in twins.items() if key not in held and any(
            row.mtime_ns == files[key].mtime_ns and self._real_path(row.path) == key for row in rows)}

    def _real_path(self, key: bytes) -> bytes:
        folder, name = os.path.split(key)
        if folder not in self._real:
            if len(self._real) >= self._CACHED:
                self._real.clear()
            self._real[folder] = os.path.realpath(folder)
        return os.path.join(self._real[folder], name)


def stale_skips(catalog: Catalog, walked: Sequence[bytes], skipped: dict[bytes, Skipped]) -> list[bytes]:
    """Skipped rows under the ``walked`` folders whose cause is gone: this walk did not skip them (``skipped``:
    what it did skip) and each is now a folder that lists (one that was unreadable), where the walk goes (not
    under a folder it could not list, no hidden name below the folder walked, no link out of it). A skipped path
    that no longer exists is left to ``--prune``, like any vanished file."""
    sep = os.sep.encode()
    unreadable = tuple(key + sep for key, s in skipped.items() if s.reason == "unreadable")
    stale: list[bytes] = []
    for root in walked:
        real_root = os.path.realpath(root)
        stale += [path for path in catalog.skipped_under(root)
                  if path not in skipped and not path.startswith(unreadable) and _lists_inside(path, root, real_root)]
    return stale


def _lists_inside(path: bytes, root: bytes, real_root: bytes) -> bool:
    """Whether ``path`` is a folder that lists now, reached from ``root`` by the walk's rules."""
    if any(name.startswith(b".") for name in path[len(root):].split(os.sep.encode())):
        return False
    if os.path.commonpath([os.path.realpath(path), real_root]) != real_root:
        return False
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError:  # gone, not a folder, or still unreadable
        return False
    return True


def _settled(state: FileState, max_pixels: int) -> bool:
    """Embedded, or failed for a reason that the same bytes would fail for again: not a transient one, nor a pixel
    count that ``max_pixels`` passes."""
    if state.status != "failed":
        return state.status == "ok"
    if state.reason == "decompression_bomb":
        pixels = refused_pixels(state.message)
        return pixels is None or pixels > max_pixels
    return state.reason not in TRANSIENT_REASONS
