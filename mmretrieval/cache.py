"""Where mmretrieval keeps what it can rebuild (the demo collection, checkpoint hashes), and what it cannot (the
default collection, used when a command names none).

``$MMR_CACHE_DIR`` if set, else the platform's user cache directory (``$XDG_CACHE_HOME/mmretrieval``,
``~/.cache/mmretrieval`` on Linux; ``~/Library/Caches/mmretrieval`` on macOS), never the package's own folder,
which may be read-only site-packages. Data: ``$MMR_DATA_DIR``, else the user data directory
(``$XDG_DATA_HOME/mmretrieval``, ``~/.local/share/mmretrieval`` on Linux; ``~/Library/Application
Support/mmretrieval`` on macOS).
"""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """The cache root (not created here)."""
    configured = os.environ.get("MMR_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    try:
        import platformdirs
    except ImportError:  # a minimal install: the XDG rule by hand
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmretrieval"
    return Path(platformdirs.user_cache_dir("mmretrieval", appauthor=False))


def user_data_dir() -> Path:
    """The data root (not created here)."""
    configured = os.environ.get("MMR_DATA_DIR")
    if configured:
        return Path(configured).expanduser()
    try:
        import platformdirs
    except ImportError:
        return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "mmretrieval"
    return Path(platformdirs.user_data_dir("mmretrieval", appauthor=False))


def default_collection_dir() -> Path:
    """The collection a command uses when given no ``--collection`` and no ``$MMR_COLLECTION`` (as rclip keeps one
    database for all the folders it has seen)."""
    return user_data_dir() / "collection"
