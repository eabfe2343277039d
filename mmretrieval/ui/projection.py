"""The map: a 2-D layout of a collection's embeddings, computed once per collection generation and cached.

Methods: UMAP (umap-learn) keeps neighbourhoods, so images of one kind form islands; t-SNE (openTSNE)
does too; PCA is the fast fallback (milliseconds, deterministic, but its two axes show only the two
directions of largest variance, often backgrounds rather than shapes or colours). ``auto`` takes the
first of UMAP, t-SNE, PCA that is installed. Beyond :data:`MAX_POINTS` images a seeded sample is drawn.

The layout depends only on the vectors, so it is cached in the collection directory
(``map-cache/<method>-g<generation>-n<points>.npz``, written atomically) and reused until an ingest
changes the generation; colours and filters are applied on top without recomputing it.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import numpy.typing as npt

from ..atomic import atomic_write_bytes
from ..models.zeroshot import ZeroShotClassifier

logger = logging.getLogger(__name__)

MAX_POINTS = 50_000  # points laid out; larger collections are sampled (seeded, so the map is stable)
METHODS = ("auto", "umap", "tsne", "pca")
CACHE_DIRNAME = "map-cache"
UNLABELLED = "(no labels)"
_MIN_NEIGHBOUR_POINTS = 16  # below this UMAP/t-SNE say nothing PCA does not


@dataclass(frozen=True)
class Projection:
    """Each shown image's catalog id and its 2-D coordinates."""

    ids: npt.NDArray[np.int64]  # (n,) catalog ids
    coordinates: npt.NDArray[np.float32]  # (n, 2)
    method: str  # "umap", "tsne" or "pca": what actually computed it
    explained: tuple[float, float] | None = None  # PCA only: share of the variance each axis explains


def sample(ids: npt.NDArray[np.int64], max_points: int = MAX_POINTS, seed: int = 0) -> npt.NDArray[np.int64]:
    """At most ``max_points`` of ``ids``, a seeded random sample in id order."""
    ids = np.sort(np.asarray(ids, np.int64))
    if len(ids) <= max_points:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, size=max_points, replace=False))


def pca_2d(ids: npt.NDArray[np.int64], embeddings: npt.NDArray[np.float32]) -> Projection:
    """Project ``embeddings`` (rows matching ``ids``) onto their first two principal components.

    Raises:
        ValueError: ``ids`` and ``embeddings`` disagree in length.
    """
    if len(ids) != len(embeddings):
        raise ValueError(f"{len(ids)} ids for {len(embeddings)} embeddings")
    if len(ids) < 2:
        return Projection(np.asarray(ids, np.int64), np.zeros((len(ids), 2), np.float32), "pca", (0.0, 0.0))
    centred = embeddings.astype(np.float64) - embeddings.mean(axis=0, keepdims=True)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    coordinates = centred @ components[:2].T
    if coordinates.shape[1] < 2:
        coordinates = np.pad(coordinates, ((0, 0), (0, 2 - coordinates.shape[1])))
    # Fix each axis's sign so the same data always gives the same picture.
    signs = np.sign(coordinates[np.abs(coordinates).argmax(axis=0), np.arange(2)])
    coordinates *= np.where(signs == 0, 1.0, signs)
    variance = singular**2
    share = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    share = np.pad(share, (0, 2 - len(share)))
    return Projection(np.asarray(ids, np.int64), coordinates.astype(np.float32), "pca",
                      (float(share[0]), float(share[1])))


def available_method(method: str) -> str:
    """The method ``method`` resolves to here: ``auto`` becomes the best installed one.

    Raises:
        ValueError: an unknown method name.
    """
    if method not in METHODS:
        raise ValueError(f"unknown map method {method!r}; use one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    for candidate, module in (("umap", "umap"), ("tsne", "openTSNE")):
        try:
            __import__(module)
            return candidate
        except ImportError:
            continue
    return "pca"


def layout(ids: npt.NDArray[np.int64], embeddings: npt.NDArray[np.float32], method: str, seed: int = 0) -> Projection:
    """Lay out ``embeddings`` (rows matching ``ids``) in 2-D with ``method`` (``umap``, ``tsne`` or ``pca``)."""
    if method == "pca" or len(ids) < _MIN_NEIGHBOUR_POINTS:
        return pca_2d(ids, embeddings)
    data = np.ascontiguousarray(embeddings, dtype=np.float32)
    if method == "umap":
        import umap  # heavy (numba): only when a map is drawn

        # Seeded, UMAP runs on one thread whatever n_jobs says, and warns of it unless n_jobs says so too: that
        # warning reached the server's log as mmr's own (photos walkthrough).
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(ids) - 1), min_dist=0.1, metric="cosine",
                            random_state=seed, n_jobs=1)
        coordinates = reducer.fit_transform(data)
    elif method == "tsne":
        from openTSNE import TSNE

        coordinates = np.asarray(TSNE(perplexity=min(30.0, (len(ids) - 1) / 3), metric="cosine", random_state=seed,
                                      n_jobs=1).fit(data))
    else:
        raise ValueError(f"unknown map method {method!r}")
    return Projection(np.asarray(ids, np.int64), np.asarray(coordinates, np.float32), method)


def cached_layout(directory: Path, generation: int, ids: npt.NDArray[np.int64],
                  load: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]], method: str = "auto",
                  max_points: int = MAX_POINTS) -> tuple[Projection, bool]:
    """The layout of the collection in ``directory`` at ``generation``, from its cache or computed and cached.

    Args:
        directory: the collection directory (the cache goes in its ``map-cache/`` folder).
        generation: the collection generation the vectors belong to.
        ids: every embedded image's id (sampled down to ``max_points`` here).
        load: reads the vectors of the given ids, in that order.
        method: ``auto``, ``umap``, ``tsne`` or ``pca``.

    Returns:
        The projection and whether it came from the cache.
    """
    resolved = available_method(method)
    shown = sample(ids, max_points)
    path = directory / CACHE_DIRNAME / f"{resolved}-g{generation}-n{len(shown)}.npz"
    cached = _read(path, shown, resolved)
    if cached is not None:
        return cached, True
    started = time.monotonic()
    projection = layout(shown, load(shown), resolved)
    logger.info("%s map of %d points in %.1f s", projection.method, len(shown), time.monotonic() - started)
    _write(path, projection)
    return projection, False


def _read(path: Path, ids: npt.NDArray[np.int64], method: str) -> Projection | None:
    try:
        with np.load(path) as stored:
            if not np.array_equal(stored["ids"], ids):  # same generation, other rows: not this layout
                return None
            explained = tuple(float(v) for v in stored["explained"]) if "explained" in stored else None
            return Projection(stored["ids"].astype(np.int64), stored["coordinates"].astype(np.float32),
                              str(stored["method"]), explained)  # type: ignore[arg-type]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("ignoring unreadable map cache %s (%s)", path, exc)
        return None


def _write(path: Path, projection: Projection) -> None:
    buffer = io.BytesIO()
    extra = {"explained": np.asarray(projection.explained)} if projection.explained else {}
    np.savez(buffer, ids=projection.ids, coordinates=projection.coordinates, method=projection.method, **extra)
    try:
        path.parent.mkdir(exist_ok=True)
        for old in path.parent.glob("*.npz"):  # layouts of earlier generations describe vectors that changed
            if old.name != path.name:
                old.unlink(missing_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:  # a read-only collection: the map is simply computed again next time
        logger.info("cannot cache the map in %s: %s", path.parent, exc)


def classify_points(classifier: ZeroShotClassifier, embeddings: npt.NDArray[np.float32]) -> tuple[list[str], npt.NDArray[np.float32]]:
    """Each point's most probable label and that probability."""
    probabilities = classifier.probabilities(embeddings)
    best = probabilities.argmax(axis=1)
    return [classifier.labels[i] for i in best], probabilities[np.arange(len(best)), best]
