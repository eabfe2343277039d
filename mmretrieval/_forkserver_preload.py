"""Imported first by the decoding workers' forkserver (:func:`mmretrieval.ingest.worker.start_context`), and by
nothing else: importing it makes the process ignore SIGINT from then on, as the forkserver and the workers it
forks should. A terminal's Ctrl-C reaches the whole process group; the parent stops its workers itself, and a
KeyboardInterrupt in the forkserver's own imports only printed a traceback. It imports nothing of mmretrieval's
(the package's ``__init__`` imports nothing either), so that it runs as early as it can.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
