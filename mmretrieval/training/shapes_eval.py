"""The demo model's report on generated scenes it never saw (:func:`shapes_report`): attribute accuracy on scenes
and on held-out colour-shape pairs, text-to-image recall@k, attribute-match@5 and position scores
(:mod:`.metrics`), and accuracy on shapes drawn apart from the generator (:mod:`.drawn_shapes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import numpy.typing as npt

from . import scenes
from .drawn_shapes import drawn_apart, plain_renderings
from .metrics import attribute_match_at_5, classification_scores, text_to_image_recall
from ..models.zeroshot import ensemble_prompt_embeddings

if TYPE_CHECKING:
    from ..models.encoder import DualEncoder

EVAL_SEED = 1_000_003  # held-out scenes: a stream the training seed never reaches


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


EVAL_STEPS = 6  # the parts of shapes_report that progress counts


def shapes_report(encoder: "DualEncoder", n_scenes: int = 1000, n_captions: int = 200, seed: int = EVAL_SEED,
                  varied: bool = True, progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """The demo model's quality on scenes it never saw (see the module docstring for the metrics), drawn with
    the varied rendering it is trained on (``varied=False``: the classic one); ``progress`` is called with
    ``(parts done, EVAL_STEPS)`` as each part is measured (1,000 scenes take about two minutes on a CPU)."""

    def done(step: int) -> None:
        if progress:
            progress(step, EVAL_STEPS)

    done(0)
    examples = [scenes.generate(seed, i, held_out="include", varied=varied) for i in range(n_scenes)]
    vectors = encoder.encode_images([e.image for e in examples])
    report = _attribute_accuracy(encoder, vectors, [e.scene for e in examples], ("color", "shape", "count"))
    done(1)

    held_out = [scenes.generate(seed + 1, i, held_out="only", varied=varied) for i in range(max(40, n_scenes // 5))]
    held_vectors = encoder.encode_images([e.image for e in held_out])
    for attribute, value in _attribute_accuracy(encoder, held_vectors, [e.scene for e in held_out], ("color", "shape")).items():
        report[f"held_out_pairs_{attribute}"] = value
    done(2)

    queries = examples[:n_captions]
    text_vectors = encoder.encode_texts([q.caption for q in queries])
    report.update(text_to_image_recall(vectors, text_vectors, [q.index for q in queries]))
    report.update(attribute_match_at_5(text_vectors @ vectors.T, [q.facts for q in queries], [e.scene for e in examples]))
    done(3)

    names = shape_attribute_prompts()
    prompts = {attribute: ensemble_prompt_embeddings(encoder, names[attribute][1]) for attribute in ("color", "shape")}
    for step, (kind, draw) in enumerate((("plain", plain_renderings), ("drawn_apart", drawn_apart)), start=4):
        drawn = draw()
        drawn_vectors = encoder.encode_images([d[0] for d in drawn])
        for attribute, column in (("color", 1), ("shape", 2)):
            targets = [names[attribute][0].index(d[column]) for d in drawn]
            report[f"{kind}_{attribute}"] = classification_scores(drawn_vectors, prompts[attribute], targets)["top1"]
        done(step)
    report.update(position_scores(encoder, seed + 2, n_scenes=max(100, n_scenes // 2), varied=varied))
    done(6)
    return report
