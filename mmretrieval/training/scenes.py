"""Synthetic captioned scenes: the data the bundled ``builtin:shapes`` model is trained and judged on.

A scene is one to three copies of one shape in one colour and size, on a patterned background.
Everything is drawn from ``random.Random(f"{seed}:{index}")``, so scene ``i`` of seed ``s`` is the same
image and the same captions on every machine, whatever batch it is drawn in.

Two renderings: the classic one (shapes nearly upright, hard edges: what the bundled model was first trained
on, and what the tests' fixtures draw), and ``varied=True`` for training a model that knows shapes rather than
its generator: every shape at any rotation, anti-aliased (coverage from a 4x mask), photo-like textures among
the backgrounds, sometimes grey scribbles beside the shapes (never a named shape or colour, so captions stay
true), blur and JPEG artefacts. A square at any angle is a square (at 45 degrees it stands on a corner); a
diamond is a rhombus whose diagonals differ (1.25 : 0.8), at any angle.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Several anchors per colour name (then jittered), so that "green" means both (0, 200, 0) and a duller green.
COLOR_VARIANTS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((220, 30, 30), (255, 0, 0), (200, 20, 45)),
    "green": ((30, 170, 50), (0, 200, 0), (20, 140, 20), (80, 215, 80)),
    "blue": ((30, 70, 230), (0, 0, 255), (40, 40, 200), (20, 110, 240)),
    "yellow": ((245, 225, 30), (255, 255, 0), (240, 205, 0)),
    "orange": ((250, 135, 20), (255, 165, 0), (240, 115, 0)),
    "purple": ((135, 45, 190), (128, 0, 128), (150, 60, 225)),
    "pink": ((250, 120, 190), (255, 105, 180), (255, 160, 205)),
    "cyan": ((30, 210, 220), (0, 255, 255), (0, 185, 205)),
}
COLORS: dict[str, tuple[int, int, int]] = {name: variants[0] for name, variants in COLOR_VARIANTS.items()}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
BACKGROUNDS = ("plain", "stripes", "dots", "gradient", "noise", "texture")  # texture: varied rendering only
CLASSIC_BACKGROUNDS = BACKGROUNDS[:5]
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}

# Colour and shape pairs that never appear in training scenes: the model must compose them zero-shot.
HELD_OUT_PAIRS = frozenset({("yellow", "star"), ("purple", "triangle"), ("green", "diamond"), ("pink", "square")})

_BACKGROUND_PHRASES = {
    "plain": "a plain background",
    "stripes": "a striped background",
    "dots": "a dotted background",
    "gradient": "a gradient background",
    "noise": "a noisy background",
    "texture": "a textured background",
}
_AA = 4  # varied rendering: shapes are drawn on a mask this many times larger, then averaged down
_POSITION_CENTERS = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
_PREFIXES = ("", "", "", "a photo of ", "an image of ", "a picture of ")


@dataclass(frozen=True)
class Scene:
    """The attributes of one generated scene; ``position`` is set only for single objects, ``color`` is None
    only for a scene that training shows in grey."""

    color: str | None
    shape: str
    count: int
    size: str
    background: str
    position: str | None


@dataclass(frozen=True)
class CaptionFacts:
    """Which attributes a caption names (None where it is silent), to judge retrieval by."""

    color: str | None
    shape: str | None
    count: int | None
    size: str | None
    background: str | None
    position: str | None

    def matches(self, scene: Scene) -> bool:
        """True when every attribute the caption names agrees with ``scene``."""
        return all(
            named is None or named == getattr(scene, field)
            for field, named in vars(self).items()
        )

    def codes(self) -> tuple[int, ...]:
        """The named attributes as :func:`attribute_codes`, -1 where the caption is silent."""
        return attribute_codes(self)


def attribute_codes(item: "Scene | CaptionFacts") -> tuple[int, ...]:
    """Colour, shape, count, size, background and position as small integers (-1: none or not named), so that
    which captions match which scenes of a batch is one array comparison."""
    vocabularies = (tuple(COLORS), SHAPES, (1, 2, 3), SIZES, BACKGROUNDS, POSITIONS)
    fields = ("color", "shape", "count", "size", "background", "position")
    return tuple(-1 if getattr(item, f) is None else vocab.index(getattr(item, f)) for f, vocab in zip(fields, vocabularies))


def caption_matches(caption_codes: np.ndarray, scene_codes: np.ndarray) -> np.ndarray:
    """``(captions, scenes)`` booleans: caption i names nothing that scene j contradicts."""
    captions, scenes_ = caption_codes[:, None, :], scene_codes[None, :, :]
    return np.all((captions == -1) | (captions == scenes_), axis=-1)


def plural(shape: str, count: int) -> str:
    """``circle`` → ``circles``; ``cross`` → ``crosses``."""
    if count == 1:
        return shape
    return shape + ("es" if shape.endswith("s") else "s")


def article(word: str) -> str:
    """The indefinite article for ``word``: "an orange", "a red"."""
    return "an" if word[0] in "aeiou" else "a"


def sample_scene(rng: random.Random, held_out: str = "exclude", varied: bool = False) -> Scene:
    """Draw scene attributes.

    Args:
        rng: the random source.
        held_out: ``"exclude"`` never draws a held-out colour/shape pair, ``"only"`` draws only those,
            ``"include"`` draws any pair.
        varied: draw from every background, textures included (the varied rendering).
    """
    while True:
        color = rng.choice(list(COLORS))
        shape = rng.choice(SHAPES)
        if held_out == "only":
            color, shape = rng.choice(sorted(HELD_OUT_PAIRS))
        is_held_out = (color, shape) in HELD_OUT_PAIRS
        if held_out == "exclude" and is_held_out:
            continue
        count = rng.randint(1, 3)
        return Scene(
            color=color,
            shape=shape,
            count=count,
            size=rng.choice(SIZES),
            background=rng.choice(BACKGROUNDS if varied else CLASSIC_BACKGROUNDS),
            position=rng.choice(POSITIONS) if count == 1 else None,
        )


def caption(scene: Scene, rng: random.Random, position_rate: float = 0.5,
            name_color: bool = True) -> tuple[str, CaptionFacts]:
    """A natural caption naming a random subset of the scene's attributes, and which ones it names
    (a single object's position with chance ``position_rate``; the colour never when ``name_color`` is false)."""
    say_color = rng.random() < 0.8 and name_color
    say_shape = rng.random() < 0.8
    say_size = rng.random() < 0.45
    say_background = rng.random() < 0.4
    say_position = scene.position is not None and rng.random() < position_rate
    # A single object is always "a"/"one": the caption then names its count.
    say_count = scene.count == 1 or rng.random() < 0.8

    noun = plural(scene.shape if say_shape else rng.choice(("shape", "object")), scene.count)
    words = [w for w in (scene.size if say_size else "", scene.color if say_color else "", noun) if w]
    if scene.count == 1:
        count_word = rng.choice(("a", "a", "one"))
        if count_word == "a":
            count_word = article(words[0])
    else:
        count_word = COUNT_WORDS[scene.count] if say_count else "some"
        say_count = say_count and count_word != "some"
    text = f"{count_word} {' '.join(words)}"
    if say_position:
        text += f" in the {scene.position}"
    if say_background:
        text += f" on {_BACKGROUND_PHRASES[scene.background]}"
    text = rng.choice(_PREFIXES) + text
    facts = CaptionFacts(
        color=scene.color if say_color else None,
        shape=scene.shape if say_shape else None,
        count=scene.count if say_count else None,
        size=scene.size if say_size else None,
        background=scene.background if say_background else None,
        position=scene.position if say_position else None,
    )
    return text, facts


def label_caption(scene: Scene, rng: random.Random, name_color: bool = True) -> tuple[str, CaptionFacts]:
    """A label as people type them for zero-shot classification ("circle", "red", "red circle", "red shape"):
    a caption that names only the colour, the shape or both, with no article, count or prefix (only the shape
    when ``name_color`` is false)."""
    form = rng.choice(("shape", "color", "both", "color shape")) if name_color else "shape"
    text = {"shape": scene.shape, "color": scene.color, "both": f"{scene.color} {scene.shape}",
            "color shape": f"{scene.color} shape"}[form]
    return text, CaptionFacts(color=scene.color if form != "shape" else None,
                              shape=scene.shape if form in ("shape", "both") else None,
                              count=None, size=None, background=None, position=None)


def full_caption(scene: Scene) -> str:
    """The caption that names everything, e.g. ``two small red triangles on a striped background``."""
    noun = plural(scene.shape, scene.count)
    lead = article(scene.size) if scene.count == 1 else COUNT_WORDS[scene.count]
    text = f"{lead} {scene.size} {scene.color} {noun}"
    if scene.position:
        text += f" in the {scene.position}"
    return f"{text} on {_BACKGROUND_PHRASES[scene.background]}"


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _draw_background(kind: str, size: int, rng: random.Random) -> Image.Image:
    # Backgrounds are grey-ish so that an object's colour is never also the background's.
    base = rng.randint(0, 255)
    tint = _jitter((base, base, base), rng, 12)
    image = Image.new("RGB", (size, size), tint)
    draw = ImageDraw.Draw(image)
    other_level = (base + rng.randint(50, 110)) % 256
    other = _jitter((other_level, other_level, other_level), rng, 12)
    if kind == "stripes":
        period = rng.randint(size // 16, size // 6)
        vertical = rng.random() < 0.5
        for start in range(0, size, 2 * period):
            box = (start, 0, start + period - 1, size) if vertical else (0, start, size, start + period - 1)
            draw.rectangle(box, fill=other)
    elif kind == "dots":
        step = rng.randint(size // 12, size // 6)
        radius = max(1, step // 5)
        for y in range(step // 2, size, step):
            for x in range(step // 2, size, step):
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=other)
    elif kind == "gradient":
        horizontal = rng.random() < 0.5
        for i in range(size):
            t = i / (size - 1)
            level = tuple(round(a + (b - a) * t) for a, b in zip(tint, other))
            box = (i, 0, i, size) if horizontal else (0, i, size, i)
            draw.rectangle(box, fill=level)
    elif kind == "texture":  # photo-like: smooth noise at several scales, barely tinted
        field = np.zeros((size, size))
        noise = np.random.default_rng(rng.getrandbits(32))
        for cells in (4, 8, 16, 32):
            coarse = Image.fromarray((noise.random((cells, cells)) * 255).astype(np.uint8), mode="L")
            field += np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64) * 8 / cells
        field = (field - field.min()) / max(1e-6, np.ptp(field))
        low, high = np.array(tint, np.float64), np.array(_jitter(other, rng, 20), np.float64)
        image = Image.fromarray((low + field[..., None] * (high - low)).clip(0, 255).astype(np.uint8))
    elif kind == "noise":
        # numpy seeded from rng, not Image.effect_noise: that one draws from C's unseeded rand().
        sigma, level = rng.uniform(25, 60), rng.randint(60, 200)
        noise = np.random.default_rng(rng.getrandbits(32)).normal(level, sigma, (size, size))
        noise_image = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8), mode="L").convert("RGB")
        image = Image.blend(image, noise_image, rng.uniform(0.35, 0.6))
    return image


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(n: int, radius_at, offset: float) -> list[tuple[float, float]]:
        return [
            (cx + radius_at(i) * math.cos(offset + 2 * math.pi * i / n),
             cy + radius_at(i) * math.sin(offset + 2 * math.pi * i / n))
            for i in range(n)
        ]

    if shape == "square":
        return ring(4, lambda i: r * 1.2, math.pi / 4 + angle)
    if shape == "diamond":  # the classic rendering keeps diamonds upright: it passes angle * 0.3
        return ring(4, lambda i: r * (1.25 if i % 2 == 0 else 0.8), angle)
    if shape == "triangle":
        return ring(3, lambda i: r * 1.25, -math.pi / 2 + angle)
    if shape == "star":
        return ring(10, lambda i: r * (1.3 if i % 2 == 0 else 0.55), -math.pi / 2 + angle)
    if shape == "cross":
        arm, half = r * 1.2, r * 0.4
        points = [(-half, -arm), (half, -arm), (half, -half), (arm, -half), (arm, half), (half, half),
                  (half, arm), (-half, arm), (-half, half), (-arm, half), (-arm, -half), (-half, -half)]
        cos, sin = math.cos(angle), math.sin(angle)
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]
    raise ValueError(f"unknown shape {shape!r}")


def _centres(scene: Scene, size: int, radius: float, rng: random.Random) -> list[tuple[float, float]]:
    margin = radius * 1.35
    if scene.position is not None:
        fx, fy = _POSITION_CENTERS[scene.position]
        wobble = size * 0.06
        return [(
            min(max(fx * size + rng.uniform(-wobble, wobble), margin), size - margin),
            min(max(fy * size + rng.uniform(-wobble, wobble), margin), size - margin),
        )]
    centres: list[tuple[float, float]] = []
    for _ in range(400):
        if len(centres) == scene.count:
            break
        candidate = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
        if all(math.dist(candidate, c) > 2.7 * radius for c in centres):
            centres.append(candidate)
    if len(centres) < scene.count:  # too crowded to scatter: fall back to a diagonal
        centres = [(size * (i + 1) / (scene.count + 1),) * 2 for i in range(scene.count)]
    return centres


def render(scene: Scene, rng: random.Random, size: int = 128, varied: bool = False) -> Image.Image:
    """Draw ``scene`` as an RGB image ``size`` pixels square (``varied``: see the module docstring)."""
    image = _draw_background(scene.background, size, rng)
    if scene.size == "large":
        top = 0.27 if scene.count == 1 else 0.19
        radius = size * rng.uniform(0.14, top) * (0.8 if scene.count == 3 else 1.0)
    else:
        radius = size * rng.uniform(0.06, 0.085)
    fill = _jitter(rng.choice(COLOR_VARIANTS[scene.color]), rng, 15)
    if not varied:
        draw = ImageDraw.Draw(image)
        angle = rng.uniform(-0.3, 0.3)
        for cx, cy in _centres(scene, size, radius, rng):
            if scene.shape == "circle":
                draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
            else:
                shape_angle = angle * 0.3 if scene.shape == "diamond" else angle
                draw.polygon(_shape_polygon(scene.shape, cx, cy, radius, shape_angle), fill=fill)
        if rng.random() < 0.2:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
        return image
    if rng.random() < 0.3:
        _scribble(image, rng)
    mask = Image.new("L", (size * _AA, size * _AA), 0)
    draw = ImageDraw.Draw(mask)
    for cx, cy in _centres(scene, size, radius, rng):
        angle = rng.uniform(0, 2 * math.pi)
        if scene.shape == "circle":
            draw.ellipse(tuple(v * _AA for v in (cx - radius, cy - radius, cx + radius, cy + radius)), fill=255)
        else:
            draw.polygon([(x * _AA, y * _AA) for x, y in _shape_polygon(scene.shape, cx, cy, radius, angle)],
                         fill=255)
    image = Image.composite(Image.new("RGB", image.size, fill), image, mask.resize(image.size, Image.Resampling.BOX))
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.3:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=rng.randint(25, 85))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


def _scribble(image: Image.Image, rng: random.Random) -> None:
    """A few grey strokes: clutter that is neither a named shape nor a named colour."""
    draw = ImageDraw.Draw(image)
    size = image.width
    for _ in range(rng.randint(1, 3)):
        level = rng.choice((rng.randint(0, 60), rng.randint(190, 255)))
        points = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(rng.randint(2, 4))]
        draw.line(points, fill=(level, level, level), width=max(1, size // rng.randint(40, 90)))


@dataclass(frozen=True)
class Example:
    """One generated scene with its image and one caption."""

    index: int
    scene: Scene
    image: Image.Image
    caption: str
    facts: CaptionFacts


def generate(seed: int, index: int, *, held_out: str = "exclude", size: int = 128, varied: bool = False,
             position_rate: float = 0.5, name_color: bool = True) -> Example:
    """Scene ``index`` of the stream for ``seed``: the same on every call and machine (``varied``: the
    varied rendering, see the module docstring; ``position_rate`` and ``name_color``: see :func:`caption`)."""
    rng = random.Random(f"{seed}:{index}")
    scene = sample_scene(rng, held_out=held_out, varied=varied)
    image = render(scene, rng, size=size, varied=varied)
    text, facts = caption(scene, rng, position_rate, name_color)
    return Example(index=index, scene=scene, image=image, caption=text, facts=facts)


def stream(seed: int, start: int = 0, stop: int | None = None, **kwargs) -> Iterator[Example]:
    """Scenes ``start, start + 1, …`` of ``seed``'s stream (endless when ``stop`` is None)."""
    index = start
    while stop is None or index < stop:
        yield generate(seed, index, **kwargs)
        index += 1
