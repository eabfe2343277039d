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
                             positives: torch.Tensor) -> torch.Tensor:
    """Softmax contrastive loss where each image's (and caption's) right answers are all its positives.

    Per image: -log(sum of softmax over captions taken over its positive captions), and the same per caption
    over images; the mean of both directions. With ``positives`` the identity it is CLIP's loss.

    Args:
        image_features, text_features: ``(N, D)`` unit vectors, pair i being image i and caption i.
        logit_scale: the temperature's inverse (already exponentiated).
        positives: ``(N, N)`` booleans, ``[i, j]`` when caption i describes image j (the diagonal included).
    """
    logits_per_text = logit_scale * text_features @ image_features.T  # [caption, image]
    text_loss = _multi_positive_nll(logits_per_text, positives)
    image_loss = _multi_positive_nll(logits_per_text.T, positives.T)
    return (text_loss + image_loss) / 2


def multi_positive_siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                               logit_bias: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss with every positive pair labelled +1 (not only the diagonal)."""
    logits = logit_scale * text_features @ image_features.T + logit_bias
    labels = positives.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(labels * logits).sum() / len(image_features)


def _multi_positive_nll(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    on_positives = logits.masked_fill(~positives, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(on_positives, dim=1)).mean()
