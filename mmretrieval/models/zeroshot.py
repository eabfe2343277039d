"""Zero-shot classification: labels plus prompt templates become a linear classifier over image vectors.

Per label, the template embeddings are normalised, averaged (the prompt ensemble of the CLIP paper) and
renormalised. Scores follow the model's training objective:

- CLIP-style models (softmax loss): ``softmax(logit_scale * cosine)`` over the labels. With
  ``multi_label=True`` each label is instead scored on its own against a neutral prompt ("something"),
  ``sigmoid(logit_scale * (cos_label - cos_null))``, so independent thresholds make sense.
- SigLIP-style models (sigmoid loss, with a ``logit_bias``): ``sigmoid(logit_scale * cosine + logit_bias)``
  per label, always independent: these are the probabilities the model was trained to give.
"""

from __future__ import annotations

import string
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Protocol, Sequence

import numpy as np
import numpy.typing as npt

from ..errors import MMRError, QueryError
from ..json_lines import bytes_escaped
from .inputs import listed, unit_rows
from .settings import MULTI_LABEL_THRESHOLD


class TextModel(Protocol):
    """What zero-shot scoring needs of a model: its text tower and calibration (a
    :class:`~mmretrieval.models.encoder.DualEncoder`, or a :class:`~mmretrieval.models.text_tower.TextEncoder`)."""

    logit_scale: float
    logit_bias: float | None
    is_sigmoid: bool

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...

# The 80 prompts of the CLIP paper's ImageNet ensemble (openai/CLIP, notebooks/Prompt_Engineering_for_ImageNet).
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "default": ("a photo of a {}.",),
    "imagenet": IMAGENET_TEMPLATES,
    "none": ("{}",),
}
NULL_LABEL = "something"  # the neutral class CLIP-style multi-label scores each label against


def load_templates(name_or_path: str) -> tuple[str, ...]:
    """A built-in template set (``default``, ``imagenet``, ``none``), a file with one ``{}`` template per line
    (UTF-8; a byte-order mark, as some editors write, is not part of the first template), or one template of its
    own (``"a drawing of a {}."``: text with a brace that names no file).

    Raises:
        QueryError: unknown name, unreadable file, or a template without ``{}``.
    """
    if name_or_path in TEMPLATE_SETS:
        return TEMPLATE_SETS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file() and {"{", "}"} & set(name_or_path):
        return _checked((name_or_path,), "the template")
    if not path.is_file():
        raise QueryError(f"unknown template set {name_or_path!r}: use {', '.join(TEMPLATE_SETS)}, a file path, or "
                         "one template with a {} for the label")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise QueryError(f"cannot read templates from {path}: {exc}") from exc
    return _checked(tuple(line for line in lines if line and not line.startswith("#")), str(path))


def _checked(templates: tuple[str, ...], source: str) -> tuple[str, ...]:
    bad = [t for t in templates if not _one_placeholder(t)]
    if not templates or bad:
        raise QueryError(f"{source}: every template needs exactly one '{{}}' and no other braces; write a brace "
                         f"itself as '{{{{' or '}}}}' (bad: {bad[:3] or 'no templates'})")
    return templates


def _one_placeholder(template: str) -> bool:
    """Whether ``template.format(label)`` fills exactly one bare ``{}`` (``{{`` and ``}}`` are literal braces)."""
    try:
        fields = [parts[1:] for parts in string.Formatter().parse(template) if parts[1] is not None]
    except ValueError:  # a stray brace
        return False
    return fields == [("", "", None)]


def parse_labels(values: str | Sequence[str | BinaryIO], *, read_files: bool = True) -> list[str]:
    """Labels from comma- or newline-separated text; ``@FILE`` reads one label per line (UTF-8, a byte-order mark
    ignored; commas kept, so "Paris, France" is one label; blank lines and lines starting with ``#`` skipped), and
    so does a binary stream among ``values`` (the command line's ``@-`` passes its standard input). ``@-`` itself
    is the file named ``-``: only a caller that hands over a stream has it read.

    Order kept, duplicates dropped. Labels that differ only in case or in Unicode normalisation (an accent typed
    as one character or as a letter plus a combining mark) are one label, spelt as it first came, with a warning:
    CLIP's tokenizer lowercases, so "Circle" and "circle" would split one label's probability in two.

    ``read_files=False`` is for labels typed by someone who may not read this machine's files (the web UI): a
    label that starts with ``@`` is refused instead of naming a file to read.

    Raises:
        QueryError: no labels, an unreadable ``@FILE`` or stream, ``@`` where files are not read, or a label that
            is not UTF-8 text (:func:`check_utf8`).
    """
    if isinstance(values, str) or hasattr(values, "read"):
        values = [values]
    parts: list[str] = []
    for value in values:
        if not read_files:
            if not isinstance(value, str):
                raise QueryError("labels typed here are text; a stream of labels is read only where files are")
            typed = value.replace("\n", ",").split(",")
            if any(part.strip().startswith("@") for part in typed):
                raise QueryError("a label cannot start with '@' here: that is how the command line names a file "
                                 "of labels, and files are not read from here")
        elif isinstance(value, str) and not value.startswith("@"):
            typed = value.replace("\n", ",").split(",")
        else:
            typed = [line for line in _label_file_text(value).splitlines() if not line.lstrip().startswith("#")]
        parts.extend(typed)
    labels = _one_per_case([label for label in (part.strip() for part in parts) if label], stacklevel=2)
    if not labels:
        raise QueryError("no labels given: pass e.g. --labels 'cat,dog,car' or --labels @labels.txt")
    return labels


def normalise_labels(labels: str | Iterable[str]) -> list[str]:
    """The labels of the Python API: one string is parsed as typed (:func:`parse_labels`, ``@FILE`` included);
    any other iterable (a list, a tuple, a generator) holds one label per item, each stripped, and goes through
    the same checks: order kept, duplicates dropped, labels that differ only in case or Unicode normalisation made
    one with a warning, text that is not UTF-8 refused.
    An item is a label as it is: a comma or a leading ``@`` in it is part of it ("Paris, France").

    Args:
        labels: one string of comma- or newline-separated labels, or an iterable of labels.

    Returns:
        The labels, at least one.

    Raises:
        QueryError: an item that is not a ``str``, is blank or is not UTF-8 text, no labels, or ``labels`` neither a
            string nor an iterable.
    """
    if isinstance(labels, str):
        return parse_labels(labels)
    stripped = []
    for index, label in enumerate(listed(labels, (str,), "label", "a str")):
        if not label.strip():
            raise QueryError(f"label {index} is empty ({label!r}); drop it or name the label")
        stripped.append(label.strip())
    if not stripped:
        raise QueryError("no labels given: pass e.g. ['cat', 'dog', 'car']")
    return _one_per_case(stripped, stacklevel=3)


def _one_per_case(labels: Iterable[str], *, stacklevel: int) -> list[str]:
    """``labels`` in order without duplicates; labels that differ only in case or Unicode normalisation are one,
    spelt as it first came, with a warning: CLIP's tokenizer lowercases, so "Circle" and "circle" would split one
    label's probability in two, and "café" typed with a combining accent is the same word (stored apart, a
    ``--label`` filter would find only one of them). ``stacklevel`` is the warning's, counted from the caller of
    this function.

    Raises:
        QueryError: a label that is not UTF-8 text (:func:`check_utf8`).
    """
    kept: dict[str, str] = {}  # normalised, casefolded label -> its first spelling, in the order labels came
    for label in labels:
        check_utf8(label, "label")
        first = kept.setdefault(unicodedata.normalize("NFC", label).casefold(), label)
        if label.casefold() != first.casefold():  # the same characters written apart: escaped, so that it shows
            warnings.warn(f"labels {first!r} and {ascii(label)} differ only in Unicode normalisation (an accent as "
                          f"one character or as a combining mark) or case: kept {first!r} as one label",
                          stacklevel=stacklevel + 1)
        elif label != first:
            warnings.warn(f"labels {first!r} and {label!r} differ only in case: kept {first!r} as one label",
                          stacklevel=stacklevel + 1)
    return list(kept.values())


def check_utf8(text: str, what: str, error: type[MMRError] = QueryError) -> str:
    """``text``, if it is text that UTF-8 can hold. A command-line argument in another encoding (a Latin-1 terminal,
    say) reaches Python with each byte that is not UTF-8 as a lone surrogate (``\\udcff``): SQLite refuses to store
    that, and a tokenizer reads it as some other character.

    Args:
        what: what ``text`` is, for the message ("label", "label set name").
        error: the exception type to raise.

    Raises:
        error: ``text`` holds such a character; the message shows it with its bytes escaped (``'r\\xffed'``).
    """
    if any("\ud800" <= char <= "\udfff" for char in text):
        shown = bytes_escaped(text)
        raise error(f"{what} '{shown}' is not UTF-8 text: it holds bytes that are not characters (shown as \\x..), "
                    "as a terminal or file in another encoding passes them; type it again in UTF-8")
    return text


def _label_file_text(value: str | BinaryIO) -> str:
    """The text of ``@FILE``, or of a binary stream, as UTF-8 without a byte-order mark."""
    name = value[1:] if isinstance(value, str) else getattr(value, "name", "a stream")
    try:
        if isinstance(value, str):
            return Path(name).read_text(encoding="utf-8-sig")
        return value.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise QueryError(f"cannot read labels from {name}: {exc}") from exc


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


def ensemble_prompt_embeddings(encoder: TextModel, prompts: Sequence[Sequence[str]]) -> npt.NDArray[np.float32]:
    """Per class, the renormalised mean of its prompts' unit embeddings: ``(len(prompts), dim)``."""
    flat = [text for group in prompts for text in group]
    vectors = encoder.encode_texts(flat)
    bounds = np.cumsum([0] + [len(group) for group in prompts])
    means = np.stack([vectors[start:stop].mean(axis=0) for start, stop in zip(bounds[:-1], bounds[1:])])
    return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


def ensemble_embeddings(encoder: TextModel, labels: Sequence[str], templates: Sequence[str]) -> npt.NDArray[np.float32]:
    """Per label, the renormalised mean of its normalised template embeddings: ``(len(labels), dim)``."""
    return ensemble_prompt_embeddings(encoder, [[t.format(label) for t in templates] for label in labels])


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
              templates: str | Sequence[str] = TEMPLATE_SETS["default"]) -> "ZeroShotClassifier":
        """Embed ``labels`` with ``templates`` using ``encoder``'s text tower.

        A lone label is built (it means something scored with ``multi_label`` or by a SigLIP model); see
        :meth:`probabilities` for what a softmax makes of it.

        Args:
            encoder: the model.
            labels: the labels (any iterable, one label per item), or one string of them as the command line
                takes it; either way checked and deduplicated by :func:`normalise_labels`.
            templates: templates with one ``{}`` each, or one string: a template set's name, a template file, or a
                single template.

        Returns:
            The classifier, its ``labels`` as :func:`normalise_labels` left them.

        Warns:
            UserWarning: a label longer than the model reads (:func:`check_labels_read_whole`).

        Raises:
            QueryError: no labels, a label that is blank or not a ``str``, a template without exactly one ``{}``, or
                two labels that the model reads as the same text (they differ only past what it reads).
        """
        labels = normalise_labels(labels)
        if isinstance(templates, str):
            templates = load_templates(templates)
        templates = _checked(tuple(templates), "templates")
        check_labels_read_whole(encoder, labels, templates)
        null = None if encoder.is_sigmoid else ensemble_embeddings(encoder, [NULL_LABEL], templates)[0]
        return cls(
            labels=tuple(labels),
            embeddings=ensemble_embeddings(encoder, labels, templates),
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
