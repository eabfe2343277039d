"""Room for the open files of a decoding pool: each worker and each shared-memory chunk of pixels holds some.

Running out midway failed the run (it resumes) and made multiprocessing's resource tracker print a traceback about
shared memory it never registered, so the room is made, or refused, before any worker starts.
"""

from __future__ import annotations

import logging
import os
import resource

from ..errors import CollectionError

logger = logging.getLogger(__name__)

_FILES_PER_CHUNK = 2  # a chunk's shared memory holds its descriptor and its mapping's copy of it
_FILES_PER_WORKER = 4  # its pipe, its header's two, its process sentinel
_FILES_SPARE = 24  # the forkserver's, the catalog's and segments' files, a model's, and some room


def reserve_open_files(chunks: int, workers: int) -> None:
    """Make room for the open files of ``chunks`` chunks and ``workers`` workers (and some to spare) beyond those
    open now: raise the soft limit toward the hard one where it is lower (as ``ulimit -S -n`` would), or refuse
    before any worker starts. Running out midway fails the run (it resumes) and makes the resource tracker print a
    traceback about shared memory it never registered.

    Raises:
        CollectionError: the hard limit is too low for ``workers`` decoding processes.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))
    except OSError:
        return  # no way to count what is open: go on, and an EMFILE says so
    wanted = open_now + _FILES_PER_CHUNK * chunks + _FILES_PER_WORKER * workers + _FILES_SPARE
    if soft == resource.RLIM_INFINITY or wanted <= soft:
        return
    if hard != resource.RLIM_INFINITY and wanted > hard:
        raise CollectionError(f"decoding with {workers} worker process(es) needs about {wanted} open files, and "
                              f"this process may open only {hard} (ulimit -n): raise the limit (ulimit -n 4096), or "
                              "lower --workers (0 decodes in this process, with no worker)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    logger.debug("raised the open-file limit from %d to %d for %d decoding workers", soft, wanted, workers)
