"""Contrastive losses for batches in which a caption can describe several images.

Generated scenes share captions ("a red circle" fits every scene with a red circle in it), so the in-batch
"negatives" of plain CLIP/SigLIP losses include right answers, and treating them as wrong teaches the model to
ignore exactly the attributes (positions, counts) that tell such scenes apart from the rest. These losses take
the batch's ``positives`` matrix (caption i describes image j) instead of assuming the diagonal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multi_positive_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                             positives: torch.Tensor, unrelated: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax contrastive loss where each image's (and caption's) right answers are all its positives.

    Per image: -log(sum of softmax over captions taken over its positive captions), and the same per caption
    over images; the mean of both directions. With ``positives`` the identity it is CLIP's loss.

    Args:
        image_features, text_features: ``(N, D)`` unit vectors, pair i being image i and caption i.
        logit_scale: the temperature's inverse (already exponentiated).
        positives: ``(N, N)`` booleans, ``[i, j]`` when caption i describes image j (the diagonal included).
        unrelated: ``(K, D)`` unit vectors of texts that describe no image: extra wrong captions for every
            image (they have no images to rank, so they add nothing to the caption direction).
    """
    logits_per_text = logit_scale * text_features @ image_features.T  # [caption, image]
    text_loss = _multi_positive_nll(logits_per_text, positives)
    logits_per_image, image_positives = logits_per_text.T, positives.T
    if unrelated is not None:
        logits_per_image = torch.cat([logits_per_image, logit_scale * image_features @ unrelated.T], dim=1)
        image_positives = torch.cat([image_positives, positives.new_zeros(len(image_features), len(unrelated))], dim=1)
    image_loss = _multi_positive_nll(logits_per_image, image_positives)
    return (text_loss + image_loss) / 2


def multi_positive_siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                               logit_bias: torch.Tensor, positives: torch.Tensor,
                               unrelated: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss with every positive pair labelled +1 (not only the diagonal); the
    ``unrelated`` texts' pairs with every image are labelled -1."""
    if unrelated is not None:
        text_features = torch.cat([text_features, unrelated])
        positives = torch.cat([positives, positives.new_zeros(len(unrelated), positives.shape[1])])
    logits = logit_scale * text_features @ image_features.T + logit_bias
    labels = positives.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(labels * logits).sum() / len(image_features)


def null_anchor_loss(image_features: torch.Tensor, text_features: torch.Tensor, null_feature: torch.Tensor,
                     logit_scale: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """The binary cross-entropy of CLIP-style multi-label scoring itself (:mod:`..models.zeroshot`).

    That scoring calls a label present with probability ``sigmoid(scale * (cos(label) - cos(neutral)))``; here,
    for every image and caption of the batch, that probability is trained towards 1 when the caption fits the
    image and 0 when it does not, fitting and misfitting pairs weighing the same. So the neutral prompt sits
    below every caption that fits (generic ones like "a photo of three shapes" too) and above every one that
    does not.

    Args:
        image_features, text_features, logit_scale, positives: as :func:`multi_positive_clip_loss`.
        null_feature: ``(D,)`` unit vector of the neutral prompt.
    """
    # [image, caption]: the caption's logit over the neutral prompt's
    gaps = logit_scale * (image_features @ text_features.T - (image_features @ null_feature)[:, None])
    fits = positives.T
    fit_loss = -F.logsigmoid(gaps[fits]).mean()
    misfit_loss = -F.logsigmoid(-gaps[~fits]).mean() if bool((~fits).any()) else gaps.new_zeros(())
    return (fit_loss + misfit_loss) / 2


def _multi_positive_nll(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    on_positives = logits.masked_fill(~positives, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(on_positives, dim=1)).mean()
