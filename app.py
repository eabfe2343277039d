"""Serve the mmretrieval web UI: ``python app.py [--collection DIR] [--model SPEC] [--host 127.0.0.1] [--port 7860]``.

With no ``--collection`` (and no ``$MMR_COLLECTION``) it builds the demo collection once (a few thousand
generated scenes, embedded with the bundled ``builtin:shapes`` model), caches it in the user cache directory (``~/.cache/mmretrieval/demo``; ``--data-dir`` or ``$MMR_DEMO_DIR`` to choose), and
serves that: no model or data download needed. Same as ``mmr serve``.
"""

from __future__ import annotations

import sys

from mmretrieval.cli.serve_cmd import main

if __name__ == "__main__":
    sys.exit(main())
