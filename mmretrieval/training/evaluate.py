"""Evaluation on user data, as ``mmr eval --folder`` and ``--captions`` run it, with CLIP_benchmark's metric
definitions (:mod:`.metrics`):

- Zero-shot classification: top-1 accuracy (share of images whose highest-scoring class is right) and
  mean per-class recall (balanced accuracy), with prompt-ensemble class vectors.
- Text-to-image retrieval: recall@k = share of captions whose own image is among the k images most
  similar to the caption (CLIP_benchmark's ``image_retrieval_recall@k``).

The demo model's report on generated scenes is :mod:`.shapes_eval`'s.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import numpy.typing as npt

from .datasets import CaptionedImage, read_captioned, read_labelled_folder
from .metrics import classification_scores, text_to_image_recall
from ..errors import ImageDecodeError, MMRError
from ..images.decode import decode_image
from ..models.prompt_templates import TEMPLATE_SETS
from ..models.zeroshot import ensemble_prompt_embeddings

if TYPE_CHECKING:
    from ..ingest.batches import Skipped
    from ..ingest.files import FileFailure
    from ..models.encoder import DualEncoder

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10)  # text-to-image recall@k on user sets, as CLIP_benchmark reports it


def folder_label_text(name: str) -> str:
    """The label text a class folder's name stands for: ``_`` read as a space (``golden_retriever`` -> "golden
    retriever"), as CLIP_benchmark's and ImageNet's class names read; folder names are often written without
    spaces, and the text encoder reads ``golden_retriever`` as other words than "golden retriever"."""
    return name.replace("_", " ")


def class_texts(classes: Sequence[str]) -> dict[str, str]:
    """Each class folder's label text (:func:`folder_label_text`).

    Raises:
        MMRError: two folders read as one text (``golden_retriever`` and ``golden retriever``): the model would
            be asked to tell a label from itself, and every image of the second would count as wrong.
    """
    texts: dict[str, str] = {}
    for name in classes:
        text = folder_label_text(name)
        same = next((other for other, known in texts.items() if known == text), None)
        if same is not None:
            raise MMRError(f"class folders {same!r} and {name!r} both read as the label {text!r} ('_' is read as a "
                           "space); merge them or rename one")
        texts[name] = text
    return texts


def folder_report(encoder: "DualEncoder", root: str, templates: Sequence[str] = TEMPLATE_SETS["default"],
                  on_left_out: Callable[["FileFailure"], None] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Zero-shot accuracy on an ImageFolder-layout directory, its images found, decoded and embedded as
    ``mmr classify`` finds, decodes and embeds them (the ingest walk, worker processes, batches).

    Each class's label text is its folder's name read by :func:`folder_label_text`; the report maps each folder
    to it (``class_texts``). Undecodable images are left out and counted.

    Args:
        encoder: the model.
        root: the labelled folder (see :func:`~mmretrieval.training.datasets.read_labelled_folder`).
        templates: prompt templates, each with one ``{}`` for the label text.
        on_left_out: called with each file left out and why: what the walk passed over (a linked class folder
            leading outside ``root``, say) and each image that did not decode.
        progress: called with (images embedded or left out, images found) after each batch.

    Returns:
        ``images``, ``classes``, ``undecodable``, ``top1``, ``mean_per_class_recall`` and ``class_texts``.

    Raises:
        MMRError: no class subfolders with images, two folders with one label text, or none of the images
            decodes.
    """
    from ..ingest.files import embed_files

    classes, items = read_labelled_folder(root, on_skipped=_left_out_as_failure(on_left_out))
    texts = class_texts(classes)
    label_of = {os.path.abspath(item.path): item.label for item in items}
    chunks, labels, undecodable = [], [], 0
    for batch in embed_files(encoder, list(label_of)):
        chunks.append(batch.vectors)
        labels += [label_of[path] for path in batch.paths]
        undecodable += len(batch.failed)
        if progress is not None:
            progress(len(labels) + undecodable, len(label_of))
        if on_left_out is not None:
            for failure in batch.failed:
                on_left_out(failure)
    if not labels:
        raise MMRError(f"none of the {len(items)} images under {root} could be decoded")
    prompts = [[t.format(texts[name]) for t in templates] for name in classes]
    scores = classification_scores(np.concatenate(chunks), ensemble_prompt_embeddings(encoder, prompts), labels)
    return {"images": len(labels), "classes": len(classes), "undecodable": undecodable, **scores,
            "class_texts": texts}


def captions_report(encoder: "DualEncoder", source: str,
                    on_left_out: Callable[["FileFailure"], None] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Text-to-image recall@1/5/10 on a captioned set (sidecar .txt files or a CSV), see :func:`captioned_recall`.

    recall@k over k or fewer images is 1.0 whatever the model (every image is in the top k): such a k is left out
    of the report, with a warning that says so.

    Args:
        encoder: the model.
        source: a folder with sidecar captions (walked as ``mmr classify`` walks one) or a CSV.
        on_left_out: called with each file left out and why: what a folder's walk passed over, each file the
            set names that is missing or does not decode.
        progress: called with (images embedded or left out, images named) after each batch.
    """
    report = captioned_recall(encoder, read_captioned(source, on_skipped=_left_out_as_failure(on_left_out)),
                              on_left_out=on_left_out, progress=progress)
    meaningful = without_trivial_recall(report)
    if len(meaningful) < len(report):
        logger.warning("%s left out: %s has %d image%s, and recall@k over k or fewer images is 1 by construction",
                       ", ".join(key for key in report if key not in meaningful), source, report["images"],
                       "" if report["images"] == 1 else "s")
    return meaningful


def without_trivial_recall(report: dict[str, float]) -> dict[str, float]:
    """``report`` (of :func:`captioned_recall`) less its recall@k with k as large as the number of images: every
    caption's own image is then in its top k, whatever the model."""
    return {key: value for key, value in report.items()
            if key not in {f"recall@{k}" for k in RECALL_KS if k >= report["images"]}}


def captioned_recall(encoder: "DualEncoder", items: Sequence[CaptionedImage], batch_size: int = 64,
                     on_left_out: Callable[["FileFailure"], None] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Text-to-image recall@1/5/10 over every caption of ``items``; images that are missing or do not decode are
    left out and counted (``undecodable``), each handed to ``on_left_out`` with its reason (``missing``, or the
    decoder's: ``not_an_image``, ``truncated``, ...).

    Images are decoded, prepared and embedded ``batch_size`` at a time, and only their vectors are kept: a photo
    decodes to tens of megabytes, its prepared pixels to a few hundred kilobytes. ``progress`` is called with
    (images embedded or left out, images named) after each batch.

    Raises:
        MMRError: none of the images decodes.
    """
    from ..ingest.files import FileFailure

    chunks, pending = [], []  # vectors of the batches embedded; prepared pixels of the batch being filled
    texts, owners, decoded = [], [], 0
    for done, item in enumerate(items, 1):
        try:
            if not os.path.exists(item.path):  # a CSV's typo or a file moved: say so, not "cannot open"
                raise ImageDecodeError("missing", f"{item.path} does not exist")
            image = decode_image(item.path, draft_size=encoder.preparer.size).image
        except ImageDecodeError as exc:
            if on_left_out is not None:
                on_left_out(FileFailure(str(item.path), exc.reason, str(exc)))
            continue
        pending.append(encoder.preparer(image))
        texts.extend(item.captions)
        owners.extend([decoded] * len(item.captions))
        decoded += 1
        if len(pending) == batch_size:
            chunks.append(_embed_prepared(encoder, pending))
            pending = []
            if progress is not None:
                progress(done, len(items))
    if not decoded:
        raise MMRError("none of the captioned images could be decoded")
    if pending:
        chunks.append(_embed_prepared(encoder, pending))
    if progress is not None:
        progress(len(items), len(items))
    return {"images": decoded, "captions": len(texts), "undecodable": len(items) - decoded,
            **text_to_image_recall(np.concatenate(chunks), encoder.encode_texts(texts), owners, ks=RECALL_KS)}


def _left_out_as_failure(on_left_out: Callable[["FileFailure"], None] | None,
                         ) -> Callable[["Skipped"], None] | None:
    """The walk's reports (:class:`Skipped`) handed on as the evaluation's (:class:`FileFailure`)."""
    if on_left_out is None:
        return None
    from ..ingest.files import FileFailure

    return lambda skipped: on_left_out(FileFailure(skipped.path, skipped.reason, skipped.message))


def _embed_prepared(encoder: "DualEncoder", pixels: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
    import torch

    return encoder.encode_prepared(torch.from_numpy(np.stack(pixels)))
