"""Helpers for the UI tests: a small real collection of generated scenes, and a launched app on a free port."""

from __future__ import annotations

import json
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
from mmretrieval.training import scenes

SCENE_COUNT = 24  # images in the test collection
SCENE_SEED = 11


def write_scene_folder(folder: Path, count: int = SCENE_COUNT) -> list[Path]:
    """``count`` generated scenes as PNGs, plus one corrupt file that ingestion must record as failed."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"scene-{index:03d}.png"
        scenes.generate(SCENE_SEED, index, held_out="include", size=64).image.save(path)
        paths.append(path)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    return paths


def build_test_collection(root: Path, model: str) -> Path:
    """Scenes in ``root/images`` ingested into ``root/collection`` with ``model``; returns the collection dir."""
    from mmretrieval.collection.collection import Collection

    write_scene_folder(root / "images")
    with Collection.open(root / "collection", model=model, create=True, device="cpu") as collection:
        collection.ingest([root / "images"], workers=1)
    return root / "collection"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def served_test_collection(root: Path, model_dir: Path, encoder, **serve_options) -> Iterator[tuple[object, str]]:
    """The test collection built in ``root`` with ``model_dir``, served with ``encoder`` and ``serve_options``
    (:class:`ServeConfig`'s fields); yields the app and its base URL (ending in ``/``)."""
    from mmretrieval.collection.collection import Collection
    from mmretrieval.ui.context import AppContext
    from mmretrieval.ui.layout import build_app
    from mmretrieval.ui.server import ServeConfig, launch

    build_test_collection(root, str(model_dir))
    with Collection.open(root / "collection", model=encoder, device="cpu") as collection:
        app = build_app(AppContext(collection=collection, encoder=encoder, title=root.name))
        host, port = launch(app, ServeConfig(host="127.0.0.1", port=free_port(), **serve_options))
        try:
            yield app, f"http://{host}:{port}/"
        finally:
            app.close()


@contextmanager
def running_app(context) -> Iterator[str]:
    """Launch the UI over ``context`` on a free loopback port; yields its base URL and closes it after."""
    from mmretrieval.ui.layout import build_app
    from mmretrieval.ui.server import ServeConfig, launch

    app = build_app(context)
    host, port = launch(app, ServeConfig(host="127.0.0.1", port=free_port()))
    try:
        yield f"http://{host}:{port}"
    finally:
        app.close()


def page_event(app, url: str, session: str, handler: str, data: list, event_data: dict | None = None,
               logs: list | None = None) -> dict:
    """Trigger the event that ``handler`` answers as the page in a browser does (queue/join, then the event
    stream); the inputs past ``data`` are sent as the page would, with their components' values, and gr.State
    inputs as None (the server fills them from the session). Returns the final message; the toasts the handler
    raised on the way (gr.Warning, gr.Info) are appended to ``logs``."""
    fn_index = next(i for i, fn in app.fns.items() if getattr(fn.fn, "__name__", "") == handler)
    rest = [None if getattr(component, "stateful", False) else getattr(component, "value", None)
            for component in app.fns[fn_index].inputs[len(data):]]
    joined = httpx.post(f"{url}gradio_api/queue/join", timeout=30, json={
        "data": data + rest, "fn_index": fn_index, "session_hash": session,
        "event_data": event_data, "trigger_id": None})
    joined.raise_for_status()
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=60) as events:
        for line in events.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "log" and logs is not None:
                logs.append(message)
            if message.get("msg") == "process_completed":
                return message
    raise AssertionError(f"{handler} never completed")
