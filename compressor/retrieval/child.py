"""Work done in a forked child process, on the parent's memory as it was at the fork.

Why a process: a snapshot of a large store is seconds of Python work (encoding every document),
and in a thread it shares the interpreter lock with the threads serving requests. Each time a
request thread comes back from a torch or FAISS call it may wait a whole switch interval for the
lock, so an embedding forward took several times as long during a snapshot (``bench.store``
times writes during one). A forked child has its own interpreter: it sees the store frozen at the
instant of the fork (copy-on-write, no copying up front) and runs at a low priority, so on a
small machine it takes the CPU the request threads leave.

What it costs: the fork copies the page tables, in proportion to the memory the process holds,
once and under the caller's lock (which is what makes the picture consistent); and the child's
memory grows by the pages it touches (the documents' objects, whose reference counts it changes)
until it exits. The parent's cyclic garbage collector is frozen meanwhile, so that a full
collection does not write to (and so copy) every object while the child lives.

Rules in the child: it starts with one thread, and every lock another thread held at the fork
stays held forever, so the work must take none of them (no logging, no torch, no FAISS OpenMP
regions); it ends with ``os._exit`` (no ``atexit``, no flushing of the parent's buffers), and dies
with the thread that forked it (``PR_SET_PDEATHSIG``), so a killed server leaves no writer behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
import traceback
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def can_fork() -> bool:
    return hasattr(os, "fork") and sys.platform == "linux"


class ChildFailed(Exception):
    """The child process ended without finishing its work; the message says how."""


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def start(work: Callable[[], None], niceness: int, close_fds: tuple[int, ...] = ()) -> int:
    """Fork a child that closes ``close_fds`` (its copies only), sets its own niceness to
    ``niceness``, runs ``work`` and exits (0 on success, 1 on an exception, whose traceback goes to stderr).
    Returns the child's pid; ``wait`` must follow, from the same thread (the child dies with it)."""
    parent = os.getpid()
    gc.freeze()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _die_with_parent(parent)
        for fd in close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
        work()
        code = 0
    except BaseException:
        traceback.print_exc()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
    finally:
        os._exit(code)


def wait(pid: int) -> None:
    """Wait for the child ``pid`` to end; ``ChildFailed`` unless it finished its work."""
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        gc.unfreeze()
    code = os.waitstatus_to_exitcode(status)
    if code:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise ChildFailed(f"the child process {pid} {how}")
