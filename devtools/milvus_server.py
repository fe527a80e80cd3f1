"""Milvus servers as child processes on loopback, for tests and benchmarks, with their data in a
local directory. Both speak the gRPC protocol a Milvus cluster speaks:

- ``MilvusLite``: ``milvus-lite`` 3.x, Milvus's pure-Python engine (starts in a second; its search
  walks every row in Python, so its latency says nothing about Milvus's).
- ``MilvusStandalone``: the Milvus server itself (Go and C++, knowhere's search), version 2.3.5 as
  the ``milvus`` PyPI package ships it, with embedded etcd and local storage: the database a
  cluster runs, on one machine."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from devtools.ports import free_port


class MilvusLite:
    """``milvus-lite server`` on 127.0.0.1 with its data in ``data_dir``; ``uri`` is what pymilvus takes."""

    def __init__(self, data_dir: Path, log_path: Path | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> MilvusLite:
        """Start and wait until a client can list collections (bounded by ``timeout`` seconds)."""
        from pymilvus import MilvusClient

        output = self.log_path.open("a") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir), "--host",
                 "127.0.0.1", "--port", str(self.port)], stdout=output, stderr=output)
        finally:
            if self.log_path:
                output.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"milvus-lite exited with status {self.process.returncode} while starting")
            try:
                client = MilvusClient(self.uri, timeout=2)
                client.list_collections()
                client.close()
                return self
            except Exception:  # not listening yet: pymilvus raises several kinds here
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"milvus-lite did not answer on {self.uri} within {timeout:.0f}s") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class MilvusStandalone:
    """The ``milvus`` package's Milvus 2.3.5 standalone server on 127.0.0.1, its data, logs and
    unpacked binaries in ``data_dir``; ``uri`` is what pymilvus takes. Configuration is Milvus's
    default (e.g. the proxy's 200 ms time tick, which bounds how long a Strong search waits)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.server = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> MilvusStandalone:
        """Start and wait until its health check answers (bounded by ``timeout`` seconds)."""
        try:
            from milvus import MilvusServer, MilvusServerConfig
        except ImportError as error:
            raise RuntimeError("the Milvus standalone server needs the 'milvus' package (pip install milvus==2.3.5, "
                               "in the test and bench extras)") from error
        config = MilvusServerConfig(data_dir=str(self.data_dir), proxy_port=self.port)
        self.server = MilvusServer(config, wait_for_started=False)
        self.server.start()
        try:
            self.server.wait_started(timeout=int(timeout * 1000))
        except (TimeoutError, RuntimeError) as error:
            log = self.data_dir / "logs" / "milvus-stderr.log"
            self.stop()
            raise RuntimeError(f"the Milvus standalone server did not start on {self.uri}: {error} "
                               f"(log: {log})") from None
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
