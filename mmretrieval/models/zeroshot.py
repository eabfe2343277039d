"""Zero-shot classification: labels plus prompt templates become a linear classifier over image vectors.

Per label, the template embeddings are normalised, averaged (the prompt ensemble of the CLIP paper) and
renormalised. Scores follow the model's training objective:

- CLIP-style models (softmax loss): ``softmax(logit_scale * cosine)`` over the labels. With
  ``multi_label=True`` each label is instead scored on its own against a neutral prompt ("something"),
  ``sigmoid(logit_scale * (cos_label - cos_null))``, so independent thresholds make sense.
- SigLIP-style models (sigmoid loss, with a ``logit_bias``): ``sigmoid(logit_scale * cosine + logit_bias)``
  per label, always independent: these are the probabilities the model was trained to give.

Labels are read by :mod:`.label_text`, prompt templates by :mod:`.prompt_templates`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np
import numpy.typing as npt

from ..errors import QueryError
from .inputs import unit_rows
from .label_text import normalise_labels
from .prompt_templates import TEMPLATE_SETS, check_templates, load_templates
from .settings import MULTI_LABEL_THRESHOLD

CLASSES_PER_CHUNK = 512  # labels whose prompts are embedded together (the progress step, and the memory bound)


class TextModel(Protocol):
    """What zero-shot scoring needs of a model: its text tower and calibration (a
    :class:`~mmretrieval.models.encoder.DualEncoder`, or a :class:`~mmretrieval.models.text_tower.TextEncoder`)."""

    logit_scale: float
    logit_bias: float | None
    is_sigmoid: bool

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


NULL_LABEL = "something"  # the neutral class CLIP-style multi-label scores each label against


def refuse_lone_softmax_label(labels: Sequence[str], *, is_sigmoid: bool, multi_label: bool) -> None:
    """Refuse one label scored by a softmax over the labels (CLIP-style, single-label): it would get probability
    1.0 on every image, which says nothing about any of them. Sigmoid scores (SigLIP, or ``multi_label``, which
    weighs a label against a neutral prompt) mean something for a lone label.

    Raises:
        QueryError: one label, a CLIP-style model, and no ``multi_label``.
    """
    if len(labels) == 1 and not is_sigmoid and not multi_label:
        raise QueryError(f"one label ({labels[0]!r}) in a softmax over the labels gets probability 1.0 on every "
                         "image; pass --multi-label to score it against a neutral prompt, or give two or more labels")


def check_labels_read_whole(encoder: TextModel, labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """The labels that ``encoder`` reads only the beginning of, in one of their prompts (``template.format(label)``)
    or more, with a warning naming them: its tokenizer cuts a text to the model's context, and the words past it
    change nothing (:func:`~mmretrieval.models.encoder.unread_texts`).

    Raises:
        QueryError: two labels that differ only past what the model reads: their prompts reach it as the same
            tokens, so they would share every image's probability half and half.
    """
    from .encoder import readable_tokens, unread_texts

    cut_prompts = set(unread_texts(encoder, [template.format(label) for label in labels for template in templates]))
    cut = [label for label in labels if any(template.format(label) in cut_prompts for template in templates)]
    if not cut:
        return []
    tokenizer = getattr(encoder, "tokenizer", None)
    if callable(tokenizer):
        seen: dict[tuple[tuple[int, ...], ...], str] = {}  # a label's prompts as the model gets them -> the label
        for label in cut:
            tokens = tuple(map(tuple, tokenizer([template.format(label) for template in templates]).tolist()))
            first = seen.setdefault(tokens, label)
            if first != label:
                raise QueryError(f"labels {_shown(first)} and {_shown(label)} read the same to the model: it reads "
                                 f"{_how_much(readable_tokens(encoder))} of a prompt, and they differ only after "
                                 "that; shorten them, or put the words that tell them apart first")
    names = ", ".join(_shown(label) for label in cut[:3]) + (f" and {len(cut) - 3} more" if len(cut) > 3 else "")
    warnings.warn(f"{'labels' if len(cut) > 1 else 'label'} {names} {'are' if len(cut) > 1 else 'is'} longer than "
                  f"the model reads: it reads {_how_much(readable_tokens(encoder))} of a prompt "
                  f"({templates[0]!r}{' and the others' if len(templates) > 1 else ''}), the rest is ignored; put "
                  "the words that tell the labels apart first", stacklevel=2)
    return cut


def _how_much(readable_tokens: int | None) -> str:
    from .encoder import LONG_TEXT_WORDS

    if readable_tokens is None:
        return f"only about the first {LONG_TEXT_WORDS} words"
    return f"only the first {readable_tokens} tokens (about {readable_tokens * 3 // 4} words)"


def _shown(label: str, most_chars: int = 60) -> str:
    """``label`` quoted for a message; a long one with its middle left out (labels cut short differ at their end)."""
    if len(label) <= most_chars:
        return repr(label)
    return repr(label[:most_chars // 3] + "…" + label[-(most_chars * 2 // 3):])


def ensemble_prompt_embeddings(encoder: TextModel, prompts: Sequence[Sequence[str]],
                               progress: Callable[[int, int], None] | None = None) -> npt.NDArray[np.float32]:
    """Per class, the renormalised mean of its prompts' unit embeddings: ``(len(prompts), dim)``.

    Classes are embedded :data:`CLASSES_PER_CHUNK` at a time, so that only one chunk's prompt vectors are held
    (a 20,000-label vocabulary with the 80 ImageNet templates is 1.6 M prompts); with more than one chunk,
    ``progress`` is called with ``(classes done, classes)`` after each.
    """
    chunks = [prompts[start:start + CLASSES_PER_CHUNK] for start in range(0, len(prompts), CLASSES_PER_CHUNK)]
    means = []
    if progress and len(chunks) > 1:
        progress(0, len(prompts))  # the bar shows from the start, not after the first chunk
    for chunk in chunks:
        vectors = encoder.encode_texts([text for group in chunk for text in group])
        bounds = np.cumsum([0] + [len(group) for group in chunk])
        means += [vectors[start:stop].mean(axis=0) for start, stop in zip(bounds[:-1], bounds[1:])]
        if progress and len(chunks) > 1:
            progress(len(means), len(prompts))
    stacked = np.stack(means)
    return (stacked / np.linalg.norm(stacked, axis=1, keepdims=True)).astype(np.float32)


def ensemble_embeddings(encoder: TextModel, labels: Sequence[str], templates: Sequence[str],
                        progress: Callable[[int, int], None] | None = None) -> npt.NDArray[np.float32]:
    """Per label, the renormalised mean of its normalised template embeddings: ``(len(labels), dim)``; ``progress``
    as :func:`ensemble_prompt_embeddings` calls it."""
    return ensemble_prompt_embeddings(encoder, [[t.format(label) for t in templates] for label in labels], progress)


@dataclass(frozen=True)
class ZeroShotClassifier:
    """Label vectors plus the model's calibration; :meth:`probabilities` scores image vectors."""

    labels: tuple[str, ...]
    embeddings: npt.NDArray[np.float32]  # (labels, dim), unit rows
    logit_scale: float  # exp of the model's learned temperature
    logit_bias: float | None  # SigLIP bias; None for CLIP-style models
    null_embedding: npt.NDArray[np.float32] | None = None  # CLIP-style multi-label reference, (dim,)

    @classmethod
    def build(cls, encoder: TextModel, labels: str | Iterable[str],
              templates: str | Sequence[str] = TEMPLATE_SETS["default"],
              progress: Callable[[int, int], None] | None = None) -> "ZeroShotClassifier":
        """Embed ``labels`` with ``templates`` using ``encoder``'s text tower.

        A lone label is built (it means something scored with ``multi_label`` or by a SigLIP model); see
        :meth:`probabilities` for what a softmax makes of it.

        Args:
            encoder: the model.
            labels: the labels (any iterable, one label per item), or one string of them as the command line
                takes it; either way checked and deduplicated by :func:`~.label_text.normalise_labels`.
            templates: templates with one ``{}`` each, or one string: a template set's name, a template file, or a
                single template.
            progress: called with ``(labels embedded, labels)`` while a vocabulary of several chunks is embedded
                (:func:`ensemble_prompt_embeddings`).

        Returns:
            The classifier, its ``labels`` as :func:`~.label_text.normalise_labels` left them.

        Warns:
            UserWarning: a label longer than the model reads (:func:`check_labels_read_whole`).

        Raises:
            QueryError: no labels, a label that is blank or not a ``str``, a template without exactly one ``{}``, or
                two labels that the model reads as the same text (they differ only past what it reads).
        """
        labels = normalise_labels(labels)
        if isinstance(templates, str):
            templates = load_templates(templates)
        templates = check_templates(tuple(templates), "templates")
        check_labels_read_whole(encoder, labels, templates)
        null = None if encoder.is_sigmoid else ensemble_embeddings(encoder, [NULL_LABEL], templates)[0]
        return cls(
            labels=tuple(labels),
            embeddings=ensemble_embeddings(encoder, labels, templates, progress),
            logit_scale=encoder.logit_scale,
            logit_bias=encoder.logit_bias,
            null_embedding=null,
        )

    @property
    def is_sigmoid(self) -> bool:
        return self.logit_bias is not None

    def probabilities(self, image_embeddings: npt.ArrayLike, multi_label: bool = False) -> npt.NDArray[np.float32]:
        """``(N, labels)`` probabilities for image vectors; rows sum to 1 only for single-label CLIP scoring.

        Scores are calibrated for cosines, so each row is scaled to unit length first (a row already of unit
        length, give or take float16 rounding, is used as it is); a 1-D vector is one image, one row.

        A lone label in that softmax gets 1.0 on every image. That is not refused here: the web UI shows it with a
        note saying so, while the command line and :meth:`Collection.label` refuse it before scoring, with
        :func:`refuse_lone_softmax_label`, which a caller of the Python API can use in the same way.

        Args:
            image_embeddings: ``(N, dim)`` image vectors of the model that made the labels' (or one ``(dim,)``).
            multi_label: score each label on its own (CLIP-style models; SigLIP scores are always independent).

        Returns:
            ``(N, labels)`` float32 probabilities.

        Raises:
            QueryError: vectors that are not numbers, of another shape or dimension, with a NaN or infinite value,
                or all zeros; ``multi_label`` on a CLIP-style classifier made without its ``null_embedding``.
        """
        images = unit_rows(image_embeddings, self.embeddings.shape[1], item="image vector",
                           fix="embed the images with the model that made the classifier")
        cosines = images @ self.embeddings.T.astype(np.float64)
        if self.is_sigmoid:
            return _sigmoid(self.logit_scale * cosines + self.logit_bias).astype(np.float32)
        if multi_label:
            if self.null_embedding is None:
                raise QueryError("multi_label scoring of a CLIP-style model weighs each label against a neutral "
                                 f"prompt ({NULL_LABEL!r}), and this classifier has no null_embedding; make it with "
                                 "ZeroShotClassifier.build, or pass null_embedding (that prompt's unit embedding)")
            null_cosines = images @ np.asarray(self.null_embedding, dtype=np.float64)
            return _sigmoid(self.logit_scale * (cosines - null_cosines[:, None])).astype(np.float32)
        logits = self.logit_scale * cosines
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Prediction:
    """One label assigned to one image."""

    label: str
    probability: float


def predict(
    probabilities: npt.NDArray[np.float32],
    labels: Sequence[str],
    *,
    multi_label: bool = False,
    threshold: float = MULTI_LABEL_THRESHOLD,
    top_k: int | None = None,
) -> list[list[Prediction]]:
    """Turn a ``(N, labels)`` probability matrix into ranked predictions per image.

    Single-label keeps the ``top_k`` best (default 1); multi-label keeps every label at or above
    ``threshold`` (at most ``top_k``), best first.
    """
    results = []
    for row in probabilities:
        order = np.argsort(-row, kind="stable")
        if multi_label:
            order = [i for i in order if row[i] >= threshold]
            order = order[:top_k] if top_k else order
        else:
            order = order[: top_k or 1]
        results.append([Prediction(labels[i], float(row[i])) for i in order])
    return results


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))
