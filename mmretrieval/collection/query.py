"""Query algebra, as in rclip: weighted positive and negative terms mixing text and images.

A query ``Q`` is positive terms ``p_i`` with weights ``a_i`` and negative terms ``n_j`` with weights ``b_j``;
each term is embedded to a unit vector ``e(.)`` (text tower for text, image tower for images). The query
vector is

    q = (sum_i a_i e(p_i) - sum_j b_j e(n_j)) / || sum_i a_i e(p_i) - sum_j b_j e(n_j) ||

and an image with unit vector ``x`` scores ``cos(q, x) = q . x`` in [-1, 1]. A plain string is one positive
text term of weight 1, so its scores are ordinary CLIP cosines.

Weights are written ``W:term`` (``"2:golden retriever"``); the default is 1.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import numpy.typing as npt
from PIL import Image

from ..errors import QueryError
from ..images.decode import IMAGE_EXTENSIONS

ImageRef = Union[str, os.PathLike, Image.Image, int]  # a path, a decoded image, or a catalog id
# a digit right after the colon is text, not a weight: "12:00 at the beach" is a time
_WEIGHTED = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*:(?!\d)(.+)$", re.DOTALL)
_NEGATIVE_WEIGHT = re.compile(r"^\s*-\s*(\d+(?:\.\d*)?|\.\d+)\s*:(?!\d)(.+)$", re.DOTALL)  # "-2:star"


@dataclass(frozen=True)
class Term:
    """One query term: either ``text`` or ``image``, with a positive weight."""

    text: str | None = None
    image: ImageRef | None = field(default=None, compare=False)
    weight: float = 1.0

    def __post_init__(self) -> None:
        if (self.text is None) == (self.image is None):
            raise QueryError("a query term is either a text or an image, not both or neither")
        if self.text is not None and not isinstance(self.text, str):
            raise QueryError(f"a term's text is a str, got {self.text!r}; an image goes in as image=")
        real = isinstance(self.weight, (int, float, np.integer, np.floating)) and not isinstance(self.weight, bool)
        if not real or not self.weight > 0 or not np.isfinite(self.weight):
            raise QueryError(f"term weight {self.weight!r} must be a positive number")
        if self.text is not None and not self.text.strip():
            raise QueryError("empty query text; give some words, an --image, or both")


@dataclass(frozen=True)
class Query:
    """Positive and negative terms; see the module docstring for how they combine."""

    positives: tuple[Term, ...] = ()
    negatives: tuple[Term, ...] = ()

    def __post_init__(self) -> None:
        for name in ("positives", "negatives"):
            given = getattr(self, name)
            try:
                terms = (given,) if isinstance(given, Term) else () if isinstance(given, (str, bytes)) else tuple(given)
            except TypeError:
                terms = ()
            if not all(isinstance(term, Term) for term in terms) or (given and not terms):
                raise QueryError(f"a Query's {name} are Terms, got {given!r}; parse_query(text, images, negatives) "
                                 "builds one from texts and images")
            object.__setattr__(self, name, terms)
        if not self.positives:
            raise QueryError("a query needs at least one positive term (text or --image)")

    @property
    def is_single_text(self) -> bool:
        """One text and nothing else (no image, no negative): the queries the match hint is calibrated for."""
        return len(self.positives) == 1 and self.positives[0].text is not None and not self.negatives

    @classmethod
    def of(cls, query: "Query | str") -> "Query":
        """A Query as is, or a string parsed by :func:`parse_query`."""
        return query if isinstance(query, Query) else parse_query(query)


def split_weight(text: str) -> tuple[float, str]:
    """``"2:golden retriever"`` -> ``(2.0, "golden retriever")``; no prefix means weight 1.

    Raises:
        QueryError: a zero weight, or a negative one (``"-2:star"``: that is what --not is for).
    """
    match = _WEIGHTED.match(text)
    if not match:
        if _NEGATIVE_WEIGHT.match(text):
            raise QueryError(f"term weight in {text.strip()!r} must be a positive number, as in '2:star'; a term "
                             "to move away from is given with --not (weighted there too)")
        return 1.0, text
    return float(match.group(1)), match.group(2).strip()


def parse_query(text: str | None, images: Sequence[ImageRef] = (), negatives: Sequence[str | ImageRef] = ()) -> Query:
    """Build a query from CLI-style pieces.

    Args:
        text: positive text, optionally weighted (``"2:golden retriever"``); None or empty for image-only queries.
        images: positive images (paths may be weighted: ``"0.5:pool.jpg"``).
        negatives: texts or image paths to move away from (``--not fruit``, ``--not 2:blurry.jpg``).

    Returns:
        The query.

    Raises:
        QueryError: no positive term, a bad weight, or an empty text.
    """
    positives = []
    if text is not None and text.strip():
        weight, words = split_weight(text)
        positives.append(Term(text=words, weight=weight))
    positives += [_image_term(image) for image in images]
    return Query(tuple(positives), tuple(_negative_term(item) for item in negatives))


def _image_term(image: ImageRef) -> Term:
    if isinstance(image, (str, os.PathLike)):
        weight, path = split_weight(str(image)) if not os.path.exists(image) else (1.0, str(image))
        return Term(image=path, weight=weight)
    return Term(image=image)


def _negative_term(item: str | ImageRef) -> Term:
    if isinstance(item, str):
        weight, rest = split_weight(item) if not os.path.exists(item) else (1.0, item)
        if Path(rest).suffix.lower() in IMAGE_EXTENSIONS:
            if not os.path.isfile(rest):  # a typo in a path must not turn it into words quietly
                raise QueryError(f"negative {item!r} names an image file that does not exist; fix the path, or "
                                 "word it without the file extension to subtract text")
            return Term(image=rest, weight=weight)
        return Term(text=rest, weight=weight)
    return _image_term(item)


def query_vector(
    query: Query,
    encode_texts: Callable[[Sequence[str]], npt.NDArray[np.float32]],
    encode_image: Callable[[ImageRef], npt.NDArray[np.float32]],
) -> npt.NDArray[np.float32]:
    """The unit query vector ``q`` of the module docstring.

    Args:
        query: the terms.
        encode_texts: texts -> ``(n, dim)`` unit vectors.
        encode_image: one image reference -> ``(dim,)`` unit vector.

    Raises:
        QueryError: the terms cancel out (the combination has no direction).
    """
    total = None
    for sign, terms in ((1.0, query.positives), (-1.0, query.negatives)):
        texts = [t for t in terms if t.text is not None]
        vectors = list(encode_texts([t.text for t in texts])) if texts else []
        weighted = [sign * t.weight * v for t, v in zip(texts, vectors)]
        weighted += [sign * t.weight * encode_image(t.image) for t in terms if t.image is not None]
        for vector in weighted:
            total = vector.astype(np.float64) if total is None else total + vector
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise QueryError("the positive and negative terms cancel out; drop or reweight a --not term")
    return (total / norm).astype(np.float32)
