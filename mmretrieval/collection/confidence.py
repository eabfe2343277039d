"""How much a text query's best score says: its contrast, against the contrast unrelated text reaches.

CLIP-style cosines have no fixed scale: with one model a real match scores 0.30 and gibberish 0.20, with
another 0.69 and 0.58. And some text scores high against every image alike: a model trained to let one caption
fit many images pulls words it cannot place toward the average image, so "terms and conditions apply" can
out-score a real query on the best score alone. What sets a match apart is how far its best hit stands above
the query's scores over the whole collection. So the yardstick is a query's **contrast**,

    (best score - mean score) / standard deviation of its scores over the collection,

measured against a fixed set of prompts that describe nothing a photo collection holds (random letters, tax
law, recipes): each prompt's contrast is kept, and a query whose contrast lies inside that band singled out
its best hit no more than noise does.

The contrast has its own blind spot: a model trained to keep unrelated text away from every image scores
such text uniformly low, with so little spread that a small bump reads as many standard deviations, while a
query that fits many images has its spread widened by them (a fine-tuned demo model put "yesterday's weather
forecast" at 2.97 and "two small green triangles" at 2.94, though their best scores were 0.478 and 0.565).
So a query reads weak only when it stays within what unrelated text reaches on both counts, its contrast
and its best score; how clear a match is goes by the contrast.

A query's mean and spread come from the moments of a seeded sample of the collection's vectors (mean ``m``,
covariance ``C``): the mean score of ``q`` is ``q·m`` and its variance ``qᵀCq``, so judging a query costs
one ``d x d`` product, whatever the collection's size. Memory at 10 M images: the stored ids while sampling
(8 bytes each, 80 MB, once per generation), the sample (4,096 vectors) and ``C`` (1 MB at 512-d).

The band and the moments are cached in the collection directory (``confidence.npz``, atomic write, read
without pickles) and measured again when the model or the collection's generation changes. A read-only
collection keeps them in memory only.
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
import numpy.typing as npt

from ..atomic import atomic_path

if TYPE_CHECKING:
    from .collection import Collection

logger = logging.getLogger(__name__)

CACHE_NAME = "confidence.npz"
OLD_CACHE_NAME = "confidence.json"  # best scores only, from before contrasts; removed when the new one is written
SAMPLE_SIZE = 4096  # vectors the moments are estimated from
MIN_IMAGES = 10  # a spread over fewer images says nothing (one image: none at all), so neither would the hint
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


@dataclass(frozen=True, eq=False)
class ScoreMoments:
    """Mean and covariance of a sample of a collection's vectors: any query's mean score and spread from them."""

    mean: npt.NDArray[np.float64]  # (dim,)
    covariance: npt.NDArray[np.float64]  # (dim, dim)

    @classmethod
    def of(cls, vectors: npt.NDArray[np.float32]) -> "ScoreMoments":
        sample = np.asarray(vectors, dtype=np.float64)
        mean = sample.mean(axis=0)
        centred = sample - mean
        return cls(mean, centred.T @ centred / len(sample))

    def contrast(self, vector: npt.NDArray[np.float32], score: float) -> float:
        """How many standard deviations ``score`` lies above ``vector``'s mean score over the collection."""
        vector = np.asarray(vector, dtype=np.float64)
        spread = float(np.sqrt(max(vector @ self.covariance @ vector, 1e-12)))
        return (score - float(vector @ self.mean)) / spread


@dataclass(frozen=True)
class NoiseBand:
    """The contrasts unrelated prompts reach in one collection with one model, and the moments behind them."""

    model_key: str  # the model the scores were measured with
    generation: int  # the collection generation they describe
    prompts_digest: str  # which prompt set (so a changed list is measured again)
    top_scores: tuple[float, ...]  # each noise prompt's best score
    contrasts: tuple[float, ...]  # each noise prompt's contrast (its best score in standard deviations)
    moments: ScoreMoments
    sampled: int = SAMPLE_SIZE  # vectors the moments come from (every one of a collection smaller than the sample)

    @property
    def low(self) -> float:
        return float(min(self.contrasts))

    @property
    def high(self) -> float:
        return float(max(self.contrasts))

    @property
    def median(self) -> float:
        return float(np.median(self.contrasts))

    @property
    def top_score(self) -> float:
        """The best score any unrelated prompt reaches."""
        return float(max(self.top_scores))


@dataclass(frozen=True)
class Confidence:
    """What a text query's best score means against the collection's noise band."""

    level: str  # "weak" (within the noise band), "fair", "clear" (well above it), "none" (no hits), or
    # "not calibrated" (too few images to tell)
    top_score: float | None  # the query's best score
    contrast: float | None  # that score in standard deviations above the query's mean score
    noise_low: float | None  # lowest contrast an unrelated prompt reaches (None with no hits: nothing measured)
    noise_high: float | None  # highest contrast an unrelated prompt reaches
    message: str  # one sentence for people

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def assess(top_score: float, contrast: float, band: NoiseBand) -> Confidence:
    """Place a query's ``contrast`` (its best score ``top_score`` in standard deviations) and its best score
    against ``band``'s: weak within both, fair beyond either, clear well beyond on the contrast."""
    low, high = band.low, band.high
    spread = max(high - band.median, 0.05)
    stands = f"the best score {top_score:.3f} stands {contrast:.1f} standard deviations above this query's average"
    if contrast <= high and top_score <= band.top_score:
        message = (f"Weak match: {stands}, no further than unrelated text reaches in this collection ({low:.1f} to "
                   f"{high:.1f}, best scores up to {band.top_score:.3f}); the results may have nothing to do with the "
                   "query.")
        return Confidence("weak", top_score, contrast, low, high, message)
    if contrast <= high:
        message = (f"Fair match: the best score {top_score:.3f} is above any unrelated text's in this collection "
                   f"({band.top_score:.3f}), though it stands {contrast:.1f} standard deviations above this query's "
                   f"average, as unrelated text can ({low:.1f} to {high:.1f}).")
        return Confidence("fair", top_score, contrast, low, high, message)
    if contrast <= high + 2 * spread:
        message = f"Fair match: {stands}, a little beyond what unrelated text reaches ({low:.1f} to {high:.1f})."
        return Confidence("fair", top_score, contrast, low, high, message)
    message = f"Clear match: {stands}, well beyond what unrelated text reaches ({low:.1f} to {high:.1f})."
    return Confidence("clear", top_score, contrast, low, high, message)


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
        model_key = self._collection.identity.key()
        generation = int(self._collection.catalog.generation)
        with self._lock:
            if not self._is_current(self._band, model_key, generation):
                cached = _read(self._collection.directory / CACHE_NAME)
                if not self._is_current(cached, model_key, generation):
                    cached = self._measure(model_key, generation)
                    _write(self._collection.directory, cached)
                self._band = cached
            return self._band

    def assess(self, query_vector: npt.NDArray[np.float32], top_score: float | None) -> Confidence:
        """:func:`assess` for a query (its unit vector, as search looks it up) whose best hit scored ``top_score``."""
        if top_score is None:  # nothing to judge; an empty collection has no band either
            return Confidence("none", None, None, None, None, "No results to judge.")
        band = self.band()
        if band.sampled < MIN_IMAGES:
            return Confidence("not calibrated", top_score, None, None, None,
                              f"Too few images ({band.sampled}) to say how far a match stands out; the match hint "
                              f"needs {MIN_IMAGES} or more.")
        return assess(top_score, band.moments.contrast(query_vector, top_score), band)

    def _is_current(self, band: NoiseBand | None, model_key: str, generation: int) -> bool:
        return (band is not None and band.model_key == model_key and band.generation == generation
                and band.prompts_digest == self._digest and len(band.top_scores) > 0 and band.sampled >= 0)

    def _measure(self, model_key: str, generation: int) -> NoiseBand:
        # The moments from a seeded sample, then per prompt one nearest-neighbour lookup (the collection's own
        # exact re-scoring, as a search would give) and its contrast.
        catalog = self._collection.catalog
        ids = catalog.vector_ids()
        chosen = np.sort(np.random.default_rng(0).choice(ids, min(len(ids), SAMPLE_SIZE), replace=False))
        del ids
        _, sample = catalog.vectors(chosen)
        moments = ScoreMoments.of(sample) if len(sample) else ScoreMoments(np.zeros(0), np.zeros((0, 0)))
        vectors = self._collection.encode_texts(list(self._prompts))  # the text tower alone, where it can
        scores, contrasts = [], []
        for vector in vectors:
            hits = self._collection.nearest(vector, 1)
            if hits:
                scores.append(round(float(hits[0].score), 6))
                contrasts.append(round(moments.contrast(vector, hits[0].score), 4))
        logger.info("noise band of %s: %d prompts, %d sampled vectors, contrasts %.2f to %.2f",
                    self._collection.directory, len(scores), len(sample), min(contrasts, default=0.0),
                    max(contrasts, default=0.0))
        return NoiseBand(model_key, generation, self._digest, tuple(scores), tuple(contrasts), moments, len(sample))


def _read(path: Path) -> NoiseBand | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            head = json.loads(str(stored["head"]))
            return NoiseBand(str(head["model_key"]), int(head["generation"]), str(head["prompts_digest"]),
                             tuple(float(s) for s in stored["top_scores"]),
                             tuple(float(c) for c in stored["contrasts"]),
                             ScoreMoments(stored["mean"], stored["covariance"]),
                             int(head.get("sampled", -1)))  # -1: a cache from before it was kept, measured again
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if not isinstance(exc, FileNotFoundError):
            logger.warning("ignoring unreadable %s (%s); measuring again", path, exc)
        return None


def _write(directory: Path, band: NoiseBand) -> None:
    head = {"model_key": band.model_key, "generation": band.generation, "prompts_digest": band.prompts_digest,
            "sampled": band.sampled}
    try:
        with atomic_path(directory / CACHE_NAME) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, head=np.array(json.dumps(head)), top_scores=np.array(band.top_scores),
                     contrasts=np.array(band.contrasts), mean=band.moments.mean, covariance=band.moments.covariance)
        (directory / OLD_CACHE_NAME).unlink(missing_ok=True)
    except OSError as exc:  # a read-only collection: keep the band in memory only
        logger.info("cannot cache the noise band in %s: %s", directory, exc)
