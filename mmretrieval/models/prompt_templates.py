"""Prompt templates for zero-shot labels: a built-in set (one plain prompt, the CLIP paper's ImageNet ensemble, or
the label alone), a file of templates, or one template given inline; each has one ``{}`` for the label.

:class:`~mmretrieval.models.zeroshot.ZeroShotClassifier` averages a label's embeddings over its templates.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

from ..errors import QueryError

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
        return check_templates((name_or_path,), "the template")
    if path.is_dir():
        raise QueryError(f"templates {name_or_path!r} name a folder; give a file of one {{}} template per line")
    if not path.is_file():
        looks_like_a_file = os.sep in name_or_path or path.suffix != ""  # templates.txt, prompts/x
        raise QueryError(f"{'no template file' if looks_like_a_file else 'unknown template set'} {name_or_path!r}: "
                         f"use {', '.join(TEMPLATE_SETS)}, a file path, or one template with a {{}} for the label")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise QueryError(f"cannot read templates from {path}: {exc}") from exc
    return check_templates(tuple(line for line in lines if line and not line.startswith("#")), str(path))


def check_templates(templates: tuple[str, ...], source: str) -> tuple[str, ...]:
    """``templates`` as they are, if there is one at least and each has exactly one ``{}``.

    Raises:
        QueryError: no templates, or a bad one; the message names ``source`` and the first bad ones.
    """
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
