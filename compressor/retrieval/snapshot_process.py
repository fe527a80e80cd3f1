"""Background snapshots written by a separate process that reads the data directory's files.

Why a process: a snapshot of a large store is seconds to minutes of Python work (encoding every
document), and in a thread it shares the interpreter lock with the threads serving requests: each
time a request thread comes back from a torch or FAISS call it may wait a whole switch interval
for the lock, so embedding forwards took several times as long during a snapshot.

Why not a fork: forking copies the page tables of the whole process, in proportion to the memory it
holds, and a write that reaches the store meanwhile waits; with 10^6 chunks that one event was the
longest write stall (``bench/results/store.md`` of the forked version, commit 1a887c9).

So the server shares nothing with the writer but files: it notes where its picture stands (the
sequence number, the live log and the byte where the applied records end), and starts
``snapshot_worker`` (spawned, which copies no memory), which loads the live snapshot, replays the
log up to that byte, checks that it reached the same sequence number, and writes the staging folder.
The server publishes it once the worker has exited 0. The log is append-only and one snapshot or
compaction runs at a time, so the files the worker reads do not change under it.

What it costs: the worker holds its own copy of the store (its peak resident memory is reported with
each snapshot), and reading the previous snapshot takes CPU time, at the idle priority
(``SCHED_IDLE``, not just nice 19: a request thread that wakes up preempts the worker at once, and
the worker, with the threads FAISS starts in it, runs only on CPU time nothing else wants), from
before its interpreter starts: a bare ``python -S`` sets the policy and executes the worker's
program (``IDLE_LAUNCHER``). A worker that starts at normal priority and lowers itself later spends
its start-up and imports (a third of a second of CPU) taking a core from the requests' threads: a
write that began then took 250 ms instead of 20 (2 cores). ``posix_spawn`` cannot set this policy
(glibc accepts only the real-time ones and the default), and lowering the spawning thread itself
would leave a thread that later takes the store's lock at the idle priority. The worker dies with
the thread that started it (``PR_SET_PDEATHSIG``), so a killed server leaves no writer behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import compressor
from compressor.retrieval.vectors import IndexSpec

# Run by ``python -S -c`` with the real command line as its arguments: idle priority, then exec.
IDLE_LAUNCHER = ("import os, sys; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)); "
                 "os.execv(sys.argv[1], sys.argv[1:])")


def can_run() -> bool:
    """Where the worker can be tied to its server's life (Linux); elsewhere snapshots run in-process."""
    return sys.platform == "linux"


class WorkerFailed(Exception):
    """The snapshot worker ended without writing its snapshot; the message says how."""


@dataclass(frozen=True)
class Picture:
    """Where the store stands: what the worker must reproduce from the files."""

    seq: int
    log_name: str
    log_end: int


def start(root: Path, spec: IndexSpec, picture: Picture) -> subprocess.Popen:
    """Start the worker for ``picture`` of the data directory ``root``, at the idle CPU priority from
    the start; ``wait`` must follow, from the same thread (the worker dies with it). Its error output
    goes to this process's."""
    package_parent = str(Path(compressor.__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-S", "-c", IDLE_LAUNCHER,
               sys.executable, "-m", "compressor.retrieval.snapshot_worker", str(root),
               "--seq", str(picture.seq), "--log", picture.log_name, "--log-end", str(picture.log_end),
               "--spec", json.dumps(spec.describe()), "--parent", str(os.getpid())]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": path})


def wait(process: subprocess.Popen) -> dict:
    """Wait for the worker to end; returns what it reports (its peak resident memory). ``WorkerFailed``
    unless it wrote its snapshot."""
    output, _ = process.communicate()
    code = process.returncode
    if code:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise WorkerFailed(f"the snapshot worker (pid {process.pid}) {how}")
    return json.loads(output)
