"""A generated near-duplicate set: distinct originals and edited copies of each, with the truth.

Originals are generated scenes (:mod:`.scenes`) no two of which share colour, shape, count and background
(scenes that share all of them are copies in all but pixel noise, for any model); each gets four copies:
resized to 50-80%, recompressed as JPEG at quality 35-70, cropped by 5-10% of each dimension, and
converted between PNG and JPEG. ``bench/duplicates.py`` and the duplicate tests score against it.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from . import scenes

EDITS = ("resized", "recompressed", "cropped", "converted")


def distinct_originals(count: int, seed: int, size: int = 256) -> list[Image.Image]:
    """``count`` scenes of ``seed``'s stream with pairwise different (colour, shape, count, background)."""
    images, seen, index = [], set(), 0
    while len(images) < count:
        example = scenes.generate(seed, index, size=size)
        index += 1
        scene = example.scene
        key = (scene.color, scene.shape, scene.count, scene.background)
        if key not in seen:
            seen.add(key)
            images.append(example.image.convert("RGB"))
        if index > 100 * count + 1000:
            raise ValueError(f"cannot draw {count} distinct scenes; ask for fewer")
    return images


def edited_copies(image: Image.Image, as_png: bool, rng: random.Random) -> dict[str, tuple[Image.Image, str, int]]:
    """The four edits of :data:`EDITS` as ``name -> (image, format, jpeg quality)``."""
    width, height = image.size
    scale = rng.uniform(0.5, 0.8)
    cut_x, cut_y = int(width * rng.uniform(0.05, 0.10)), int(height * rng.uniform(0.05, 0.10))
    left, top = rng.randint(0, cut_x), rng.randint(0, cut_y)
    own = "PNG" if as_png else "JPEG"
    return {
        "resized": (image.resize((int(width * scale), int(height * scale)), Image.LANCZOS), own, 90),
        "recompressed": (image, "JPEG", rng.randint(35, 70)),
        "cropped": (image.crop((left, top, width - (cut_x - left), height - (cut_y - top))), own, 90),
        "converted": (image, "JPEG" if as_png else "PNG", 90),
    }


def write_near_duplicate_set(folder: Path, originals: int, seed: int = 11, size: int = 256) -> dict[str, int]:
    """Write ``originals`` originals and four copies of each under ``folder``; returns path -> original number.

    Originals alternate between JPEG (quality 92) and PNG; file names carry no hint of the grouping.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    truth: dict[str, int] = {}
    files: list[tuple[Image.Image, str, int, int]] = []
    for number, image in enumerate(distinct_originals(originals, seed, size)):
        as_png = number % 2 == 1
        files.append((image, "PNG" if as_png else "JPEG", 92, number))
        files += [(copy, fmt, quality, number) for copy, fmt, quality in edited_copies(image, as_png, rng).values()]
    rng.shuffle(files)
    for position, (image, fmt, quality, number) in enumerate(files):
        path = folder / f"img{position:05d}.{'png' if fmt == 'PNG' else 'jpg'}"
        image.save(path, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
        truth[str(path.resolve())] = number
    return truth


def pair_scores(groups: list[tuple[str, ...]], truth: dict[str, int]) -> tuple[float, float]:
    """Pairwise precision and recall of ``groups`` (tuples of paths) against ``truth`` (path -> original)."""
    predicted = {frozenset((a, b)) for group in groups for i, a in enumerate(group) for b in group[i + 1:]}
    by_original: dict[int, list[str]] = {}
    for path, number in truth.items():
        by_original.setdefault(number, []).append(path)
    actual = {frozenset((a, b)) for paths in by_original.values() for i, a in enumerate(paths) for b in paths[i + 1:]}
    hits = len(predicted & actual)
    return (hits / len(predicted) if predicted else 1.0), (hits / len(actual) if actual else 1.0)
