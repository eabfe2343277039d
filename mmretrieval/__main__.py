"""``python -m mmretrieval``: the ``mmr`` command line."""

from .cli import main

raise SystemExit(main())
