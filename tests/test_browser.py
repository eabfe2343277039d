"""One real browser: ``python app.py`` in a subprocess, driven by headless Chromium through Playwright.

Uses the system's ``/usr/bin/chromium`` (``.ci/run`` installs it); Playwright's own browser download is
not needed. This test must run in CI, so a missing browser is a failure, not a skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ui_support import build_test_collection, free_port

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("MMR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"  # git-ignored; CI can keep the screenshots
START_TIMEOUT_S = 180
CAPTION = re.compile(r"^-?\d\.\d{3} · scene-\d{3}\.png$")


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


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_model_dir):
    """``python app.py --collection DIR --model TINY --port P`` running; yields its URL."""
    collection = build_test_collection(tmp_path_factory.mktemp("browser-collection"), str(tiny_model_dir))
    port = free_port()
    command = [sys.executable, str(REPO / "app.py"), "--collection", str(collection), "--model", str(tiny_model_dir),
               "--device", "cpu", "--port", str(port), "--example", "a red circle",
               "--example", "a yellow star on a striped background"]
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
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


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

    page.locator("#results .thumbnail-item").nth(2).click()
    page.locator("#details").get_by_text(re.compile(r"scene-\d{3}\.png")).first.wait_for(timeout=30_000)
    details = page.locator("#details").inner_text()
    assert "64 × 64 px" in details and texts[2].split(" · ")[1] in details
    _screenshot(page, tmp_path, "search.png")

    page.get_by_role("button", name="More like this").click()
    page.locator("#search-status").get_by_text("more like image").wait_for(timeout=30_000)
    assert errors == [], errors
    page.close()


def test_a_failed_search_keeps_the_results_on_screen_and_says_why(app_url, browser):
    page = _open_app(browser, app_url)
    box = page.locator("#query textarea, #query input").first
    box.fill("a red circle")
    box.press("Enter")
    page.locator("#search-status").get_by_text("results for 'a red circle'").wait_for(timeout=60_000)
    box.fill("   ")
    page.locator("#search-button").click()
    page.get_by_text("Type a query, or add a query image, then search.").wait_for(timeout=30_000)  # the toast
    # The status line says "Error"; the gallery keeps the earlier results, not an "Error" pill over a blank.
    page.locator("#search-status").get_by_text("Error", exact=True).wait_for(timeout=10_000)
    assert page.locator("#results").get_by_text("Error", exact=True).count() == 0
    assert page.locator("#results .caption-label").first.is_visible()
    assert len(page.locator("#results .caption-label").all_inner_texts()) == 24
    page.close()


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
    box.fill("something else, not searched")
    page.locator("#next-page").click()
    status.get_by_text("Results 11–20 for 'a red circle'").wait_for(timeout=60_000)
    second_page = page.locator("#results .caption-label").all_inner_texts()
    assert len(second_page) == 10 and not set(first_page) & set(second_page)
    assert float(second_page[0].split(" · ")[0]) <= float(first_page[-1].split(" · ")[0])
    page.locator("#previous-page").click()
    status.get_by_text("10 results for 'a red circle'").wait_for(timeout=60_000)
    assert page.locator("#results .caption-label").all_inner_texts() == first_page
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


def test_map_redraws_with_new_labels_and_answers_clicks_and_lassos(app_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app_url)
    page.locator("#query").wait_for(timeout=60_000)
    page.get_by_role("tab", name="Map").click()
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
