"""One real browser: ``python app.py`` in a subprocess, driven by headless Chromium through Playwright.

Uses the system's ``/usr/bin/chromium`` (``.ci/run`` installs it); Playwright's own browser download is
not needed. This test must run in CI, so a missing browser is a failure, not a skip.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from ui_support import SCENE_COUNT, build_test_collection, free_port

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"  # git-ignored; CI can keep the screenshots
START_TIMEOUT_S = 180
CAPTION = re.compile(r"^-?\d\.\d{3} · scene-\d{3}\.png$")
DUPLICATE_PAIRS = 45  # pictures with a near-duplicate copy each: more groups than the Duplicates tab shows a page
GROUP_TITLE = re.compile(r"^Group (\d+) · lowest similarity (\d\.\d{3})$")


def _wait_until_up(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app.py exited with status {process.returncode}:\n{process.stderr.read()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"app.py did not answer on {url} within {timeout_s} s")


@contextmanager
def _serving(collection: Path, model: str, *options: str) -> Iterator[str]:
    """``python app.py --collection DIR --model SPEC --port P [options]`` running; yields its URL."""
    port = free_port()
    command = [sys.executable, str(REPO / "app.py"), "--collection", str(collection), "--model", model,
               "--device", "cpu", "--port", str(port), *options]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url, process, START_TIMEOUT_S)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_model_dir):
    """``python app.py`` over the generated scenes with the tiny model, two example queries; yields its URL."""
    collection = build_test_collection(tmp_path_factory.mktemp("browser-collection"), str(tiny_model_dir))
    with _serving(collection, str(tiny_model_dir), "--example", "a red circle",
                  "--example", "a yellow star on a striped background") as url:
        yield url


@pytest.fixture(scope="module")
def duplicates_app(tmp_path_factory, shapes_encoder):
    """``python app.py`` over DUPLICATE_PAIRS pictures, each beside a re-encoded JPEG copy, with builtin:shapes
    (whose default threshold is measured); yields its URL and the groups ``Collection.duplicates`` finds there."""
    from mmretrieval.collection.collection import Collection
    from mmretrieval.training.copies import distinct_originals
    from mmretrieval.ui.duplicate_handlers import GROUPS_SHOWN

    root = tmp_path_factory.mktemp("browser-duplicates")
    (root / "images").mkdir()
    for number, picture in enumerate(distinct_originals(DUPLICATE_PAIRS, seed=11, size=96)):
        picture.save(root / "images" / f"photo-{number:03d}.png")
        picture.save(root / "images" / f"photo-{number:03d}-copy.jpg", quality=85)
    with Collection.open(root / "collection", model=shapes_encoder, create=True) as collection:
        collection.ingest([root / "images"], workers=1)
        groups = collection.duplicates()  # at the default threshold, as the tab's 0 asks
        # what the tests below need: more groups than a page shows, and none at all at threshold 1
        assert len(groups) > GROUPS_SHOWN and collection.duplicates(1.0) == [], len(groups)
    with _serving(root / "collection", "builtin:shapes") as url:
        yield url, groups



def _open_app(browser, app_url: str, height: int = 1000):
    """A new page showing the app, its query box ready."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.goto(app_url)
    page.locator("#query").wait_for(timeout=60_000)
    return page


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    (tmp_path / name).write_bytes(path.read_bytes())
    return path


def test_typed_query_shows_scored_images_and_details(app_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app_url)
    page.locator("#query").wait_for(timeout=60_000)
    assert page.get_by_role("button", name="a red circle").is_visible()  # the first screen's examples

    box = page.locator("#query textarea, #query input").first
    box.fill("three blue squares")
    box.press("Enter")
    captions = page.locator("#results .caption-label")
    captions.first.wait_for(timeout=60_000)
    texts = captions.all_inner_texts()
    assert len(texts) == 24, texts
    assert all(CAPTION.match(text) for text in texts), texts
    scores = [float(text.split(" · ")[0]) for text in texts]
    assert scores == sorted(scores, reverse=True)
    images = page.locator("#results img")
    images.first.wait_for()
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
    assert "results for 'three blue squares'" in page.locator("#search-status").inner_text()

    _click_until(page.locator("#results .thumbnail-item").nth(2),
                 page.locator("#details").get_by_text(re.compile(r"scene-\d{3}\.png")).first)
    details = page.locator("#details").inner_text()
    assert "64 × 64 px" in details and texts[2].split(" · ")[1] in details
    name = texts[2].split(" · ")[1]
    assert name not in _file_box_text(page, "original")  # placed for download on demand, not on each click
    page.locator("#get-original").click()
    _wait_for_file_named(page, "original", name)
    _screenshot(page, tmp_path, "search.png")

    page.get_by_role("button", name="More like this").click()
    page.locator("#search-status").get_by_text("more like image").wait_for(timeout=30_000)
    assert errors == [], errors
    page.close()


def _file_box_text(page, elem_id: str) -> str:
    """The text of a gr.File box, with the line breaks Gradio puts between a name's stem and extension removed."""
    return page.locator(f"#{elem_id}").inner_text().replace("\n", "")


def _wait_for_file_named(page, elem_id: str, name: str) -> None:
    page.wait_for_function("([id, name]) => document.getElementById(id).innerText.replaceAll('\\n', '').includes(name)",
                           arg=[elem_id, name], timeout=30_000)


def test_a_failed_search_keeps_the_results_on_screen_and_says_why(app_url, browser):
    page = _open_app(browser, app_url)
    box = page.locator("#query textarea, #query input").first
    box.fill("a red circle")
    box.press("Enter")
    page.locator("#search-status").get_by_text("results for 'a red circle'").wait_for(timeout=60_000)
    box.fill("   ")
    page.locator("#search-button").click()
    page.get_by_text("Type a query, or add a query image, then search").wait_for(timeout=30_000)  # the toast
    # The status line says "Error"; the gallery keeps the earlier results, not an "Error" pill over a blank.
    page.locator("#search-status").get_by_text("Error", exact=True).wait_for(timeout=10_000)
    assert page.locator("#results").get_by_text("Error", exact=True).count() == 0
    assert page.locator("#results .caption-label").first.is_visible()
    assert len(page.locator("#results .caption-label").all_inner_texts()) == 24
    page.close()


def _click_until(target, shown, tries: int = 6) -> None:
    """Click ``target`` until ``shown`` is visible: a click while the gallery is still being drawn is lost (one was,
    in a CI run on a loaded machine)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(tries - 1):
        target.click()
        try:
            shown.wait_for(timeout=5_000)
            return
        except PlaywrightTimeout:
            continue
    target.click()
    shown.wait_for(timeout=30_000)


def test_page_buttons_page_through_the_search_that_was_run(app_url, browser, tmp_path):
    page = _open_app(browser, app_url)
    page.get_by_text("Query image, negatives, k and threshold").click()
    k_box, k_slider = page.locator("#k input[type=number]"), page.locator("#k input[type=range]")
    k_slider.wait_for(timeout=30_000)
    for _ in range(10):  # the accordion opening re-renders the slider, which may drop a value typed meanwhile
        k_box.fill("10")
        k_box.press("Tab")  # leaves the box: the slider takes the value
        page.wait_for_timeout(300)
        if k_slider.input_value() == "10":
            break
    assert k_slider.input_value() == "10"  # the search reads the slider
    box = page.locator("#query textarea, #query input").first
    box.fill("a red circle")
    box.press("Enter")
    status = page.locator("#search-status")
    status.get_by_text("10 results for 'a red circle'").wait_for(timeout=60_000)
    first_page = page.locator("#results .caption-label").all_inner_texts()
    _click_until(page.locator("#results .thumbnail-item").nth(3),  # its details shown, its thumbnail highlighted
                 page.locator("#results .thumbnail-item.selected"))
    box.fill("something else, not searched")
    page.locator("#next-page").click()
    status.get_by_text("Results 11–20 for 'a red circle'").wait_for(timeout=60_000)
    second_page = page.locator("#results .caption-label").all_inner_texts()
    assert len(second_page) == 10 and not set(first_page) & set(second_page)
    # the highlight went with the page: Gradio kept it on the fourth thumbnail, another image than the details'
    page.locator("#results .thumbnail-item.selected").wait_for(state="detached", timeout=30_000)
    assert float(second_page[0].split(" · ")[0]) <= float(first_page[-1].split(" · ")[0])
    page.locator("#previous-page").click()
    status.get_by_text("10 results for 'a red circle'").wait_for(timeout=60_000)
    assert page.locator("#results .caption-label").all_inner_texts() == first_page
    for shown in ("Results 11–20", f"Results 21–{SCENE_COUNT}"):
        page.locator("#next-page").click()
        status.get_by_text(shown).wait_for(timeout=60_000)
    last_page = page.locator("#results .caption-label").all_inner_texts()
    page.locator("#next-page").click()  # past the end: news in an info toast, not an error; the page stays
    page.get_by_text("These are the last results: no more images match.").first.wait_for(timeout=30_000)
    assert page.get_by_text("Error", exact=True).count() == 0
    assert status.get_by_text(f"Results 21–{SCENE_COUNT}").count() == 1
    assert page.locator("#results .caption-label").all_inner_texts() == last_page
    page.close()


def test_example_button_runs_its_query(app_url, browser, tmp_path):
    page = _open_app(browser, app_url)
    page.get_by_role("button", name="a yellow star on a striped background").click()
    page.locator("#search-status").get_by_text("a yellow star on a striped background").wait_for(timeout=60_000)
    assert page.locator("#results .caption-label").count() == 24
    assert page.locator("#query textarea, #query input").first.input_value() == "a yellow star on a striped background"
    page.close()


def test_more_like_this_with_nothing_selected_says_so(app_url, browser, tmp_path):
    page = _open_app(browser, app_url)
    page.get_by_role("button", name="More like this").click()
    page.get_by_text("No image is selected: click a search result").first.wait_for(timeout=30_000)
    assert page.get_by_text("no embedded image with id").count() == 0
    _screenshot(page, tmp_path, "more-like-this-nothing-selected.png")
    page.close()


def test_a_query_submitted_while_another_runs_is_not_dropped(app_url, browser):
    page = _open_app(browser, app_url)
    box = page.locator("#query textarea, #query input").first
    for query in ("a red circle", "two small green triangles", "a large purple cross"):  # faster than a search
        box.fill(query)
        box.press("Enter")
    status = page.locator("#search-status")
    status.get_by_text("results for 'a large purple cross'").wait_for(timeout=60_000)
    page.wait_for_timeout(1500)  # nothing older may land after it
    assert "results for 'a large purple cross'" in status.inner_text()
    assert box.input_value() == "a large purple cross"
    page.close()


def test_example_button_clears_a_hidden_query_image(app_url, browser, tmp_path):
    from PIL import Image

    upload = tmp_path / "query.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(upload)
    page = _open_app(browser, app_url)
    page.get_by_text("Query image, negatives, k and threshold").click()
    page.locator("#query-image input[type=file]").set_input_files(str(upload))
    page.locator("#query-image img").first.wait_for(timeout=30_000)
    page.get_by_text("Query image, negatives, k and threshold").click()  # hidden again, still holding the image
    page.get_by_role("button", name="a red circle").click()
    page.locator("#search-status").get_by_text("results for 'a red circle'").wait_for(timeout=60_000)
    assert "image" not in page.locator("#search-status").inner_text().split(";")[0]
    page.close()


def test_a_heic_upload_is_drawn_in_the_query_image_box(app_url, browser, tmp_path):
    """Chromium cannot decode HEIC: the box shows the server's JPEG copy of it (and Gradio's own opening of the
    upload must know HEIC)."""
    from PIL import Image

    from mmretrieval.images.formats import ensure_openers

    ensure_openers()
    upload = tmp_path / "IMG_0001.HEIC"
    Image.new("RGB", (48, 32), (200, 30, 30)).save(upload, "HEIF")
    page = _open_app(browser, app_url)
    page.get_by_text("Query image, negatives, k and threshold").click()
    # As a phone's or a Mac's file picker sends it (Playwright would guess application/octet-stream).
    page.locator("#query-image input[type=file]").set_input_files(
        {"name": upload.name, "mimeType": "image/heic", "buffer": upload.read_bytes()})
    page.wait_for_function(
        "() => [...document.querySelectorAll('#query-image img')].some("
        "img => img.complete && img.naturalWidth === 48 && img.naturalHeight === 32)", timeout=30_000)
    page.close()


def _draw_map(page, labels: str) -> None:
    box = page.locator("#map-labels textarea, #map-labels input").first
    box.fill(labels)
    before = page.locator("#map .mmr-map").get_attribute("data-version") or ""
    page.locator("#draw-map").click()
    page.wait_for_function(
        "(before) => { const m = document.querySelector('#map .mmr-map'); "
        "return m && m.dataset.version && m.dataset.version !== before && Number(m.dataset.points) > 0; }",
        arg=before, timeout=120_000)


def test_a_label_file_uploaded_in_the_label_tab_replaces_the_typed_labels(app_url, browser, tmp_path):
    """A vocabulary too long to paste (5,000 lines froze the tab for 76 s) goes in as a file; the box empties,
    since the file's labels are the ones used."""
    label_file = tmp_path / "labels.txt"
    label_file.write_text("# kinds\n" + "\n".join(["spotted owl", *(f"kind {n}" for n in range(499))]) + "\n")
    page = _open_app(browser, app_url)
    page.get_by_role("tab", name="Label").click()
    typed = page.locator("#collection-labels textarea")
    typed.fill("circle, square")
    page.locator("#collection-labels-file input[type=file]").set_input_files(str(label_file))
    page.wait_for_function("() => document.querySelector('#collection-labels textarea').value === ''",
                           timeout=30_000)
    page.locator("#label-set textarea").fill("from-file")
    page.get_by_role("button", name="Label the collection").click()
    page.get_by_text("into label set from-file").wait_for(timeout=120_000)
    bars = page.locator("#label-count-bars").inner_text()
    assert "spotted owl" in bars or "kind " in bars
    page.locator("#set-to-remove textarea").fill("from-file")  # leave the collection as the other tests expect it
    page.get_by_role("button", name="Remove this set").click()
    page.get_by_text("removed").first.wait_for(timeout=60_000)
    page.close()


def test_map_redraws_with_new_labels_and_answers_clicks_and_lassos(app_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app_url)
    page.locator("#query").wait_for(timeout=60_000)
    page.get_by_role("tab", name="Map").click()
    # before the first drawing the note says what the button does (the map was a blank rectangle)
    page.locator("#map-note").get_by_text("Press Draw the map to lay the collection's images out").wait_for(
        timeout=30_000)
    _draw_map(page, "red, blue")
    keys = [text.split(" (")[0] for text in page.locator("#map .mmr-key").all_inner_texts()]
    assert keys and set(keys) <= {"red", "blue"}, keys  # the tiny random model may put every image in one
    first = page.evaluate("() => getComputedStyle(document.querySelector('#map .mmr-key i')).backgroundColor")
    assert first == {"red": "rgb(214, 39, 40)", "blue": "rgb(31, 95, 214)"}[keys[0]]  # colour words in their colour
    painted = "() => { const c = document.querySelector('#map canvas'); const d = c.getContext('2d')" \
              ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) " \
              "if (d[i] > 0) n++; return n; }"
    assert page.evaluate(painted) > 100

    _draw_map(page, "star, cross")  # a redraw without reloading the page
    keys = [text.split(" (")[0] for text in page.locator("#map .mmr-key").all_inner_texts()]
    assert keys and set(keys) <= {"star", "cross"}, keys
    assert page.evaluate(painted) > 100
    _screenshot(page, tmp_path, "map.png")

    canvas = page.locator("#map canvas")
    x, y = (float(v) for v in page.locator("#map .mmr-map").get_attribute("data-first").split(","))
    canvas.click(position={"x": x, "y": y})
    page.locator("#map-details").get_by_text(re.compile(r"scene-\d{3}\.png")).first.wait_for(timeout=30_000)
    clicked = re.search(r"scene-\d{3}\.png", page.locator("#map-details").inner_text()).group(0)
    page.locator("#get-map-original").click()
    _wait_for_file_named(page, "map-original", clicked)

    bounds = canvas.bounding_box()
    page.mouse.move(bounds["x"] + 2, bounds["y"] + 2)
    page.mouse.down()
    for fraction in (0.3, 0.6, 0.99):
        page.mouse.move(bounds["x"] + bounds["width"] * fraction, bounds["y"] + bounds["height"] * fraction, steps=3)
    page.mouse.move(bounds["x"] + 2, bounds["y"] + bounds["height"] - 2, steps=3)
    page.mouse.up()
    page.locator("#map-selection-note").get_by_text("images selected").wait_for(timeout=30_000)
    assert page.locator("#map-selection .thumbnail-item").count() > 0
    assert errors == [], errors
    page.close()


def _shown_groups(page) -> list[tuple[int, float]]:
    """(number, lowest similarity) of each duplicate group on screen, top to bottom."""
    titles = page.locator("#duplicate-groups .mmr-dup-title").all_inner_texts()
    matches = [GROUP_TITLE.match(title) for title in titles]
    assert all(matches), titles
    return [(int(match[1]), float(match[2])) for match in matches]


def _wait_for_first_group(page, number: int, timeout_ms: int = 30_000) -> None:
    """Until the first duplicate group on screen is group ``number`` (a page or an order drawn)."""
    from playwright.sync_api import expect

    expect(page.locator("#duplicate-groups .mmr-dup-title").first).to_have_text(
        re.compile(f"^Group {number} ·"), timeout=timeout_ms)


def _find_duplicates(page, threshold: str | None = None) -> None:
    """Open the Duplicates tab and run its search, at ``threshold`` when given (else the slider's 0: the default)."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Duplicates").click()
    if threshold is not None:
        box = page.get_by_label("number input for Similarity threshold")
        box.fill(threshold)
        box.press("Tab")  # leaves the box: the slider takes the value, and the search reads the slider
        expect(page.get_by_label("range slider for Similarity threshold")).to_have_value(threshold)
    page.locator("#find-duplicates").click()


def test_duplicates_tab_pages_its_groups_in_either_order_and_says_when_there_are_none(duplicates_app, browser,
                                                                                    tmp_path):
    from playwright.sync_api import expect

    from mmretrieval.ui.duplicate_handlers import GROUPS_SHOWN

    url, groups = duplicates_app
    found = [(number, round(group.score, 3)) for number, group in enumerate(groups, 1)]  # most alike first
    pages = math.ceil(len(groups) / GROUPS_SHOWN)
    page = _open_app(browser, url, height=1100)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _find_duplicates(page)
    summary, titles = page.locator("#duplicates-summary"), page.locator("#duplicate-groups .mmr-dup-title")
    summary.get_by_text(f"{len(groups)} groups of near-duplicates").wait_for(timeout=60_000)
    others = sum(len(group.copies) - 1 for group in groups)
    assert f"{others} copies besides the suggested keepers" in summary.inner_text()
    assert f"({pages} pages;" in summary.inner_text()
    assert _shown_groups(page) == found[:GROUPS_SHOWN]
    first = page.locator("#duplicate-groups .mmr-dup-group").first  # its keeper and copy, named as the collection does
    assert first.locator(".mmr-dup-cell").count() == len(groups[0].copies)
    assert Path(groups[0].keep.path).name in first.locator(".mmr-dup-cell.keep").inner_text()
    page.wait_for_function("() => [...document.querySelectorAll('#duplicate-groups img')].every("
                           "i => i.complete && i.naturalWidth > 0)")
    export = httpx.get(page.locator("a[download='copies-to-review.txt']").get_attribute("href"), timeout=30)
    assert sorted(export.text.splitlines()) == sorted(copy.path for group in groups for copy in group.copies[1:])
    _screenshot(page, tmp_path, "duplicates.png")

    page_box = page.locator("#duplicates-page input")
    expect(page_box).to_have_attribute("max", str(pages))
    page_box.press("ArrowUp")  # the next page
    _wait_for_first_group(page, GROUPS_SHOWN + 1)
    assert _shown_groups(page) == found[GROUPS_SHOWN:2 * GROUPS_SHOWN]
    page_box.press("ArrowDown")
    _wait_for_first_group(page, 1)
    assert _shown_groups(page) == found[:GROUPS_SHOWN]

    page.get_by_label("least alike first").check()
    _wait_for_first_group(page, len(groups))
    loose_first = _shown_groups(page)
    assert loose_first == found[::-1][:GROUPS_SHOWN]
    assert loose_first[0][1] == min(score for _, score in found)  # the least alike group of all comes first
    page_box.press("ArrowUp")
    _wait_for_first_group(page, len(groups) - GROUPS_SHOWN)
    assert _shown_groups(page) == found[::-1][GROUPS_SHOWN:2 * GROUPS_SHOWN]

    # No group at threshold 1: it says so, and nothing of the last search stays (groups, export, the second page).
    _find_duplicates(page, "1")
    summary.get_by_text("No near-duplicate groups found").wait_for(timeout=60_000)
    assert titles.count() == 0 and "No near-duplicates" in page.locator("#duplicate-groups").inner_text()
    assert page.locator("a[download='copies-to-review.txt']").count() == 0
    expect(page_box).to_have_value("1")
    expect(page_box).to_have_attribute("max", "1")
    page.get_by_label("most alike first").check()  # drawn from this search's groups: none
    page.wait_for_timeout(1500)
    assert titles.count() == 0 and page.locator("#duplicate-groups").get_by_text("No near-duplicates").is_visible()
    assert errors == [], errors
    page.close()


def test_choosing_an_order_on_a_later_page_shows_that_order_from_its_start(duplicates_app, browser):
    """On page 2 of the most alike groups, choosing "least alike first" must show the least alike group first,
    not page 2 of the new order: the most alike groups of all, under a choice that asked for the loose ones."""
    from playwright.sync_api import expect

    from mmretrieval.ui.duplicate_handlers import GROUPS_SHOWN

    url, groups = duplicates_app
    page = _open_app(browser, url)
    _find_duplicates(page)
    page.locator("#duplicates-summary").get_by_text(f"{len(groups)} groups of near-duplicates").wait_for(timeout=60_000)
    page_box = page.locator("#duplicates-page input")
    page_box.press("ArrowUp")
    _wait_for_first_group(page, GROUPS_SHOWN + 1)
    page.get_by_label("least alike first").check()
    _wait_for_first_group(page, len(groups), timeout_ms=10_000)  # page 2 was drawn well within that
    assert _shown_groups(page)[0][1] == round(min(group.score for group in groups), 3)
    expect(page_box).to_have_value("1")
    page.close()


def test_results_are_drawn_whole_and_empty_download_boxes_stay_small(app_url, browser, tmp_path):
    """height="auto" still boxed the gallery at 55% of the window with a scrollbar of its own (2.5 rows of 24
    results showed beside an empty column), and an empty download box was 236 px of dashed border."""
    page = _open_app(browser, app_url)
    assert page.locator("#original").bounding_box()["height"] < 150
    box = page.locator("#query textarea, #query input").first
    box.fill("a red circle")
    box.press("Enter")
    page.locator("#search-status").get_by_text("24 results for 'a red circle'").wait_for(timeout=60_000)
    page.locator("#results .caption-label").nth(23).wait_for(timeout=30_000)
    scroll = page.locator("#results .grid-wrap").evaluate("(wrap) => [wrap.scrollHeight, wrap.clientHeight]")
    assert scroll[0] <= scroll[1] + 1, scroll  # no scroll box of its own: the page scrolls
    _screenshot(page, tmp_path, "results-drawn-whole.png")
    page.close()
