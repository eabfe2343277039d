"""Where mmretrieval keeps what it can rebuild: the demo collection, checkpoint hashes.

``$MMR_CACHE_DIR`` if set, else the platform's user cache directory (``$XDG_CACHE_HOME/mmretrieval``,
``~/.cache/mmretrieval`` on Linux; ``~/Library/Caches/mmretrieval`` on macOS), never the package's own folder,
which may be read-only site-packages.
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
