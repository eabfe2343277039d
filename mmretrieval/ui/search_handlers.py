"""Handlers of the Search and Zero-shot tabs. Plain values in, plain values out; errors as ``gr.Error``.

Each public method is also a named HTTP endpoint (see :mod:`.layout`), so scripts get the same actions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from ..models.zeroshot import parse_labels, predict
from .context import AppContext, user_errors
from .charts import bar_chart
from .media import PREVIEW_PX, export_original, load_upload, zip_originals
from .names import display_path

if TYPE_CHECKING:
    from ..collection.collection import Hit

logger = logging.getLogger(__name__)

MAX_K = 200  # most results one search returns
MIN_PREVIEW_PX = 320  # smaller images are enlarged in the large view
GalleryItem = tuple[Any, str]  # (image, caption) as gr.Gallery takes them
# gallery, hits as JSON, confidence, hit ids (kept in the page), status line
SearchResults = tuple[list[GalleryItem], list[dict[str, Any]], dict[str, Any], list[int], str]


def hit_caption(hit: "Hit") -> str:
    """What the gallery shows under a result: its score and file name."""
    return f"{hit.score:.3f} · {display_path(Path(hit.path).name)}"


def hit_record(hit: "Hit") -> dict[str, Any]:
    """A hit as JSON for the API: ``file`` is for reading (as :func:`.names.display_path` shows it), ``id`` for
    fetching the file (``/original``)."""
    # "file", not "path": gradio_client takes any dict with a "path" key for a file to download.
    return {"id": hit.id, "file": display_path(hit.path), "score": round(float(hit.score), 6),
            "labels": list(hit.labels), "caption": hit.caption}


class SearchHandlers:
    """Search, find-similar, result details and zero-shot classification over one :class:`AppContext`."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    # -- search ---------------------------------------------------------------------------------------------
    @user_errors
    def search(
        self, text: str, image: str | None = None, negative: str | None = None, k: float = 24,
        threshold: float | None = None, label: str | None = None, folder: str | None = None,
        after: str | None = None, before: str | None = None, camera: str | None = None,
    ) -> SearchResults:
        """Text and/or image query, minus negative text, optionally only among images with ``label`` or under ``folder``.

        Returns the gallery, the hits as JSON, how far the best hit stands out from the query's scores against
        how far unrelated text's does (for text-only queries), the hit ids and a status line.
        """
        query_image = load_upload(image)
        text, negative = (text or "").strip(), (negative or "").strip()
        if not text and query_image is None:
            raise gr.Error("Type a query, or add a query image, then search.", print_exception=False)
        query = self._build_query(text, query_image, negative)
        filters, among = _filters(label, folder, after, before, camera)
        with self.ctx.lock:
            vector = self.ctx.collection.query_vector(query)
            hits = self.ctx.collection.search(vector, k=_clamp_k(k), threshold=_threshold(threshold), **filters)
        what = " + ".join(part for part in (repr(text) if text else "", "image" if query_image else "") if part)
        # The noise band describes the whole collection: a filtered search is not judged against it.
        confidence = self._confidence(hits, vector if query.is_single_text and not filters else None)
        return self._results(hits, f"{what}{f' − {negative!r}' if negative else ''}{among}", confidence)

    @user_errors
    def similar(
        self, image_id: float | None, k: float = 24, threshold: float | None = None, label: str | None = None,
        folder: str | None = None, after: str | None = None, before: str | None = None, camera: str | None = None,
    ) -> SearchResults:
        """Images most like collection image ``image_id`` (a catalog id, as search results carry), with the filters."""
        if image_id is None:
            raise gr.Error("No image is selected: click a search result (or type an image id and press Show), "
                           "then ask for more like it.", print_exception=False)
        if image_id != int(image_id) or image_id < 1:
            raise gr.Error(f"{image_id} is not an image id: ids are whole numbers from 1, as search results "
                           "and the details panel show them.", print_exception=False)
        filters, among = _filters(label, folder, after, before, camera)
        with self.ctx.lock:
            hits = self.ctx.collection.similar(int(image_id), k=_clamp_k(k), threshold=_threshold(threshold),
                                               **filters)
        return self._results(hits, f"more like image {int(image_id)}{among}", self._confidence(hits, None))

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

    def _confidence(self, hits: "list[Hit]", text_vector: np.ndarray | None) -> dict[str, Any]:
        """How the best hit stands out, against the collection's noise band; only a text-only query (its vector)
        is judged."""
        if text_vector is None:
            return {"level": "not calibrated", "top_score": hits[0].score if hits else None,
                    "message": "The weak-match hint is calibrated for unfiltered text-only queries "
                               "(no image, no negatives, no label or folder filter)."}
        with self.ctx.lock:
            return self.ctx.noise_calibration().assess(text_vector, hits[0].score if hits else None).to_dict()

    def _results(self, hits: "list[Hit]", description: str, confidence: dict[str, Any]) -> SearchResults:
        gallery = [(self.ctx.thumbnails.get(self.ctx.image_path, hit.id), hit_caption(hit)) for hit in hits]
        if not hits:
            status = f"No results for {description}. Lower the score threshold or try other words."
        else:
            status = (f"{len(hits)} results for {description}; scores {hits[0].score:.3f} to {hits[-1].score:.3f}. "
                      "Click an image for details and “more like this”.")
            if confidence.get("level") in ("weak", "fair", "clear"):
                mark = "⚠️ " if confidence["level"] == "weak" else ""
                status += f"\n\n{mark}{confidence['message']}"
        return gallery, [hit_record(hit) for hit in hits], confidence, [hit.id for hit in hits], status

    # -- one result ------------------------------------------------------------------------------------------
    @user_errors
    def image_info(self, image_id: float | None) -> tuple[Image.Image, str, int, str]:
        """Collection image ``image_id`` large, with its path, size, caption and labels, and its original file."""
        if image_id is None:
            raise gr.Error("No image selected: click a result, or type an image id.", print_exception=False)
        if image_id != int(image_id) or image_id < 1:
            raise gr.Error(f"{image_id} is not an image id: ids are whole numbers from 1.", print_exception=False)
        image_id = int(image_id)
        with self.ctx.lock:
            row = _catalog_row(self.ctx, image_id)
        preview = self.ctx.thumbnails.get(self.ctx.image_path, image_id, max_side=PREVIEW_PX)
        if max(preview.size) < MIN_PREVIEW_PX:  # small images (icons, the demo's scenes): enlarge, pixels kept sharp
            scale = MIN_PREVIEW_PX // max(preview.size) + 1
            preview = preview.resize((preview.width * scale, preview.height * scale), Image.Resampling.NEAREST)
        original = export_original(self.ctx.image_path, image_id, self.ctx.export_dir)
        return preview, _describe(image_id, row), image_id, str(original)

    @user_errors
    def select_result(self, hit_ids: list[int], event: gr.SelectData) -> tuple[Image.Image, str, int, str]:
        """The gallery item the user clicked, shown large (the click's index maps to a catalog id)."""
        index = event.index if isinstance(event.index, int) else None
        if index is None or not 0 <= index < len(hit_ids or []):
            raise gr.Error("That result is gone; search again.", print_exception=False)
        return self.image_info(hit_ids[index])

    @user_errors
    def original(self, image_id: float | None) -> str:
        """The original file of collection image ``image_id``, under its own name (by catalog id only)."""
        if image_id is None or image_id != int(image_id) or image_id < 1:
            raise gr.Error(f"{image_id} is not an image id: ids are whole numbers from 1.", print_exception=False)
        return str(export_original(self.ctx.image_path, int(image_id), self.ctx.export_dir))

    @user_errors
    def originals_zip(self, hit_ids: list[int]) -> tuple[str, str]:
        """A zip of the current results' original files under their own names, and a line saying what it holds."""
        if not hit_ids:
            raise gr.Error("There are no results to download yet; search first.", print_exception=False)
        archive, missing = zip_originals(self.ctx.image_path, list(hit_ids), self.ctx.export_dir)
        note = f"{len(hit_ids) - len(missing)} original files in {archive.name}"
        if missing:
            note += f"; {len(missing)} left out because their file is gone (ids {', '.join(map(str, missing[:10]))})"
        return str(archive), note

    # -- zero-shot -------------------------------------------------------------------------------------------
    @user_errors
    def zero_shot(
        self, image: str | None, labels: str, templates: str = "default", multi_label: bool = False,
    ) -> tuple[str, pd.DataFrame, str]:
        """Probabilities of each label for an uploaded image: a bar chart, the full table, and a summary."""
        picture = load_upload(image, what="image to classify")
        if picture is None:
            raise gr.Error("Upload an image to classify.", print_exception=False)
        names = tuple(parse_labels(labels or "")) if (labels or "").replace(",", "").strip() else ()
        if not names:
            raise gr.Error("Type at least one label (comma-separated or one per line).", print_exception=False)
        classifier = self.ctx.classifiers.get(self.ctx.encoder, names, templates)
        vector = self.ctx.encoder.encode_images([picture])
        probabilities = classifier.probabilities(vector, multi_label=multi_label)[0]
        table = pd.DataFrame({"label": list(classifier.labels), "probability": probabilities.astype(float)})
        table = table.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)
        best = predict(probabilities[None, :], classifier.labels, multi_label=multi_label)[0]
        chosen = ", ".join(f"**{p.label}** ({p.probability:.2f})" for p in best) or "none above 0.5"
        independent = multi_label or classifier.is_sigmoid
        mode = "independent probabilities (multi-label)" if independent else "softmax over the labels (they sum to 1)"
        summary = f"Prediction: {chosen}. Scores are {mode}."
        if len(names) == 1 and not independent:
            summary += (" With a single label, softmax always gives it 1.00, whatever the image: add other labels "
                        "to compare against, or tick multi-label for an independent probability.")
        chart = bar_chart(list(table["label"]), list(table["probability"]), title="Probability per label",
                          scale_max=1.0, elem_id="zero-shot-bars")
        return chart, table, summary


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
    lines = [f"**{display_path(row.path.name)}** (id {image_id})", f"- path: `{display_path(row.path)}`",
             f"- size: {size}",  # the row keeps the true path, for stat below
             f"- id {image_id}: the catalog's number, counted from 1 in ingest order (not the file name's number)"]
    try:
        lines.append(f"- file: {row.path.stat().st_size / 1024:.1f} KiB")
    except OSError:
        lines.append("- file: missing on disk")
    if row.caption:
        lines.append(f"- caption: {row.caption}")
    labels = ", ".join(f"{name} ({probability:.2f})" for name, probability in row.labels)
    lines.append(f"- labels: {labels or 'none yet (see the Label collection tab)'}")
    return "\n".join(lines)


def _filters(label: str | None, folder: str | None, after: str | None = None, before: str | None = None,
             camera: str | None = None) -> tuple[dict[str, str], str]:
    """Search keyword arguments for the label, folder, date and camera filters, and words for the status line.

    Dates are checked by the collection (``2024``, ``2024-06``, ``2024-06-01`` or an ISO datetime).

    Raises:
        gr.Error: a folder that is not an absolute path.
    """
    filters, words = {}, []
    if (label or "").strip():
        filters["label"] = label.strip()
        words.append(f"labelled {label.strip()!r}")
    if (folder or "").strip():
        prefix = folder.strip()
        if not os.path.isabs(prefix):
            raise gr.Error(f"The folder filter {prefix!r} is not an absolute path; type a folder as the details "
                           "panel shows paths, e.g. /home/me/photos.", print_exception=False)
        filters["path_prefix"] = prefix.rstrip(os.sep) + os.sep
        words.append(f"under {prefix}")
    for key, value, word in (("after", after, "taken from"), ("before", before, "taken before"),
                             ("camera", camera, "from a camera matching")):
        if (value or "").strip():
            filters[key] = value.strip()
            words.append(f"{word} {value.strip()!r}")
    return filters, (" among images " + " and ".join(words)) if words else ""


def _clamp_k(k: float | None) -> int:
    return int(np.clip(int(k or 10), 1, MAX_K))


def _threshold(threshold: float | None) -> float | None:
    return None if threshold is None or threshold <= -1 else float(threshold)
