"""The service's logs: one JSON object per line, never request text.

``configure_logging`` (called by ``focal serve``) makes that true of the whole process: the root
logger (grpc's and the libraries' records) writes JSON too, an exception that escapes a thread
becomes one JSON record with its traceback, warnings go through logging, and the libraries'
progress bars (weights loading) are switched off, since a terminal bar is not a log line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading

log = logging.getLogger("focal")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname, "event": record.getMessage()}
        if record.name != log.name:
            entry["logger"] = record.name
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _uncaught(kind, value, traceback, thread: str = "main") -> None:
    log.error("uncaught exception", exc_info=(kind, value, traceback), extra={"fields": {"thread": thread}})


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.WARNING, log.level))
    logging.captureWarnings(True)
    sys.excepthook = _uncaught
    threading.excepthook = lambda args: _uncaught(args.exc_type, args.exc_value, args.exc_traceback,
                                                  args.thread.name if args.thread else "?")
    # Read when tqdm bars are made and when transformers is imported (after this, in the store).
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
