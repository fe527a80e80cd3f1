"""Background snapshots written by a forked child process: writes go on while it writes, the picture
is the store as of the fork, a failed child changes nothing, and a killed server leaves no child."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_index import RIVERS
from test_index_maintenance import documents

from compressor.embedding import Embedder
from compressor.retrieval import child
from compressor.retrieval import store as store_module
from compressor.retrieval.store import Document, IndexStore

pytestmark = pytest.mark.skipif(not child.can_fork(), reason="snapshots are written by a forked child on Linux only")

LOIRE = Document("loire", "The Loire is the longest river of France.")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def wait_for(path: Path, seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.01)
    return path.read_text()


def paused_writer(folder: Path, plain):
    """``write_staging`` that, in the child, says it started (its pid) and waits to be let go."""

    def write_staging(*args):
        (folder / "started.tmp").write_text(str(os.getpid()))
        (folder / "started.tmp").rename(folder / "started")
        wait_for(folder / "go")
        return plain(*args)

    return write_staging


def test_writes_go_on_while_a_child_writes_the_snapshot(tmp_path: Path, embedder: Embedder,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    signals = tmp_path / "signals"
    signals.mkdir()
    store = IndexStore(tmp_path / "data", embedder, snapshot_every=10**6)
    store.upsert("wiki", RIVERS)
    taken_at, at_fork = store.seq, documents(store)
    monkeypatch.setattr(store_module, "write_staging", paused_writer(signals, store_module.write_staging))
    store.maintain_in_background()
    writer = int(wait_for(signals / "started"))
    assert writer != os.getpid()
    store.upsert("wiki", [LOIRE])  # the child is paused: these return without it
    store.delete("wiki", ["alps"])
    (signals / "go").touch()
    store.settle()
    assert store.last_snapshot["in_child"] and store.snapshot_seq == taken_at < store.seq
    expected = documents(store)
    store.close(snapshot=False)
    from_snapshot = IndexStore(tmp_path / "data", embedder, open_log=False)  # the snapshot alone: as of the fork
    assert documents(from_snapshot) == at_fork
    from_snapshot.close(snapshot=False)
    reopened = IndexStore(tmp_path / "data", embedder)  # snapshot, then the two writes replayed from the log
    assert documents(reopened) == expected and "alps" not in expected and "loire" in expected
    assert reopened.search("wiki", "longest river of France", 1)[0].document_id == "loire"
    reopened.close()


def test_a_failed_child_leaves_the_live_snapshot_and_the_next_one_works(
        tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    store = IndexStore(tmp_path, embedder, snapshot_every=10**6)
    store.upsert("wiki", RIVERS)
    store.snapshot()
    live = (tmp_path / "CURRENT").read_text()
    store.upsert("wiki", [LOIRE])

    def failing(*args):
        raise OSError("no space left on device")

    plain = store_module.write_staging
    monkeypatch.setattr(store_module, "write_staging", failing)
    with caplog.at_level(logging.ERROR, logger="focal"):
        store.maintain_in_background()
        store.settle()
    assert "index maintenance failed" in caplog.text and "exited with status 1" in caplog.text
    assert (tmp_path / "CURRENT").read_text() == live and not list(tmp_path.glob(".staging-*"))
    monkeypatch.setattr(store_module, "write_staging", plain)
    store.maintain_in_background()
    store.settle()
    assert store.snapshot_seq == store.seq and (tmp_path / "CURRENT").read_text() != live
    expected = documents(store)
    store.close(snapshot=False)
    reopened = IndexStore(tmp_path, embedder, open_log=False)
    assert documents(reopened) == expected
    reopened.close(snapshot=False)


def test_a_killed_server_leaves_no_snapshot_writer_behind(tmp_path: Path, embedder: Embedder) -> None:
    data, signals = tmp_path / "data", tmp_path / "signals"
    signals.mkdir()
    store = IndexStore(data, embedder)
    store.upsert("wiki", RIVERS)
    expected = documents(store)
    store.close(snapshot=False)
    script = ("import sys, time\n"
              "from pathlib import Path\n"
              "from test_index_snapshot_child import paused_writer\n"
              "from compressor.retrieval import store as store_module\n"
              "store_module.write_staging = paused_writer(Path(sys.argv[2]), store_module.write_staging)\n"
              "store = store_module.IndexStore(sys.argv[1])\n"
              "store.maintain_in_background()\n"
              "time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    server = subprocess.Popen([sys.executable, "-c", script, str(data), str(signals)], env=env)
    try:
        writer = int(wait_for(signals / "started", 120))
        server.send_signal(signal.SIGKILL)
        assert server.wait(30) == -9
    finally:
        server.kill()
    deadline = time.monotonic() + 10
    while alive(writer):
        assert time.monotonic() < deadline, "the snapshot writer outlived its server"
        time.sleep(0.05)
    reopened = IndexStore(data, embedder)  # the data directory's lock is free, nothing is lost
    assert documents(reopened) == expected and not list(data.glob(".staging-*"))
    reopened.close()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")
