"""Background snapshots written by a worker process from the files: writes go on while it writes, the
picture is the store as of its start, a failed or refused worker changes nothing, and a killed server
leaves no worker behind."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_index import RIVERS
from test_index_maintenance import documents

from compressor.embedding import Embedder
from compressor.retrieval import snapshot_process
from compressor.retrieval.snapshot import staging_folder
from compressor.retrieval.snapshot_worker import PictureMismatch, write_staging_as_of
from compressor.retrieval.store import Document, IndexStore
from compressor.retrieval.vectors import IndexSpec
from compressor.retrieval.wal import WriteAheadLog

pytestmark = pytest.mark.skipif(not snapshot_process.can_run(),
                                reason="background snapshots are written by a worker process on Linux only")

LOIRE = Document("loire", "The Loire is the longest river of France.")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def state(pid: int) -> str:
    """The process's state letter (R, S, T for stopped, Z...); "gone" once it is reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def stopped_worker(store: IndexStore) -> int:
    """Catch the store's snapshot worker as it starts and stop it (SIGSTOP); returns its pid."""
    deadline = time.monotonic() + 30
    while (worker := store.snapshot_worker) is None:
        assert time.monotonic() < deadline, "no snapshot worker started"
        time.sleep(0.001)
    os.kill(worker.pid, signal.SIGSTOP)
    while state(worker.pid) != "T":
        assert time.monotonic() < deadline, f"the worker did not stop (state {state(worker.pid)})"
        time.sleep(0.005)
    return worker.pid


def scheduling(pid: int) -> tuple[list[bytes], int] | None:
    """The process's command line and scheduling policy (``/proc/PID/stat`` field 41); None once gone."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return command, int(fields[41 - 3])


def test_the_worker_program_runs_at_the_idle_priority_from_its_start(tmp_path: Path, embedder: Embedder) -> None:
    store = IndexStore(tmp_path, embedder, snapshot_every=10**6)
    store.upsert("wiki", RIVERS)
    store.maintain_in_background()
    pid = stopped_worker(store)
    os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while (seen := scheduling(pid)) is not None and seen[0][1:3] != [b"-m", b"compressor.retrieval.snapshot_worker"]:
        assert time.monotonic() < deadline, f"the launcher did not execute the worker: {seen[0]}"
        time.sleep(0.0005)
    assert seen is not None, "the worker ended before its program was seen"
    assert seen[1] == os.SCHED_IDLE  # set by the launcher, before the worker's interpreter started
    store.settle()
    assert store.last_snapshot["by_worker"]
    store.close(snapshot=False)


def test_writes_go_on_while_the_worker_writes_the_snapshot(tmp_path: Path, embedder: Embedder) -> None:
    store = IndexStore(tmp_path, embedder, snapshot_every=10**6)
    store.upsert("wiki", RIVERS)
    taken_at, at_start = store.seq, documents(store)
    store.maintain_in_background()
    worker = stopped_worker(store)
    assert worker != os.getpid()
    store.upsert("wiki", [LOIRE])  # the worker is stopped: these return without it
    store.delete("wiki", ["alps"])
    os.kill(worker, signal.SIGCONT)
    store.settle()
    assert store.last_snapshot["by_worker"] and store.snapshot_seq == taken_at < store.seq
    assert store.last_snapshot["worker_peak_rss_bytes"] > 0
    expected = documents(store)
    store.close(snapshot=False)
    from_snapshot = IndexStore(tmp_path, embedder, open_log=False)  # the snapshot alone: as of the worker's start
    assert documents(from_snapshot) == at_start
    from_snapshot.close(snapshot=False)
    reopened = IndexStore(tmp_path, embedder)  # snapshot, then the two writes replayed from the log
    assert documents(reopened) == expected and "alps" not in expected and "loire" in expected
    assert reopened.search("wiki", "longest river of France", 1)[0].document_id == "loire"
    reopened.close()


def test_a_killed_worker_leaves_the_live_snapshot_and_the_next_one_works(
        tmp_path: Path, embedder: Embedder, caplog: pytest.LogCaptureFixture) -> None:
    store = IndexStore(tmp_path, embedder, snapshot_every=10**6)
    store.upsert("wiki", RIVERS)
    store.snapshot()
    live = (tmp_path / "CURRENT").read_text()
    store.upsert("wiki", [LOIRE])
    with caplog.at_level(logging.ERROR, logger="focal"):
        store.maintain_in_background()
        os.kill(stopped_worker(store), signal.SIGKILL)  # as the kernel's out-of-memory killer would
        store.settle()
    assert "index maintenance failed" in caplog.text and "was killed by signal 9" in caplog.text
    assert (tmp_path / "CURRENT").read_text() == live and not list(tmp_path.glob(".staging-*"))
    assert store.snapshot_worker is None
    store.maintain_in_background()
    store.settle()
    assert store.snapshot_seq == store.seq and (tmp_path / "CURRENT").read_text() != live
    expected = documents(store)
    store.close(snapshot=False)
    reopened = IndexStore(tmp_path, embedder, open_log=False)
    assert documents(reopened) == expected
    reopened.close(snapshot=False)


def test_close_stops_a_running_worker_and_writes_the_closing_snapshot(
        tmp_path: Path, embedder: Embedder, caplog: pytest.LogCaptureFixture) -> None:
    store = IndexStore(tmp_path, embedder, snapshot_every=10**6)
    store.upsert("wiki", RIVERS)
    store.maintain_in_background()
    worker = stopped_worker(store)  # a worker that would never finish on its own
    store.upsert("wiki", [LOIRE])
    expected = documents(store)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="focal"):
        store.close()
    assert time.monotonic() - started < 30 and state(worker) == "gone"
    assert "the store is closing" in caplog.text and "index maintenance failed" not in caplog.text
    assert not list(tmp_path.glob(".staging-*"))
    from_snapshot = IndexStore(tmp_path, embedder, open_log=False)  # the closing snapshot holds every write
    assert documents(from_snapshot) == expected
    from_snapshot.close(snapshot=False)


def test_the_worker_refuses_a_picture_the_files_do_not_lead_to(tmp_path: Path, embedder: Embedder) -> None:
    store = IndexStore(tmp_path, embedder, snapshot_every=10**6)
    store.upsert("wiki", RIVERS)
    store.snapshot()
    store.upsert("wiki", [LOIRE])
    picture = snapshot_process.Picture(store.seq, store.wal_name, store.applied_end)
    spec = IndexSpec()
    with pytest.raises(PictureMismatch, match="leads to sequence number"):
        write_staging_as_of(tmp_path, spec, snapshot_process.Picture(picture.seq + 1, picture.log_name,
                                                                      picture.log_end))
    with pytest.raises(PictureMismatch, match=r"the live log is wal\.log"):
        write_staging_as_of(tmp_path, spec, snapshot_process.Picture(picture.seq, "wal-000000000009.log",
                                                                      picture.log_end))
    assert not list(tmp_path.glob(".staging-*"))
    command = [sys.executable, "-m", "compressor.retrieval.snapshot_worker", str(tmp_path), "--seq",
               str(picture.seq + 1), "--log", picture.log_name, "--log-end", str(picture.log_end),
               "--spec", json.dumps(spec.describe()), "--parent", str(os.getpid())]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "leads to sequence number" in refused.stderr and not refused.stdout
    assert not list(tmp_path.glob(".staging-*"))
    write_staging_as_of(tmp_path, spec, picture)  # the true picture is written
    assert staging_folder(tmp_path, picture.seq).is_dir()
    store.close(snapshot=False)


def filled_log(root: Path, embedder: Embedder, documents: int) -> None:
    """A log of ``documents`` single-chunk documents in records of 1000, with random unit vectors (a
    store big enough that replaying it keeps the worker busy for a while)."""
    rng = np.random.default_rng(0)
    log = WriteAheadLog(root / "wal.log")
    for seq, first in enumerate(range(0, documents, 1000), start=1):
        rows = rng.standard_normal((1000, embedder.dim), dtype=np.float32)
        log.append({"op": "upsert", "ns": "wiki", "dim": embedder.dim, "embedder": embedder.name,
                    "first_id": first, "seq": seq,
                    "docs": [{"id": f"doc-{n}", "metadata": {}, "chunks": [f"passage {n}"]}
                             for n in range(first, first + 1000)]},
                   (rows / np.linalg.norm(rows, axis=1, keepdims=True)).tobytes())
    log.close()


def reads(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    return False


def test_a_killed_server_leaves_no_snapshot_worker_behind(tmp_path: Path, embedder: Embedder) -> None:
    filled_log(tmp_path, embedder, 50_000)
    script = ("import sys, time\n"
              "from compressor.retrieval.store import IndexStore\n"
              "store = IndexStore(sys.argv[1])\n"
              "store.maintain_in_background()\n"
              "while store.snapshot_worker is None:\n"
              "    time.sleep(0.001)\n"
              "print(store.snapshot_worker.pid, flush=True)\n"
              "time.sleep(120)\n")
    server = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(server.stdout.readline())
        deadline = time.monotonic() + 60
        while not reads(worker, tmp_path / "wal.log"):  # replaying: past its start, tied to the server
            assert state(worker) not in ("gone", "Z", "X"), "the worker ended before it was caught replaying"
            assert time.monotonic() < deadline, "the worker never read the log"
            time.sleep(0.001)
        os.kill(worker, signal.SIGSTOP)  # a stopped process cannot end on its own
        server.send_signal(signal.SIGKILL)
        assert server.wait(30) == -9
    finally:
        server.kill()
        server.stdout.close()
    deadline = time.monotonic() + 10
    while state(worker) not in ("gone", "Z", "X"):
        assert time.monotonic() < deadline, "the snapshot worker outlived its server"
        time.sleep(0.05)
    reopened = IndexStore(tmp_path, embedder)  # the data directory's lock is free, nothing is lost
    assert len(reopened.namespaces["wiki"].documents) == 50_000 and reopened.seq == 50
    assert not list(tmp_path.glob(".staging-*")) and not (tmp_path / "CURRENT").exists()
    reopened.close(snapshot=False)
