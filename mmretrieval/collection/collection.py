"""A collection: one directory holding an image collection's catalog, vectors and FAISS index.

This is the API the CLI and the UI share::

    with Collection.open("photos.mmr", model="builtin:shapes", create=True) as col:
        col.ingest(["~/Pictures"])
        for hit in col.search("2:a red circle", k=5):
            print(hit.score, hit.path)

Layout: ``catalog.sqlite`` (the truth: rows, places of vectors, labels, model identity), ``segments/`` (the
vectors, :mod:`.segments`), ``index-<gen>.faiss`` and ``index.json`` (derived). The index loads on first use
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
from PIL import Image

from ..atomic import exclusive_lock
from ..models.encoder import DualEncoder, load_encoder, resolve_device
from ..errors import CollectionBusy, CollectionError, ImageDecodeError, QueryError
from .compaction import AUTO_WASTE_RATIO, CompactionSummary, collect_garbage, compact, waste
from .upkeep import IndexKeeper
from .index import IndexPolicy, Manifest, exact_search
from ..ingest import IngestConfig, IngestSummary, run_ingest
from ..ingest.batches import RAY_OUTPUT_KEY, RAY_RESULTS_DIR
from ..images.decode import DEFAULT_MAX_PIXELS
from ..ingest.reader import source_list
from ..models.precision import check_precision
from ..models.specs import ModelIdentity
from .describe import describe
from .records import CollectionInfo, Failure, Hit
from .query import ImageRef, Query, query_vector
from .arguments import check_k, check_query_vector, check_threshold, forked_message, unpicklable_message
from .catalog import LOCK_NAME, Catalog, writer_busy
from .opening import check_same_model, open_folder
from .filters import DateLike, Filters, NearLike, allowed_ids
from .label_sets import check_known

if TYPE_CHECKING:
    from ..images.metadata import PhotoMetadata
    from ..ingest.ray_runner import RayIngestConfig
    from .label_sets import LabelSet
    from ..models.text_tower import TextEncoder
    from .duplicates import DuplicateGroup
    from .labelling import LabelSummary, Organized
    from .upkeep import IndexFiller

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


class Collection:
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
        self.waits_for_writers = False  # a writer method waits for another writer instead of failing (open's wait)
        self._pid = os.getpid()  # FAISS and torch hang in a fork()ed child: refused there (_check_process)

    # -- opening ----------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | os.PathLike, model: str | DualEncoder | None = None, *,
             create: bool = False, device: str = "auto", read_only: bool = False,
             vector_dtype: str = "float16", index_policy: IndexPolicy | None = None,
             index_progress: Progress | None = None, precision: str = "auto",
             writer: str | None = None, wait: bool = False) -> "Collection":
        """Open (or with ``create=True`` make) the collection in ``directory``.

        Args:
            directory: the collection directory.
            model: a model spec or a loaded encoder. None uses the model the collection was built with
                (or :data:`~.opening.DEFAULT_MODEL` for a new one).
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
                that built it, or (with ``writer``) another writer is at work.
            ModelSpecError: an unknown ``precision`` or ``device`` (refused before anything is opened or made).
            ModelSpecError, ModelNotCachedError: the model cannot be loaded.
        """
        check_precision(precision)  # here, not when the model first loads (a query would look to blame)
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
                encoder = load_encoder(self.identity.spec, device=self.device, dim=self.identity.embed_dim,
                                       precision=self.precision)
                check_same_model(self.identity, encoder.identity, self.directory)
                self._encoder = encoder
            return self._encoder

    def close(self) -> None:
        """Release the catalog connection and the segment files (twice is harmless); any later use raises
        :class:`~mmretrieval.errors.CollectionError`: open the collection again instead."""
        self.catalog.close()

    def _check_process(self) -> None:
        """Raise CollectionError in a fork()ed child, where FAISS and torch would hang (their threads are gone)."""
        if os.getpid() != self._pid:
            raise CollectionError(forked_message(self._pid))

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
        ingest that found no image): a re-run may then still choose the model. Returns whether it was removed."""
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
               progress: Progress | None = None, ray: "RayIngestConfig | None" = None,
               device_decode: bool | None = None, share_jpegs: bool = True,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> IngestSummary:
        """Embed new and changed images from ``sources`` (folders, files, .txt/.csv lists) and update the index.

        Safe to interrupt at any point (even SIGKILL): running it again finishes the job.

        Args:
            sources: what to ingest (one path alone is one source; `~` is expanded).
            batch_size: images per model call (default 256 on CUDA, 32 on CPU).
            workers: decoding processes (default: cores - 1 on CPU).
            prune: remove rows of files that no longer exist.
            timeout_s: a single file taking longer than this to decode is failed.
            progress: ``(done, total)`` callback after each batch.
            ray: decode and embed on a Ray cluster instead (see :mod:`mmretrieval.ingest.ray_runner`);
                ``workers`` is then Ray's business, and the model loads only in Ray's actors.
            device_decode: decode JPEGs on the model's device (:mod:`mmretrieval.ingest.device_decode`), the
                other files in the CPU pool at the same time; None: when the model runs on a CUDA GPU.
            share_jpegs: with device decoding, the CPU pool also takes JPEGs (the largest first) while its
                workers have room (:mod:`mmretrieval.ingest.routing`).
            max_pixels: an image with more pixels is failed as a ``decompression_bomb`` (the default passes
                any camera photo; :data:`~mmretrieval.images.decode.DEFAULT_MAX_PIXELS`).

        Returns:
            Counts: embedded, unchanged, duplicates, failed by reason, pruned.

        Raises:
            CollectionError: a source does not exist, or an unreadable list file.
        """
        self._check_process()
        busy = self.busy_message("ingest")
        if ray is not None:
            from ..ingest.ray_runner import run_ray_ingest

            config = dataclasses.replace(ray, prune=prune, batch_size=batch_size or ray.batch_size,
                                         timeout_s=timeout_s, precision=self.precision, max_pixels=max_pixels)
            with self.writing(busy):
                return run_ray_ingest(self.catalog, self.identity, source_list(sources), config, str(self.directory),
                                      progress)
        # The model loads only if something needs embedding: an ingest over unchanged files never pays for it.
        device_type = self._encoder.device.type if self._encoder is not None else resolve_device(self.device).type
        config = IngestConfig.for_device(device_type, batch_size, workers, timeout_s=timeout_s, prune=prune,
                                         device_decode=device_decode, share_jpegs=share_jpegs, max_pixels=max_pixels)
        with self.writing(busy):
            if (self.directory / RAY_RESULTS_DIR).is_dir() or self.catalog.get_meta(RAY_OUTPUT_KEY):
                from ..ingest.ray_runner import commit_left_results  # a killed --ray run's finished work

                commit_left_results(self.catalog, str(self.directory))
            return run_ingest(self.catalog, lambda: self.encoder, source_list(sources), config, progress)

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
        with exclusive_lock(self.directory / LOCK_NAME, busy_message, waiting_note=(
                f"another process is writing {self.directory}; waiting for it to finish")):
            collect_garbage(self.catalog)
            yield self.catalog
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

    def compact(self, min_waste_ratio: float = 0.0,
                progress: Callable[[int, int], None] | None = None) -> CompactionSummary:
        """Rewrite segments that waste more than ``min_waste_ratio`` of their rows (``mmr compact``).

        Safe to kill at any point: nothing is lost or duplicated, and the next writer cleans up.
        """
        with self.writing(self.busy_message("compact")):
            return compact(self.catalog, min_waste_ratio, progress)

    # -- index ------------------------------------------------------------------------------------------------
    def rebuild_index(self, index_type: str = "auto", *, memory_budget_bytes: int | None = None,
                      recall_target: float | None = None, fill: "IndexFiller | None" = None,
                      **params: int | None) -> Manifest:
        """Build the index afresh from the stored vectors (``mmr index``); ``auto`` picks by size and memory.

        The type, parameters, memory budget and recall target are remembered: automatic rebuilds (after
        removals from HNSW, a lost or corrupt index file) use them too. ``fill`` adds the vectors to the trained
        index (default: here; :class:`~mmretrieval.ingest.ray_index.RayIndexFill` adds them on Ray).

        An ``ivf`` or ``ivfpq`` asked for over too few vectors to train it (:data:`~.sizing.MIN_IVF_VECTORS`) is
        built ``flat`` (exact) instead, with a logged warning and the manifest's ``note`` saying so; the choice is
        kept, so the asked-for type is built once the collection is large enough.

        Raises:
            CollectionError: an unknown index type, a parameter below 1, a read-only collection, or another
                writer at work.
        """
        if recall_target is not None and not 0 < recall_target <= 1:
            raise CollectionError(f"recall target must be in (0, 1], got {recall_target}")
        policy = {"memory_budget_bytes": memory_budget_bytes, "recall_target": recall_target}
        with self.writing(self.busy_message("index")):
            with self._lock:
                manifest = self._indexes.rebuild(index_type, policy, fill, **params)
        if index_type not in ("auto", manifest.index_type):
            logger.warning("%s", manifest.note or f"{index_type} index asked for, {manifest.index_type} built")
        return manifest

    # -- search -----------------------------------------------------------------------------------------------
    def search(self, query: Query | str | npt.NDArray[np.float32], k: int = 10, threshold: float | None = None,
               path_prefix: str | None = None, label: str | None = None, *, after: DateLike | None = None,
               before: DateLike | None = None, camera: str | None = None, near: NearLike | None = None) -> list[Hit]:
        """The ``k`` best images for a query (text, or a :class:`~mmretrieval.collection.query.Query`).

        Scores are exact cosines against the stored vectors (the index only proposes candidates).

        Args:
            query: a string (``"2:golden retriever"`` allowed), a Query mixing texts and images, or a vector, such
                as the one :meth:`query_vector` made of one (so a caller that also needs the vector encodes once);
                any finite non-zero vector of the collection's dimension is scaled to unit length.
            k: at most this many hits (any integer, ``np.int64`` too); fewer when the collection (or filter) is smaller.
            threshold: drop hits scoring below this.
            path_prefix: only images whose absolute path starts with this (a folder, say).
            label: only images that `label` assigned this label.
            after, before: only photos taken in ``[after, before)``: ``"2024"``, ``"2024-06"``,
                ``"2024-06-01"``, an ISO datetime, or a date (see :mod:`~mmretrieval.collection.filters`).
            camera: only photos whose camera make and model contain this (case-insensitive).
            near: only photos taken within a circle: ``"LAT,LON,KM"`` or ``(lat, lon, km)``.

        Raises:
            QueryError: an empty or self-cancelling query, an unreadable query image, a bad vector (see
                :meth:`nearest`), k not a whole number of at least 1, a threshold that is not a number, a bad filter.
            CollectionError: the collection was closed, or opened in another process before a fork.
        """
        self._check_process()
        k, threshold = check_k(k), check_threshold(threshold)  # before a model loads for nothing
        filters = Filters.of(path_prefix=path_prefix, label=label, after=after, before=before, camera=camera,
                             near=near)
        vector = self.query_vector(query) if isinstance(query, (str, Query)) else query
        return self.nearest(vector, k, threshold, filters)

    def query_vector(self, query: Query | str) -> npt.NDArray[np.float32]:
        """The unit vector :meth:`search` looks up for ``query``.

        Raises:
            QueryError: as for :meth:`search`.
        """
        self._check_process()
        return query_vector(Query.of(query), self.encode_texts, self._embed_image)

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Text vectors from the loaded model, else from the text tower alone (no image tower, no open_clip)."""
        return self.text_model().encode_texts(texts)

    def text_model(self) -> "DualEncoder | TextEncoder":
        """What text queries and labels need: the loaded model, else its text tower alone when the model is a
        local or bundled safetensors CLIP (a third of the weights, no open_clip import), else the full model."""
        with self._lock:
            if self._encoder is None and self._text_encoder is None:
                from ..models.text_tower import load_text_encoder

                self._text_encoder = load_text_encoder(self.identity, resolve_device(self.device)) or False
            return self._encoder or self._text_encoder or self.encoder

    def similar(self, image: ImageRef, k: int = 10, threshold: float | None = None,
                path_prefix: str | None = None, label: str | None = None, *, after: DateLike | None = None,
                before: DateLike | None = None, camera: str | None = None, near: NearLike | None = None) -> list[Hit]:
        """Images most like ``image`` (a catalog id, a path, or a PIL image); the image itself is left out.

        Filters as for :meth:`search`.

        Raises:
            QueryError: an unknown id, an image that cannot be decoded, k or threshold as for :meth:`search`,
                a bad filter.
            CollectionError: the collection was closed, or opened in another process before a fork.
        """
        self._check_process()
        k, threshold = check_k(k), check_threshold(threshold)
        filters = Filters.of(path_prefix=path_prefix, label=label, after=after, before=before, camera=camera,
                             near=near)
        exclude = int(image) if isinstance(image, (int, np.integer)) else None  # numpy ids too (FAISS returns them)
        if isinstance(image, (str, os.PathLike)):
            image = os.path.expanduser(os.fspath(image))
            exclude = self.catalog.id_of_path(image)
        hits = self.nearest(self._embed_image(image), k + (exclude is not None), threshold, filters)
        return [hit for hit in hits if hit.id != exclude][:k]

    def _embed_image(self, image: ImageRef) -> npt.NDArray[np.float32]:
        image_id = image if isinstance(image, (int, np.integer)) else None
        if isinstance(image, (str, os.PathLike)):
            image_id = self.catalog.id_of_path(image)
        if image_id is not None:
            ids, vectors = self.catalog.vectors([int(image_id)])
            if len(ids):
                return vectors[0]
            if isinstance(image, (int, np.integer)):
                raise QueryError(f"no embedded image with id {image} in this collection")
        if not isinstance(image, Image.Image) and not Path(image).is_file():
            what = "is a folder, not an image file" if Path(image).is_dir() else "does not exist"
            raise QueryError(f"query image {image} {what}")
        encoder = self.encoder  # a model that cannot load is its own error, not the image's
        try:
            return encoder.encode_images([image])[0]
        except (ImageDecodeError, OSError, ValueError) as exc:  # PIL's errors too: the user's image, not our bug
            raise QueryError(f"cannot use {image} as a query image: {exc}") from exc

    def nearest(self, vector: npt.NDArray[np.float32], k: int = 10, threshold: float | None = None,
                filters: Filters | None = None) -> list[Hit]:
        """The ``k`` images whose stored vectors are closest to ``vector``, best first.

        ``vector`` is scaled to unit length (only its direction counts), so scores are cosines.

        Raises:
            QueryError: a vector that is not numbers, of another dimension than the collection's, with NaN or
                infinite values, or all zeros; k or threshold as for :meth:`search`; a filter naming an unknown label.
            CollectionError: the collection was closed, or opened in another process before a fork.
        """
        self._check_process()
        k, threshold = check_k(k), check_threshold(threshold)
        vector = check_query_vector(vector, self.identity.embed_dim)
        filters = filters or Filters()
        allowed = allowed_ids(self.catalog, filters)
        if allowed is not None:  # exact over the allowed set: an approximate index would miss most of it
            found_scores, found_ids = exact_search(vector[None, :], k, allowed, self.catalog.vectors)
            exact = True
        else:
            with self._lock:  # FAISS is not safe for an add (catch-up) during a search
                self._indexes.sync()  # in memory only: a search never writes
                index = self._indexes.index
                exact = index.scores_exact(self.catalog.segments.dtype if self.catalog.segments.exists else "")
                found_scores, found_ids = index.search(vector[None, :], k if exact else index.candidates(k))
        if exact:
            ids, scores = found_ids[0], found_scores[0]
        else:  # approximate codes: re-rank the candidates exactly from the stored vectors
            ids, stored = self.catalog.vectors(found_ids[0].tolist())
            scores = stored @ vector if len(ids) else np.zeros(0, np.float32)
        scores = np.clip(scores, -1.0, 1.0)  # float16 rounding lifts a copy's cosine to 1.0001; cosines stop at 1
        order = np.argsort(-scores, kind="stable")
        if threshold is not None:
            order = order[scores[order] >= threshold]
        best = [(int(ids[j]), float(scores[j])) for j in order[:k]]  # rows and labels only for the k kept
        rows = self.catalog.rows([i for i, _ in best])
        labels = self.catalog.labels_of([i for i, _ in best])
        return [Hit(i, rows[i].path, s, tuple(p[0] for p in labels.get(i, ())), rows[i].caption)
                for i, s in best if i in rows]

    def duplicate_threshold(self, threshold: float | None = None) -> float:
        """``threshold``, or the model family's default cosine for :meth:`duplicates` when None."""
        from .duplicates import default_threshold

        return default_threshold(self.identity) if threshold is None else threshold

    def duplicates(self, threshold: float | None = None, k: int = 10,
                   progress: Progress | None = None) -> "list[DuplicateGroup]":
        """Groups of near-duplicate images (resized, recompressed, cropped, converted copies); nothing is deleted.

        Args:
            threshold: cosine at or above which two images are copies; None uses the model family's default.
            k: neighbours searched per image.
            progress: ``(done, total)`` while searching.

        See :mod:`mmretrieval.collection.duplicates`.

        Raises:
            QueryError: a threshold that is not a cosine in (0, 1], k not a whole number of at least 1.
            CollectionError: the collection was closed, or opened in another process before a fork.
        """
        from .duplicates import find_duplicates

        self._check_process()
        k, threshold = check_k(k, "neighbours"), check_threshold(threshold, duplicates=True)

        def search(queries: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
            with self._lock:  # one block at a time: an ingest in another thread may add between blocks
                self._indexes.sync()
                return self._indexes.index.search(queries, k)

        return find_duplicates(self.catalog, search, self.duplicate_threshold(threshold), k, progress)

    # -- reading ----------------------------------------------------------------------------------------------
    def image_path(self, image_id: int) -> Path:
        """The file of catalog id ``image_id`` (for serving images by id, never by a client-given path).

        Raises:
            CollectionError: an unknown id.
        """
        row = self.catalog.rows([int(image_id)]).get(int(image_id))
        if row is None:
            raise CollectionError(f"no image with id {image_id} in {self.directory}")
        return Path(row.path)

    def vectors(self, ids: Sequence[int] | None = None) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """``(ids, (n, dim) float32)`` stored vectors for ``ids`` (unknown ids are left out).

        With no ids it returns every vector at once: fine for small collections (the UI's map), 2 KB a vector
        at 512-d otherwise; large callers stream with :meth:`iter_vectors`.
        """
        return self.catalog.vectors(None if ids is None else list(ids))

    def iter_vectors(self, block_rows: int = 65_536) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """Every stored vector as blocks of ``(ids, float32 vectors)``, never more than ``block_rows`` at once."""
        return self.catalog.iter_vectors(block_rows)

    def label_of(self, ids: Sequence[int]) -> dict[int, tuple[tuple[str, float], ...]]:
        """Assigned ``(label, probability)`` pairs per id, best first; ids without labels are absent."""
        return self.catalog.labels_of(list(ids))

    def photos(self, ids: Sequence[int]) -> "dict[int, PhotoMetadata]":
        """Capture time, camera, GPS position and orientation per id (unknown ids are left out)."""
        return self.catalog.photos(list(ids))

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
        with self._lock:
            if self._indexes.loaded:
                manifest, saved = self._indexes.current(), self._indexes.manifest
            else:
                manifest = saved = self._indexes.saved()
        return describe(self.directory, self.catalog, self.identity, manifest, saved)

    # -- labels -----------------------------------------------------------------------------------------------
    def label(self, labels: Sequence[str] | str, templates: str | Sequence[str] = "default", *,
              multi_label: bool = False, threshold: float = 0.5, label_set: str = "default", replace: bool = False,
              progress: Progress | None = None, path_prefix: str | None = None, after: DateLike | None = None,
              before: DateLike | None = None, camera: str | None = None, near: NearLike | None = None) -> LabelSummary:
        """Label every embedded image zero-shot from its stored vector into label set ``label_set``.

        A set of the same name is replaced only with ``replace=True``; see :mod:`mmretrieval.collection.labelling`.
        With filters (as for :meth:`search`) only the matching images are labelled.

        Raises:
            QueryError: no labels, unknown templates, a bad filter, or filters that match no image.
            CollectionError: a set named ``label_set`` exists (and ``replace`` is false), a name that cannot name a
                set, a read-only collection, another writer at work, or a closed or forked collection.
        """
        from .labelling import label_collection

        self._check_process()
        filters = Filters.of(path_prefix=path_prefix, after=after, before=before, camera=camera, near=near)
        ids = allowed_ids(self.catalog, filters)
        if ids is not None and not len(ids):
            raise QueryError("no embedded image matches the filters; nothing was labelled and the stored labels "
                             "are kept (widen --after/--before/--camera/--near/--prefix)")
        # Under the writer lock: two runs on one set would interleave their rows.
        with self.writing(self.busy_message("label"), update_index=False):
            return label_collection(self.catalog, self.text_model(), labels, templates, multi_label=multi_label,
                                    threshold=threshold, label_set=label_set, replace=replace, progress=progress,
                                    ids=None if ids is None else ids.tolist())

    def label_sets(self) -> list["LabelSet"]:
        """The stored label sets (one per labelling run that named it), oldest first."""
        from .label_sets import sets

        return sets(self.catalog)

    def remove_label_set(self, name: str) -> int:
        """Delete label set ``name`` and its assignments (other sets are kept); returns the assignments deleted.

        Raises:
            QueryError: no label set of that name.
            CollectionError: a read-only collection, another writer at work, a closed or forked collection.
        """
        from .label_sets import delete

        if not isinstance(name, str):
            raise QueryError(f"name the label set to remove, got {name!r}")
        with self.writing(self.busy_message("label"), update_index=False):
            return delete(self.catalog, check_known(self.catalog, name))

    def export_labels(self, path: str | os.PathLike, label_set: str | None = None) -> int:
        """Write the labels of ``label_set`` (None: of every set, ``SET:LABEL`` outside the default one) to
        ``.csv`` or ``.jsonl`` (``~`` is expanded); returns rows written.

        Raises:
            QueryError: no label set of that name.
            CollectionError: a path that cannot be written.
        """
        from .labelling import export_labels

        return export_labels(self.catalog, Path(path).expanduser(), check_known(self.catalog, label_set))

    def organize(self, out_dir: str | os.PathLike, copy: bool = False, label_set: str | None = None) -> "Organized":
        """Link (or copy) the images labelled in ``label_set`` (None: in any set) into ``out_dir/<label>/`` (``~`` is
        expanded); returns files placed and sources missing.

        Raises:
            QueryError: no label set of that name.
            CollectionError: a folder that cannot be written.
        """
        from .labelling import organize

        return organize(self.catalog, Path(out_dir).expanduser(), copy=copy,
                        label_set=check_known(self.catalog, label_set))
