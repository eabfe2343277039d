"""A collection: one directory holding an image collection's catalog, vectors and FAISS index.

This is the API the CLI and the UI share::

    with Collection.open("photos.mmr", model="builtin:shapes", create=True) as col:
        col.ingest(["~/Pictures"])
        for hit in col.search("2:a red circle", k=5):
            print(hit.score, hit.path)

Layout: ``catalog.sqlite`` (the truth: rows, places of vectors, labels, model identity), ``segments/`` (the
vectors, :mod:`.segments`), ``index-<gen>-<random>.faiss`` and ``index.json`` (derived). The index loads on first use
(a command that never searches never pays for it) and is then checked against the catalog (model, dimension,
checksum, generation); a corrupt or foreign index is rebuilt in memory from the stored vectors and a stale one
catches up in memory, so a search never sees an index that disagrees with the catalog. Only writers
(:meth:`Collection.writing`: ingest, index, import, compact) write files, holding ``ingest.lock``; a search
never does, so a read-only collection can be searched.

Memory per command at 10 M x 512 (float16 segments, ivfpq index chosen by the default budget; measured figures
in docs/scaling.md): ``search``/``similar``: the index (~1.3 GB) + the model + the pages of re-ranked vectors
(page cache); ``info``: the catalog's answers only; ``ingest``: decode buffers and 10,000 planned paths at a
time, then an index catch-up or, when the index type changes, a build (see :mod:`.upkeep`); ``index``: a
build; ``compact``: one 128 MiB block (see :mod:`.compaction`) and the index catch-up; ``label``: the text
tower (:meth:`Collection.text_model`) and one chunk of vectors at a time; the catalog's id list is 80 MB in each.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from ..atomic import exclusive_lock
from ..errors import CollectionBusy, CollectionError
from .compaction import AUTO_WASTE_RATIO, collect_garbage, compact, waste
from .upkeep import IndexKeeper
from .index import IndexPolicy
from .repair import forget_lost_vectors
from ..ingest import IngestConfig, IngestSummary
from ..ingest.batches import RAY_OUTPUT_KEY, RAY_RESULTS_DIR
from ..images.decode import DEFAULT_MAX_PIXELS
from ..ingest.reader import source_list
from ..models.settings import check_device, check_precision
from ..models.specs import ModelIdentity, recorded_weights_changed
from .describe import describe
from .records import CollectionInfo, Failure
from .arguments import check_id, check_ids, check_k, forked_message, unpicklable_message
from .catalog import LOCK_NAME, Catalog, writer_busy
from .opening import changed_weights_message, load_recorded_encoder, open_folder
from .label_methods import LabelMethods
from .search_methods import SearchMethods
from .upkeep_methods import UpkeepMethods

if TYPE_CHECKING:
    from ..images.metadata import PhotoMetadata
    from ..ingest.ray_runner import RayIngestConfig
    from ..models.encoder import DualEncoder
    from ..models.text_tower import TextEncoder

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


class Collection(SearchMethods, LabelMethods, UpkeepMethods):
    """An open collection. Build one with :meth:`open`; close it (or use ``with``) when done."""

    def __init__(self, directory: Path, catalog: Catalog, identity: ModelIdentity,
                 encoder: DualEncoder | None, device: str, index_policy: IndexPolicy | None = None,
                 index_progress: Progress | None = None, precision: str = "auto"):
        self.directory = directory
        self.catalog = catalog
        self.identity = identity
        self.device = device
        self.precision = precision
        self._encoder = encoder
        self._text_encoder: "TextEncoder | None | bool" = None  # the text tower alone (False: not available)
        self._lock = threading.RLock()
        self._indexes = IndexKeeper(directory, catalog, identity, index_policy, progress=index_progress)
        self._made_now = False  # this open made the folder: a `with` block that fails leaves no empty collection
        self._forgotten_on_entry: list[int] = []  # ids the last writer block's repair set pending (lost vectors)
        self.waits_for_writers = False  # a writer method waits for another writer instead of failing (open's wait)
        self._pid = os.getpid()  # FAISS and torch hang in a fork()ed child: refused there (_check_process)

    # -- opening ----------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | bytes | os.PathLike, model: str | os.PathLike | DualEncoder | None = None, *,
             create: bool = False, device: str = "auto", read_only: bool = False,
             vector_dtype: str = "float16", index_policy: IndexPolicy | None = None,
             index_progress: Progress | None = None, precision: str = "auto",
             writer: str | None = None, wait: bool = False) -> "Collection":
        """Open (or with ``create=True`` make) the collection in ``directory``.

        Args:
            directory: the collection directory.
            model: a model spec (a model folder may be a path) or a loaded encoder. None uses the model the
                collection was built with (or :data:`~.opening.DEFAULT_MODEL` for a new one).
            create: make the directory and catalog if missing.
            device: where to run the model when it gets loaded.
            read_only: never change anything in ``directory`` (also chosen when the folder is not writable):
                searches work, writer commands are refused.
            vector_dtype: ``float16`` (half the disk) or ``float32``, for a collection created now.
            index_policy: size bands, memory budget and recall target of automatic index choices.
            index_progress: ``(vectors added, total)`` while an index is built (at open, or by a writer).
            precision: the number format of the model when it gets loaded here or in Ray's actors: ``auto``,
                ``fp32`` or ``bf16`` (:mod:`mmretrieval.models.precision`).
            writer: the writer command about to run (``"ingest"``, ``"index"``...): when another writer holds
                the collection's lock, fail now, before the model and index load for nothing (the writer's own
                lock is still what decides).
            wait: writers (ingest, import, index, compact, label) wait for another writer to finish instead of
                raising :class:`~mmretrieval.errors.CollectionBusy`.

        Raises:
            CollectionError: no collection there (and ``create`` is false), ``model`` is not the model
                that built it, an ``index_policy`` that is not one, or (with ``writer``) another writer is at work.
            ModelSpecError: an unknown ``precision`` or ``device`` (refused before anything is opened or made), or a
                ``model`` that is neither a spec nor an encoder.
            ModelSpecError, ModelNotCachedError: the model cannot be loaded.
        """
        check_precision(precision)  # here, not when the model first loads (a query would look to blame)
        if index_policy is not None and not isinstance(index_policy, IndexPolicy):
            raise CollectionError(f"index_policy is an IndexPolicy (mmretrieval.collection.index), got "
                                  f"{index_policy!r}; an index type is chosen with rebuild_index(index_type)")
        if check_device(device) not in ("auto", "cpu"):  # a GPU asked for by name: is it there? (torch says)
            from ..models.encoder import resolve_device

            resolve_device(device)
        opened = open_folder(directory, model, create=create, device=device, read_only=read_only,
                             vector_dtype=vector_dtype, precision=precision, writer=writer, wait=wait)
        try:
            collection = cls(opened.directory, opened.catalog, opened.identity, opened.encoder, device, index_policy,
                             index_progress, precision)
        except BaseException:
            opened.catalog.close()
            raise
        collection._made_now = opened.made_now
        collection.waits_for_writers = wait
        return collection

    @property
    def encoder(self) -> DualEncoder:
        """The collection's model, loaded on first use from the stored spec."""
        with self._lock:
            if self._encoder is None:
                self._encoder = load_recorded_encoder(self.identity, self.directory, device=self.device,
                                                      precision=self.precision)
            return self._encoder

    def close(self) -> None:
        """Release the catalog connection and the segment files (twice is harmless); any later use raises
        :class:`~mmretrieval.errors.CollectionError`: open the collection again instead."""
        self.catalog.close()

    def _check_process(self) -> None:
        """Raise CollectionError in a fork()ed child, where FAISS and torch would hang (their threads are gone), or
        when the collection's folder is gone (a bare FileNotFoundError, or advice to restore one file, otherwise)."""
        if os.getpid() != self._pid:
            raise CollectionError(forked_message(self._pid))
        if not self.directory.is_dir():
            raise CollectionError(f"the collection {self.directory} is gone: its folder was deleted or moved since it "
                                  "was opened; open it where it is now")

    def __reduce__(self) -> tuple:
        raise TypeError(unpicklable_message(self.directory))

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        """Close; and when the block failed in a collection that this open made and nothing has entered (a source
        that does not exist, a bad import), remove it, so that a corrected re-run may still choose the model."""
        try:
            if exc_type is not None:
                self.remove_if_unused()
        except Exception:  # a catalog that cannot answer: kept, and the error being raised is not masked
            logger.debug("kept %s after a failed first use", self.directory, exc_info=True)
        finally:
            self.close()

    def remove_if_unused(self) -> bool:
        """Close and remove the collection when this open made its folder and no image row has entered (a first
        ingest that found no image): a re-run may then still choose the model. Returns whether it was removed.

        Planned (``pending``) rows count: a ``--ray`` run may have results written for them, not yet committed,
        which a re-run commits."""
        if not self._made_now:
            return False
        # Under the writer lock: another process's first ingest into the same new folder may hold it and not
        # have written its first row yet.
        try:
            with exclusive_lock(self.directory / LOCK_NAME, "busy"):
                if self.catalog.counts_by_status():
                    return False
                self.close()
                shutil.rmtree(self.directory, ignore_errors=True)
        except CollectionBusy:
            return False
        return True

    # -- ingestion --------------------------------------------------------------------------------------------
    def ingest(self, sources: str | bytes | os.PathLike | Sequence[str | bytes | os.PathLike], *,
               batch_size: int | None = None, workers: int | None = None, prune: bool = False, timeout_s: float = 60.0,
               progress: Progress | None = None, ray: "RayIngestConfig | None" = None, checksum: bool = False,
               hashed: Progress | None = None,
               device_decode: bool | None = None, share_jpegs: bool = True,
               max_pixels: int = DEFAULT_MAX_PIXELS, forget_mounts: Sequence[str | os.PathLike] = ()) -> IngestSummary:
        """Embed new and changed images from ``sources`` (folders, files, .txt/.csv lists) and update the index.

        Safe to interrupt at any point (even SIGKILL): running it again finishes the job.

        Args:
            sources: what to ingest (one path alone is one source; `~` is expanded).
            batch_size: images per model call (default 256 on CUDA, 32 on CPU).
            workers: decoding processes (default: cores - 1 on CPU).
            prune: remove rows of files that no longer exist; not those under a folder where an earlier ingest
                found a drive or share mounted and that is not mounted now (the summary's ``unmounted`` names it).
            forget_mounts: with ``prune``, such folders to prune as any other (a drive retired for good).
            checksum: also hash the files whose size and modification time are unchanged, and embed again those
                whose bytes changed (a replacement of the same size with its time copied over); reads every file.
            timeout_s: a single file taking longer than this to decode is failed.
            progress: ``(done, total)`` callback after each batch.
            hashed: ``(files hashed, None)`` while planning reads files: touched ones, copies of embedded ones,
                imported rows' (and every file with ``checksum``).
            ray: decode and embed on a Ray cluster instead (see :mod:`mmretrieval.ingest.ray_runner`);
                ``workers`` is then Ray's business, and the model loads only in Ray's actors.
            device_decode: decode JPEGs on the model's device (:mod:`mmretrieval.ingest.device_decode`), the
                other files in the CPU pool at the same time; None: when the model runs on a CUDA GPU.
            share_jpegs: with device decoding, the CPU pool also takes JPEGs (the largest first) while its
                workers have room (:mod:`mmretrieval.ingest.routing`).
            max_pixels: an image with more pixels is failed as a ``decompression_bomb`` (the default passes
                any camera photo; :data:`~mmretrieval.images.decode.DEFAULT_MAX_PIXELS`); one failed so before is
                retried by a run whose limit passes it.

        Returns:
            Counts: embedded, unchanged, duplicates, failed by reason, pruned.

        Raises:
            CollectionError: a source does not exist or is empty, or an unreadable list file.
            SettingError: a batch size, worker count, timeout or pixel limit out of range, or a flag not a bool.
        """
        self._check_process()
        forget = tuple(os.path.expanduser(os.fspath(path)) for path in forget_mounts)
        if forget and not prune:
            raise CollectionError("--forget-mount (forget_mounts) lets --prune reach the images of a drive that is "
                                  "not mounted; add --prune (prune=True)")
        busy = self.busy_message("ingest")
        config = IngestConfig(batch_size, workers, timeout_s=timeout_s, prune=prune, checksum=checksum,
                              forget_mounts=forget, device_decode=device_decode,
                              share_jpegs=share_jpegs, max_pixels=max_pixels)  # checks them all, for Ray too
        listed = source_list(sources)
        if self._encoder is None and recorded_weights_changed(self.identity):  # before planning adds a row
            raise CollectionError(changed_weights_message(self.identity, self.directory))
        if ray is not None:
            from ..ingest.ray_runner import run_ray_ingest

            ray_config = dataclasses.replace(ray, prune=prune, checksum=checksum,
                                             batch_size=batch_size or ray.batch_size, forget_mounts=forget,
                                             timeout_s=timeout_s, precision=self.precision, max_pixels=max_pixels)
            with self.writing(busy):
                return run_ray_ingest(self.catalog, self.identity, listed, ray_config, str(self.directory),
                                      progress, hashed)
        from ..ingest.runner import run_ingest

        # The model loads only if something needs embedding (and the batch size and workers are chosen for its
        # device then): an ingest over unchanged files never pays for it, nor imports torch. A model already loaded
        # (a new collection's) sets them now, so that too few open files are refused before a row goes in.
        if self._encoder is not None:
            config = config.on_device(self._encoder.device.type)
        with self.writing(busy):
            if (self.directory / RAY_RESULTS_DIR).is_dir() or self.catalog.get_meta(RAY_OUTPUT_KEY):
                from ..ingest.ray_runner import commit_left_results  # a killed --ray run's finished work

                commit_left_results(self.catalog, str(self.directory))
            return run_ingest(self.catalog, lambda: self.encoder, listed, config, progress, hashed)

    def busy_message(self, command: str) -> str | None:
        """What writer ``command`` (``"ingest"``, ``"label"``...) fails with while another writer holds the lock,
        for :meth:`writing`; None (wait for it) when the collection was opened with ``wait=True``."""
        return None if self.waits_for_writers else writer_busy(self.directory, command)

    @contextmanager
    def writing(self, busy_message: str | None = None, update_index: bool = True) -> Iterator[Catalog]:
        """Hold the collection's writer lock for a block that writes the catalog (ingest, import, commits).

        On entry, what an interrupted writer left is cleaned up (unreferenced segments, torn appends, index
        temporaries); on a clean exit, segments wasting more than :data:`AUTO_WASTE_RATIO` are compacted and
        the index is caught up and saved. Another helper's code commits segments like this::

            with collection.writing() as catalog:
                catalog.commit_segment(read_sealed(path), metadata=...)

        Args:
            busy_message: fail with this when another writer holds the lock; None waits for it.
            update_index: False leaves the index behind the catalog, for a later :meth:`rebuild_index` or writer
                (several imports in a row build it once); until then each reader catches up in memory.

        Raises:
            CollectionError: the collection was opened read-only, or another writer holds the lock; or the block
                committed and what follows it (compaction, the index) failed: the message says that nothing is lost.
        """
        self._check_process()
        if not self.catalog.writable:
            raise CollectionError(f"{self.directory} is read-only (or was opened read_only=True); searches work, "
                                  "but ingest, import, index, compact and label need a writable collection folder")
        with exclusive_lock(self.directory / LOCK_NAME, busy_message, announce=True, waiting_note=(
                f"another process is writing {self.directory}; waiting for it to finish")):
            self.catalog.check_in_place()  # the clean-up below goes by path: not into another collection put here
            self._forgotten_on_entry = forget_lost_vectors(self.catalog)  # (check(repair=True) reports them)
            collect_garbage(self.catalog)
            yield self.catalog
            self.catalog.check_in_place()  # compaction and the index write by path: not into a folder moved away
            try:
                if waste(self.catalog).ratio > AUTO_WASTE_RATIO:
                    compact(self.catalog, min_waste_ratio=AUTO_WASTE_RATIO / 2)
                if update_index:
                    with self._lock:
                        self._indexes.sync()
                        self._indexes.persist()
            except (OSError, RuntimeError, sqlite3.OperationalError) as exc:  # a full disk, FAISS's write_index
                raise CollectionError(
                    f"everything this run added is committed, but tidying the collection after it failed ({exc}); "
                    "searches are right meanwhile (they catch up in memory), and `mmr index` or the next writer "
                    "finishes the job once the cause (often a full disk) is fixed") from exc

    # -- reading ----------------------------------------------------------------------------------------------
    def image_path(self, image_id: int) -> Path:
        """The file of catalog id ``image_id`` (for serving images by id, never by a client-given path).

        Raises:
            CollectionError: an unknown id.
        """
        image_id = check_id(image_id)
        row = self.catalog.rows([image_id]).get(image_id)
        if row is None:
            raise CollectionError(f"no image with id {image_id} in {self.directory}")
        return Path(row.path)

    def vectors(self, ids: Sequence[int] | None = None) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """``(ids, (n, dim) float32)`` stored vectors for ``ids`` (unknown ids are left out), as stored: float16
        storage leaves them 1 +- 4e-5 long, so divide by their norms for exact cosines.

        With no ids it returns every vector at once: fine for small collections (the UI's map), 2 KB a vector
        at 512-d otherwise; large callers stream with :meth:`iter_vectors`.
        """
        return self.catalog.vectors(None if ids is None else check_ids(ids), unit_length=False)

    def iter_vectors(self, block_rows: int = 65_536) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """Every stored vector as blocks of ``(ids, float32 vectors)``, never more than ``block_rows`` at once, as
        stored (see :meth:`vectors`).

        Raises:
            QueryError: ``block_rows`` is not a whole number of at least 1 (0 yielded nothing, as if empty).
        """
        return self.catalog.iter_vectors(check_k(block_rows, "rows", name="block_rows"), unit_length=False)

    def label_of(self, ids: Sequence[int]) -> dict[int, tuple[tuple[str, float], ...]]:
        """Assigned ``(label, probability)`` pairs per id, best first; ids without labels are absent."""
        return self.catalog.labels_of(check_ids(ids))

    def photos(self, ids: Sequence[int]) -> "dict[int, PhotoMetadata]":
        """Capture time, camera, GPS position and orientation per id (unknown ids are left out)."""
        return self.catalog.photos(check_ids(ids))

    def failures(self) -> Iterator[Failure]:
        """Files that failed or were skipped, with their reasons: failed ones first, each kind in the order met (a
        stream)."""
        return (Failure(row.path, row.reason or row.status, row.message or "") for row in self.catalog.failures())

    def load_index(self) -> None:
        """Load the index now (and catch it up), rather than on the first search: for a server, whose first user
        should not wait for it. Commands that never search never load it."""
        with self._lock:
            self._indexes.sync()

    def info(self) -> CollectionInfo:
        """Model, dimension, counts by status, index type and parameters, bytes on disk.

        The index is described as this process holds it, caught up; or, when this process has not loaded it, as
        saved on disk (its vector count then may trail the catalog's: ``index_saved`` says so), since loading or
        building it only to describe it would cost as much as a search's first use.
        """
        self._check_process()
        with self._lock:
            if self._indexes.loaded:
                manifest, saved = self._indexes.current(), self._indexes.manifest
            else:
                manifest = saved = self._indexes.saved()
        return describe(self.directory, self.catalog, self.identity, manifest, saved)
