"""Collection commands: ingest, search, similar, index, label, info."""


def register(subparsers) -> None:
    """Placeholder until the collection commands land."""
