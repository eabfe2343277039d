"""The search methods of :class:`~mmretrieval.collection.collection.Collection`: text, image and vector queries,
near-duplicates. A mixin, so that the collection module stays readable; it uses the collection's catalog, index
keeper, model and lock (see :class:`~mmretrieval.collection.collection.Collection`) and nothing else of it.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

from ..errors import ImageDecodeError, QueryError
from ..ingest.reader import storable_mtime_ns
from ..models.specs import ModelIdentity
from .arguments import check_k, check_query_vector, check_threshold
from .catalog import Catalog
from .exact_search import exact_search
from .filters import DateLike, Filters, NearLike, allowed_ids
from .query import ImageRef, Query, query_vector
from .records import Hit
from .sealed import exact_cosines
from .upkeep import IndexKeeper

if TYPE_CHECKING:
    from ..models.encoder import DualEncoder
    from ..models.text_tower import TextEncoder
    from .duplicates import DuplicateGroup

Progress = Callable[[int, int], None]  # (done, total)
NEAR_TIES = 16  # hits an exact index proposes past k, scored again: those an index saved before scaling misplaced
RESCORE_ROWS = 16_384  # hits scored again at once (float64: 64 MiB at 512-d), whatever k is


class SearchMethods:
    """Queries over an open collection's vectors; mixed into :class:`~mmretrieval.collection.collection.Collection`."""

    catalog: Catalog
    identity: ModelIdentity
    device: str
    encoder: DualEncoder  # the collection's model, loaded on first use
    _encoder: DualEncoder | None
    _text_encoder: "TextEncoder | None | bool"
    _indexes: IndexKeeper
    _lock: threading.RLock
    _check_process: Callable[[], None]

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
                from ..models.encoder import resolve_device
                from ..models.text_tower import load_text_encoder

                self._text_encoder = load_text_encoder(self.identity, resolve_device(self.device)) or False
            return self._encoder or self._text_encoder or self.encoder

    def similar(self, image: ImageRef, k: int = 10, threshold: float | None = None,
                path_prefix: str | None = None, label: str | None = None, *, after: DateLike | None = None,
                before: DateLike | None = None, camera: str | None = None, near: NearLike | None = None) -> list[Hit]:
        """Images most like ``image`` (a catalog id, a path, or a PIL image). An id, or the path of an image in the
        collection, is left out of the hits; a PIL image is not matched to a row (a collection image opened with
        PIL comes back first, at 1.0).

        Filters as for :meth:`search`.

        Raises:
            QueryError: an unknown id, an image that cannot be decoded, something that is none of the three, k or
                threshold as for :meth:`search`, a bad filter.
            CollectionError: the collection was closed, or opened in another process before a fork.
        """
        self._check_process()
        if isinstance(image, bytes):  # a path as bytes (a name that is not UTF-8), as ingest takes them
            image = os.fsdecode(image)
        if isinstance(image, (bool, np.bool_)) or not isinstance(image, (int, np.integer, str, os.PathLike,
                                                                          Image.Image)):
            raise QueryError(f"similar() takes a catalog id, a path or a PIL image, got {type(image).__name__}; a "
                             "vector is searched with search(vector)")
        k, threshold = check_k(k), check_threshold(threshold)
        filters = Filters.of(path_prefix=path_prefix, label=label, after=after, before=before, camera=camera,
                             near=near)
        exclude = int(image) if isinstance(image, (int, np.integer)) else None  # numpy ids too (FAISS returns them)
        if isinstance(image, (str, os.PathLike)):
            image = os.path.expanduser(os.fspath(image))
            exclude = self.catalog.id_of_path(image)
        hits = self.nearest(self._embed_image(image), k + (exclude is not None), threshold, filters)
        return [hit for hit in hits if hit.id != exclude][:k]

    def labelled(self, label: str, k: int = 10, threshold: float | None = None, path_prefix: str | None = None, *,
                 after: DateLike | None = None, before: DateLike | None = None, camera: str | None = None,
                 near: NearLike | None = None) -> list[Hit]:
        """The images given ``label`` (``SET:LABEL`` or ``LABEL`` in any set, as the search filter takes it), most
        probable first, with no query: each :class:`Hit`'s score is its probability of the label; ``threshold``
        drops those below a probability. Other filters as for :meth:`search`.

        Memory: arrays over the images given the label, about 100 bytes each at the peak (their sorted copies
        included; 0.8 s and ~100 MB for a label on 1 M images, measured), plus 8 bytes an image the other filters
        allow, if any; never Python objects per image.

        Raises:
            QueryError: a label no set has (the message names the closest), k or threshold as for :meth:`search`.
        """
        from .filters import label_refs
        from .label_sets import probabilities_of_label

        self._check_process()
        k, threshold = check_k(k), check_threshold(threshold)
        refs = label_refs(self.catalog, label)  # (checked first: an unknown label says so)
        others = Filters.of(path_prefix=path_prefix, after=after, before=before, camera=camera, near=near)
        allowed = allowed_ids(self.catalog, others)  # None: no other filter
        found = [probabilities_of_label(self.catalog, ref) for ref in refs]
        ids = np.concatenate([ids for ids, _ in found])
        probabilities = np.concatenate([probabilities for _, probabilities in found])
        keep = probabilities >= (threshold if threshold is not None else -np.inf)
        if allowed is not None:
            keep &= np.isin(ids, allowed)
        ids, probabilities = ids[keep], probabilities[keep]
        order = np.lexsort((ids, -probabilities))  # most probable first, then by id
        best: dict[int, float] = {}
        for j in order:  # an image given several alike labels is listed once, at its best
            best.setdefault(int(ids[j]), float(probabilities[j]))
            if len(best) == k:
                break
        return self._hits(best)

    def browse(self, k: int = 10, path_prefix: str | None = None, label: str | None = None, *,
               after: DateLike | None = None, before: DateLike | None = None, camera: str | None = None,
               near: NearLike | None = None, oldest_first: bool = False) -> list[Hit]:
        """The images that pass the filters, with no query: newest first (``oldest_first``: oldest first) by
        capture time (EXIF, else the file's time), then those with no capture time by catalog id, which a date
        filter leaves out. Each :class:`Hit`'s score is NaN: there is none. Filters as for :meth:`search`; none
        lists the newest images of the whole collection.

        Memory: the ``k`` hits, plus 8 bytes an image that a folder, label or place filter allows, if one is set;
        the capture-time index is walked a page at a time (:mod:`~mmretrieval.collection.browse`).

        Raises:
            QueryError: k not a whole number of at least 1, a bad filter (as for :meth:`search`).
            CollectionError: the collection was closed, or opened in another process before a fork.
        """
        from .browse import browse_ids

        self._check_process()
        k = check_k(k)
        filters = Filters.of(path_prefix=path_prefix, label=label, after=after, before=before, camera=camera,
                             near=near)
        return self._hits(dict.fromkeys(browse_ids(self.catalog, filters, k, oldest_first), math.nan))

    def _embed_image(self, image: ImageRef) -> npt.NDArray[np.float32]:
        image_id = image if isinstance(image, (int, np.integer)) else None
        if isinstance(image, (str, os.PathLike)):
            image_id = self._id_if_unchanged(image)
        if image_id is not None:
            ids, vectors = self.catalog.vectors([int(image_id)], unit_length=False)  # scored as mmr duplicates does
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

    def _id_if_unchanged(self, path: str | os.PathLike) -> int | None:
        """``path``'s catalog id when its stored vector is of the file as it is: same size and modification time,
        or the file gone (the stored vector is all there is), or imported (no size or time to compare). A file
        changed since it was embedded is embedded afresh; its stored vector would answer for the old picture."""
        state = self.catalog.file_state(path)
        if state is None:
            return None
        image_id, size, mtime_ns = state
        try:
            info = os.stat(path)
        except OSError:
            return image_id
        unchanged = (info.st_size, storable_mtime_ns(info.st_mtime_ns)) == (size, mtime_ns)
        return image_id if unchanged or (size, mtime_ns) == (0, 0) else None

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
            _, found_ids = exact_search(vector[None, :], k + NEAR_TIES, allowed, self.catalog.vectors)
        else:
            with self._lock:  # FAISS is not safe for an add (catch-up) during a search
                self._indexes.sync()  # in memory only: a search never writes
                index = self._indexes.index
                exact = index.scores_exact(self.catalog.segments.dtype if self.catalog.segments.exists else "")
                _, found_ids = index.search(vector[None, :], k + NEAR_TIES if exact else index.candidates(k))
        ids, scores = self._cosines(found_ids[0], vector)
        order = np.argsort(-scores, kind="stable")
        if threshold is not None:
            order = order[scores[order] >= threshold]
        return self._hits({int(ids[j]): float(scores[j]) for j in order[:k]})  # rows and labels of the k kept

    def _cosines(self, ids: npt.NDArray[np.int64], vector: npt.NDArray[np.float32]
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """The :func:`~.sealed.exact_cosines` of ``vector`` with the vectors of ``ids`` as stored (those still
        stored), whatever the index that proposed them: :data:`RESCORE_ROWS` at a time, however large k is."""
        found_ids, found_scores = [np.zeros(0, np.int64)], [np.zeros(0)]
        for start in range(0, len(ids), RESCORE_ROWS):
            block_ids, stored = self.catalog.vectors(ids[start:start + RESCORE_ROWS].tolist(), unit_length=False)
            found_ids.append(block_ids)
            found_scores.append(exact_cosines(stored, vector))
        return np.concatenate(found_ids), np.concatenate(found_scores)

    def _hits(self, scores: dict[int, float]) -> list[Hit]:
        """Hits for catalog ids (in the dict's order) with their scores; an id whose row went meanwhile is left out."""
        rows = self.catalog.rows(list(scores))
        labels = self.catalog.labels_of(list(scores))
        return [Hit(i, rows[i].path, score, tuple(name for name, _ in labels.get(i, ())), rows[i].caption)
                for i, score in scores.items() if i in rows]

    def duplicate_threshold(self, threshold: float | None = None) -> float:
        """``threshold``, or the model family's default cosine for :meth:`duplicates` when None."""
        from .duplicates import default_threshold

        return default_threshold(self.identity) if threshold is None else threshold

    def duplicates(self, threshold: float | None = None, k: int = 10, progress: Progress | None = None,
                   prefer: str | os.PathLike | Sequence[str | os.PathLike] = ()) -> "list[DuplicateGroup]":
        """Groups of near-duplicate images (resized, recompressed, cropped, converted copies); nothing is deleted.

        Args:
            threshold: cosine at or above which two images are copies; None uses the model family's default.
            k: neighbours searched per image.
            progress: ``(done, total)`` while searching.
            prefer: folders (or one folder) whose copies are kept first, the first folder before the second (a copy
                that is a link is never kept); within them, and elsewhere, the usual rule
                (:func:`~.duplicates.keeper_rank`).

        See :mod:`mmretrieval.collection.duplicates`.

        Raises:
            QueryError: a threshold that is not a cosine in (0, 1], k not a whole number of at least 1.
            CollectionError: the collection was closed, or opened in another process before a fork.
        """
        from .duplicates import find_duplicates, preferred_folders

        self._check_process()
        k, threshold = check_k(k, "neighbours"), check_threshold(threshold, duplicates=True)
        if isinstance(prefer, (str, bytes, os.PathLike)):  # one folder alone, not its letters (each a "folder")
            prefer = [prefer]
        preferred_folders(prefer)  # a folder that is not one is refused before the search, not after it

        def search(queries: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
            with self._lock:  # one block at a time: an ingest in another thread may add between blocks
                self._indexes.sync()
                return self._indexes.index.search(queries, k)

        return find_duplicates(self.catalog, search, self.duplicate_threshold(threshold), k, progress, prefer)
