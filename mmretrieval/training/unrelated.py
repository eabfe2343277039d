"""Text that describes no scene: drawn each step as extra wrong answers for every image of a batch.

Scenes' captions are all the text a demo model sees, so text it cannot place (a neutral prompt, an off-topic
sentence, gibberish) lands wherever training left it, and after a fine-tune that was close to every image:
"something" then outscored "a red circle" on a red circle, which broke CLIP-style multi-label scoring (each
label against the neutral prompt, :mod:`..models.zeroshot`). Training with these texts as negatives keeps
them below the captions that fit, and :func:`.losses.null_anchor_loss` puts the neutral prompt between the
captions that fit and the ones that do not.

None of these is one of the match hint's unrelated prompts (:data:`..collection.confidence.NOISE_PROMPTS`), so
the hint's band is not measured on training text.
"""

from __future__ import annotations

import random

from ..models.zeroshot import NULL_LABEL

NEUTRAL = (NULL_LABEL, "a thing", "an image", "a picture", "a photo", "a drawing", "stuff", "whatever")
OFF_TOPIC = (
    "a spreadsheet of monthly expenses", "the minutes of a board meeting", "a poem about the sea",
    "how to bake sourdough bread", "the plot of a detective novel", "a press release about quarterly earnings",
    "the lyrics of a folk song", "a train timetable for Sunday", "notes from a chemistry lab",
    "a complaint about slow internet", "the biography of a composer", "a user manual for a dishwasher",
    "an argument about football", "a warranty claim form", "the election results in a village",
    "a description of a mountain hike", "a letter to an old friend", "a tutorial on knitting socks",
    "the side effects of a medicine", "a customs declaration", "the opening hours of a library",
    "a review of an italian restaurant", "a speech at a wedding", "the chorus of a children's rhyme",
    "a password reset email", "a philosophy essay on free will", "the inventory of a hardware store",
    "a forecast of snow in the mountains", "a shopping list with eggs and milk", "an apology for being late",
)
_SYLLABLES = ("ka", "zo", "rb", "ly", "qu", "ax", "fn", "or", "dr", "ix", "pl", "um", "sk", "ee", "vo", "th",
              "gr", "on", "mi", "zz", "ur", "bl", "ep", "wo")


def unrelated_texts(seed: int, step: int, count: int) -> list[str]:
    """``count`` texts for one training step: the neutral prompt first, then neutral words, off-topic sentences
    and gibberish, drawn from the seed and step (a run stays a pure function of both)."""
    rng = random.Random(f"{seed}:{step}:unrelated")
    texts = [NULL_LABEL]
    while len(texts) < count:
        kind = rng.random()
        if kind < 0.2:
            texts.append(rng.choice(NEUTRAL[1:]))
        elif kind < 0.6:
            texts.append(rng.choice(OFF_TOPIC))
        else:
            words = rng.randint(1, 3)
            gibberish = ("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(words))
            texts.append(" ".join(gibberish))
    return texts
