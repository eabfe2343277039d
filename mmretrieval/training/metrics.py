"""Evaluation metrics, with CLIP_benchmark's definitions where it has them; plain numpy over unit vectors.

- Zero-shot classification: top-1 accuracy (share of images whose highest-scoring class is right) and
  mean per-class recall (balanced accuracy), with prompt-ensemble class vectors.
- Text-to-image retrieval: recall@k = share of captions whose own image is among the k images most
  similar to the caption (CLIP_benchmark's ``image_retrieval_recall@k``; exact ties in a random order).
- On generated scenes, also attribute-match@5: among the top scenes retrieved for a caption, the share
  that match every attribute the caption names (many scenes share a caption, so recall@k undersells it);
  see :func:`attribute_match_at_5` for how captions with fewer than 5 matching scenes count; and
  position-match@5 and position top-1 among scenes of the same colour and shape
  (:func:`~.shapes_eval.position_scores`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from . import scenes


def classification_scores(
    image_vectors: npt.NDArray[np.float32], class_vectors: npt.NDArray[np.float32], targets: Sequence[int]
) -> dict[str, float]:
    """Top-1 accuracy and mean per-class recall of nearest-class-vector predictions."""
    predicted = np.argmax(image_vectors @ class_vectors.T, axis=1)
    targets = np.asarray(targets)
    recalls = [float(np.mean(predicted[targets == c] == c)) for c in np.unique(targets)]
    return {"top1": float(np.mean(predicted == targets)), "mean_per_class_recall": float(np.mean(recalls))}


def text_to_image_recall(
    image_vectors: npt.NDArray[np.float32],
    text_vectors: npt.NDArray[np.float32],
    text_to_image: Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """recall@k for each k: the share of texts whose own image ranks in the top k.

    Images that score exactly as the text's own image does (copies of it in the set: the same vector) are ranked
    with it in a random order, and the expected share is reported: counting each such tie as a hit made 12 copies
    of one photo under 12 captions score recall@1 = 1.0, where the model can do no better than 1/12.
    """
    similarities = text_vectors @ image_vectors.T
    own = similarities[np.arange(len(text_to_image)), np.asarray(text_to_image)]
    above = (similarities > own[:, None]).sum(axis=1)  # images that rank ahead of the text's own whatever the order
    tied = (similarities == own[:, None]).sum(axis=1)  # the own image and its exact ties: in a random order
    # a NaN score (a diverged model) ties with nothing, not even itself: a miss, not a hit
    hit = np.clip((np.asarray(ks)[:, None] - above) / np.maximum(tied, 1), 0.0, 1.0) * (tied > 0)
    return {f"recall@{k}": float(np.mean(row)) for k, row in zip(ks, hit)}

def attribute_match_at_5(similarities: npt.NDArray[np.float32], facts: Sequence[scenes.CaptionFacts],
                         truth: Sequence[scenes.Scene]) -> dict[str, float]:
    """How many of the top 5 scenes match every attribute each caption names, averaged over captions.

    A caption that names many attributes may match fewer than 5 of the scenes searched, which caps the
    plain score below 1 (``attribute_match@5_ceiling``). ``attribute_match@5`` therefore looks at the top
    ``min(5, matching scenes)``: 1.0 means every caption's best possible list was returned.
    """
    order = np.argsort(-similarities, axis=1)
    plain, capped, ceiling = [], [], []
    for row, named in zip(order, facts):
        available = sum(named.matches(scene) for scene in truth)
        hits = [named.matches(truth[i]) for i in row[:5]]
        k = max(1, min(5, available))
        plain.append(np.mean(hits))
        capped.append(np.mean(hits[:k]))
        ceiling.append(min(5, available) / 5)
    return {"attribute_match@5": float(np.mean(capped)), "attribute_match@5_raw": float(np.mean(plain)),
            "attribute_match@5_ceiling": float(np.mean(ceiling))}
