"""The web UI's memory stays bounded however long it serves: image renders are capped in bytes, and the server
keeps the state of a bounded number of browser sessions (a session past the cap gets a plain message, not a crash).
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
from PIL import Image

from ui_support import free_port, page_event as _page_event, served_test_collection

PREVIEW_SIZE = (640, 480)  # a 4:3 photo's 640 px preview: 1.2 MB as Pillow holds RGB


@pytest.fixture
def fake_renders(monkeypatch):
    """Renders of a known size without files: records which (id, max_side) were rendered, in order."""
    from mmretrieval.ui import media

    rendered: list[tuple[int, int]] = []
    alive: list[weakref.ref] = []

    def render(path_of, image_id: int, max_side: int) -> Image.Image:
        rendered.append((image_id, max_side))
        image = Image.new("RGB", PREVIEW_SIZE if max_side > media.THUMBNAIL_PX else (max_side, max_side * 3 // 4))
        alive.append(weakref.ref(image))
        return image

    monkeypatch.setattr(media, "render_collection_image", render)
    return rendered, alive


def _no_file(image_id: int) -> Path:
    raise AssertionError("the fake render never asks for a file")


def test_opening_hundreds_of_photos_keeps_previews_within_their_byte_budget(fake_renders):
    """The soak test's case: every distinct photo opened added its 1.2 MB preview, up to 2,048 of them (2.5 GB)."""
    from mmretrieval.ui.media import (PREVIEW_CACHE_BYTES, PREVIEW_PX, THUMBNAIL_CACHE_BYTES, THUMBNAIL_PX,
                                      ThumbnailCache, image_bytes)

    rendered, alive = fake_renders
    cache = ThumbnailCache()
    for image_id in range(20):
        cache.get(_no_file, image_id)  # a page of gallery thumbnails
    for image_id in range(300):
        cache.get(_no_file, 1000 + image_id, max_side=PREVIEW_PX)
        if image_id % 10 == 0:
            cache.get(_no_file, 1000, max_side=PREVIEW_PX)  # the user keeps going back to the first photo
    gc.collect()
    held = [ref() for ref in alive if ref() is not None]  # measured apart from the cache's own count
    previews_held = sum(image_bytes(image) for image in held if max(image.size) > THUMBNAIL_PX)
    assert previews_held <= PREVIEW_CACHE_BYTES < 300 * image_bytes(Image.new("RGB", PREVIEW_SIZE))
    all_held = sum(image_bytes(image) for image in held)
    assert all_held == cache.cached_bytes <= PREVIEW_CACHE_BYTES + THUMBNAIL_CACHE_BYTES
    assert rendered.count((1000, PREVIEW_PX)) == 1  # recently used: kept all along
    assert rendered.count((1001, PREVIEW_PX)) == 1
    cache.get(_no_file, 1001, max_side=PREVIEW_PX)
    assert rendered.count((1001, PREVIEW_PX)) == 2  # long unused: evicted
    for image_id in range(20):  # previews have their own budget: they never pushed the thumbnails out
        cache.get(_no_file, image_id)
    assert sum(1 for key in rendered if key[1] != PREVIEW_PX) == 20


def test_renders_are_evicted_least_recently_used_first_by_bytes(fake_renders):
    from mmretrieval.ui.media import ThumbnailCache, image_bytes

    rendered, _ = fake_renders
    one = image_bytes(Image.new("RGB", (100, 75)))
    assert one == 100 * 75 * 4  # Pillow pads RGB to 4 bytes a pixel
    cache = ThumbnailCache(max_bytes=5 * one, preview_max_bytes=2 * 640 * 480 * 4)
    for image_id in range(12):
        cache.get(_no_file, image_id, max_side=100)
        cache.get(_no_file, 0, max_side=100)  # kept warm
        assert cache.cached_bytes <= 5 * one
    assert cache.cached_bytes == 5 * one
    before = len(rendered)
    for image_id in (0, 8, 9, 10, 11):  # the four most recent and the one kept warm
        cache.get(_no_file, image_id, max_side=100)
    assert len(rendered) == before
    cache.get(_no_file, 1, max_side=100)
    assert len(rendered) == before + 1
    cache.clear()
    assert cache.cached_bytes == 0


def test_a_render_larger_than_its_budget_is_returned_but_not_kept(fake_renders):
    from mmretrieval.ui.media import PREVIEW_PX, ThumbnailCache

    rendered, _ = fake_renders
    cache = ThumbnailCache(preview_max_bytes=1000)
    assert cache.get(_no_file, 7, max_side=PREVIEW_PX).size == PREVIEW_SIZE
    assert cache.cached_bytes == 0
    cache.get(_no_file, 7, max_side=PREVIEW_PX)
    assert rendered == [(7, PREVIEW_PX), (7, PREVIEW_PX)]


def test_pixel_bytes_follow_how_pillow_stores_each_mode():
    from mmretrieval.ui.media import image_bytes

    assert [image_bytes(Image.new(mode, (10, 10))) for mode in ("L", "P", "1", "I;16", "LA", "RGBA", "F")] == \
        [100, 100, 100, 200, 400, 400, 400]


# Sessions.

@pytest.fixture(scope="module")
def small_server(tmp_path_factory, tiny_model_dir, tiny_encoder):
    """The app served with room for the state of two sessions only."""
    with served_test_collection(tmp_path_factory.mktemp("ui-sessions"), tiny_model_dir, tiny_encoder,
                                session_capacity=2) as served:
        yield served


def _search(app, url: str, session: str) -> None:
    assert _page_event(app, url, session, "search", ["a red circle", None, "", 4, 0])["success"]


def test_the_server_keeps_a_bounded_number_of_sessions_and_an_evicted_one_gets_a_plain_message(small_server):
    app, url = small_server
    assert app.state_holder.capacity == 2  # what Gradio evicts by
    _search(app, url, "first-user")
    zipped = _page_event(app, url, "first-user", "originals_zip", [])
    assert zipped["success"], zipped  # its results are in its session's state
    for other in range(3):
        _search(app, url, f"other-user-{other}")
    assert len(app.state_holder.session_data) == 2
    assert "first-user" not in app.state_holder.session_data
    # Its results are forgotten: each action that needs them says what to do, and the server goes on serving it.
    for handler, event_data, message in (
            ("originals_zip", None, "There are no results to download yet; search first."),
            ("turn_page", None, "Search first: the Next and Previous buttons page through a search's results."),
            ("select_result", {"index": 0, "value": None}, "That result is gone; search again.")):
        answer = _page_event(app, url, "first-user", handler, [None, True] if handler == "turn_page" else [],
                             event_data)
        assert not answer["success"] and answer["output"]["error"] == message, (handler, answer)
    _search(app, url, "first-user")
    assert _page_event(app, url, "first-user", "originals_zip", [])["success"]


def test_serve_bounds_the_sessions_it_keeps_by_default(tmp_path, tiny_encoder):
    from mmretrieval.collection.collection import Collection
    from mmretrieval.ui.context import AppContext
    from mmretrieval.ui.layout import build_app
    from mmretrieval.ui.server import SESSION_CAPACITY, ServeConfig, launch

    assert ServeConfig().session_capacity == SESSION_CAPACITY <= 1000  # Gradio's own default is 10,000 (~2.7 GB)
    with Collection.open(tmp_path / "empty", model=tiny_encoder, create=True, device="cpu") as collection:
        app = build_app(AppContext(collection=collection, encoder=tiny_encoder, title="empty"))
        launch(app, ServeConfig(host="127.0.0.1", port=free_port()))
        try:
            assert app.state_holder.capacity == SESSION_CAPACITY
        finally:
            app.close()
