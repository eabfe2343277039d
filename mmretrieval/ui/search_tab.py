"""The Search tab: the query panel, the paged results with one image's details, and the endpoints scripts call with
a catalog id (``/similar``, ``/image_info``, ``/original``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

from .context import AppContext
from .media import guard_upload
from .page_style import FILE_OUT_CLASS, scroll_into_view_on_phones
from .search_handlers import SearchHandlers
from .search_inputs import DEFAULT_K, MAX_K
from .widgets import label_choices, original_download, preview_uploads, text_output


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
    oldest: gr.Checkbox
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
        with gr.Row(equal_height=True):
            gr.Markdown("With the query box empty, filters alone list their images: a label's, most probable "
                        "first; a folder's, a date range's or a camera's, newest first.", elem_id="filters-alone")
            oldest = gr.Checkbox(False, label="Oldest first (filters alone)", elem_id="oldest", scale=0,
                                 min_width=220)
    return _QueryPanel(query, button, image, negative, k, threshold, label, folder, after, before, camera, oldest,
                       examples)


def _result_panel() -> _ResultPanel:
    status = text_output(elem_id="search-status", label="Status", live=True)
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
                    zip_note = text_output(label="Download")
                zip_file = gr.File(label="Originals (zip)", interactive=False, height=60, elem_classes=[FILE_OUT_CLASS])
        with gr.Column(scale=1, min_width=260):
            preview = gr.Image(label="Selected result", interactive=False, height=280, elem_id="preview",
                               buttons=["fullscreen"])
            details = text_output("Click a result to see it here.", elem_id="details", label="Details", live=True)
            get_original, original = original_download("original")
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


def search_tab(ctx: AppContext, handlers: SearchHandlers) -> gr.Dropdown:
    """The Search tab; returns its label filter (refreshed after labelling)."""
    q, r = _query_panel(ctx), _result_panel()
    hit_ids = gr.State([])
    results = [r.gallery, r.hits_json, r.confidence, hit_ids, r.status]
    filters = [q.label, q.folder, q.after, q.before, q.camera]
    search_inputs = [q.query, q.image, q.negative, q.k, q.threshold, *filters, q.oldest]
    page = gr.State(None)  # the search the page buttons repeat (see SearchHandlers.turn_page)
    # "always_last": a query submitted while another runs is run after it (never dropped), so the results
    # always end up matching what the box says.
    gr.on([q.button.click, q.query.submit], handlers.search, search_inputs, results, api_name="search",
          trigger_mode="always_last", show_progress_on=[r.status]).success(
        _first_page("search"), search_inputs, page, queue=False, api_visibility="private").then(
        **_no_selection(r.gallery))
    # "More like this" takes the id the box holds: the one shown (a click puts it there) or one typed since.
    similar_inputs = [r.selected, q.k, q.threshold, *filters]
    r.more_button.click(handlers.similar, similar_inputs, results, api_name="similar_selected",
                        api_visibility="private", trigger_mode="always_last", show_progress_on=[r.status]).success(
        _first_page("similar"), similar_inputs, page, queue=False, api_visibility="private").then(
        **_no_selection(r.gallery))
    for button, forward in ((r.previous_page, False), (r.next_page, True)):
        button.click(handlers.turn_page, [page, gr.State(forward)], [*results, page], api_visibility="private",
                     trigger_mode="always_last", show_progress_on=[r.status]).success(**_no_selection(r.gallery))
    one_image = [r.preview, r.details, r.selected, r.original]
    r.gallery.select(handlers.select_result, [hit_ids], one_image, api_visibility="private",
                     show_progress_on=[r.details])
    # On a phone the preview is far below the gallery: bring it into sight at once (it fills in when it comes).
    r.gallery.select(None, js=scroll_into_view_on_phones("preview"), queue=False, api_visibility="private")
    gr.on([r.show_button.click, r.selected.submit], handlers.show_image, [r.selected], one_image,
          api_name="image_info_typed", api_visibility="private", show_progress_on=[r.details])  # named, so that /image_info stays the scripts'
    r.get_original.click(handlers.original, [r.selected], [r.original], api_name="original_shown",
                         api_visibility="private", show_progress_on=[r.original])  # named, as image_info_typed
    r.zip_button.click(handlers.originals_zip, [hit_ids], [r.zip_file, r.zip_note], api_visibility="private",
                       show_progress_on=[r.zip_note])
    _script_endpoints(handlers, [q.k, q.threshold, *filters], results)
    preview_uploads(q.image, handlers)
    for button in q.examples:
        # An example is a whole query: it also clears a query image and negatives hidden in the accordion.
        button.click(lambda text=button.value: (text, None, ""), None, [q.query, q.image, q.negative],
                     api_visibility="private", queue=False).then(
            handlers.search, search_inputs, results, api_visibility="private", trigger_mode="always_last",
            show_progress_on=[r.status]).success(
            _first_page("search"), search_inputs, page, queue=False, api_visibility="private").then(
            **_no_selection(r.gallery))
    return q.label


def _no_selection(gallery: gr.Gallery) -> dict[str, Any]:
    """An event step that clears the gallery's highlighted thumbnail: Gradio keeps the index highlighted when new
    results come, which then marks another image than the one whose details are shown."""
    return {"fn": lambda: gr.Gallery(selected_index=None), "inputs": None, "outputs": gallery, "queue": False,
            "api_visibility": "private", "show_progress": "hidden"}


def _first_page(kind: str) -> Callable[..., dict[str, Any]]:
    """An event step that keeps a search's inputs, so that the page buttons repeat that search (not whatever the
    boxes say by then)."""
    return lambda *args: {"kind": kind, "args": list(args), "offset": 0}


def _script_endpoints(handlers: SearchHandlers, options: list, results: list) -> None:
    """Endpoints for scripts that take a catalog id as a number: ``/similar``, ``/image_info`` and ``/original``
    (the page's own buttons read its Image id box, which is text)."""
    with gr.Row(visible=False):
        # precision=None: a number arrives as sent, so 1.5 is refused rather than rounded to image 2.
        image_id = gr.Number(value=None, label="Image id", precision=None)
        preview = gr.Image(label="Selected result")
        details = text_output(label="Details")
        shown_id = gr.Number(label="Image id", precision=0)
        original = gr.File(label="Original file")
        similar = gr.Button("Similar")
        info = gr.Button("Image info")
        fetch = gr.Button("Original")
    similar.click(handlers.similar, [image_id, *options], results, api_name="similar")
    info.click(handlers.image_info, [image_id], [preview, details, shown_id, original], api_name="image_info")
    fetch.click(handlers.original, [image_id], [original], api_name="original")
