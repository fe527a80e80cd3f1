"""An append-only write-ahead log of index operations, fsynced before each write is acknowledged.

Record layout: ``magic (4 bytes) | header length (u32) | body length (u32) | crc32 (u32)``, then a
JSON header and a binary body (the vectors). The CRC covers header and body. On open, the log is
read to its end: a record cut short at the very end of the file (the process died while writing
it, so it was never acknowledged) is cut off. Anything else that does not check out is corruption
and raises ``LogCorrupt`` with the byte offset: a bad magic, and a complete record whose checksum
fails, even the last one (its length says it was written whole, and it was acknowledged then).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"FWAL"
_PREFIX = struct.Struct("<4sIII")


class LogCorrupt(Exception):
    """The log is damaged at byte ``offset``: what lies from there on cannot be trusted."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass
class Record:
    header: dict
    body: bytes
    end: int  # byte offset just past this record


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def scan(path: Path, start: int = 0) -> Iterator[Record]:
    """The whole records from byte ``start`` on, read one at a time; stops before a torn tail."""
    if not path.exists():
        return
    size = path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(start)
        offset = start
        while size - offset >= _PREFIX.size:
            magic, header_len, body_len, crc = _PREFIX.unpack(handle.read(_PREFIX.size))
            if magic != MAGIC:
                raise LogCorrupt(f"{path}: no record starts at byte {offset} (bad magic)", offset)
            end = offset + _PREFIX.size + header_len + body_len
            if end > size:
                return  # torn record at the tail
            payload = handle.read(header_len + body_len)
            if zlib.crc32(payload) != crc:
                raise LogCorrupt(f"{path}: checksum mismatch in the record at byte {offset}", offset)
            yield Record(json.loads(payload[:header_len]), payload[header_len:], end)
            offset = end


def verify(path: Path, end: int) -> int:
    """Check every record's checksum from the start of the log to byte ``end`` (where a snapshot says
    the log reached); returns how many records there are. A log shorter than ``end`` lost records
    that were acknowledged: ``LogCorrupt`` at its length."""
    size = path.stat().st_size if path.exists() else 0
    if size < end:
        raise LogCorrupt(f"{path}: {size} bytes, but the snapshot covers {end}: the log was cut short", size)
    count = 0
    for record in scan(path):
        if record.end > end:
            break
        count += 1
    return count


def intact_end(path: Path, start: int = 0) -> int:
    """Where the intact log ends (a torn tail lies beyond it)."""
    end = start
    for record in scan(path, start):
        end = record.end
    return end


class WriteAheadLog:
    """Open for appending after the records from ``start`` on were checked; a torn tail is cut off."""

    def __init__(self, path: Path, start: int = 0) -> None:
        self.path = path
        created = not path.exists()
        size = 0 if created else path.stat().st_size
        if size < start:
            raise LogCorrupt(f"{path}: {size} bytes, but {start} were checked: the log was cut short", size)
        intact = intact_end(path, start)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.torn_bytes = os.fstat(self._fd).st_size - intact
        if self.torn_bytes:
            os.ftruncate(self._fd, intact)
            os.fsync(self._fd)
        self.end = intact
        os.lseek(self._fd, intact, os.SEEK_SET)
        if created:
            fsync_dir(path.parent)

    def append(self, header: dict, body: bytes = b"") -> None:
        """Write one record and fsync it: when this returns, the record survives a crash."""
        encoded = json.dumps(header, separators=(",", ":")).encode()
        payload = encoded + body
        self.append_records(_PREFIX.pack(MAGIC, len(encoded), len(body), zlib.crc32(payload)) + payload)

    def append_records(self, record: bytes) -> None:
        """Write whole, already encoded records (one, or a run copied from another log) and fsync once."""
        try:
            written = 0
            while written < len(record):
                written += os.write(self._fd, record[written:])
            os.fsync(self._fd)
        except OSError:
            os.ftruncate(self._fd, self.end)  # never leave half a record before the next one
            os.lseek(self._fd, self.end, os.SEEK_SET)
            raise
        self.end += len(record)

    def close(self) -> None:
        os.close(self._fd)
