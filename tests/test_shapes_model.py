"""The bundled builtin:shapes model understands what it was trained on, and a bit beyond."""

from __future__ import annotations

import numpy as np
import pytest

from mmretrieval.training import scenes
from mmretrieval.training.drawn_shapes import plain_renderings
from mmretrieval.training.shapes_eval import EVAL_SEED, shape_attribute_prompts
from mmretrieval.models.zeroshot import ZeroShotClassifier, ensemble_prompt_embeddings, predict


@pytest.fixture(scope="module")
def held_out(shapes_encoder):
    examples = [scenes.generate(EVAL_SEED + 7, i, held_out="include") for i in range(300)]
    return examples, shapes_encoder.encode_images([e.image for e in examples])


def _rank_of(scores: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(-scores))


def test_a_red_circle_ranks_red_circles_first(shapes_encoder, held_out):
    examples, vectors = held_out
    red_circle = np.array([(e.scene.color, e.scene.shape) == ("red", "circle") for e in examples])
    single = red_circle & np.array([e.scene.count == 1 for e in examples])
    assert single.sum() >= 2 and red_circle.sum() > single.sum()
    # "a red circle": every single red circle outranks every scene that is not a red circle.
    ranks = _rank_of(vectors @ shapes_encoder.encode_texts(["a red circle"])[0])
    assert ranks[single].max() < ranks[~red_circle].min()
    # "red circles": any number of them, all above everything else.
    ranks = _rank_of(vectors @ shapes_encoder.encode_texts(["red circles"])[0])
    assert ranks[red_circle].max() < ranks[~red_circle].min()


def test_classifier_names_colour_and_shape_of_held_out_scenes(shapes_encoder, held_out):
    examples, vectors = held_out
    for attribute, (names, prompts) in shape_attribute_prompts().items():
        class_vectors = ensemble_prompt_embeddings(shapes_encoder, prompts)
        predicted = np.argmax(vectors @ class_vectors.T, axis=1)
        truth = [names.index(str(getattr(e.scene, attribute))) for e in examples]
        assert np.mean(predicted == truth) >= 0.95, attribute


def test_held_out_colour_shape_pairs_are_composed_zero_shot(shapes_encoder):
    examples = [scenes.generate(EVAL_SEED + 9, i, held_out="only") for i in range(60)]
    vectors = shapes_encoder.encode_images([e.image for e in examples])
    colors, color_prompts = shape_attribute_prompts()["color"]
    predicted = np.argmax(vectors @ ensemble_prompt_embeddings(shapes_encoder, color_prompts).T, axis=1)
    assert np.mean([colors[p] == e.scene.color for p, e in zip(predicted, examples)]) >= 0.95


def test_plain_renderings_drawn_another_way_are_recognised(shapes_encoder):
    plain = plain_renderings()
    vectors = shapes_encoder.encode_images([p[0] for p in plain])
    for attribute, column in (("color", 1), ("shape", 2)):
        names, prompts = shape_attribute_prompts()[attribute]
        predicted = np.argmax(vectors @ ensemble_prompt_embeddings(shapes_encoder, prompts).T, axis=1)
        assert np.mean([names[p] == item[column] for p, item in zip(predicted, plain)]) >= 0.9, attribute


def test_label_api_with_plain_labels(shapes_encoder):
    image = scenes.render(scenes.Scene("blue", "square", 1, "large", "plain", "center"), __import__("random").Random(0))
    classifier = ZeroShotClassifier.build(shapes_encoder, ["red circle", "blue square", "yellow star"])
    [[best]] = predict(classifier.probabilities(shapes_encoder.encode_images([image])), classifier.labels)
    assert best.label == "blue square" and best.probability > 0.5
