"""The demo collection: a few thousand generated scenes, written once as image files and ingested once.

``python app.py`` with no ``--collection`` serves this, so a fresh machine shows a working app with no
model or data downloads. The build is idempotent and crash-safe:

1. scenes are written as ``images/scene-NNNNN.png`` plus a ``.txt`` caption sidecar, each under a
   temporary name then renamed, so a crash never leaves a half-written file under a real name;
2. ``captions.csv`` (path, caption) lists them for ingestion, written the same way;
3. the collection layer ingests that list (its ingestion is resumable on its own);
4. ``READY.json`` is written last. Without it, or when it describes another build, the next call resumes
   from whatever is already on disk.

A file lock keeps two processes (two app launches, say) from building the same directory at once.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .training import scenes
from .atomic import atomic_write_bytes, exclusive_lock
from .cache import user_cache_dir
from .models.specs import ModelSpec, assets_dir, find_checkpoint, sha256_file
from .errors import CollectionError

logger = logging.getLogger(__name__)

DemoProgress = Callable[[str, int, int], None]  # (stage, done, total); stage is "scenes" or "ingest"
MARKER_NAME = "READY.json"
_BUILD_VERSION = 1  # bump when the layout or the scenes change, so old caches are rebuilt


@dataclass(frozen=True)
class DemoConfig:
    """What the demo collection is made of; a cached build is reused only when all of it matches."""

    count: int = 3000  # number of generated scenes
    seed: int = 7  # scene stream seed (scenes.generate); not one the demo model was trained on
    model: str = "builtin:shapes"  # model spec the collection is ingested with
    image_size: int = 128  # side of each generated image, in pixels


def default_demo_dir() -> Path:
    """``$MMR_DEMO_DIR``, else ``demo/`` in the user's cache directory (see :mod:`mmretrieval.cache`).

    Never next to the package: an installed package lives in site-packages, which may be read-only and is
    shared by every user.
    """
    configured = os.environ.get("MMR_DEMO_DIR")
    if configured:
        return Path(configured).expanduser()
    return user_cache_dir() / "demo"


def collection_dir(root: Path) -> Path:
    """Where the demo's collection lives inside ``root``."""
    return root / "collection"


def is_ready(root: Path, config: DemoConfig) -> bool:
    """True when ``root`` holds a finished build of exactly ``config``."""
    marker = root / MARKER_NAME
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded == _marker_payload(config)


def ensure_demo_collection(
    root: Path | None = None,
    config: DemoConfig = DemoConfig(),
    *,
    device: str = "auto",
    progress: DemoProgress | None = None,
) -> Path:
    """Build the demo collection unless a finished build is cached; return the collection directory.

    Args:
        root: cache directory (default :func:`default_demo_dir`).
        config: how many scenes, which seed and which model.
        device: device to embed on (``auto``, ``cpu``, ``cuda``...).
        progress: called as ``(stage, done, total)`` while scenes are written and while they are ingested.

    Raises:
        MMRError: the model cannot be loaded, the demo folder or its collection cannot be written, or no scene
            could be embedded (the build is then not marked ready).
    """
    # Absolute: the list file's paths are read relative to its own folder, not to the working directory.
    root = (Path(root) if root is not None else default_demo_dir()).expanduser().absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # an unwritable cache folder, or $XDG_CACHE_HOME naming a file
        raise CollectionError(f"cannot make the demo folder {root}: {exc.strerror or exc}; choose another with "
                              "--demo-dir DIR or $MMR_DEMO_DIR, or serve a collection of your own with "
                              "--collection DIR") from exc
    if is_ready(root, config):
        return collection_dir(root)
    with exclusive_lock(root / ".build.lock"):  # a second app launch waits for the first's build
        if is_ready(root, config):  # another process finished it while we waited
            return collection_dir(root)
        _forget_other_models(root, config)
        (root / MARKER_NAME).unlink(missing_ok=True)
        list_file = write_scenes(root, config, progress=progress)
        _ingest(root, list_file, config, device=device, progress=progress)
        atomic_write_bytes(root / MARKER_NAME, json.dumps(_marker_payload(config), indent=2).encode())
    logger.info("demo collection ready in %s", root)
    return collection_dir(root)


def write_scenes(root: Path, config: DemoConfig, *, progress: DemoProgress | None = None) -> Path:
    """Write the scene images, their caption sidecars and ``captions.csv``; return the list file's path.

    Files already present from an interrupted build are kept (each was renamed into place complete). The list
    names the images by absolute path, whatever the working directory.
    """
    root = Path(root).expanduser().absolute()  # a relative root's paths would be read from the list's folder
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    for index in range(config.count):
        path = images / f"scene-{index:05d}.png"
        sidecar = path.with_suffix(".txt")
        if not (path.exists() and sidecar.exists()):
            example = scenes.generate(config.seed, index, held_out="include", size=config.image_size)
            buffer = io.BytesIO()
            example.image.save(buffer, format="PNG")
            # No fsync per scene: a lost scene after a power cut is simply redrawn (READY.json is synced last).
            atomic_write_bytes(path, buffer.getvalue(), durable=False)
            atomic_write_bytes(sidecar, scenes.full_caption(example.scene).encode("utf-8"), durable=False)
        rows.append((str(path), sidecar.read_text(encoding="utf-8")))
        if progress and (index % 100 == 99 or index + 1 == config.count):
            progress("scenes", index + 1, config.count)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(("path", "caption"))
    writer.writerows(rows)
    list_file = root / "captions.csv"
    # surrogateescape: a folder named in other bytes than UTF-8 is written as those bytes, as the list reader reads them
    atomic_write_bytes(list_file, text.getvalue().encode("utf-8", "surrogateescape"))
    return list_file


def _ingest(root: Path, list_file: Path, config: DemoConfig, *, device: str, progress: DemoProgress | None) -> None:
    from .collection.collection import Collection  # heavy (torch, faiss): only when a build is needed

    def report(done: int, total: int) -> None:
        if progress:
            progress("ingest", done, total)

    collection = Collection.open(collection_dir(root), model=config.model, create=True, device=device)
    try:
        summary = collection.ingest([list_file], progress=report)
        embedded = collection.catalog.vector_count()
    finally:
        close = getattr(collection, "close", None)
        if close:
            close()
    logger.info("demo ingest: %s", summary)
    if not embedded:  # never marked ready: the next start tries again instead of serving an empty demo
        raise CollectionError(f"the demo build embedded no scene from {list_file} ({summary}); the next start "
                              f"tries again (delete {root} to start from scratch, or choose another folder with "
                              "--demo-dir DIR or $MMR_DEMO_DIR)")
    if embedded < config.count:
        logger.warning("the demo collection holds %d of %d scenes (%s)", embedded, config.count, summary)


def _marker_payload(config: DemoConfig) -> dict:
    return {"version": _BUILD_VERSION, **asdict(config), "weights": _weights_fingerprint(config.model)}


def _weights_fingerprint(spec: str) -> str:
    # A retrained bundled model must not meet vectors of the old one: the collection would refuse to open.
    parsed = ModelSpec.parse(spec)
    if parsed.kind not in ("builtin", "local"):
        return spec
    directory = assets_dir() / parsed.name if parsed.kind == "builtin" else Path(parsed.name)
    return sha256_file(find_checkpoint(directory))


def _forget_other_models(root: Path, config: DemoConfig) -> None:
    try:
        recorded = json.loads((root / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if recorded.get("weights") != _weights_fingerprint(config.model):
        logger.info("the demo model changed since the last build: re-embedding the demo collection")
        shutil.rmtree(collection_dir(root), ignore_errors=True)
