"""Child processes that never outlive the process that started them.

A study's members are subprocesses. On Linux each one asks the kernel, before it starts, for
SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so even a ``kill -9`` of the study
takes its members with it. A SIGTERM of the study is turned into the same interruption as
Ctrl-C, and ``stop`` then terminates the members (SIGTERM, SIGKILL after a grace period) and
waits for them. Training resumes exactly from the last per-epoch checkpoint either way.

    proc = subprocess.Popen(cmd, preexec_fn=die_with_parent())
    with sigterm_interrupts():
        ...                      # a SIGTERM here raises KeyboardInterrupt
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
GRACE_SECONDS = 10.0


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()  # loaded in the parent: the child between fork and exec only calls it


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child receive SIGKILL when this process dies (Linux; a
    no-op elsewhere). The kernel ties it to the thread that starts the child, so start
    children from a thread that lives as long as they should (the main one)."""
    parent = os.getpid()

    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
            os._exit(1)

    return preexec


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside the block a SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so the code that
    stops the children runs; the previous handler is restored after (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop(procs: Iterable[subprocess.Popen], grace: float = GRACE_SECONDS) -> None:
    """Terminate every running child, SIGKILL those still alive after ``grace`` seconds, and
    reap them all."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
