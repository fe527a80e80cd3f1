"""A ``focal serve`` child process on loopback, for tests, load tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from compressor.client import wait_until_serving
from devtools.data import ROOT


class ServerProcess:
    """``python -m compressor serve`` on 127.0.0.1:``port`` with ``settings`` as ``FOCAL_*`` variables
    (metrics off unless given); its output goes to ``log_path`` (discarded when None)."""

    def __init__(self, port: int, settings: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.port = port
        self.settings = settings or {}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> float:
        """Start and wait until the health service says SERVING; returns the seconds it took."""
        env = {**os.environ, "FOCAL_HOST": "127.0.0.1", "FOCAL_PORT": str(self.port), "FOCAL_METRICS_PORT": "0",
               **self.settings}
        output = self.log_path.open("a") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen([sys.executable, "-m", "compressor", "serve"], cwd=ROOT, env=env,
                                            stdout=output, stderr=output)
        finally:
            if self.log_path:
                output.close()
        where = f"; see {self.log_path}" if self.log_path else ""
        try:
            return wait_until_serving(self.target, timeout, alive=lambda: self.process.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            self.kill()
            raise type(exc)(f"{exc}{where}") from None

    def terminate(self) -> None:
        """SIGTERM: the server drains and exits by itself."""
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout`` seconds); returns the exit status."""
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode
