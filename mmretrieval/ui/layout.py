"""The Blocks layout: six tabs, and which handler each event calls.

Every action has a named endpoint (``api_name``), so ``gradio_client.Client(url).predict(..., api_name="/search")``
does from a script what the button does in the browser. Purely cosmetic events are kept out of the API.

Each event shows its progress, and its error, on one status-like output (``show_progress_on``): by default
Gradio marks every output "Error" after a failure, blanking the gallery, map or chart the user was still
looking at, when the toast has already said what went wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

from ..models.settings import MULTI_LABEL_THRESHOLD
from ..models.prompt_templates import TEMPLATE_SETS
from .api import install_checks
from .collection_handlers import CollectionHandlers, SAMPLED_LABELS
from .context import AppContext
from .duplicate_handlers import GROUPS_SHOWN, MOST_ALIKE, ORDERS, DuplicateHandlers
from .map_handlers import SELECTION_SHOWN, MapHandlers
from .map_view import MAP_CSS, MAP_HTML, MAP_JS
from .media import guard_upload
from .names import markdown_text
from .projection import METHODS
from .search_handlers import DEFAULT_K, MAX_K, SearchHandlers

logger = logging.getLogger(__name__)

INTRO = """Search the images of this collection by describing them, by example image, or both.
Scores are cosine similarities between the query and each image (higher is closer)."""


def build_app(ctx: AppContext) -> gr.Blocks:
    """The whole UI over ``ctx``; nothing runs until the app is launched."""
    search = SearchHandlers(ctx)
    collection = CollectionHandlers(ctx)
    with gr.Blocks(title=ctx.title, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# {markdown_text(ctx.title)}\n{INTRO}")
        with gr.Tabs():
            with gr.Tab("Search", id="search"):
                search_label = _search_tab(ctx, search)
            with gr.Tab("Zero-shot", id="zero-shot"):
                _zero_shot_tab(search)
            with gr.Tab("Label collection", id="label"):
                labelled, removed = _label_tab(ctx, collection)
            with gr.Tab("Collection", id="collection"):
                _collection_tab(ctx, collection, app)
            with gr.Tab("Map", id="map"):
                map_label = _map_tab(ctx, MapHandlers(ctx), search)
            with gr.Tab("Duplicates", id="duplicates"):
                _duplicates_tab(DuplicateHandlers(ctx))
        # A labelling run adds labels (and sets) that the Search and Map filters offer at once; a removal takes
        # them away.
        # New pages and reloads ask too (the lists are drawn once, at start-up); a removed label is unselected.
        filters = [search_label, map_label]
        for changed in (labelled.success, removed.success, app.load):
            changed(lambda *chosen: _label_updates(ctx, chosen), filters, filters, api_visibility="private")
    return install_checks(app)


@dataclass(frozen=True)
class _QueryPanel:
    """The Search tab's inputs."""

    query: gr.Textbox
    button: gr.Button
    image: gr.Image
    negative: gr.Textbox
    k: gr.Slider
    threshold: gr.Slider
    label: gr.Dropdown
    folder: gr.Textbox
    after: gr.Textbox
    before: gr.Textbox
    camera: gr.Textbox
    examples: tuple[gr.Button, ...]


@dataclass(frozen=True)
class _ResultPanel:
    """The Search tab's outputs: gallery, downloads, the selected image's details, JSON for scripts."""

    status: gr.Markdown
    gallery: gr.Gallery
    previous_page: gr.Button
    next_page: gr.Button
    zip_button: gr.Button
    zip_note: gr.Markdown
    zip_file: gr.File
    preview: gr.Image
    details: gr.Markdown
    get_original: gr.Button
    original: gr.File
    selected: gr.Textbox
    show_button: gr.Button
    more_button: gr.Button
    hits_json: gr.JSON
    confidence: gr.JSON


def _query_panel(ctx: AppContext) -> _QueryPanel:
    examples: tuple[gr.Button, ...] = ()
    if ctx.example_queries:
        gr.Markdown("**Try one** (click to search):")
        with gr.Row():
            examples = tuple(gr.Button(text, size="sm", elem_classes=["example-query"]) for text in ctx.example_queries)
    with gr.Row(equal_height=True):
        query = gr.Textbox(label="Describe the images you want", placeholder="e.g. a red circle",
                           elem_id="query", scale=5, autofocus=True)
        button = gr.Button("Search", variant="primary", elem_id="search-button", scale=1)
    with gr.Accordion("Query image, negatives, k and threshold", open=False):
        with gr.Row():
            image = guard_upload(gr.Image(label="Query image (optional: search by example)", type="filepath",
                                          image_mode=None, sources=["upload", "clipboard"], height=180,
                                          elem_id="query-image"))
            with gr.Column():
                negative = gr.Textbox("", label="Not like (negative text, comma-separated)", placeholder="e.g. striped",
                                      elem_id="negative")
                # Minimum 0: an emptied box snaps to the minimum, and 0 asks for the default (1 would be taken).
                k = gr.Slider(0, MAX_K, value=DEFAULT_K, step=1,
                              label=f"Results per page (k, at most {MAX_K}; 0 or empty: {DEFAULT_K})",
                              elem_id="k")
                threshold = gr.Slider(-1, 1, value=-1, step=0.01, label="Score threshold (−1: off)")
        with gr.Row():
            label = gr.Dropdown(label_choices(ctx), value="", label="Only images with label (SET:LABEL or LABEL)",
                                allow_custom_value=True, elem_id="label-filter")
            folder = gr.Textbox("", label="Only images under folder (absolute path on the server)",
                                placeholder="e.g. /home/me/photos/2023", elem_id="folder-filter")
        with gr.Row():
            after = gr.Textbox("", label="Taken from (date)", placeholder="e.g. 2024 or 2024-06-01", elem_id="after")
            before = gr.Textbox("", label="Taken before (date)", placeholder="e.g. 2025", elem_id="before")
            camera = gr.Textbox("", label="Camera (make or model contains)", placeholder="e.g. iPhone",
                                elem_id="camera")
    return _QueryPanel(query, button, image, negative, k, threshold, label, folder, after, before, camera, examples)


def _text_output(value: str = "", **kwargs: Any) -> gr.Markdown:
    """A Markdown output that shows text from users and the file system (queries, labels, file names).

    The handlers escape that text (:func:`.names.markdown_text`); LaTeX is off because Gradio looks for
    ``$$…$$`` in the rendered text, where no escape can stop it.
    """
    return gr.Markdown(value, latex_delimiters=[], **kwargs)


def _result_panel() -> _ResultPanel:
    status = _text_output(elem_id="search-status", label="Status")
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Results", columns=4, height="auto", allow_preview=False, object_fit="contain",
                                 interactive=False, elem_id="results", buttons=["fullscreen"])
            with gr.Row():
                previous_page = gr.Button("◀ Previous page", size="sm", elem_id="previous-page")
                next_page = gr.Button("Next page ▶", size="sm", elem_id="next-page")
            with gr.Accordion("Download the original files of these results", open=False):
                with gr.Row(equal_height=True):
                    zip_button = gr.Button("Make a zip of the originals", size="sm", elem_id="download-originals")
                    zip_note = _text_output(label="Download")
                zip_file = gr.File(label="Originals (zip)", interactive=False, height=60)
        with gr.Column(scale=1, min_width=260):
            preview = gr.Image(label="Selected result", interactive=False, height=280, elem_id="preview",
                               buttons=["fullscreen"])
            details = _text_output("Click a result to see it here.", elem_id="details", label="Details")
            get_original, original = _original_download("original")
            with gr.Row(equal_height=True):
                # Text, not gr.Number: Gradio's number box shows (and sends) 0 until something is typed, and
                # rounds 1.5 to another image; the handlers read the text and refuse what is not an id.
                selected = gr.Textbox("", label="Image id", placeholder="e.g. 12", max_lines=1, elem_id="selected-id")
                show_button = gr.Button("Show", size="sm")
            more_button = gr.Button("More like this", elem_id="more-like-this")
    with gr.Accordion("Results as JSON (for scripts: the /search and /similar endpoints return this too)", open=False):
        hits_json = gr.JSON(label="Hits")
        confidence = gr.JSON(label="Confidence")
    return _ResultPanel(status, gallery, previous_page, next_page, zip_button, zip_note, zip_file, preview, details,
                        get_original, original, selected, show_button, more_button, hits_json, confidence)


def _search_tab(ctx: AppContext, handlers: SearchHandlers) -> gr.Dropdown:
    """The Search tab; returns its label filter (refreshed after labelling)."""
    q, r = _query_panel(ctx), _result_panel()
    hit_ids = gr.State([])
    results = [r.gallery, r.hits_json, r.confidence, hit_ids, r.status]
    filters = [q.label, q.folder, q.after, q.before, q.camera]
    search_inputs = [q.query, q.image, q.negative, q.k, q.threshold, *filters]
    page = gr.State(None)  # the search the page buttons repeat (see SearchHandlers.turn_page)
    # "always_last": a query submitted while another runs is run after it (never dropped), so the results
    # always end up matching what the box says.
    gr.on([q.button.click, q.query.submit], handlers.search, search_inputs, results, api_name="search",
          trigger_mode="always_last", show_progress_on=[r.status]).success(_first_page("search"), search_inputs, page, queue=False,
                                              api_visibility="private")
    # "More like this" takes the id the box holds: the one shown (a click puts it there) or one typed since.
    similar_inputs = [r.selected, q.k, q.threshold, *filters]
    r.more_button.click(handlers.similar, similar_inputs, results, api_name="similar_selected",
                        api_visibility="private", trigger_mode="always_last", show_progress_on=[r.status]).success(
        _first_page("similar"), similar_inputs, page, queue=False, api_visibility="private")
    for button, forward in ((r.previous_page, False), (r.next_page, True)):
        button.click(handlers.turn_page, [page, gr.State(forward)], [*results, page], api_visibility="private",
                     trigger_mode="always_last", show_progress_on=[r.status])
    one_image = [r.preview, r.details, r.selected, r.original]
    r.gallery.select(handlers.select_result, [hit_ids], one_image, api_visibility="private",
                     show_progress_on=[r.details])
    gr.on([r.show_button.click, r.selected.submit], handlers.show_image, [r.selected], one_image,
          api_name="image_info_typed", api_visibility="private", show_progress_on=[r.details])  # named, so that /image_info stays the scripts'
    r.get_original.click(handlers.original, [r.selected], [r.original], api_name="original_shown",
                         api_visibility="private", show_progress_on=[r.original])  # named, as image_info_typed
    r.zip_button.click(handlers.originals_zip, [hit_ids], [r.zip_file, r.zip_note], api_visibility="private",
                       show_progress_on=[r.zip_note])
    _script_endpoints(handlers, [q.k, q.threshold, *filters], results)
    _preview_uploads(q.image, handlers)
    for button in q.examples:
        # An example is a whole query: it also clears a query image and negatives hidden in the accordion.
        button.click(lambda text=button.value: (text, None, ""), None, [q.query, q.image, q.negative],
                     api_visibility="private", queue=False).then(
            handlers.search, search_inputs, results, api_visibility="private", trigger_mode="always_last",
            show_progress_on=[r.status]).success(
            _first_page("search"), search_inputs, page, queue=False, api_visibility="private")
    return q.label


def _preview_uploads(image: gr.Image, handlers: SearchHandlers) -> None:
    """Show an upload the browser cannot draw (HEIC, TIFF) as the JPEG copy the search will then use."""
    image.upload(handlers.show_upload, [image], [image], api_visibility="private", show_progress="minimal")


def _original_download(elem_id: str) -> tuple[gr.Button, gr.File]:
    """A button that places the shown image's original file for download, and the box it appears in.

    On demand, not on every click of a result: Gradio keeps a copy of each file it serves for an hour.
    """
    button = gr.Button("Get the original file", size="sm", elem_id=f"get-{elem_id}")
    return button, gr.File(label="Original file", interactive=False, elem_id=elem_id, height=60)


def _first_page(kind: str) -> Callable[..., dict[str, Any]]:
    """An event step that keeps a search's inputs, so that the page buttons repeat that search (not whatever the
    boxes say by then)."""
    return lambda *args: {"kind": kind, "args": list(args), "offset": 0}


def _details_of_clicked(search: SearchHandlers, image_id: int | None) -> tuple[Any, ...]:
    """The details panel for the point clicked on the map; nothing when no point was clicked yet (a lasso first
    selects a gallery, not an image: asking for details of none was an error)."""
    return (gr.skip(),) * 4 if image_id is None else search.show_image(image_id)


def _label_updates(ctx: AppContext, chosen: tuple[str | None, ...]) -> list[Any]:
    """The label filters' new choices, each keeping its value while the collection still has that label."""
    choices = label_choices(ctx)
    return [gr.update(choices=choices, value=value if value in choices else "") for value in chosen]


def label_choices(ctx: AppContext) -> list[str]:
    """The label filter's choices: "" (no filter), then every stored label (``SET:LABEL`` outside the default set)."""
    with ctx.lock:  # the labels alone (every page load asks): info() would also count rows and sync the index
        return [""] + list(ctx.collection.catalog.label_counts())


def _script_endpoints(handlers: SearchHandlers, options: list, results: list) -> None:
    """Endpoints for scripts that take a catalog id as a number: ``/similar``, ``/image_info`` and ``/original``
    (the page's own buttons read its Image id box, which is text)."""
    with gr.Row(visible=False):
        # precision=None: a number arrives as sent, so 1.5 is refused rather than rounded to image 2.
        image_id = gr.Number(value=None, label="Image id", precision=None)
        preview = gr.Image(label="Selected result")
        details = _text_output(label="Details")
        shown_id = gr.Number(label="Image id", precision=0)
        original = gr.File(label="Original file")
        similar = gr.Button("Similar")
        info = gr.Button("Image info")
        fetch = gr.Button("Original")
    similar.click(handlers.similar, [image_id, *options], results, api_name="similar")
    info.click(handlers.image_info, [image_id], [preview, details, shown_id, original], api_name="image_info")
    fetch.click(handlers.original, [image_id], [original], api_name="original")


def _zero_shot_tab(handlers: SearchHandlers) -> None:
    gr.Markdown("Upload any image and type candidate labels: the model scores each label against the image, "
                "with no training.")
    with gr.Row():
        with gr.Column():
            image = guard_upload(gr.Image(label="Image", type="filepath", image_mode=None,
                                          sources=["upload", "clipboard"], height=260))
            labels = gr.Textbox(label="Labels (one per line, commas kept; or comma-separated on one line)", lines=4,
                                value="circle, square, triangle, star, diamond, cross")
            with gr.Row():
                templates = gr.Dropdown(list(TEMPLATE_SETS), value="default", label="Prompt templates")
                multi_label = gr.Checkbox(label="Multi-label (independent probabilities)", value=False)
            classify = gr.Button("Classify", variant="primary")
        with gr.Column():
            chart = gr.HTML(label="Probabilities", elem_id="zero-shot-chart")
            summary = _text_output(label="Summary")
            with gr.Accordion("Every label's probability", open=False):
                table = gr.Dataframe(label="Probabilities", interactive=False)
    _preview_uploads(image, handlers)
    classify.click(handlers.zero_shot, [image, labels, templates, multi_label], [chart, table, summary],
                   api_name="zero_shot", show_progress_on=[summary])


def _label_tab(ctx: AppContext, handlers: CollectionHandlers) -> tuple[Any, Any]:
    """The Label tab; returns the labelling and removal events, for others to follow."""
    gr.Markdown("Label every image of the collection zero-shot from its stored vectors (no re-decoding). Each run "
                "is saved as a named label set; other sets are kept, and search can filter on any of them.")
    with gr.Row():
        with gr.Column():
            labels = gr.Textbox(label="Labels (one per line, commas kept; or comma-separated on one line)", lines=4,
                                value=", ".join(ctx.map_labels))
            with gr.Row():
                label_set = gr.Textbox("default", label="Label set name", elem_id="label-set")
                replace = gr.Checkbox(label="Replace the set if it exists", value=False, elem_id="replace-set")
            with gr.Row():
                templates = gr.Dropdown(list(TEMPLATE_SETS), value="default", label="Prompt templates")
                multi_label = gr.Checkbox(label="Multi-label", value=False)
                threshold = gr.Slider(0, 1, value=MULTI_LABEL_THRESHOLD, step=0.01, label="Multi-label threshold")
            run = gr.Button("Label the collection", variant="primary")
            with gr.Row(equal_height=True):
                to_remove = gr.Textbox("", label="Label set to remove", placeholder="its name, as typed above",
                                       scale=3, elem_id="set-to-remove")
                remove = gr.Button("Remove this set", variant="stop", scale=1)
            summary = _text_output(label="Summary")
            csv_file = gr.File(label="Labels as CSV", interactive=False)
        with gr.Column():
            chart = gr.HTML(label="Images per label", elem_id="label-count-chart")
            with gr.Accordion("Counts as a table", open=False):
                counts = gr.Dataframe(label="Images per label", interactive=False)
            samples = gr.Gallery(label=f"Samples per label (of the {SAMPLED_LABELS} most common labels)", columns=4,
                                 height="auto", allow_preview=True, interactive=False)
    labelled = run.click(handlers.label_collection, [labels, templates, multi_label, threshold, label_set, replace],
                         [chart, counts, samples, csv_file, summary], api_name="label_collection",
                         show_progress_on=[summary])
    removed = remove.click(handlers.remove_label_set, [to_remove], [chart, counts, samples, csv_file, summary],
                           api_name="remove_label_set", show_progress_on=[summary])
    return labelled, removed


def _collection_tab(ctx: AppContext, handlers: CollectionHandlers, app: gr.Blocks) -> None:
    info = _text_output(elem_id="collection-info", label="Collection")
    with gr.Row(equal_height=True):
        folder = gr.Textbox(label="Ingest another folder (a path on the server)", scale=4,
                            interactive=ctx.allow_ingest,
                            placeholder="/path/to/photos" if ctx.allow_ingest else "off: the app is reachable from other machines")
        ingest = gr.Button("Ingest", variant="primary", scale=1, interactive=ctx.allow_ingest)
    ingest_summary = _text_output(label="Ingest summary")
    failures = gr.Dataframe(label="Files that failed, with the reason", interactive=False, wrap=True)
    refresh = gr.Button("Refresh", size="sm")
    ingest.click(handlers.ingest, [folder], [ingest_summary, info, failures], api_name="ingest",
                 show_progress_on=[ingest_summary])
    refresh.click(handlers.collection_info, None, [info, failures], api_name="collection_info",
                  show_progress_on=[info])
    app.load(handlers.collection_info, None, [info, failures], api_visibility="private")


def _map_tab(ctx: AppContext, handlers: MapHandlers, search: SearchHandlers) -> gr.Dropdown:
    def map_thumbnail(image_id: object) -> dict[str, str]:  # a plain function: Gradio marks it as a server function
        return handlers.map_thumbnail(image_id)

    with gr.Row(equal_height=True):
        labels = gr.Textbox(label="Colour by labels (comma-separated; empty: the stored labels)", scale=3,
                            value=", ".join(ctx.map_labels), elem_id="map-labels")
        method = gr.Dropdown(list(METHODS), value="auto", label="Layout (auto: UMAP if installed; PCA is fastest)",
                             scale=1)
        draw = gr.Button("Draw the map", variant="primary", scale=1, elem_id="draw-map")
    with gr.Accordion("Filters: label, folder, date taken, camera", open=False):
        with gr.Row():
            label = gr.Dropdown(label_choices(ctx), value="", label="Only label", allow_custom_value=True)
            folder = gr.Textbox("", label="Only folder (absolute path)")
            after = gr.Textbox("", label="Taken from (date)", placeholder="e.g. 2024")
            before = gr.Textbox("", label="Taken before (date)", placeholder="e.g. 2025-01")
            camera = gr.Textbox("", label="Camera contains", placeholder="e.g. iPhone")
    note = _text_output(label="About this map", elem_id="map-note")
    with gr.Row():
        with gr.Column(scale=3):
            plot = gr.HTML("", label="Map", html_template=MAP_HTML, css_template=MAP_CSS, js_on_load=MAP_JS,
                           server_functions=[map_thumbnail], elem_id="map")
        with gr.Column(scale=1, min_width=260):
            preview = gr.Image(label="Clicked image", interactive=False, height=240, buttons=["fullscreen"])
            details = _text_output("Click a point for its details.", label="Details", elem_id="map-details")
            get_original, original = _original_download("map-original")
            more = gr.Button("More like this", elem_id="map-more-like-this")
    picked_note = _text_output(label="Selection", elem_id="map-selection-note")
    picked = gr.Gallery(label="Selected images", columns=8, height="auto", allow_preview=False, interactive=False,
                        elem_id="map-selection", buttons=["fullscreen"])
    shown_id, picked_ids = gr.State(None), gr.State([])
    draw.click(handlers.collection_map, [labels, method, label, folder, after, before, camera], [plot, note],
               api_name="map", trigger_mode="always_last", show_progress_on=[note])
    plot.select(handlers.map_select, None, [shown_id, picked, picked_note], api_visibility="private",
                show_progress_on=[picked_note]).success(
        lambda image_id: _details_of_clicked(search, image_id), [shown_id], [preview, details, shown_id, original],
        api_visibility="private", show_progress_on=[details])
    more.click(lambda image_id: _similar_on_map(search, image_id), [shown_id], [picked, picked_ids, picked_note],
               api_visibility="private", show_progress_on=[picked_note])
    picked.select(search.select_result, [picked_ids], [preview, details, shown_id, original],
                  api_visibility="private", show_progress_on=[details])
    get_original.click(search.original, [shown_id], [original], api_name="map_original", api_visibility="private",
                       show_progress_on=[original])
    return label


def _duplicates_tab(handlers: DuplicateHandlers) -> None:
    gr.Markdown("Near-duplicate groups (resized, recompressed, slightly cropped or converted copies), each beside "
                "its suggested keeper. Export the other copies as a list to review; nothing is deleted here.")
    with gr.Row(equal_height=True):
        threshold = gr.Slider(0, 1, value=0, step=0.005, label="Similarity threshold (0: the model's default)",
                              scale=3)
        find = gr.Button("Find duplicates", variant="primary", scale=1, elem_id="find-duplicates")
    summary = _text_output(label="Summary", elem_id="duplicates-summary")
    export = gr.File(label="Other copies (copies-to-review.txt) and every group (duplicates.csv)", interactive=False,
                     file_count="multiple", height=140)
    with gr.Row(equal_height=True):
        order = gr.Radio(list(ORDERS), value=MOST_ALIKE, label="Order (least alike: the loose groups to look at)",
                         scale=3, elem_id="duplicates-order")
        page = gr.Number(1, minimum=1, maximum=1, precision=0, step=1, label=f"Page ({GROUPS_SHOWN} groups each)",
                         scale=1, elem_id="duplicates-page")
    review = gr.HTML("", label="Groups", elem_id="duplicate-groups")
    groups = gr.State([])  # this session's last groups: pages and orders are drawn from them, not searched again
    find.click(handlers.duplicates, [threshold, order], [review, summary, export, groups],
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
