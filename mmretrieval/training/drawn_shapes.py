"""Shapes drawn apart from the scene generator, by code that shares none of its drawing, so that scores on them
(:mod:`.shapes_eval`) show whether the demo model learnt shapes and colours rather than the generator's drawing:
:func:`plain_renderings` (upright, basic colours) and :func:`drawn_apart` (any rotation, anti-aliased,
plain/noisy/two-tone backgrounds, every shape and colour).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

from . import scenes

PLAIN_SHAPES = ("circle", "square", "triangle", "star")
PLAIN_COLORS = {"red": (255, 0, 0), "green": (0, 190, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}


def plain_renderings(seed: int = 7, per_pair: int = 3, size: int = 112) -> list[tuple[Image.Image, str, str]]:
    """Single filled shapes in basic colours on plain or noisy backgrounds, drawn with numpy masks
    (not the generator's Pillow code), as ``(image, color, shape)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    out = []
    for shape in PLAIN_SHAPES:
        for color, rgb in PLAIN_COLORS.items():
            for variant in range(per_pair):
                radius = size * rng.uniform(0.2, 0.32)
                cx, cy = size / 2 + rng.uniform(-0.1, 0.1, size=2) * size
                mask = _mask(shape, xx - cx, yy - cy, radius)
                if variant % 2:
                    background = rng.normal(rng.uniform(60, 200), 25, size=(size, size, 3))
                else:
                    background = np.full((size, size, 3), rng.choice([0, 128, 255]), dtype=np.float64)
                pixels = np.where(mask[..., None], np.array(rgb, dtype=np.float64), background)
                out.append((Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), color, shape))
    return out


def _mask(shape: str, dx: npt.NDArray, dy: npt.NDArray, r: float) -> npt.NDArray[np.bool_]:
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if shape == "triangle":  # apex up: inside three half-planes
        return (dy <= r * 0.6) & (dy >= -r + 1.7 * np.abs(dx))
    angle = np.arctan2(dy, dx) + np.pi / 2  # five-pointed star: radius alternates with the angle
    spikes = np.abs(((angle / (2 * np.pi / 5)) % 1.0) - 0.5) * 2
    return np.hypot(dx, dy) <= r * (0.4 + 0.75 * spikes ** 2)


# The second drawing routine's colours: its own anchors, not the generator's palette.
APART_COLORS = {"red": (230, 20, 20), "green": (20, 180, 40), "blue": (20, 60, 230), "yellow": (250, 220, 0),
                "orange": (255, 140, 0), "purple": (128, 0, 160), "pink": (255, 110, 180), "cyan": (0, 210, 220)}
_SUPERSAMPLE = 4


def drawn_apart(seed: int = 11, per_pair: int = 2, size: int = 112) -> list[tuple[Image.Image, str, str]]:
    """Single shapes drawn by a routine that shares no code with the generator, as ``(image, color, shape)``:
    every shape of :data:`scenes.SHAPES` in every colour, at any rotation, anti-aliased (coverage from 4x4
    supersampled masks), on plain, noisy or two-tone backgrounds.

    What a rotated square is: a square at any angle is a square (stood on a corner at 45 degrees); a diamond is
    a rhombus whose diagonals differ (0.6 : 1), at any angle.
    """
    rng = np.random.default_rng(seed)
    fine = size * _SUPERSAMPLE
    yy, xx = (np.mgrid[0:fine, 0:fine].astype(np.float64) + 0.5) / _SUPERSAMPLE
    out = []
    for shape in scenes.SHAPES:
        for color, rgb in APART_COLORS.items():
            for _ in range(per_pair):
                radius = size * rng.uniform(0.22, 0.34)
                cx, cy = size / 2 + rng.uniform(-0.08, 0.08, size=2) * size
                theta = rng.uniform(0, 2 * np.pi)
                dx, dy = xx - cx, yy - cy
                rx, ry = dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)
                coverage = _apart_mask(shape, rx, ry, radius).reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE)
                alpha = coverage.mean(axis=(1, 3))[..., None]
                background = _apart_background(rng, size)
                pixels = alpha * np.array(rgb, dtype=np.float64) + (1 - alpha) * background
                out.append((Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8)), color, shape))
    return out


def _apart_background(rng: np.random.Generator, size: int) -> npt.NDArray[np.float64]:
    kind = rng.integers(3)
    if kind == 0:  # plain grey
        return np.full((size, size, 3), rng.uniform(0, 255))
    if kind == 1:  # noise around a grey
        return np.clip(rng.normal(rng.uniform(50, 200), 30, size=(size, size, 3)), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size]  # two tones split by a random line
    angle = rng.uniform(0, np.pi)
    side = (xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle) > rng.uniform(-0.3, 0.3) * size
    first, second = rng.uniform(0, 255), rng.uniform(0, 255)
    return np.repeat(np.where(side, first, second)[..., None], 3, axis=2)


def _apart_mask(shape: str, x: npt.NDArray, y: npt.NDArray, r: float) -> npt.NDArray[np.bool_]:
    """``shape`` of size ``r`` in coordinates already rotated about its centre."""
    if shape == "circle":
        return x ** 2 + y ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(x) <= r * 0.8) & (np.abs(y) <= r * 0.8)
    if shape == "diamond":
        return np.abs(x) / (r * 0.6) + np.abs(y) / r <= 1
    if shape == "cross":
        return ((np.abs(x) <= r * 0.3) & (np.abs(y) <= r)) | ((np.abs(y) <= r * 0.3) & (np.abs(x) <= r))
    if shape == "triangle":  # equilateral, circumradius r: inside three half-planes
        return (y <= r / 2) & (np.sqrt(3) * x - y <= r) & (-np.sqrt(3) * x - y <= r)
    if shape == "star":  # five points: the radius swings with the angle
        spikes = np.abs(((np.arctan2(y, x) / (2 * np.pi / 5)) % 1.0) - 0.5) * 2
        return np.hypot(x, y) <= r * (0.4 + 0.7 * spikes ** 2)
    raise ValueError(f"unknown shape {shape!r}")
