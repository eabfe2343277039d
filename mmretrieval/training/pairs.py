"""A user's captioned pairs for training: the ones usable, the held-out split, and the epochs' order.

Files that cannot be images (missing, empty, not an image by their first bytes) are named once and left out
before the split, so that the held-out pairs are images too (a held-out set of one missing file threw a whole
run away at its last step) and so that a few bad rows do not warn again in every epoch and every data worker.
What passes this check but does not decode (a truncated file) is still skipped, with a warning, when it is met.
"""

from __future__ import annotations

import logging
import os
import stat
from functools import lru_cache
from typing import Any

import numpy as np

import torch
from torch.utils.data import Dataset

from ..errors import ImageDecodeError, MMRError
from ..images.decode import decode_image
from ..images.formats import SNIFF_BYTES, looks_like_an_image
from ..images.preprocess import ImagePreparer
from .datasets import CaptionedImage

logger = logging.getLogger(__name__)

HOLD_OUT_ONE_IN, MAX_HELD_OUT, MIN_PAIRS_TO_HOLD_OUT = 20, 200, 20  # 1 in 20 held out, at most 200, none below 20


def usable_pairs(items: list[CaptionedImage]) -> list[CaptionedImage]:
    """``items`` less those whose file is missing, unreadable, not a regular file (a FIFO: read without waiting),
    empty or not an image by its first bytes, each named in a warning once, with a count of them at the end."""
    usable = []
    for item in items:
        problem = _not_an_image(item.path)
        if problem is None:
            usable.append(item)
        else:
            logger.warning("left out: %s: %s", item.path, problem)
    if len(usable) < len(items):
        logger.warning("%d of the %d captioned images are left out (named above)", len(items) - len(usable),
                       len(items))
    return usable


def _not_an_image(path: os.PathLike) -> str | None:
    try:  # without blocking: a FIFO named in a CSV would wait for a writer for ever
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
        header = os.read(fd, SNIFF_BYTES)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    finally:
        os.close(fd)
    if not header:
        return "empty"
    if not looks_like_an_image(header, path):
        return "not an image"
    return None


def split_held_out(items: list[CaptionedImage], seed: int) -> tuple[list[CaptionedImage], list[CaptionedImage]]:
    """A seeded split of user pairs into (training, held-out): 1 in 20 held out, at most 200, none below 20 pairs
    (said in a warning: there is then no held-out score)."""
    if len(items) < MIN_PAIRS_TO_HOLD_OUT:
        logger.warning("%d usable captioned images: none held out (it takes %d), so no held-out score is printed",
                       len(items), MIN_PAIRS_TO_HOLD_OUT)
        return list(items), []
    count = min(MAX_HELD_OUT, len(items) // HOLD_OUT_ONE_IN)
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    held = set(order[:count])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def batch_size_for(pairs: int, batch_size: int) -> int:
    """The batch size a run over ``pairs`` training pairs uses: at most one of each. A pair twice in a batch is its
    own wrong answer, which keeps the loss above ln(copies) (1.68 for 3 pairs in batches of 16, seen).

    Raises:
        MMRError: fewer than 2 pairs: contrastive training needs another pair as the wrong answer.
    """
    if pairs < 2:
        raise MMRError(f"{pairs} captioned image{'' if pairs == 1 else 's'} to train on: contrastive training needs "
                       "2 or more (each pair's wrong answers are the other pairs of its batch)")
    if batch_size <= pairs:
        return batch_size
    logger.warning("--batch-size %d is more than the %d training pairs: batches of %d instead (a pair twice in a "
                   "batch would be its own wrong answer)", batch_size, pairs, pairs)
    return pairs


class PairDataset(Dataset):
    """A captioned image set in batches of ``batch_size`` distinct pairs: an epoch is as many whole batches as the
    pairs fill, in a new seeded order each epoch (the few pairs left over differ from epoch to epoch), so no batch
    spans two epochs, where a pair could meet itself. Undecodable images yield None (dropped by collate)."""

    def __init__(self, items: list[CaptionedImage], length: int, batch_size: int, seed: int, preparer: ImagePreparer,
                 tokenizer: Any):
        self.items, self.length, self.batch_size, self.seed = items, length, batch_size, seed
        self.preparer, self.tokenizer = preparer, tokenizer

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        pair, epoch = self.position(index)
        item = self.items[pair]
        text = item.captions[epoch % len(item.captions)]
        try:
            image = decode_image(item.path, draft_size=self.preparer.size).image
        except ImageDecodeError as exc:
            logger.warning("skipping %s: %s", item.path, exc)
            return None
        return torch.from_numpy(self.preparer(image)), self.tokenizer([text])[0]

    def position(self, index: int) -> tuple[int, int]:
        """(the pair, the epoch) at ``index`` of the stream."""
        batch, place = divmod(index, self.batch_size)
        epoch, slot = divmod(batch, len(self.items) // self.batch_size)
        return _order(self.seed, epoch, len(self.items))[slot * self.batch_size + place], epoch


@lru_cache(maxsize=4)  # per process (each data worker has its own): an epoch's order is drawn once
def _order(seed: int, epoch: int, count: int) -> list[int]:
    return np.random.default_rng([seed, epoch]).permutation(count).tolist()  # any seed: no overflow
