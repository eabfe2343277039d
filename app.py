"""Serve the mmretrieval web UI: ``python app.py [--collection DIR] [--host 127.0.0.1] [--port 7860]``.

Same as ``mmr serve``. It serves ``--collection`` (or ``$MMR_COLLECTION``); with neither, it builds the demo
collection once (a few thousand generated scenes, embedded with the bundled ``builtin:shapes`` model), caches it in
the user cache directory (``~/.cache/mmretrieval/demo``; ``--demo-dir`` or ``$MMR_DEMO_DIR`` to choose), and serves
that: no model or data download needed.
"""

from __future__ import annotations

import sys

from mmretrieval.cli.serve_cmd import main

if __name__ == "__main__":
    sys.exit(main())
