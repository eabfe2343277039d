"""The last module the decoding workers' forkserver imports: Python's own SIGINT handler again, after
:mod:`._sigint_ignored` (see there). The forkserver then ignores SIGINT itself, as it always does, and the
processes it forks start with this handler (a decoding worker ignores SIGINT from its first line).
"""

import signal

signal.signal(signal.SIGINT, signal.default_int_handler)
