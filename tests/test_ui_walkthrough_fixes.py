"""What a walkthrough of the web UI in a real browser found, each pinned by a test through the handlers.

User text and file names shown as text (never as Markdown/HTML), a long query's echo and what the model
reads of it, the empty-result hint, the Image id box, relative ingest paths, map colours, counts and k,
and error toasts. Markdown is checked by rendering it with markdown-it (CommonMark, as Gradio's renderer
follows it); the real browser's rendering is test_browser.py's job.
"""

from __future__ import annotations

import html
import itertools
import random
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest
from markdown_it import MarkdownIt
from PIL import Image

from mmretrieval.training import scenes
from ui_support import SCENE_COUNT, write_scene_folder

# File names a walkthrough saw rendered as markup, links and headings in the details panel.
ODD_NAMES = ("<b>bold <img src=x onerror=alert(1)>.png", "*star* _under_ `tick`.png",
             "[click](javascript:alert(1)).png", "# heading $$x^2$$ ~~s~~ | t.png")
HOSTILE_QUERY = "<script>x</script> **bold** `code` ![x](http://e/x.png)"
IMAGES = SCENE_COUNT + len(ODD_NAMES)  # embedded images in the test collection (the broken file is not one)
TINY_READABLE_TOKENS = 14  # the tiny test model's context (16) less its start and end markers

# CommonMark plus GitHub's tables and strikethrough. (GitHub's autolinks need linkify-it, not installed here.)
MARKDOWN = MarkdownIt("commonmark").enable(["table", "strikethrough"])


def _html(markdown: str) -> str:
    return MARKDOWN.render(markdown)


def _as_text(text: str) -> str:
    """``text`` as markdown-it writes plain text into HTML."""
    return html.escape(text, quote=False).replace('"', "&quot;")


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory, tiny_model_dir):
    """Generated scenes, a broken file, and scenes saved under names full of Markdown and HTML."""
    from mmretrieval.collection.collection import Collection

    root = tmp_path_factory.mktemp("walkthrough")
    write_scene_folder(root / "images")
    for index, name in enumerate(ODD_NAMES):
        scenes.generate(5, index, held_out="include", size=64).image.save(root / "images" / name, format="PNG")
    with Collection.open(root / "collection", model=str(tiny_model_dir), create=True, device="cpu") as collection:
        collection.ingest([root / "images"], workers=0)
    return root


@pytest.fixture(scope="module")
def context(collection_dir, tiny_encoder):
    from mmretrieval.collection.collection import Collection
    from mmretrieval.ui.context import AppContext

    collection = Collection.open(collection_dir / "collection", model=tiny_encoder, device="cpu")
    yield AppContext(collection=collection, encoder=tiny_encoder, title="walkthrough")
    collection.close()


def _id_of(context, name: str, collection_dir: Path) -> int:
    image_id = context.collection.catalog.id_of_path(collection_dir / "images" / name)
    assert image_id is not None, name
    return image_id


# -- 1. user text and file names are text -----------------------------------------------------------------------
@pytest.mark.parametrize("text", [*ODD_NAMES, HOSTILE_QUERY, "a & b &lt; c", "back\\slash \\* x", "1. one",
                                  "- item", "+ item", "> quote", "=== x", "a\n===", "scene-001.png", "{x} (y) !z", "line\nbreak"])
def test_markdown_text_renders_as_the_text_itself(text):
    from mmretrieval.ui.names import markdown_text

    children = MARKDOWN.parseInline(markdown_text(text))[0].children
    assert [token.type for token in children] == ["text"], children  # no tag, emphasis, code, link or image
    assert children[0].content == text.replace("\n", "↵")
    assert _html(markdown_text(text)) == f"<p>{_as_text(text.replace(chr(10), '↵'))}</p>\n"  # nor a block


def test_markdown_text_keeps_plain_names_as_they_are_and_breaks_autolinks():
    from mmretrieval.ui.names import markdown_text

    assert markdown_text("scene-001.png") == "scene-001.png"  # "-" and "." mean nothing mid-line
    assert markdown_text("caf\udce9-latin1.png") == "caf\ufffd-latin1.png"  # undecodable bytes as U+FFFD
    assert markdown_text("see http://e/x.png and www.e.com") == "see http\\://e/x.png and www\\.e.com"


@pytest.mark.parametrize("text", ["plain", "`tick`", "a``b", "```", "<b>x</b> **y**", " padded ", "`x ", "   "])
def test_markdown_code_shows_any_text_verbatim_in_one_code_span(text):
    from mmretrieval.ui.names import markdown_code

    children = MARKDOWN.parseInline(markdown_code(text))[0].children
    assert [token.type for token in children] == ["code_inline"] and children[0].content == text


def test_search_status_shows_a_hostile_query_as_text(search):
    *_, status = search.search(HOSTILE_QUERY, None, "", 3, -1)
    rendered = _html(status)
    for markup in ("<img", "<script", "<strong>", "<code>", "<a "):
        assert markup not in rendered, (markup, rendered)
    assert _as_text(repr(HOSTILE_QUERY)) in rendered


def test_status_shows_filter_values_as_text(search):
    *_, status = search.search("a shape", None, "", 3, -1, "", "", "", "", "**Canon** <img src=http://e/x.png>")
    rendered = _html(status)
    assert "<img" not in rendered and "<strong>" not in rendered and "Canon" in rendered


@pytest.mark.parametrize("name", ODD_NAMES)
def test_details_panel_shows_odd_file_names_as_text(search, context, collection_dir, name):
    from mmretrieval.ui.names import markdown_text

    image_id = _id_of(context, name, collection_dir)
    _, details, _, _ = search.image_info(image_id)
    # markdown-it refuses javascript: links itself; Gradio's renderer made one, so the source must be escaped.
    assert details.startswith(f"**{markdown_text(name)}** (id {image_id})")
    rendered = _html(details)
    assert f"<strong>{_as_text(name)}</strong>" in rendered  # the name, bold, as itself
    assert f"<code>{_as_text(str(collection_dir / 'images' / name))}</code>" in rendered  # the path, verbatim
    for markup in ("<img", "<b>", "<a ", "<em>", "<h1>", "<s>", "<table"):
        assert markup not in rendered, (markup, rendered)


def test_label_and_collection_summaries_show_label_names_as_text(manage, search, collection_dir):
    from mmretrieval.ui.collection_handlers import describe_ingest
    from mmretrieval.ingest.batches import IngestSummary

    *_, summary = manage.label_collection("**circle**, <i>square</i>", "default", False, 0.5, "<b>set</b>", True,
                                          progress=lambda *a, **k: None)
    assert "<b>" not in _html(summary) and "<strong>" + _as_text("<b>set</b>") + "</strong>" in _html(summary)
    info, _ = manage.collection_info()
    assert "<b>" not in _html(info) and _as_text("<b>set</b>") + " (2 labels)" in _html(info)
    ingest = describe_ingest(IngestSummary(embedded=1), Path("/photos/`x` <b>y</b>"), failed_here=0)
    assert "<code>" + _as_text("/photos/`x` <b>y</b>") + "</code>" in _html(ingest)
    image = str(collection_dir / "images" / "scene-000.png")
    *_, prediction = search.zero_shot(image, "**circle**, <img src=x>", "default", False)
    assert "<img" not in _html(prediction) and "<strong><strong>" not in _html(prediction)


def test_error_toasts_show_what_was_typed_as_text_and_stay(search, manage):
    with pytest.raises(gr.Error) as caught:
        search.search("a shape", None, "", 3, -1, "", "<img src=http://e/x.png>")  # a relative folder
    assert "&lt;img src=http://e/x.png&gt;" in caught.value.message and "<img" not in caught.value.message
    assert caught.value.duration is None  # the toast stays until closed
    with pytest.raises(gr.Error) as caught:
        manage.ingest("/no/such/<b>folder</b>", progress=lambda *a, **k: None)
    assert "&lt;b&gt;folder&lt;/b&gt; is not a folder" in caught.value.message


# -- 2. a long query ---------------------------------------------------------------------------------------------
def test_a_long_query_is_echoed_short_and_the_status_says_what_the_model_reads(search):
    long_query = "a red circle on a striped background " * 700  # about 26 KB
    *_, status = search.search(long_query, None, "", 3, -1)
    assert len(status) < 1500 and "…" in status
    assert f"only the first {TINY_READABLE_TOKENS} tokens" in status
    *_, short_status = search.search("a red circle", None, "", 3, -1)
    assert "only the first" not in short_status and "…" not in short_status
    *_, negated = search.search("a red circle", None, "a blue square on a striped background " * 3, 3, -1)
    assert f"only the first {TINY_READABLE_TOKENS} tokens" in negated  # negatives are texts the model reads too


def test_without_a_counting_tokenizer_a_query_past_sixty_words_is_flagged(context):
    from mmretrieval.ui.search_handlers import LONG_QUERY_WORDS, SearchHandlers

    class NoCountEncoder:  # a Hugging Face tokenizer: no open_clip encode() to count tokens with
        tokenizer = object()

    handlers = SearchHandlers(replace(context, encoder=NoCountEncoder()))
    *_, status = handlers.search(" ".join(["word"] * (LONG_QUERY_WORDS + 1)), None, "", 3, -1)
    assert f"more than {LONG_QUERY_WORDS} words" in status
    *_, status = handlers.search(" ".join(["word"] * LONG_QUERY_WORDS), None, "", 3, -1)
    assert f"more than {LONG_QUERY_WORDS} words" not in status


# -- 3. the empty-result hint ------------------------------------------------------------------------------------
def test_no_results_hint_names_what_narrowed_the_search(search, collection_dir):
    elsewhere = str(collection_dir / "elsewhere")
    *_, status = search.search("a shape", None, "", 5, -1, "", elsewhere)
    assert status.startswith("No results") and "folder filter" in status and "threshold" not in status
    assert f"There is no folder {elsewhere}/ on the server now." in status  # a typo, said as Duplicates says it
    (collection_dir / "elsewhere").mkdir()
    *_, status = search.search("a shape", None, "", 5, -1, "", elsewhere)
    assert "folder filter" in status and "There is no folder" not in status  # there, holding nothing ingested
    *_, status = search.search("a shape", None, "", 5, 0.99)
    assert "lower the score threshold (now 0.99" in status.lower() and "filter" not in status
    *_, status = search.search("a shape", None, "", 5, 0.99, "", elsewhere, "", "", "Canon")
    assert "folder and camera filters" in status and "threshold" in status
    *_, status = search.similar(1, 5, -1, "", "", "", "2000")  # nothing was taken before 2000
    assert "date filter" in status and "threshold" not in status


# -- 4. the Image id box -----------------------------------------------------------------------------------------
def test_image_id_box_text_is_read_and_non_whole_ids_are_refused(search):
    _, _, shown, _ = search.image_info(" 5 ")
    assert shown == 5
    with pytest.raises(gr.Error, match="No image selected"):
        search.image_info("")
    for typed in ("1.5", 1.5):
        with pytest.raises(gr.Error, match="1.5 is not an image id"):
            search.image_info(typed)
    with pytest.raises(gr.Error, match="'abc' is not an image id"):
        search.image_info("abc")
    with pytest.raises(gr.Error, match="No image is selected: click a search result"):
        search.similar("", 5, -1)
    with pytest.raises(gr.Error, match="image with id 99999"):
        search.similar("99999", 5, -1)  # what the box holds, not the image shown before
    _, _, _, ids, status = search.similar("7", 3, -1)
    assert "more like image 7" in status and 7 not in ids


def test_image_id_box_starts_empty_and_more_like_this_reads_it(context):
    from mmretrieval.ui.layout import build_app

    app = build_app(context)
    box = next(block for block in app.blocks.values() if getattr(block, "elem_id", None) == "selected-id")
    assert isinstance(box, gr.Textbox) and box.value == ""  # gr.Number would show (and send) 0
    more = next(fn for fn in app.fns.values() if fn.api_name == "similar_selected")
    assert more.inputs[0] is box
    script_ids = [fn.inputs[0] for fn in app.fns.values() if fn.api_name in ("similar", "image_info", "original")]
    assert len(script_ids) == 3 and all(isinstance(c, gr.Number) and c.precision is None for c in script_ids)


# -- 5. ingest takes absolute paths only ---------------------------------------------------------------------------
def test_ingest_refuses_a_relative_folder(manage, tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)  # "photos" exists relative to the server's working directory
    with pytest.raises(gr.Error, match="'photos' is not an absolute path"):
        manage.ingest("photos", progress=lambda *a, **k: None)
    with pytest.raises(gr.Error, match="is not a folder"):  # "~" is expanded, so this one is absolute
        manage.ingest("~/no-such-folder-here", progress=lambda *a, **k: None)


# -- 6. map colours ----------------------------------------------------------------------------------------------
def test_the_palette_keeps_clear_of_colour_words_and_of_itself():
    from mmretrieval.ui.map_view import (COLOUR_WORDS, MIN_COLOUR_DISTANCE, PALETTE, UNLABELLED_COLOUR,
                                         colour_distance)

    for colour in PALETTE:
        for word, named in [*COLOUR_WORDS.items(), ("(unlabelled)", UNLABELLED_COLOUR)]:
            assert colour_distance(colour, named) >= MIN_COLOUR_DISTANCE, (colour, word)
    for first, second in itertools.combinations(PALETTE, 2):
        assert colour_distance(first, second) >= MIN_COLOUR_DISTANCE, (first, second)
    assert colour_distance("#f28e2b", COLOUR_WORDS["orange"]) < MIN_COLOUR_DISTANCE  # the old palette's orange


def test_no_two_labels_on_one_map_share_a_colour_up_to_the_palette_size():
    from mmretrieval.ui.map_view import COLOUR_WORDS, MIN_COLOUR_DISTANCE, PALETTE, colour_distance, colours_for

    unlabelled = "(no labels)"
    colours = colours_for(["triangle", "colours:orange"], unlabelled)
    assert colour_distance(colours["triangle"], colours["colours:orange"]) >= MIN_COLOUR_DISTANCE
    named = [*COLOUR_WORDS, "light blue", "colours:red", "SET:grey", "dark green"]
    others = [f"shape {i}" for i in range(len(PALETTE))]
    rng = random.Random(0)
    for _ in range(300):
        size = rng.randint(2, len(PALETTE))
        labels = rng.sample(named + others, size) + ([unlabelled] if rng.random() < 0.5 else [])
        colours = colours_for(labels, unlabelled)
        for first, second in itertools.combinations(colours, 2):
            assert colour_distance(colours[first], colours[second]) >= MIN_COLOUR_DISTANCE, (first, second, labels)
    assert colours_for(["red", "blue"], unlabelled) == {"red": COLOUR_WORDS["red"], "blue": COLOUR_WORDS["blue"]}


# -- 7. counts and k ---------------------------------------------------------------------------------------------
def test_counts_are_singular_for_one(search, context):
    import json

    from mmretrieval.ui.map_handlers import MapHandlers

    *_, status = search.search("a shape", None, "", 1, -1)
    assert status.startswith("1 result for ")
    *_, status = search.similar(3, 1, -1)
    assert status.startswith("1 result for ")
    maps = MapHandlers(context)
    ids = json.loads(maps.collection_map("", "pca")[0])["points"]["ids"]
    _, _, note = maps.map_select(type("Select", (), {"index": ids[:1]})())
    assert note.startswith("1 image selected")


def test_k_past_the_maximum_is_capped_and_said_and_an_empty_k_is_the_default(search, context):
    from mmretrieval.ui.layout import build_app
    from mmretrieval.ui.search_inputs import DEFAULT_K, MAX_K

    _, hits, _, _, status = search.search("a shape", None, "", 500, -1)
    assert len(hits) == IMAGES and f"k = 500 is more than one search returns: showing the best {MAX_K}" in status
    *_, status = search.search("a shape", None, "", MAX_K, -1)
    assert "more than one search returns" not in status
    for empty in (None, 0):  # the API's null; the page's slider snaps an emptied box to its minimum, 0
        _, hits, _, _, _ = search.search("a shape", None, "", empty, -1)
        assert len(hits) == DEFAULT_K
        _, hits, _, _, _ = search.similar(2, empty, -1)
        assert len(hits) == DEFAULT_K
    slider = next(b for b in build_app(context).blocks.values() if isinstance(b, gr.Slider) and b.maximum == MAX_K)
    assert slider.minimum == 0 and slider.value == DEFAULT_K
    for fraction in (1.5, 2.5):  # rounded down, these gave 1 and 2 results without a word
        with pytest.raises(gr.Error, match=f"k = {fraction:g}: the number of results is a whole number"):
            search.search("a shape", None, "", fraction, -1)
    assert len(search.search("a shape", None, "", 3.0, -1)[1]) == 3


# -- 8. error toasts ---------------------------------------------------------------------------------------------
def test_user_errors_make_every_error_a_toast_that_stays_and_escape_it_once():
    from mmretrieval.errors import MMRError
    from mmretrieval.ui.context import user_errors

    @user_errors
    def inner(error: Exception) -> None:
        raise error

    @user_errors
    def outer(error: Exception) -> None:  # a decorated handler calling another (select_result → image_info)
        inner(error)

    for error, shown in ((gr.Error("a < b & c"), "a &lt; b &amp; c"), (MMRError("no label '<i>x</i>'"),
                                                                       "no label '&lt;i&gt;x&lt;/i&gt;'"),
                         (RuntimeError("boom"), "Something went wrong in inner (RuntimeError)")):
        with pytest.raises(gr.Error) as caught:
            outer(error)
        assert caught.value.message.startswith(shown) and caught.value.duration is None
        assert not caught.value.print_exception


def test_api_argument_errors_are_escaped_toasts_too():
    from mmretrieval.ui.api import Parameter, check_arguments

    with pytest.raises(gr.Error) as caught:
        check_arguments("/search", [Parameter("k", "number", 24)], ["<b>many</b>"])
    assert caught.value.message == "/search: k must be a number, got '&lt;b&gt;many&lt;/b&gt;' (str)"
    assert caught.value.duration is None


def test_upload_errors_before_the_handler_are_toasts_that_stay(tmp_path):
    from types import SimpleNamespace

    from mmretrieval.ui.media import guard_upload

    class Upload:  # stands in for gr.Image, whose own decoding refuses the file before any handler runs
        GRADIO_CACHE = str(tmp_path)  # Gradio's upload folder

        def preprocess(self, payload):
            raise Image.UnidentifiedImageError("cannot identify image file")

    with pytest.raises(gr.Error) as caught:
        guard_upload(Upload()).preprocess(SimpleNamespace(path=str(tmp_path / "upload.png")))
    assert "not a usable image" in caught.value.message and caught.value.duration is None


def test_details_panel_shows_when_where_and_with_what_a_photo_was_taken(tmp_path, tiny_encoder):
    from mmretrieval.collection.collection import Collection
    from mmretrieval.ui.context import AppContext
    from mmretrieval.ui.search_handlers import SearchHandlers

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS R5 <b>"  # Make, Model (a model name is text, not markup)
    exif.get_ifd(0x8769)[0x9003] = "2023:07:14 18:05:09"  # DateTimeOriginal
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(tmp_path / "photos" / "dated.jpg", exif=exif)
    Image.new("RGB", (64, 48), (40, 40, 200)).save(tmp_path / "photos" / "plain.png")
    with Collection.open(tmp_path / "col", model=tiny_encoder, create=True, device="cpu") as collection:
        collection.ingest([tmp_path / "photos"], workers=0)
        search = SearchHandlers(AppContext(collection=collection, encoder=tiny_encoder, title="t"))
        _, dated, _, _ = search.image_info(collection.catalog.id_of_path(tmp_path / "photos" / "dated.jpg"))
        _, plain, _, _ = search.image_info(collection.catalog.id_of_path(tmp_path / "photos" / "plain.png"))
    assert "- taken: 2023-07-14 18:05:09\n" in dated and "- camera: Canon EOS R5 \\<b\\>" in dated
    assert "modification time" in plain and "camera" not in plain  # no EXIF: dated by mtime, and it says so


@pytest.mark.parametrize("code, shown", [(11, "The collection's catalog is damaged"), (779, "catalog is damaged"),
                                         (1, "Something went wrong in read rows (DatabaseError)")])
def test_a_damaged_catalog_is_named_in_the_browser_with_the_way_out(code, shown):
    """It was "Something went wrong (DatabaseError)" whatever SQLite said (ops walkthrough: a page of the catalog
    overwritten); SQLITE_CORRUPT and its extended codes (779: SQLITE_CORRUPT_INDEX) now point at `mmr check`."""
    import re
    import sqlite3

    from mmretrieval.ui.context import user_errors
    from mmretrieval.ui.toast import ToastError

    @user_errors
    def read_rows():
        error = sqlite3.DatabaseError("database disk image is malformed")
        error.sqlite_errorcode = code
        raise error

    with pytest.raises(ToastError, match=re.escape(shown)) as caught:
        read_rows()
    assert ("`mmr check` on the server names the damage" in str(caught.value)) == (code != 1)


def test_an_icon_upload_holding_too_many_pixels_is_refused_before_gradio_opens_it(tmp_path):
    """Gradio opens every upload with Pillow, whose ICO opener decodes the embedded image whole: the 50-megapixel
    upload limit came after 716 MB were decoded (a security walkthrough)."""
    from types import SimpleNamespace

    from mmretrieval.ui.media import guard_upload
    from crafted_images import icon_holding

    opened = []

    class Upload:
        GRADIO_CACHE = str(tmp_path)

        def preprocess(self, payload):
            opened.append(payload.path)

    upload = tmp_path / "upload.ico"
    upload.write_bytes(icon_holding(Image.new("1", (8000, 7000))))
    with pytest.raises(gr.Error, match="more than 50 megapixels"):
        guard_upload(Upload()).preprocess(SimpleNamespace(path=str(upload)))
    assert opened == []
    upload.write_bytes(icon_holding(Image.new("RGB", (32, 32))))
    guard_upload(Upload()).preprocess(SimpleNamespace(path=str(upload)))
    assert opened == [str(upload)]


def test_an_original_swapped_for_a_link_or_a_non_image_is_not_served(tmp_path):
    """"Get the original file" and the results zip opened the catalog's path at request time and followed links:
    a photo swapped for a symbolic link after the ingest served whatever it named (a security walkthrough got a
    text file from outside the collection)."""
    import zipfile

    from mmretrieval.errors import MMRError
    from mmretrieval.ui.media import RecordedFile, export_original, zip_originals

    photos, secret = tmp_path / "photos", tmp_path / "secret.txt"
    photos.mkdir()
    secret.write_text("TOP SECRET\n")
    paths = {1: photos / "kept.png", 2: photos / "linked.png", 3: photos / "replaced.png"}
    for path in paths.values():
        Image.new("RGB", (8, 8), (0, 90, 200)).save(path)
    paths[2].unlink()
    paths[2].symlink_to(secret)
    paths[3].write_text("not an image any more")
    files = {image_id: RecordedFile(path) for image_id, path in paths.items()}.get  # sizes and times not known
    exported = export_original(files, 1, tmp_path / "out")
    assert exported.read_bytes() == paths[1].read_bytes() and exported.name == "kept.png"
    for image_id, why in ((2, "symbolic link"), (3, "not an image file")):
        with pytest.raises(MMRError, match=why):
            export_original(files, image_id, tmp_path / "out")
    archive, missing = zip_originals(files, [1, 2, 3], tmp_path / "out")
    with zipfile.ZipFile(archive) as opened:
        assert opened.namelist() == ["kept.png"] and opened.read("kept.png") == paths[1].read_bytes()
    assert missing == [2, 3]
    assert not any(b"TOP SECRET" in path.read_bytes() for path in (tmp_path / "out").rglob("*") if path.is_file())


def test_a_preview_of_a_photo_swapped_for_a_link_is_a_grey_tile_and_old_photos_go_in_the_zip(tmp_path):
    """The originals refused a link but the previews and thumbnails still followed it: the 640-pixel preview
    showed whatever image the link named (a review). And a photo with a time before 1980 (zip cannot store it)
    was left out of the zip as if gone; past 2107 the zip failed."""
    import os
    import zipfile

    from mmretrieval.ui.media import RecordedFile, render_collection_image, zip_originals

    (tmp_path / "photos").mkdir()
    private, swapped = tmp_path / "private.png", tmp_path / "photos" / "a.png"
    Image.new("RGB", (64, 48), (255, 0, 0)).save(private)
    swapped.symlink_to(private)
    tile = render_collection_image({1: swapped}.get, 1, 32)
    assert tile.getpixel((0, 0)) != (255, 0, 0)  # the placeholder, not the linked image
    old, future = tmp_path / "photos" / "old.png", tmp_path / "photos" / "future.png"
    for path, mtime in ((old, 0), (future, 2 ** 32 + 10)):
        Image.new("RGB", (8, 8)).save(path)
        os.utime(path, (mtime, mtime))
    archive, missing = zip_originals({1: RecordedFile(old), 2: RecordedFile(future)}.get, [1, 2], tmp_path / "out")
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == ["future.png", "old.png"] and missing == []
        assert opened.getinfo("old.png").date_time == (1980, 1, 1, 0, 0, 0)


def test_an_original_under_a_folder_swapped_for_a_link_is_not_served(tmp_path):
    """O_NOFOLLOW guards only the last component: a photo folder swapped for a link served a same-named private
    photo from the link's target (a review). The opened file must have the size and time the ingest recorded."""
    import os
    import shutil

    from mmretrieval.errors import MMRError
    from mmretrieval.ui.media import RecordedFile, export_original, zip_originals

    (tmp_path / "photos").mkdir()
    (tmp_path / "private").mkdir()
    photo, private = tmp_path / "photos" / "IMG_0001.JPG", tmp_path / "private" / "IMG_0001.JPG"
    Image.new("RGB", (8, 8), (0, 0, 255)).save(photo, "JPEG")
    Image.new("RGB", (9, 9), (255, 0, 0)).save(private, "JPEG")
    ingested = os.stat(photo)
    files = {1: RecordedFile(photo, ingested.st_size, ingested.st_mtime_ns)}.get
    assert export_original(files, 1, tmp_path / "out").read_bytes() == photo.read_bytes()
    shutil.rmtree(tmp_path / "photos")
    (tmp_path / "photos").symlink_to(tmp_path / "private")
    with pytest.raises(MMRError, match="not the file ingested"):
        export_original(files, 1, tmp_path / "out")
    assert zip_originals(files, [1], tmp_path / "out")[1] == [1]
