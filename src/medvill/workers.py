"""Worker processes that never outlive the run that started them.

``medvill prepare --workers N`` and ``medvill demo`` start spawned worker processes.  If the
parent is killed (SIGKILL, the OOM killer, a closed terminal), nothing tells a worker: it went
on with its queued work for minutes, reparented to PID 1, and kept multiprocessing's resource
tracker alive.  :func:`init_worker` (a pool ``initializer``) starts a daemon thread in each
worker that checks twice a second whether its parent is still the process that started it, and
ends the worker at once when it is not.  (``prctl(PR_SET_PDEATHSIG)`` is not used: it fires
when the parent *thread* that forked exits, which in a pool need not be the parent process.)
"""

from __future__ import annotations

import os
import signal
import threading
import time

#: seconds between two checks of the parent
POLL_S = 0.5


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(POLL_S)
        if os.getppid() != parent:
            os._exit(70)  # the parent is gone: no cleanup to wait for, every file is written atomically


def die_with_parent(parent: int | None = None) -> None:
    """End this process (within :data:`POLL_S`) once ``parent`` (default: the current parent)
    is no longer its parent."""
    parent = os.getppid() if parent is None else parent
    threading.Thread(target=_watch_parent, args=(parent,), name="medvill-parent-watch", daemon=True).start()


def init_worker(threads: int | None = None, ignore_sigint: bool = False) -> None:
    """Pool initializer: die with the parent; optionally ``threads`` torch threads and Ctrl-C
    left to the parent (which then stops the pool)."""
    die_with_parent()
    if ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
