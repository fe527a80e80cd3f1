"""The snapshot worker's program (see ``snapshot_process.py``): rebuild the store as of a point of its
log from the data directory's files, and write that snapshot's staging folder.

    python -m compressor.retrieval.snapshot_worker DATA_DIR --seq S --log NAME --log-end BYTES \
        --spec JSON --parent PID

Exits 0 once the staging folder is durable, having printed its peak resident memory as JSON; 1 (with
the reason on standard error) when the files do not lead to the picture the server asked for, which
then publishes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import sys
from pathlib import Path

from compressor.retrieval.snapshot_process import Picture
from compressor.retrieval.store import IndexStore
from compressor.retrieval.vectors import IndexSpec

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class PictureMismatch(Exception):
    """The data directory's files do not lead to the picture the server described."""


def write_staging_as_of(root: Path, spec: IndexSpec, picture: Picture) -> None:
    """Load the live snapshot, replay the log up to ``picture.log_end``, check the result is the
    server's picture, and write its snapshot into the staging folder."""
    store = IndexStore(root, spec=spec, as_of_log_end=picture.log_end)
    if store.wal_name != picture.log_name:
        raise PictureMismatch(f"the live log is {store.wal_name}, the server writes {picture.log_name}")
    if store.seq != picture.seq:
        raise PictureMismatch(f"the log up to byte {picture.log_end} leads to sequence number {store.seq}, "
                              f"the server is at {picture.seq}")
    if not store.write_staging_snapshot():
        raise PictureMismatch(f"the live snapshot is as of sequence number {picture.seq} already")


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the server died before the request took effect
        sys.exit("the server that started this snapshot worker has ended")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--seq", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--log-end", type=int, required=True)
    parser.add_argument("--spec", required=True, help="the index settings, as IndexSpec.describe() writes them")
    parser.add_argument("--parent", type=int, required=True, help="the server's pid; the worker dies with it")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    try:
        write_staging_as_of(args.data_dir, IndexSpec(**json.loads(args.spec)),
                            Picture(args.seq, args.log, args.log_end))
    except PictureMismatch as exc:
        sys.exit(f"snapshot worker: {exc}; nothing was written")
    # VmHWM, not getrusage: that would count the server's pages too, which a spawned process holds until exec.
    print(json.dumps({"peak_rss_bytes": status_bytes("VmHWM")}))


def status_bytes(field: str) -> int:
    """A memory figure of this process from ``/proc/self/status`` (``VmRSS``, ``VmHWM``...), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field} line")


if __name__ == "__main__":
    main()
