"""The first module the decoding workers' forkserver imports (:func:`mmretrieval.ingest.worker.start_context`), and
imported by nothing else: it makes the process ignore SIGINT while the forkserver imports the decoding code. A
terminal's Ctrl-C reaches the whole process group, and a KeyboardInterrupt there only printed a traceback (the
parent stops its workers itself); before it, while the interpreter started, SIGINT was blocked, and a Ctrl-C
pending since then is dropped here. :mod:`._sigint_restored`, the last module imported, puts Python's handler
back, so that the processes it forks for anyone else get Ctrl-C as usual. It imports nothing of mmretrieval's
(the package's ``__init__`` imports nothing either), so that it runs as early as it can.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the Worker that started this process
