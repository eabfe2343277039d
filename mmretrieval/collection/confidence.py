"""How much a text query's best score says: calibrated against what unrelated text scores in this collection.

CLIP-style cosines have no fixed scale: with one model a real match scores 0.30 and gibberish 0.20, with
another 0.69 and 0.58. So the yardstick is measured, per collection and model: a fixed set of prompts that
describe nothing a photo collection holds (random letters, tax law, recipes) is searched once, and the best
score each reaches is kept. A query whose best score lies inside that band matched no better than noise.

The band is cached in the collection directory (``confidence.json``, atomic write) and measured again when
the model or the collection's generation changes. A read-only collection keeps it in memory only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_write_text

if TYPE_CHECKING:
    from .collection import Collection

logger = logging.getLogger(__name__)

CACHE_NAME = "confidence.json"
# Text that should match nothing in a photo collection: gibberish, abstract prose, and non-visual topics.
NOISE_PROMPTS = (
    "xqzv plorth gnee", "asdf ghjk lqwe", "zzyzx vorpal brillig", "qwertyuiop", "lorem ipsum dolor sit amet",
    "blorft snack wibble", "mnbvcxz poiu", "krrzt flumox", "ooo eee aaa", "wug dax blicket",
    "the quarterly tax declaration deadline", "a theorem about prime numbers", "the history of medieval banking",
    "instructions for resetting a router password", "a recipe for lentil soup", "the rules of contract law",
    "an opinion about interest rates", "the grammar of Latin verbs", "a lecture on thermodynamics",
    "terms and conditions apply", "error 404 page not found", "the meaning of life", "yesterday's weather forecast",
    "a list of phone numbers", "the sound of a distant train", "the smell of coffee", "a feeling of nostalgia",
    "an unfinished sentence about", "ticket reservation number 58213", "version 3.2.1 release notes",
    "the capital of an imaginary country", "nothing in particular",
)
WEAK_MARGIN = 0.0  # a top score up to this far above the band's top still counts as weak


@dataclass(frozen=True)
class NoiseBand:
    """The best scores unrelated prompts reach in one collection with one model."""

    model_key: str  # the model the scores were measured with
    generation: int  # the collection generation they describe
    prompts_digest: str  # which prompt set (so a changed list is measured again)
    top_scores: tuple[float, ...]  # each noise prompt's best score

    @property
    def low(self) -> float:
        return float(min(self.top_scores))

    @property
    def high(self) -> float:
        return float(max(self.top_scores))

    @property
    def median(self) -> float:
        return float(np.median(self.top_scores))


@dataclass(frozen=True)
class Confidence:
    """What a text query's best score means against the collection's noise band."""

    level: str  # "weak" (within the noise band), "fair" (above it), "clear" (well above it), "none" (no hits)
    top_score: float | None  # the query's best score
    noise_low: float  # lowest best score of an unrelated prompt
    noise_high: float  # highest best score of an unrelated prompt
    message: str  # one sentence for people

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def assess(top_score: float | None, band: NoiseBand) -> Confidence:
    """Place ``top_score`` (the best hit's score; None when there were no hits) against ``band``."""
    low, high = band.low, band.high
    spread = max(high - band.median, 1e-3)
    if top_score is None:
        return Confidence("none", None, low, high, "No results to judge.")
    if top_score <= high + WEAK_MARGIN:
        message = (f"Weak match: the best score {top_score:.3f} is within the range unrelated text reaches in this "
                   f"collection ({low:.3f} to {high:.3f}); the results may have nothing to do with the query.")
        return Confidence("weak", top_score, low, high, message)
    if top_score <= high + 2 * spread:
        message = (f"Fair match: the best score {top_score:.3f} is a little above what unrelated text reaches "
                   f"({low:.3f} to {high:.3f}).")
        return Confidence("fair", top_score, low, high, message)
    message = (f"Clear match: the best score {top_score:.3f} is well above what unrelated text reaches "
               f"({low:.3f} to {high:.3f}).")
    return Confidence("clear", top_score, low, high, message)


class NoiseCalibration:
    """The noise band of one open collection: measured on first use, cached on disk and in memory."""

    def __init__(self, collection: "Collection", prompts: tuple[str, ...] = NOISE_PROMPTS):
        self._collection = collection
        self._prompts = prompts
        self._digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
        self._band: NoiseBand | None = None
        self._lock = threading.Lock()

    def band(self) -> NoiseBand:
        """The band for the collection as it is now (measured again after an ingest or a model change)."""
        info = self._collection.info()
        generation = int(self._collection.catalog.generation)
        with self._lock:
            if not self._is_current(self._band, info.model_key, generation):
                cached = _read(self._collection.directory / CACHE_NAME)
                if not self._is_current(cached, info.model_key, generation):
                    cached = self._measure(info.model_key, generation)
                    _write(self._collection.directory / CACHE_NAME, cached)
                self._band = cached
            return self._band

    def assess(self, top_score: float | None) -> Confidence:
        """:func:`assess` against this collection's current band."""
        return assess(top_score, self.band())

    def _is_current(self, band: NoiseBand | None, model_key: str, generation: int) -> bool:
        return (band is not None and band.model_key == model_key and band.generation == generation
                and band.prompts_digest == self._digest and len(band.top_scores) > 0)

    def _measure(self, model_key: str, generation: int) -> NoiseBand:
        # One batch through the text tower, then one nearest-neighbour lookup per prompt (the collection's own
        # exact re-scoring, as a search would give).
        vectors = self._collection.encoder.encode_texts(list(self._prompts))
        scores = []
        for vector in vectors:
            hits = self._collection._nearest(vector, 1, None, None, None)  # noqa: SLF001 (same package)
            if hits:
                scores.append(round(float(hits[0].score), 6))
        logger.info("noise band of %s: %d prompts, best scores %.3f to %.3f", self._collection.directory,
                    len(scores), min(scores, default=0.0), max(scores, default=0.0))
        return NoiseBand(model_key, generation, self._digest, tuple(scores))


def _read(path: Path) -> NoiseBand | None:
    try:
        data = json.loads(path.read_text())
        return NoiseBand(str(data["model_key"]), int(data["generation"]), str(data["prompts_digest"]),
                         tuple(float(s) for s in data["top_scores"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if not isinstance(exc, FileNotFoundError):
            logger.warning("ignoring unreadable %s (%s); measuring again", path, exc)
        return None


def _write(path: Path, band: NoiseBand) -> None:
    try:
        atomic_write_text(path, json.dumps(asdict(band), indent=1))
    except OSError as exc:  # a read-only collection: keep the band in memory only
        logger.info("cannot cache the noise band in %s: %s", path, exc)
