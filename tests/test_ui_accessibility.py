"""What an accessibility and phone walkthrough of the web UI found, each pinned by a test.

On a 390 x 844 phone: every result fits the screen, a tapped result comes into sight, duplicate groups wrap, a
finger draws a lasso on the map and a tap leaves no thumbnail over it, buttons are 44 px tall. For screen
readers and keyboards: status outputs are live regions, the map canvas is focusable and named, the label filter's
"no filter" choice has a name, focus rings show, button text has 4.5:1 contrast. And the map's colours agree
with the colour words in its labels. One app serves every browser test (in this process, with the tiny model).
"""

from __future__ import annotations

import re
import shutil

import pytest

from ui_support import running_app, write_scene_folder

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
COPIES = 3  # byte-identical copies of one scene: a duplicate group of four, wider than a phone as a row
WALKTHROUGH_LABELS = ("cross", "green triangle", "yellow star", "red circle", "purple diamond", "blue square")


# -- the map's colours (no browser) ------------------------------------------------------------------------------
@pytest.mark.parametrize(("label", "word"), [
    ("red circle", "red"), ("yellow star", "yellow"), ("light blue", "blue"), ("SET:red", "red"),
    ("shapes:green triangle", "green"), ("red and blue", "red"), ("Light-Blue square", "blue"),
    ("circle", None), ("reddish circle", None), ("colours:circle", None), ("", None)])
def test_colour_of_finds_a_colour_word_anywhere_in_the_label(label, word):
    from mmretrieval.ui.map_view import COLOUR_WORDS, colour_of, colour_word

    assert colour_word(label) == word
    assert colour_of(label) == (COLOUR_WORDS[word] if word else None)


def test_the_walkthrough_labels_are_drawn_in_the_colours_they_name():
    from mmretrieval.ui.map_view import COLOUR_WORDS, PALETTE_READS_AS, colours_for

    colours = colours_for([*WALKTHROUGH_LABELS, "(unlabelled)"], "(unlabelled)")
    for label in WALKTHROUGH_LABELS[1:]:
        assert colours[label] == COLOUR_WORDS[label.split()[0]], label  # "red circle" was orange, "yellow star" green
    named = {label.split()[0] for label in WALKTHROUGH_LABELS[1:]}
    assert not PALETTE_READS_AS[colours["cross"]] & named, colours["cross"]  # not steel blue beside "blue square"


def test_a_palette_colour_never_reads_as_a_colour_word_another_label_names_while_one_is_free():
    from mmretrieval.ui.map_view import COLOUR_WORDS, PALETTE, PALETTE_READS_AS, colour_word, colours_for

    assert set(PALETTE_READS_AS) == set(PALETTE)
    assert all(words and words <= set(COLOUR_WORDS) for words in PALETTE_READS_AS.values())
    for word in COLOUR_WORDS:
        labels = [f"{word} circle", "square", "triangle"]
        colours = colours_for(labels, "(none)")
        for label in labels[1:]:
            assert word not in PALETTE_READS_AS[colours[label]], (word, label, colours[label])
    # a second label naming red, whose red is taken, gets a palette colour that reads as red
    colours = colours_for(["red circle", "red square", "blue star"], "(none)")
    assert "red" in PALETTE_READS_AS[colours["red square"]] and colours["red square"] != colours["red circle"]
    assert colour_word("red square") == "red"


# -- the theme (no browser) --------------------------------------------------------------------------------------
def _luminance(colour: str) -> float:
    """WCAG relative luminance of ``#rrggbb`` or ``rgb(r, g, b)``."""
    if colour.startswith("#"):
        channels = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    else:
        channels = [int(v) for v in re.findall(r"\d+", colour)[:3]]
    linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(first: str, second: str) -> float:
    light, dark = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_the_themes_primary_and_stop_buttons_have_readable_white_text():
    from mmretrieval.ui.page_style import theme

    page_theme = theme()

    def resolved(value: str) -> str:
        return getattr(page_theme, value[1:]) if value.startswith("*") else value

    for fill in ("button_primary_background_fill", "button_primary_background_fill_hover",
                 "button_primary_background_fill_dark", "button_cancel_background_fill",
                 "button_cancel_background_fill_dark"):
        assert _contrast("#ffffff", resolved(getattr(page_theme, fill))) >= 4.5, fill
    assert _contrast("#ffffff", "#f97316") < 4.5  # Gradio's own orange 500, which the walkthrough measured


# -- the app in a phone's browser --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_model_dir, tiny_encoder):
    """The generated scenes plus COPIES copies of one, ingested with the tiny model and served in this process."""
    from mmretrieval.collection.collection import Collection
    from mmretrieval.ui.context import AppContext

    root = tmp_path_factory.mktemp("accessibility")
    scenes = write_scene_folder(root / "images")
    (root / "images" / "copies").mkdir()
    for number in range(COPIES):
        shutil.copyfile(scenes[0], root / "images" / "copies" / f"copy-{number}.png")
    with Collection.open(root / "collection", model=str(tiny_model_dir), create=True, device="cpu") as collection:
        collection.ingest([root / "images"], workers=0)
    with Collection.open(root / "collection", model=tiny_encoder, device="cpu") as collection:
        with running_app(AppContext(collection=collection, encoder=tiny_encoder, title="accessibility")) as url:
            yield url + "/"



@pytest.fixture
def phone(browser, app_url):
    """A page on a 390 x 844 touch screen showing the app; page errors fail the test."""
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app_url)
    page.locator("#query").wait_for(timeout=60_000)
    yield page
    context.close()
    assert errors == [], errors


def _open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _search(page, query: str = "a red circle") -> None:
    page.locator("#query textarea").fill(query)
    page.locator("#search-button").click()
    page.locator("#results .caption-label").first.wait_for(timeout=60_000)


def _boxes_outside(page, selector: str) -> list[dict]:
    """The boxes of ``selector``'s elements that reach past the left or right edge of the screen."""
    return page.evaluate("""(selector) => [...document.querySelectorAll(selector)].map(e => e.getBoundingClientRect())
        .filter(r => r.left < 0 || r.right > window.innerWidth).map(r => ({left: r.left, right: r.right}))""",
                         selector)


def _wait_until_live(page, elem_id: str) -> None:
    """Until the element ``elem_id`` is a polite live region (the page's script marks each as it is drawn)."""
    page.wait_for_function("(id) => { const e = document.getElementById(id); return !!e && "
                           "e.getAttribute('role') === 'status' && e.getAttribute('aria-live') === 'polite'; }",
                           arg=elem_id, timeout=5_000)


def test_on_a_phone_every_result_and_its_caption_fit_the_screen(phone):
    _search(phone)
    items = phone.locator("#results .thumbnail-item")
    assert items.count() > 4
    assert _boxes_outside(phone, "#results .thumbnail-item") == []  # four 100 px columns put every fourth off screen
    cut = phone.evaluate("() => [...document.querySelectorAll('#results .caption-label')]"
                         ".filter(c => c.scrollWidth > c.clientWidth + 1).map(c => c.innerText)")
    assert cut == []


def test_on_a_phone_every_tab_is_named_in_full_on_the_screen(phone):
    """The tab bar's menu put four of the six tabs behind a "..." button."""
    tabs = phone.get_by_role("tab")
    assert tabs.count() == 6
    assert [tab.is_visible() for tab in tabs.all()] == [True] * 6
    assert _boxes_outside(phone, "[role=tab]") == []
    cut = phone.evaluate("() => [...document.querySelectorAll('[role=tab]')]"
                         ".filter(t => t.scrollWidth > t.clientWidth + 1).map(t => t.innerText)")
    assert cut == []


def test_status_outputs_are_polite_live_regions(phone):
    _search(phone)
    for elem_id in ("search-status", "details"):
        _wait_until_live(phone, elem_id)
    _open_tab(phone, "Map")
    for elem_id in ("map-note", "map-details", "map-selection-note"):
        _wait_until_live(phone, elem_id)
    _open_tab(phone, "Duplicates")
    _wait_until_live(phone, "duplicates-summary")
    assert phone.locator("#query").get_attribute("aria-live") is None  # only the outputs that report


def test_tapping_a_result_on_a_phone_brings_its_preview_into_sight(phone):
    _search(phone)
    assert phone.locator("#preview").bounding_box()["y"] > PHONE["height"]  # below the gallery, out of sight
    phone.locator("#results .thumbnail-item").nth(1).tap()
    phone.locator("#details").get_by_text(re.compile(r"scene-\d{3}\.png")).first.wait_for(timeout=30_000)
    top = phone.locator("#preview").bounding_box()["y"]
    assert -1 <= top < PHONE["height"] / 2, top  # at the top: -0.17 px once the layout rounds


def test_a_click_on_a_wide_screen_does_not_scroll(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url)
    page.locator("#query").wait_for(timeout=60_000)
    _search(page)
    page.evaluate("() => window.scrollTo(0, 200)")
    page.locator("#results .thumbnail-item").nth(1).click()
    page.locator("#details").get_by_text(re.compile(r"scene-\d{3}\.png")).first.wait_for(timeout=30_000)
    assert page.evaluate("() => window.scrollY") == 200  # the preview is beside the gallery already
    page.close()


def _draw_pca_map(page) -> None:
    _open_tab(page, "Map")
    method = page.get_by_label(re.compile("^Layout"))
    method.click()
    page.get_by_role("option", name="pca").click()
    page.locator("#draw-map").click()
    page.wait_for_function("() => Number(document.querySelector('#map .mmr-map')?.dataset.points) > 0",
                           timeout=120_000)


def _touch_drag(page, points: list[tuple[float, float]]) -> None:
    """A finger drawn through ``points`` (page coordinates), as the touch screen sends it."""
    cdp = page.context.new_cdp_session(page)
    steps = [("touchStart", points[0]), *(("touchMove", point) for point in points[1:]), ("touchEnd", None)]
    for kind, point in steps:
        touches = [{"x": point[0], "y": point[1]}] if point else []
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": touches})


def test_a_finger_lassoes_points_on_the_map_and_a_tap_leaves_no_thumbnail(phone):
    _draw_pca_map(phone)
    canvas = phone.locator("#map canvas")
    assert canvas.get_attribute("tabindex") == "0" and canvas.get_attribute("role") == "img"
    name = canvas.get_attribute("aria-label")
    assert name.startswith(f"Map of {phone.locator('#map .mmr-map').get_attribute('data-points')} images"), name
    legend = phone.locator("#map .mmr-key").first.inner_text()  # e.g. "(no labels) (27)"
    assert legend.replace(" (", " ").rstrip(")") in name, (legend, name)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x0, y0, x1, y1 = box["x"] + 3, box["y"] + 3, box["x"] + box["width"] - 3, box["y"] + box["height"] - 3
    scroll_before = phone.evaluate("() => window.scrollY")
    _touch_drag(phone, [(x0, y0), (x1, y0), (x1, (y0 + y1) / 2), (x1, y1), (x0, y1), (x0, (y0 + y1) / 2), (x0, y0)])
    phone.locator("#map-selection-note").get_by_text("images selected").wait_for(timeout=30_000)
    assert phone.evaluate("() => window.scrollY") == scroll_before  # the drag drew a lasso, it did not scroll
    phone.locator("#map-selection .thumbnail-item").first.wait_for()
    assert _boxes_outside(phone, "#map-selection .thumbnail-item") == []  # 2 columns, not 8

    x, y = (float(v) for v in phone.locator("#map .mmr-map").get_attribute("data-first").split(","))
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    phone.touchscreen.tap(box["x"] + x, box["y"] + y)
    phone.locator("#map-details").get_by_text(re.compile(r"scene-\d{3}\.png|copy-\d\.png")).first.wait_for(
        timeout=30_000)
    assert phone.locator("#map .mmr-tip").is_hidden()  # no hover thumbnail left over the map after the tap
    note = phone.locator("#map-selection-note").inner_text()
    assert "Clicked image" in note and "right" not in note  # on a phone the details are below, not on the right


def test_duplicate_groups_wrap_on_a_phone(phone):
    _open_tab(phone, "Duplicates")
    phone.locator("#find-duplicates").click()
    phone.locator("#duplicate-groups .mmr-dup-group").first.wait_for(timeout=60_000)
    widest = max(phone.locator(".mmr-dup-group").nth(i).locator(".mmr-dup-cell").count()
                 for i in range(phone.locator(".mmr-dup-group").count()))
    assert widest >= COPIES + 1  # four cells of 170 px in a row were wider than the phone
    assert _boxes_outside(phone, "#duplicate-groups .mmr-dup-cell") == []
    assert phone.evaluate("() => [...document.querySelectorAll('.mmr-dup-row')].every(r => r.scrollWidth <= "
                          "r.clientWidth)")


def test_the_label_filters_no_filter_choice_is_named_any_label(phone):
    phone.get_by_text("Query image, negatives").click()
    box = phone.locator("#label-filter input")
    assert box.input_value() == "any label"
    box.click()
    first = phone.locator("#label-filter [role=option]").first
    assert first.get_attribute("aria-label") == "any label"  # a nameless choice was read out as its tick, "✓"
    first.click()
    _search(phone)  # its value is still "": no filter
    assert phone.locator("#results .thumbnail-item").count() > 4


def test_buttons_are_touch_sized_readable_and_focus_shows(phone):
    for button in (phone.locator("#previous-page"), phone.locator("#get-original"), phone.locator("#search-button"),
                   phone.get_by_role("tab", name="Search")):
        assert button.bounding_box()["height"] >= 44, button
    phone.mouse.move(0, 0)  # not hovering the button
    colours = phone.evaluate("() => { const s = getComputedStyle(document.querySelector('#search-button')); "
                             "return [s.color, s.backgroundColor]; }")
    assert _contrast(*colours) >= 4.5, colours
    phone.locator("#query textarea").focus()
    outline = phone.evaluate("() => { const s = getComputedStyle(document.activeElement); "
                             "return [s.outlineStyle, s.outlineWidth, s.outlineColor]; }")
    assert outline == ["solid", "2px", "rgb(29, 78, 216)"], outline
