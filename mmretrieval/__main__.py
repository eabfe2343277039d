"""``python -m mmretrieval``: the ``mmr`` command line."""

from .cli import command

command()
