"""A Milvus Lite server as a child process on loopback: a real Milvus gRPC endpoint (the protocol a
Milvus cluster speaks) for tests and benchmarks, with its data in a local directory."""

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
