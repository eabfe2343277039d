"""Evaluation with CLIP_benchmark's metric definitions, on user data and on held-out generated scenes.

- Zero-shot classification: top-1 accuracy (share of images whose highest-scoring class is right) and
  mean per-class recall (balanced accuracy), with prompt-ensemble class vectors.
- Text-to-image retrieval: recall@k = share of captions whose own image is among the k images most
  similar to the caption (CLIP_benchmark's ``image_retrieval_recall@k``).
- On generated scenes, also attribute-match@5: among the top scenes retrieved for a caption, the share
  that match every attribute the caption names (many scenes share a caption, so recall@k undersells it);
  see :func:`attribute_match_at_5` for how captions with fewer than 5 matching scenes count; and
  position-match@5 and position top-1 among scenes of the same colour and shape (:func:`position_scores`).
- Shapes drawn apart from the generator: :func:`plain_renderings` (upright, basic colours) and
  :func:`drawn_apart` (any rotation, anti-aliased, plain/noisy/two-tone backgrounds, every shape and colour).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

from . import scenes
from .datasets import CaptionedImage, read_captioned, read_labelled_folder
from ..errors import ImageDecodeError, MMRError
from ..images.decode import decode_image
from ..models.zeroshot import TEMPLATE_SETS, ensemble_prompt_embeddings

if TYPE_CHECKING:
    from ..ingest.batches import Skipped
    from ..ingest.files import FileFailure
    from ..models.encoder import DualEncoder

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10)  # text-to-image recall@k on user sets, as CLIP_benchmark reports it
EVAL_SEED = 1_000_003  # held-out scenes: a stream the training seed never reaches
PLAIN_SHAPES = ("circle", "square", "triangle", "star")
PLAIN_COLORS = {"red": (255, 0, 0), "green": (0, 190, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}


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
    """recall@k for each k: the share of texts whose own image ranks in the top k."""
    similarities = text_vectors @ image_vectors.T
    own = similarities[np.arange(len(text_to_image)), np.asarray(text_to_image)]
    # rank = how many images score strictly higher than the caption's own image
    ranks = (similarities > own[:, None]).sum(axis=1)
    return {f"recall@{k}": float(np.mean(ranks < k)) for k in ks}


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
                  on_left_out: Callable[["FileFailure"], None] | None = None) -> dict[str, Any]:
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
                    on_left_out: Callable[["FileFailure"], None] | None = None) -> dict[str, float]:
    """Text-to-image recall@1/5/10 on a captioned set (sidecar .txt files or a CSV), see :func:`captioned_recall`.

    recall@k over k or fewer images is 1.0 whatever the model (every image is in the top k): such a k is left out
    of the report, with a warning that says so.

    Args:
        encoder: the model.
        source: a folder with sidecar captions (walked as ``mmr classify`` walks one) or a CSV.
        on_left_out: called with each file left out and why: what a folder's walk passed over, each file the
            set names that is missing or does not decode.
    """
    report = captioned_recall(encoder, read_captioned(source, on_skipped=_left_out_as_failure(on_left_out)),
                              on_left_out=on_left_out)
    trivial = [k for k in RECALL_KS if k >= report["images"]]
    if trivial:
        logger.warning("%s left out: %s has %d image%s, and recall@k over k or fewer images is 1 by construction",
                       ", ".join(f"recall@{k}" for k in trivial), source, report["images"],
                       "" if report["images"] == 1 else "s")
    return {key: value for key, value in report.items() if key not in {f"recall@{k}" for k in trivial}}


def captioned_recall(encoder: "DualEncoder", items: Sequence[CaptionedImage], batch_size: int = 64,
                     on_left_out: Callable[["FileFailure"], None] | None = None) -> dict[str, float]:
    """Text-to-image recall@1/5/10 over every caption of ``items``; images that are missing or do not decode are
    left out and counted (``undecodable``), each handed to ``on_left_out`` with its reason (``missing``, or the
    decoder's: ``not_an_image``, ``truncated``, ...).

    Images are decoded, prepared and embedded ``batch_size`` at a time, and only their vectors are kept: a photo
    decodes to tens of megabytes, its prepared pixels to a few hundred kilobytes.

    Raises:
        MMRError: none of the images decodes.
    """
    from ..ingest.files import FileFailure

    chunks, pending = [], []  # vectors of the batches embedded; prepared pixels of the batch being filled
    texts, owners, decoded = [], [], 0
    for item in items:
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
    if not decoded:
        raise MMRError("none of the captioned images could be decoded")
    if pending:
        chunks.append(_embed_prepared(encoder, pending))
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


def shape_attribute_prompts() -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per attribute, class names and their prompt lists (each ensembled over the counts 1 to 3)."""
    colors = list(scenes.COLORS)
    return {
        "color": (colors, [[f"a photo of {scenes.article(c)} {c} shape", f"a photo of two {c} shapes",
                            f"a photo of three {c} shapes"] for c in colors]),
        "shape": (list(scenes.SHAPES), [[f"a photo of {scenes.article(s)} {s}", f"a photo of two {scenes.plural(s, 2)}",
                                         f"a photo of three {scenes.plural(s, 3)}"] for s in scenes.SHAPES]),
        "count": (["1", "2", "3"], [["a photo of one shape"], ["a photo of two shapes"], ["a photo of three shapes"]]),
    }


def _attribute_accuracy(encoder: "DualEncoder", vectors: npt.NDArray[np.float32], truth: list[scenes.Scene],
                        attributes: Sequence[str]) -> dict[str, float]:
    results = {}
    for attribute, (names, prompts) in shape_attribute_prompts().items():
        if attribute in attributes:
            targets = [names.index(str(getattr(scene, attribute))) for scene in truth]
            results[attribute] = classification_scores(vectors, ensemble_prompt_embeddings(encoder, prompts), targets)["top1"]
    return results


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


def plain_renderings(seed: int = 7, per_pair: int = 3, size: int = 112) -> list[tuple[Image.Image, str, str]]:
    """Single filled shapes in basic colours on plain or noisy backgrounds, drawn with numpy masks
    (not the generator's Pillow code), as ``(image, color, shape)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    out = []
    for shape in PLAIN_SHAPES:
        for color, rgb in PLAIN_COLORS.items():
            for variant in range(per_pair):
                radius = size * rng.uniform(0.2, 0.32)
                cx, cy = size / 2 + rng.uniform(-0.1, 0.1, size=2) * size
                mask = _mask(shape, xx - cx, yy - cy, radius)
                if variant % 2:
                    background = rng.normal(rng.uniform(60, 200), 25, size=(size, size, 3))
                else:
                    background = np.full((size, size, 3), rng.choice([0, 128, 255]), dtype=np.float64)
                pixels = np.where(mask[..., None], np.array(rgb, dtype=np.float64), background)
                out.append((Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), color, shape))
    return out


def _mask(shape: str, dx: npt.NDArray, dy: npt.NDArray, r: float) -> npt.NDArray[np.bool_]:
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if shape == "triangle":  # apex up: inside three half-planes
        return (dy <= r * 0.6) & (dy >= -r + 1.7 * np.abs(dx))
    angle = np.arctan2(dy, dx) + np.pi / 2  # five-pointed star: radius alternates with the angle
    spikes = np.abs(((angle / (2 * np.pi / 5)) % 1.0) - 0.5) * 2
    return np.hypot(dx, dy) <= r * (0.4 + 0.75 * spikes ** 2)


# The second drawing routine's colours: its own anchors, not the generator's palette.
APART_COLORS = {"red": (230, 20, 20), "green": (20, 180, 40), "blue": (20, 60, 230), "yellow": (250, 220, 0),
                "orange": (255, 140, 0), "purple": (128, 0, 160), "pink": (255, 110, 180), "cyan": (0, 210, 220)}
_SUPERSAMPLE = 4


def drawn_apart(seed: int = 11, per_pair: int = 2, size: int = 112) -> list[tuple[Image.Image, str, str]]:
    """Single shapes drawn by a routine that shares no code with the generator, as ``(image, color, shape)``:
    every shape of :data:`scenes.SHAPES` in every colour, at any rotation, anti-aliased (coverage from 4x4
    supersampled masks), on plain, noisy or two-tone backgrounds.

    What a rotated square is: a square at any angle is a square (stood on a corner at 45 degrees); a diamond is
    a rhombus whose diagonals differ (0.6 : 1), at any angle.
    """
    rng = np.random.default_rng(seed)
    fine = size * _SUPERSAMPLE
    yy, xx = (np.mgrid[0:fine, 0:fine].astype(np.float64) + 0.5) / _SUPERSAMPLE
    out = []
    for shape in scenes.SHAPES:
        for color, rgb in APART_COLORS.items():
            for _ in range(per_pair):
                radius = size * rng.uniform(0.22, 0.34)
                cx, cy = size / 2 + rng.uniform(-0.08, 0.08, size=2) * size
                theta = rng.uniform(0, 2 * np.pi)
                dx, dy = xx - cx, yy - cy
                rx, ry = dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)
                coverage = _apart_mask(shape, rx, ry, radius).reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE)
                alpha = coverage.mean(axis=(1, 3))[..., None]
                background = _apart_background(rng, size)
                pixels = alpha * np.array(rgb, dtype=np.float64) + (1 - alpha) * background
                out.append((Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8)), color, shape))
    return out


def _apart_background(rng: np.random.Generator, size: int) -> npt.NDArray[np.float64]:
    kind = rng.integers(3)
    if kind == 0:  # plain grey
        return np.full((size, size, 3), rng.uniform(0, 255))
    if kind == 1:  # noise around a grey
        return np.clip(rng.normal(rng.uniform(50, 200), 30, size=(size, size, 3)), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size]  # two tones split by a random line
    angle = rng.uniform(0, np.pi)
    side = (xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle) > rng.uniform(-0.3, 0.3) * size
    first, second = rng.uniform(0, 255), rng.uniform(0, 255)
    return np.repeat(np.where(side, first, second)[..., None], 3, axis=2)


def _apart_mask(shape: str, x: npt.NDArray, y: npt.NDArray, r: float) -> npt.NDArray[np.bool_]:
    """``shape`` of size ``r`` in coordinates already rotated about its centre."""
    if shape == "circle":
        return x ** 2 + y ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(x) <= r * 0.8) & (np.abs(y) <= r * 0.8)
    if shape == "diamond":
        return np.abs(x) / (r * 0.6) + np.abs(y) / r <= 1
    if shape == "cross":
        return ((np.abs(x) <= r * 0.3) & (np.abs(y) <= r)) | ((np.abs(y) <= r * 0.3) & (np.abs(x) <= r))
    if shape == "triangle":  # equilateral, circumradius r: inside three half-planes
        return (y <= r / 2) & (np.sqrt(3) * x - y <= r) & (-np.sqrt(3) * x - y <= r)
    if shape == "star":  # five points: the radius swings with the angle
        spikes = np.abs(((np.arctan2(y, x) / (2 * np.pi / 5)) % 1.0) - 0.5) * 2
        return np.hypot(x, y) <= r * (0.4 + 0.7 * spikes ** 2)
    raise ValueError(f"unknown shape {shape!r}")


def position_scores(encoder: "DualEncoder", seed: int, n_scenes: int = 500, n_queries: int = 200,
                    varied: bool = True) -> dict[str, float]:
    """How well single-object queries ("a {color} {shape} in the {position}", built from scenes, so each has a
    match) find the named position:

    - ``position_match@5``: the share of the top 5 scenes placed there. Few scenes match all three (~2 of 500),
      so past them it rewards a model that ranks position above colour and shape;
    - ``position_top1_same_object``: among the scenes of the query's colour and shape, the share of queries
      whose best match is at the named position (``..._chance``: what picking one of them at random scores).
    """
    singles = [e for e in scenes.stream(seed, stop=4 * n_scenes, held_out="include", varied=varied)
               if e.scene.count == 1]
    singles = singles[:n_scenes]
    vectors = encoder.encode_images([e.image for e in singles])
    queries = [e.scene for e in singles[:n_queries]]
    texts = [f"{scenes.article(q.color)} {q.color} {q.shape} in the {q.position}" for q in queries]
    similarities = encoder.encode_texts(texts) @ vectors.T
    top = np.argsort(-similarities, axis=1)[:, :5]
    at = np.array([[e.scene.position == q.position for e in singles] for q in queries])
    same = np.array([[(e.scene.color, e.scene.shape) == (q.color, q.shape) for e in singles] for q in queries])
    best_same = np.argmax(np.where(same, similarities, -np.inf), axis=1)
    return {"position_match@5": float(np.mean(np.take_along_axis(at, top, axis=1))),
            "position_top1_same_object": float(np.mean(at[np.arange(len(queries)), best_same])),
            "position_top1_same_object_chance": float(np.mean((at & same).sum(axis=1) / same.sum(axis=1)))}


def shapes_report(encoder: "DualEncoder", n_scenes: int = 1000, n_captions: int = 200, seed: int = EVAL_SEED,
                  varied: bool = True) -> dict[str, float]:
    """The demo model's quality on scenes it never saw (see the module docstring for the metrics), drawn with
    the varied rendering it is trained on (``varied=False``: the classic one)."""
    examples = [scenes.generate(seed, i, held_out="include", varied=varied) for i in range(n_scenes)]
    vectors = encoder.encode_images([e.image for e in examples])
    report = _attribute_accuracy(encoder, vectors, [e.scene for e in examples], ("color", "shape", "count"))

    held_out = [scenes.generate(seed + 1, i, held_out="only", varied=varied) for i in range(max(40, n_scenes // 5))]
    held_vectors = encoder.encode_images([e.image for e in held_out])
    for attribute, value in _attribute_accuracy(encoder, held_vectors, [e.scene for e in held_out], ("color", "shape")).items():
        report[f"held_out_pairs_{attribute}"] = value

    queries = examples[:n_captions]
    text_vectors = encoder.encode_texts([q.caption for q in queries])
    report.update(text_to_image_recall(vectors, text_vectors, [q.index for q in queries]))
    report.update(attribute_match_at_5(text_vectors @ vectors.T, [q.facts for q in queries], [e.scene for e in examples]))

    plain = plain_renderings()
    plain_vectors = encoder.encode_images([p[0] for p in plain])
    names = shape_attribute_prompts()
    for attribute, column in (("color", 1), ("shape", 2)):
        classes, prompts = names[attribute]
        targets = [classes.index(p[column]) for p in plain]
        report[f"plain_{attribute}"] = classification_scores(
            plain_vectors, ensemble_prompt_embeddings(encoder, prompts), targets)["top1"]

    apart = drawn_apart()
    apart_vectors = encoder.encode_images([a[0] for a in apart])
    for attribute, column in (("color", 1), ("shape", 2)):
        classes, prompts = names[attribute]
        targets = [classes.index(a[column]) for a in apart]
        report[f"drawn_apart_{attribute}"] = classification_scores(
            apart_vectors, ensemble_prompt_embeddings(encoder, prompts), targets)["top1"]
    report.update(position_scores(encoder, seed + 2, n_scenes=max(100, n_scenes // 2), varied=varied))
    return report

