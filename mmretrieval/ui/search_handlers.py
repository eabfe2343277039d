"""Handlers of the Search and Zero-shot tabs. Plain values in, plain values out; errors as ``gr.Error``.

Each public method is also a named HTTP endpoint (see :mod:`.layout`), so scripts get the same actions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from ..models.zeroshot import parse_labels, predict
from .context import AppContext, user_errors
from .media import PREVIEW_PX, load_upload

if TYPE_CHECKING:
    from ..collection.collection import Hit

logger = logging.getLogger(__name__)

MAX_K = 200  # most results one search returns
MIN_PREVIEW_PX = 320  # smaller images are enlarged in the large view
GalleryItem = tuple[Any, str]  # (image, caption) as gr.Gallery takes them


def hit_caption(hit: "Hit") -> str:
    """What the gallery shows under a result: its score and file name."""
    return f"{hit.score:.3f} · {Path(hit.path).name}"


def hit_record(hit: "Hit") -> dict[str, Any]:
    """A hit as JSON for the API."""
    # "file", not "path": gradio_client takes any dict with a "path" key for a file to download.
    return {"id": hit.id, "file": hit.path, "score": round(float(hit.score), 6),
            "labels": list(hit.labels), "caption": hit.caption}


class SearchHandlers:
    """Search, find-similar, result details and zero-shot classification over one :class:`AppContext`."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    # -- search ---------------------------------------------------------------------------------------------
    @user_errors
    def search(
        self, text: str, image: str | None = None, negative: str = "", k: float = 24, threshold: float | None = None,
    ) -> tuple[list[GalleryItem], list[dict[str, Any]], list[int], str]:
        """Text and/or image query, minus negative text; returns gallery, hits as JSON, hit ids and a status line."""
        query_image = load_upload(image)
        text, negative = (text or "").strip(), (negative or "").strip()
        if not text and query_image is None:
            raise gr.Error("Type a query, or add a query image, then search.", print_exception=False)
        query = self._build_query(text, query_image, negative)
        with self.ctx.lock:
            hits = self.ctx.collection.search(query, k=_clamp_k(k), threshold=_threshold(threshold))
        what = " + ".join(part for part in (repr(text) if text else "", "image" if query_image else "") if part)
        return self._results(hits, f"{what}{f' − {negative!r}' if negative else ''}")

    @user_errors
    def similar(
        self, image_id: float | None, k: float = 24, threshold: float | None = None,
    ) -> tuple[list[GalleryItem], list[dict[str, Any]], list[int], str]:
        """Images most like collection image ``image_id`` (a catalog id, as search results carry)."""
        if image_id is None or image_id < 0:
            raise gr.Error("Pick a result first (click an image), then ask for more like it.", print_exception=False)
        with self.ctx.lock:
            hits = self.ctx.collection.similar(int(image_id), k=_clamp_k(k), threshold=_threshold(threshold))
        return self._results(hits, f"more like image {int(image_id)}")

    def _build_query(self, text: str, image: Image.Image | None, negative: str) -> Any:
        # Terms are built here rather than with search.parse_query, which treats a string naming an existing
        # file as an image to read: in the browser every string stays text, never a server path.
        from ..collection.query import Query, Term, split_weight

        positives = [Term(text=words, weight=weight) for weight, words in [split_weight(text)] if text]
        if image is not None:
            positives.append(Term(image=image))
        negatives = [Term(text=words, weight=weight)
                     for weight, words in (split_weight(part.strip()) for part in negative.split(",") if part.strip())]
        return Query(tuple(positives), tuple(negatives))

    def _results(self, hits: "list[Hit]", description: str) -> tuple[list[GalleryItem], list[dict[str, Any]], list[int], str]:
        gallery = [(self.ctx.thumbnails.get(self.ctx.image_path, hit.id), hit_caption(hit)) for hit in hits]
        if not hits:
            status = f"No results for {description}. Lower the score threshold or try other words."
        else:
            status = (f"{len(hits)} results for {description}; scores {hits[0].score:.3f} to {hits[-1].score:.3f}. "
                      "Click an image for details and “more like this”.")
        return gallery, [hit_record(hit) for hit in hits], [hit.id for hit in hits], status

    # -- one result ------------------------------------------------------------------------------------------
    @user_errors
    def image_info(self, image_id: float | None) -> tuple[Image.Image, str, int]:
        """Collection image ``image_id`` large, with its path, size, caption and labels."""
        if image_id is None or image_id < 0:
            raise gr.Error("No image selected.", print_exception=False)
        image_id = int(image_id)
        with self.ctx.lock:
            row = _catalog_row(self.ctx, image_id)
        preview = self.ctx.thumbnails.get(self.ctx.image_path, image_id, max_side=PREVIEW_PX)
        if max(preview.size) < MIN_PREVIEW_PX:  # small images (icons, the demo's scenes): enlarge, pixels kept sharp
            scale = MIN_PREVIEW_PX // max(preview.size) + 1
            preview = preview.resize((preview.width * scale, preview.height * scale), Image.Resampling.NEAREST)
        return preview, _describe(image_id, row), image_id

    @user_errors
    def select_result(self, hit_ids: list[int], event: gr.SelectData) -> tuple[Image.Image, str, int]:
        """The gallery item the user clicked, shown large (the click's index maps to a catalog id)."""
        index = event.index if isinstance(event.index, int) else None
        if index is None or not 0 <= index < len(hit_ids or []):
            raise gr.Error("That result is gone; search again.", print_exception=False)
        return self.image_info(hit_ids[index])

    # -- zero-shot -------------------------------------------------------------------------------------------
    @user_errors
    def zero_shot(
        self, image: str | None, labels: str, templates: str = "default", multi_label: bool = False,
    ) -> tuple[pd.DataFrame, str]:
        """Probabilities of each label for an uploaded image, as a table for the bar chart, and a summary."""
        picture = load_upload(image, what="image to classify")
        if picture is None:
            raise gr.Error("Upload an image to classify.", print_exception=False)
        classifier = self.ctx.classifiers.get(self.ctx.encoder, tuple(parse_labels(labels or "")), templates)
        vector = self.ctx.encoder.encode_images([picture])
        probabilities = classifier.probabilities(vector, multi_label=multi_label)[0]
        table = pd.DataFrame({"label": list(classifier.labels), "probability": probabilities.astype(float)})
        table = table.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)
        best = predict(probabilities[None, :], classifier.labels, multi_label=multi_label)[0]
        chosen = ", ".join(f"**{p.label}** ({p.probability:.2f})" for p in best) or "none above 0.5"
        mode = "independent probabilities (multi-label)" if multi_label or classifier.is_sigmoid else "softmax over the labels"
        return table, f"Prediction: {chosen}. Scores are {mode}."


@dataclass(frozen=True)
class ImageDetails:
    """What the details panel shows about one catalog image."""

    path: Path
    width: int | None  # pixels, as recorded at ingest
    height: int | None
    caption: str | None
    labels: tuple[tuple[str, float], ...]  # (label, probability), best first


def _catalog_row(ctx: AppContext, image_id: int) -> ImageDetails:
    """The catalog's row for ``image_id`` (path, size, caption) plus its labels; raises for unknown ids."""
    path = ctx.collection.image_path(image_id)  # the collection's own readable "no such image" error
    row = ctx.collection.catalog.rows([image_id]).get(image_id)
    labels = ctx.collection.label_of([image_id]).get(image_id, ())
    return ImageDetails(Path(path), getattr(row, "width", None), getattr(row, "height", None),
                        getattr(row, "caption", None), tuple(labels))


def _describe(image_id: int, row: ImageDetails) -> str:
    size = f"{row.width} × {row.height} px" if row.width else "size unknown"
    lines = [f"**{row.path.name}** (id {image_id})", f"- path: `{row.path}`", f"- size: {size}"]
    try:
        lines.append(f"- file: {row.path.stat().st_size / 1024:.1f} KiB")
    except OSError:
        lines.append("- file: missing on disk")
    if row.caption:
        lines.append(f"- caption: {row.caption}")
    labels = ", ".join(f"{name} ({probability:.2f})" for name, probability in row.labels)
    lines.append(f"- labels: {labels or 'none yet (see the Label collection tab)'}")
    return "\n".join(lines)


def _clamp_k(k: float | None) -> int:
    return int(np.clip(int(k or 10), 1, MAX_K))


def _threshold(threshold: float | None) -> float | None:
    return None if threshold is None or threshold <= -1 else float(threshold)
