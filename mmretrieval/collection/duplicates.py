"""Near-duplicate images: resized, recompressed, slightly cropped or format-converted copies of one picture.

From the collection's stored vectors, never by re-reading images:

1. a k-NN graph: every stored vector is searched against the collection's index, ``block`` vectors at a
   time (so memory holds one block of queries, never all vectors), keeping neighbours scoring at least the
   threshold (cosine);
2. connected components of those pairs (union-find): copies of copies end up in one group;
3. per group, the copy to keep (a file over a link to it, the most pixels, the most capture metadata, a lossless
   format, the largest file, the oldest: :func:`keeper_rank`) and each copy's exact cosine to it.

Nothing is deleted here; :func:`organize_duplicates` only links the copies into a review folder.
The default threshold depends on the model family (see :data:`DEFAULT_THRESHOLDS`): cosines between
copies of one image are not on the same scale for every model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from ..atomic import check_fillable_folder, folder_built_aside
from ..errors import CollectionError
from ..images.formats import LOSSLESS_EXTENSIONS
from ..models.specs import ModelIdentity
from .catalog import Catalog

if TYPE_CHECKING:
    from ..images.metadata import PhotoMetadata

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
# queries (n, dim) and k -> (scores, ids), both (n, <=k), best first, no -1 padding
KnnSearch = Callable[[npt.NDArray[np.float32], int], "tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]"]
# ids -> (sorted ids found, their vectors); unknown ids are left out
VectorLoader = Callable[[Sequence[int]], "tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]"]

# Cosine at or above which two images count as copies, by model family. "shapes" (builtin:shapes) is
# measured by bench/duplicates.py (precision and recall >= 0.95 on its generated set); the CLIP and SigLIP
# values are not measured here (no pretrained weights offline): re-run bench/duplicates.py --model SPEC.
DEFAULT_THRESHOLDS = {"shapes": 0.95, "clip": 0.95, "siglip": 0.95}
DEFAULT_K = 10  # neighbours searched per image: a group larger than k+1 still joins up through chains
_RESCORE_MARGIN = 0.1  # neighbours this far below the threshold by the index's (possibly PQ) score are dropped
_BLOCK = 2048  # query vectors per index search (their neighbours' vectors are gathered too)


@dataclass(frozen=True)
class Copy:
    """One image of a duplicate group."""

    id: int  # catalog id
    path: str
    score: float  # cosine to the kept copy (1.0 for the kept copy itself)
    width: int  # pixels, as decoded at ingestion (0 when unknown)
    height: int
    bytes: int  # file size now (-1 when the file is gone)
    mtime_ns: int  # modification time now (0 when the file is gone)
    is_link: bool = False  # a symbolic link (to a file the collection also holds: never the copy to keep)


@dataclass(frozen=True)
class DuplicateGroup:
    """Copies of one picture; the kept copy first, the others by decreasing score."""

    copies: tuple[Copy, ...]

    @property
    def keep(self) -> Copy:
        """The copy to keep: see :func:`keeper_rank`."""
        return self.copies[0]

    @property
    def score(self) -> float:
        """The lowest cosine of a copy to the kept one: how alike the group's least similar member is."""
        return min(copy.score for copy in self.copies[1:])

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(copy.path for copy in self.copies)

    @property
    def scores(self) -> tuple[float, ...]:
        return tuple(copy.score for copy in self.copies)


def default_threshold(identity: ModelIdentity) -> float:
    """The measured (or documented) default threshold for the family of the model that made the vectors."""
    text = f"{identity.spec} {identity.architecture}".lower()
    if identity.spec == "builtin:shapes" or "shapes" in identity.architecture:
        return DEFAULT_THRESHOLDS["shapes"]
    return DEFAULT_THRESHOLDS["siglip" if "siglip" in text else "clip"]


def similar_pairs(blocks: Iterable[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]], total: int,
                  search: KnnSearch, load: VectorLoader, threshold: float, k: int = DEFAULT_K,
                  progress: Progress | None = None) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Pairs of ids whose exact cosine is at least ``threshold``, among each image's ``k`` nearest neighbours.

    The index only proposes neighbours; those within :data:`_RESCORE_MARGIN` of the threshold by its score are
    rescored exactly from the stored vectors, so a compressed (PQ) index's approximate scores decide nothing
    near the threshold. Yields one ``(a, b)`` pair of id arrays per block
    (a pair may come once from each side).

    Args:
        blocks: ``(ids, (n, dim) vectors)`` blocks covering the collection (bounded memory).
        total: how many vectors the blocks hold, for progress.
        search: the collection's k-NN search (see :data:`KnnSearch`).
        load: ids -> ``(ids found, vectors)``, for the neighbours' exact scores.
        threshold: cosine cut-off.
        k: neighbours per image (the image itself is one of the ``k + 1`` searched).
        progress: ``(done, total)`` after each block.

    Raises:
        CollectionError: k < 1.
    """
    if k < 1:
        raise CollectionError(f"k ({k}) must be at least 1: it is how many neighbours each image is compared with")
    done = 0
    for ids, vectors in blocks:
        if len(ids):
            approximate, neighbours = search(vectors, k + 1)
            near = approximate >= threshold - _RESCORE_MARGIN  # only these can be copies: fetch and rescore them
            rows, cols = np.nonzero((neighbours >= 0) & (neighbours != ids[:, None]) & near)
            candidates = neighbours[rows, cols]
            found, found_vectors = load(np.unique(candidates).tolist())
            position = np.searchsorted(found, candidates)
            present = (position < len(found)) & (found[np.minimum(position, len(found) - 1)] == candidates) \
                if len(found) else np.zeros(len(candidates), bool)
            rows, candidates, position = rows[present], candidates[present], position[present]
            scores = np.einsum("ij,ij->i", vectors[rows], found_vectors[position]) if len(rows) else np.zeros(0)
            scores = np.minimum(scores, 1.0)  # a float16-stored copy's cosine can round to 1.0001
            close = scores >= threshold
            yield ids[rows[close]], candidates[close]
        done += len(ids)
        if progress:
            progress(done, total)


def connected_groups(pairs: Iterable[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]) -> list[list[int]]:
    """Connected components (of two or more ids) of the pairs' graph, by union-find; each sorted, by first id."""
    parent: dict[int, int] = {}

    def root(node: int) -> int:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving keeps the trees flat
            node = parent[node]
        return node

    for left, right in pairs:
        for a, b in zip(left.tolist(), right.tolist()):
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for node in parent:
        members.setdefault(root(node), []).append(node)
    return sorted((sorted(group) for group in members.values() if len(group) > 1), key=lambda group: group[0])


def describe_groups(groups: Sequence[Sequence[int]], catalog: Catalog) -> list[DuplicateGroup]:
    """Paths, sizes, the kept copy and each copy's exact cosine to it, from the catalog and the files."""
    described = []
    for group in groups:
        rows = catalog.rows(list(group))
        found, vectors = catalog.vectors(list(group))
        # renormalised: float16 storage leaves norms of 0.9999 to 1.0001, and a byte-identical copy scored 0.9999
        unit = vectors.astype(np.float64) / np.linalg.norm(vectors, axis=1, keepdims=True)
        by_id = dict(zip(found.tolist(), unit))
        candidates = [_stat_copy(rows[i].path, i, rows[i].width, rows[i].height) for i in group
                      if i in rows and i in by_id]
        if len(candidates) < 2:
            continue  # a row removed since the search
        photos = catalog.photos([c.id for c in candidates])
        kept = max(candidates, key=lambda c: keeper_rank(c, photos.get(c.id)))
        scores = {c.id: round(min(1.0, float(by_id[c.id] @ by_id[kept.id])), 6) for c in candidates}
        copies = [Copy(c.id, c.path, 1.0 if c.id == kept.id else scores[c.id], c.width, c.height, c.bytes, c.mtime_ns,
                       c.is_link) for c in candidates]
        copies.sort(key=lambda c: (c.id != kept.id, -c.score, c.id))
        described.append(DuplicateGroup(tuple(copies)))
    return described


def keeper_rank(copy: Copy, photo: "PhotoMetadata | None") -> tuple[bool, int, int, bool, int, int, int]:
    """How much a copy deserves keeping, compared as a tuple (the largest is kept):

    1. a file, not a symbolic link: a link's target is in the collection too, and deleting the target because
       the link was kept would leave a dangling link and no photo;
    2. the most pixels;
    3. the most of what a photo library sorts by, from the file itself: an EXIF capture time, the camera, a GPS
       position (a camera original over a converted or re-saved copy that lost them);
    4. a lossless format (a larger JPEG beside a PNG of the same picture only holds more compression noise);
    5. the largest file, then the oldest, then the lowest id.
    """
    lossless = os.path.splitext(copy.path)[1].lower() in LOSSLESS_EXTENSIONS
    described = 0
    if photo is not None:
        described = sum((photo.taken_source not in (None, "mtime"), bool(photo.make or photo.model),
                         photo.latitude is not None))
    return (not copy.is_link, copy.width * copy.height, described, lossless, copy.bytes, -copy.mtime_ns, -copy.id)


def _stat_copy(path: str, image_id: int, width: int | None, height: int | None) -> Copy:
    try:
        stat = os.stat(path)
        size, mtime_ns = stat.st_size, stat.st_mtime_ns
    except OSError:
        size, mtime_ns = -1, 0
    return Copy(image_id, path, 1.0, width or 0, height or 0, size, mtime_ns, os.path.islink(path))


def find_duplicates(catalog: Catalog, search: KnnSearch, threshold: float, k: int = DEFAULT_K,
                    progress: Progress | None = None) -> list[DuplicateGroup]:
    """Groups of near-duplicate images among the catalog's stored vectors, largest score first.

    Args:
        catalog: where the vectors, paths and sizes are.
        search: k-NN over the collection's index.
        threshold: cosine at or above which two images are copies (``default_threshold`` gives the family's).
        k: neighbours searched per image.
        progress: ``(done, total)`` while searching.

    Raises:
        CollectionError: a threshold outside (0, 1], or k < 1.
    """
    if not 0 < threshold <= 1:
        raise CollectionError(f"duplicate threshold {threshold} must be a cosine in (0, 1]; e.g. 0.95")
    total = catalog.vector_count()
    pairs = similar_pairs(catalog.iter_vectors(_BLOCK), total, search, catalog.vectors, threshold, k, progress)
    groups = connected_groups(pairs)
    logger.info("%d near-duplicate groups among %d images at threshold %.3f", len(groups), total, threshold)
    described = describe_groups(groups, catalog)
    described.sort(key=lambda group: (-group.score, group.keep.id))
    return described


def chaining_note(groups: Sequence[DuplicateGroup], threshold: float) -> str | None:
    """What chaining did, when some group holds members less alike than ``threshold`` to its kept copy; else None.

    Groups are connected components: a copy of a copy joins even when it is further from the kept one than the
    threshold. That is right for a chain of re-saves and crops, and wrong at a low threshold, where unrelated
    images link up step by step into one large group. No rule tells the two apart from the scores alone, so the
    note gives the user the facts to judge: how many groups chained, how far, and the largest group's size.
    """
    loose = [group.score for group in groups if group.score < threshold]
    if not loose:
        return None
    largest = max(len(group.copies) for group in groups)
    return (f"{len(loose)} of {len(groups)} groups joined images less alike than {threshold:.3f} to their kept copy "
            f"through chains of neighbours (cosine down to {min(loose):.3f}; the largest group has {largest} "
            "images); if those are not copies, raise the threshold to split them")


REVIEWED_BY = "mmr duplicates --organize"  # the marker of a review folder: a re-run replaces it


def check_review_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a path that :func:`organize_duplicates` may fill: a new name, an empty folder, or an earlier
    review folder (replaced: two runs' groups never mix, with two ``keep-`` files in one group folder).

    Raises:
        CollectionError: it is a file, or a folder that holds anything else.
    """
    return check_fillable_folder(out_dir, REVIEWED_BY)


def organize_duplicates(groups: Sequence[DuplicateGroup], out_dir: str | os.PathLike) -> int:
    """Link each group into ``out_dir/NNNNN/``: ``keep-<id>-<name>`` and ``<id>-<name>`` for the other copies.

    Symlinks only: no image is moved, copied or deleted. Returns the number of links made. The groups are linked
    into a hidden sibling folder that then takes the place of ``out_dir``
    (:func:`~mmretrieval.atomic.folder_built_aside`), so an interrupted run leaves ``out_dir`` as it was.

    Raises:
        CollectionError: ``out_dir`` holds files of anything but an earlier review (:func:`check_review_dir`),
            or cannot be written.
    """
    made = 0
    try:
        with folder_built_aside(out_dir, REVIEWED_BY) as partial:
            for number, group in enumerate(groups, start=1):
                folder = partial / f"{number:05d}"
                folder.mkdir()
                for copy in group.copies:
                    prefix = "keep-" if copy.id == group.keep.id else ""
                    (folder / f"{prefix}{copy.id}-{os.path.basename(copy.path)}").symlink_to(
                        os.path.abspath(copy.path))
                    made += 1
    except OSError as exc:
        raise CollectionError(f"cannot write the review folder {out_dir}: {exc}") from exc
    return made
