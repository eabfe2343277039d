"""`mmr serve`: the Gradio UI."""


def register(subparsers) -> None:
    """Placeholder until the UI lands."""
