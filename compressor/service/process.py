"""``focal serve``: configure logging, start the server, drain on SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import threading

from compressor.retrieval.errors import IndexCorrupt
from compressor.service.logs import configure_logging, log
from compressor.service.server import FocalServer
from compressor.service.settings import Settings


def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then drain. Returns the exit status."""
    configure_logging(settings.log_level)
    try:
        server = FocalServer(settings).start()
    except (IndexCorrupt, ValueError, OSError) as exc:
        log.error("cannot start", extra={"fields": {"error": str(exc)}})
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.drain()
    return 0
