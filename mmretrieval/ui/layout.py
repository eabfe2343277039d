"""The Blocks layout: six tabs, and which handler each event calls.

Every action has a named endpoint (``api_name``), so ``gradio_client.Client(url).predict(..., api_name="/search")``
does from a script what the button does in the browser. Purely cosmetic events are kept out of the API.

Each event shows its progress, and its error, on one status-like output (``show_progress_on``): by default
Gradio marks every output "Error" after a failure, blanking the gallery, map or chart the user was still
looking at, when the toast has already said what went wrong.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from ..models.settings import MULTI_LABEL_THRESHOLD
from ..models.prompt_templates import TEMPLATE_SETS
from .api import install_checks
from .collection_handlers import CollectionHandlers, SAMPLED_LABELS
from .context import AppContext
from .duplicate_handlers import GROUPS_SHOWN, MOST_ALIKE, ORDERS, DuplicateHandlers
from .label_input import label_inputs
from .map_handlers import SELECTION_SHOWN, MapHandlers
from .map_view import MAP_CSS, MAP_HTML, MAP_JS
from .page_style import FILE_OUT_CLASS, scroll_into_view_on_phones
from .media import guard_upload
from .names import markdown_text
from .projection import METHODS
from .search_handlers import SearchHandlers
from .search_tab import search_tab
from .widgets import label_choices, set_choices, original_download, preview_uploads, text_output

logger = logging.getLogger(__name__)

INTRO = """Search the images of this collection by describing them, by example image, or both.
Scores are cosine similarities between the query and each image (higher is closer)."""


def build_app(ctx: AppContext) -> gr.Blocks:
    """The whole UI over ``ctx``; nothing runs until the app is launched."""
    search = SearchHandlers(ctx)
    collection = CollectionHandlers(ctx)
    with gr.Blocks(title=ctx.title, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# {markdown_text(ctx.title)}\n{INTRO}")
        with gr.Tabs(overflow_behavior="wrap"):  # on a phone, a second row: a menu hid four of the six behind "..."
            with gr.Tab("Search", id="search"):
                search_label = search_tab(ctx, search)
            with gr.Tab("Zero-shot", id="zero-shot"):
                _zero_shot_tab(search)
            with gr.Tab("Label collection", id="label"):
                labelled, removed = _label_tab(ctx, collection)
            with gr.Tab("Collection", id="collection"):
                _collection_tab(ctx, collection, app)
            with gr.Tab("Map", id="map"):
                map_label, map_set = _map_tab(ctx, MapHandlers(ctx), search)
            with gr.Tab("Duplicates", id="duplicates"):
                _duplicates_tab(DuplicateHandlers(ctx))
        # A labelling run adds labels (and sets) that the Search and Map filters offer at once; a removal takes
        # them away.
        # New pages and reloads ask too (the lists are drawn once, at start-up); a removed label is unselected.
        filters = [search_label, map_label]
        for changed in (labelled.success, removed.success, app.load):
            changed(lambda *chosen: _label_updates(ctx, chosen), filters, filters, api_visibility="private")
            changed(lambda chosen: _set_update(ctx, chosen), [map_set], [map_set], api_visibility="private")
    return install_checks(app)


def _details_of_clicked(search: SearchHandlers, image_id: int | None) -> tuple[Any, ...]:
    """The details panel for the point clicked on the map; nothing when no point was clicked yet (a lasso first
    selects a gallery, not an image: asking for details of none was an error)."""
    return (gr.skip(),) * 4 if image_id is None else search.show_image(image_id)


def _set_update(ctx: AppContext, chosen: str | None) -> Any:
    """The map's label set choice, keeping its value while the collection still has that set."""
    choices = set_choices(ctx)
    return gr.update(choices=choices, value=chosen if chosen in choices[1:] else "")


def _label_updates(ctx: AppContext, chosen: tuple[str | None, ...]) -> list[Any]:
    """The label filters' new choices, each keeping its value while the collection still has that label."""
    choices = label_choices(ctx)
    labels = choices[1:]  # after ANY_LABEL, whose value is ""
    return [gr.update(choices=choices, value=value if value in labels else "") for value in chosen]


def _zero_shot_tab(handlers: SearchHandlers) -> None:
    gr.Markdown("Upload any image and type candidate labels: the model scores each label against the image, "
                "with no training.")
    with gr.Row():
        with gr.Column():
            image = guard_upload(gr.Image(label="Image", type="filepath", image_mode=None,
                                          sources=["upload", "clipboard"], height=260))
            labels = label_inputs("\n".join(("circle", "square", "triangle", "star", "diamond", "cross")),
                                  elem_id="zero-shot-labels")
            with gr.Row():
                templates = gr.Dropdown(list(TEMPLATE_SETS), value="default", label="Prompt templates")
                multi_label = gr.Checkbox(label="Multi-label (independent probabilities)", value=False)
            classify = gr.Button("Classify", variant="primary")
        with gr.Column():
            chart = gr.HTML(label="Probabilities", elem_id="zero-shot-chart")
            summary = text_output(label="Summary", live=True)
            with gr.Accordion("Every label's probability", open=False):
                table = gr.Dataframe(label="Probabilities", interactive=False)
    preview_uploads(image, handlers)
    classify.click(handlers.zero_shot, [image, labels.typed, templates, multi_label, labels.file], [chart, table, summary],
                   api_name="zero_shot", show_progress_on=[summary])


def _label_tab(ctx: AppContext, handlers: CollectionHandlers) -> tuple[Any, Any]:
    """The Label tab; returns the labelling and removal events, for others to follow."""
    gr.Markdown("Label every image of the collection zero-shot from its stored vectors (no re-decoding). Each run "
                "is saved as a named label set; other sets are kept, and search can filter on any of them.")
    with gr.Row():
        with gr.Column():
            labels = label_inputs("\n".join(ctx.map_labels), elem_id="collection-labels")
            with gr.Row():
                label_set = gr.Textbox("default", label="Label set name", elem_id="label-set")
                replace = gr.Checkbox(label="Replace the set if it exists", value=False, elem_id="replace-set")
            with gr.Row():
                templates = gr.Dropdown(list(TEMPLATE_SETS), value="default", label="Prompt templates")
                multi_label = gr.Checkbox(label="Multi-label", value=False)
                threshold = gr.Slider(0, 1, value=MULTI_LABEL_THRESHOLD, step=0.01, label="Multi-label threshold")
            run = gr.Button("Label the collection" if ctx.allow_labelling else
                            "Labelling is off: the app is reachable from other machines without a login",
                            variant="primary", interactive=ctx.allow_labelling)
            with gr.Row(equal_height=True):
                to_remove = gr.Textbox("", label="Label set to remove", placeholder="its name, as typed above",
                                       scale=3, elem_id="set-to-remove", interactive=ctx.allow_labelling)
                remove = gr.Button("Remove this set", variant="stop", scale=1, interactive=ctx.allow_labelling)
            summary = text_output(label="Summary", live=True)
            csv_file = gr.File(label="Labels as CSV", interactive=False, elem_classes=[FILE_OUT_CLASS])
        with gr.Column():
            chart = gr.HTML(label="Images per label", elem_id="label-count-chart")
            with gr.Accordion("Counts as a table", open=False):
                counts = gr.Dataframe(label="Images per label", interactive=False)
            samples = gr.Gallery(label=f"Samples per label (of the {SAMPLED_LABELS} most common labels)", columns=4,
                                 height="auto", allow_preview=True, interactive=False, elem_id="label-samples")
    labelled = run.click(handlers.label_collection,
                         [labels.typed, templates, multi_label, threshold, label_set, replace, labels.file],
                         [chart, counts, samples, csv_file, summary], api_name="label_collection",
                         show_progress_on=[summary])
    removed = remove.click(handlers.remove_label_set, [to_remove], [chart, counts, samples, csv_file, summary],
                           api_name="remove_label_set", show_progress_on=[summary])
    return labelled, removed


def _collection_tab(ctx: AppContext, handlers: CollectionHandlers, app: gr.Blocks) -> None:
    info = text_output(elem_id="collection-info", label="Collection")
    with gr.Row(equal_height=True):
        folder = gr.Textbox(label="Ingest another folder (a path on the server)", scale=4,
                            interactive=ctx.allow_ingest,
                            placeholder="/path/to/photos" if ctx.allow_ingest else "off: the app is reachable from other machines")
        ingest = gr.Button("Ingest", variant="primary", scale=1, interactive=ctx.allow_ingest)
    ingest_summary = text_output(label="Ingest summary", live=True)
    failures = gr.Dataframe(label="Files that failed, with the reason", interactive=False, wrap=True)
    refresh = gr.Button("Refresh", size="sm")
    ingest.click(handlers.ingest, [folder], [ingest_summary, info, failures], api_name="ingest",
                 show_progress_on=[ingest_summary])
    refresh.click(handlers.collection_info, None, [info, failures], api_name="collection_info",
                  show_progress_on=[info])
    app.load(handlers.collection_info, None, [info, failures], api_visibility="private")


def _map_tab(ctx: AppContext, handlers: MapHandlers, search: SearchHandlers) -> tuple[gr.Dropdown, gr.Dropdown]:
    """The Map tab; returns its label filter and its label set choice, which follow the stored sets."""
    def map_thumbnail(image_id: object) -> dict[str, str]:  # a plain function: Gradio marks it as a server function
        return handlers.map_thumbnail(image_id)

    with gr.Row(equal_height=True):
        labels = gr.Textbox(label="Colour by labels (comma-separated; empty: the stored labels)", scale=3,
                            value=", ".join(ctx.map_labels), elem_id="map-labels")
        # custom values allowed: the sets change as the collection is labelled (the handler checks the name)
        label_set = gr.Dropdown(set_choices(ctx), value="", label="Else the stored labels of", scale=1,
                                allow_custom_value=True, elem_id="map-label-set")
        method = gr.Dropdown(list(METHODS), value="auto", label="Layout (auto: UMAP if installed; PCA is fastest)",
                             scale=1)
        draw = gr.Button("Draw the map", variant="primary", scale=1, elem_id="draw-map")
    label, folder, after, before, camera = _map_filters(ctx)
    # Said before the first drawing: the map was a blank rectangle with no hint of what would fill it.
    note = text_output("Press **Draw the map** to lay the collection's images out by likeness: alike images land "
                       "close together. The first drawing takes a while; later ones reuse it.", label="About this map",
                       elem_id="map-note", live=True)
    with gr.Row():
        with gr.Column(scale=3):
            plot = gr.HTML("", label="Map", html_template=MAP_HTML, css_template=MAP_CSS, js_on_load=MAP_JS,
                           server_functions=[map_thumbnail], elem_id="map")
        with gr.Column(scale=1, min_width=260):
            preview = gr.Image(label="Clicked image", interactive=False, height=240, buttons=["fullscreen"],
                               elem_id="map-preview")
            details = text_output("Click a point for its details.", label="Details", elem_id="map-details",
                                  live=True)
            get_original, original = original_download("map-original")
            more = gr.Button("More like this", elem_id="map-more-like-this")
    picked_note = text_output(label="Selection", elem_id="map-selection-note", live=True)
    picked = gr.Gallery(label="Selected images", columns=8, height="auto", allow_preview=False, interactive=False,
                        elem_id="map-selection", buttons=["fullscreen"])
    shown_id, picked_ids = gr.State(None), gr.State([])
    draw.click(handlers.collection_map, [labels, method, label, folder, after, before, camera, label_set],
               [plot, note],
               api_name="map", trigger_mode="always_last", show_progress_on=[note, plot])
    plot.select(handlers.map_select, None, [shown_id, picked, picked_note], api_visibility="private",
                show_progress_on=[picked_note]).success(
        lambda image_id: _details_of_clicked(search, image_id), [shown_id], [preview, details, shown_id, original],
        api_visibility="private", show_progress_on=[details])
    more.click(lambda image_id: _similar_on_map(search, image_id), [shown_id], [picked, picked_ids, picked_note],
               api_visibility="private", show_progress_on=[picked_note])
    picked.select(search.select_result, [picked_ids], [preview, details, shown_id, original],
                  api_visibility="private", show_progress_on=[details])
    picked.select(None, js=scroll_into_view_on_phones("map-preview"), queue=False, api_visibility="private")
    get_original.click(search.original, [shown_id], [original], api_name="map_original", api_visibility="private",
                       show_progress_on=[original])
    return label, label_set


def _map_filters(ctx: AppContext) -> tuple[gr.Dropdown, gr.Textbox, gr.Textbox, gr.Textbox, gr.Textbox]:
    """The Map tab's filters, folded away: label, folder, taken from, taken before, camera."""
    with gr.Accordion("Filters: label, folder, date taken, camera", open=False):
        with gr.Row():
            label = gr.Dropdown(label_choices(ctx), value="", label="Only label", allow_custom_value=True)
            folder = gr.Textbox("", label="Only folder (absolute path)")
            after = gr.Textbox("", label="Taken from (date)", placeholder="e.g. 2024")
            before = gr.Textbox("", label="Taken before (date)", placeholder="e.g. 2025-01")
            camera = gr.Textbox("", label="Camera contains", placeholder="e.g. iPhone")
    return label, folder, after, before, camera


def _duplicates_tab(handlers: DuplicateHandlers) -> None:
    gr.Markdown("Near-duplicate groups (resized, recompressed, slightly cropped or converted copies), each beside "
                "its suggested keeper. Export the other copies as a list to review; nothing is deleted here.")
    with gr.Row(equal_height=True):
        threshold = gr.Slider(0, 1, value=0, step=0.005, label="Similarity threshold (0: the model's default)",
                              scale=3)
        prefer = gr.Textbox("", label="Keep the copies under these folders (optional; on the server, one a line, "
                            "the first line first)", placeholder="e.g. /home/me/photos/library", lines=2,
                            max_lines=6, scale=3, elem_id="duplicates-prefer")
        find = gr.Button("Find duplicates", variant="primary", scale=1, elem_id="find-duplicates")
    summary = text_output(label="Summary", elem_id="duplicates-summary", live=True)
    export = gr.File(label="Other copies (copies-to-review.txt) and every group (duplicates.csv)", interactive=False,
                     file_count="multiple", height=140, elem_classes=[FILE_OUT_CLASS])
    with gr.Row(equal_height=True):
        order = gr.Radio(list(ORDERS), value=MOST_ALIKE, label="Order (least alike: the loose groups to look at)",
                         scale=3, elem_id="duplicates-order")
        page = gr.Number(1, minimum=1, maximum=1, precision=0, step=1, label=f"Page ({GROUPS_SHOWN} groups each)",
                         scale=1, elem_id="duplicates-page")
    review = gr.HTML("", label="Groups", elem_id="duplicate-groups")
    groups = gr.State([])  # this session's last groups: pages and orders are drawn from them, not searched again
    # The last run's export goes first: a run that fails (a folder mistyped) must not leave a list made with
    # another preference on offer, to be downloaded and deleted from.
    find.click(lambda: None, None, export, queue=False, api_visibility="private", show_progress="hidden")
    find.click(handlers.duplicates, [threshold, order, prefer], [review, summary, export, groups],
               api_name="duplicates", show_progress_on=[summary]).success(
        handlers.first_page, [groups], [page], queue=False, api_visibility="private")

    def from_its_first_page(shown: list, chosen_order: str) -> tuple:
        """Another order starts at its own first page (the page number meant a place in the other order)."""
        return handlers.page(shown, chosen_order, 1), 1

    order.change(from_its_first_page, [groups, order], [review, page], api_visibility="private",
                 trigger_mode="always_last", show_progress_on=[summary])
    page.change(handlers.page, [groups, order, page], [review], api_visibility="private",
                trigger_mode="always_last", show_progress_on=[summary])


def _similar_on_map(search: SearchHandlers, image_id: int | None) -> tuple[list, list[int], str]:
    gallery, _, _, ids, status = search.similar(image_id, SELECTION_SHOWN)
    return gallery, ids, status
