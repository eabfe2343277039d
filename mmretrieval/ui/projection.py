"""The map: a 2-D PCA projection of a collection's embeddings, coloured by zero-shot label.

PCA rather than t-SNE/UMAP: deterministic, a few milliseconds for thousands of points, no extra
dependency, and distances along the axes keep a meaning (directions of largest variance).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from ..models.zeroshot import ZeroShotClassifier

logger = logging.getLogger(__name__)

MAX_POINTS = 4000  # points drawn; larger collections are sampled (seeded, so the map is stable)
UNLABELLED = "(no labels)"


@dataclass(frozen=True)
class Projection:
    """Each shown image's catalog id and its 2-D coordinates."""

    ids: npt.NDArray[np.int64]  # (n,) catalog ids
    coordinates: npt.NDArray[np.float32]  # (n, 2) first two principal components
    explained: tuple[float, float]  # share of the variance each axis explains


def pca_2d(ids: npt.NDArray[np.int64], embeddings: npt.NDArray[np.float32], max_points: int = MAX_POINTS,
           seed: int = 0) -> Projection:
    """Project ``embeddings`` (rows matching ``ids``) onto their first two principal components.

    Raises:
        ValueError: ``ids`` and ``embeddings`` disagree in length.
    """
    if len(ids) != len(embeddings):
        raise ValueError(f"{len(ids)} ids for {len(embeddings)} embeddings")
    if len(ids) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), size=max_points, replace=False))
        ids, embeddings = ids[keep], embeddings[keep]
    if len(ids) < 2:
        return Projection(np.asarray(ids, np.int64), np.zeros((len(ids), 2), np.float32), (0.0, 0.0))
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
    return Projection(np.asarray(ids, np.int64), coordinates.astype(np.float32), (float(share[0]), float(share[1])))


def classify_points(classifier: ZeroShotClassifier, embeddings: npt.NDArray[np.float32]) -> tuple[list[str], npt.NDArray[np.float32]]:
    """Each point's most probable label and that probability."""
    probabilities = classifier.probabilities(embeddings)
    best = probabilities.argmax(axis=1)
    return [classifier.labels[i] for i in best], probabilities[np.arange(len(best)), best]


def map_table(projection: Projection, labels: list[str] | None, confidence: npt.NDArray[np.float32] | None,
              names: list[str]) -> pd.DataFrame:
    """The scatter plot's data: one row per point with id, x, y, label, confidence and file name.

    Args:
        projection: the points.
        labels: each point's label, in the projection's order; None leaves every point unlabelled.
        confidence: each label's probability (None: not known).
        names: file names in the same order, for tooltips.
    """
    count = len(projection.ids)
    return pd.DataFrame({
        "id": projection.ids.astype(int),
        "x": projection.coordinates[:, 0].astype(float),
        "y": projection.coordinates[:, 1].astype(float),
        "label": labels if labels is not None else [UNLABELLED] * count,
        "confidence": np.round(np.asarray(confidence if confidence is not None else np.full(count, np.nan), float), 3),
        "name": names,
    })


def ids_in_range(table: pd.DataFrame, x_range: tuple[float, float], limit: int = 24) -> list[int]:
    """Ids of the points whose x lies in ``x_range`` (a brush on the plot), nearest the range's centre first."""
    low, high = sorted(x_range)
    inside = table[(table["x"] >= low) & (table["x"] <= high)]
    centre = (low + high) / 2
    order = (inside["x"] - centre).abs().sort_values(kind="stable").index
    return [int(i) for i in inside.loc[order, "id"].head(limit)]
