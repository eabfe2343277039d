"""``python -m mmretrieval.cli``: the ``mmr`` command line."""

from . import command

command()
