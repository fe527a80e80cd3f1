"""Large weights on 2 MiB pages, where Linux offers them on request (transparent huge pages).

A decode step streams every weight once, and with 4 KiB pages every 4 KiB of a stream is another
address translation; on 2 MiB pages the same stream needs 512 times fewer. With transparent huge
pages in their common ``madvise`` mode, memory gets huge pages only where ``madvise(MADV_HUGEPAGE)``
asked for them before it was first written, so the buffer is allocated, aligned, advised, and only
then filled. Elsewhere (another OS, THP off, a refused call) the buffer is ordinary memory: nothing
changes but the speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

HUGE_PAGE = 2 << 20
SMALLEST = 8 * HUGE_PAGE  # below this, the alignment slack outweighs the gain
_MADV_HUGEPAGE = 14


def _madvise() -> ctypes._CFuncPtr | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    advise = libc.madvise
    advise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advise.restype = ctypes.c_int
    return advise


_advise = _madvise()


def huge_page_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor whose memory was advised onto huge pages before any write (when it
    is large enough and the OS takes the advice)."""
    size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    if _advise is None or size < SMALLEST:
        return torch.empty(shape, dtype=dtype)
    raw = torch.empty(size + HUGE_PAGE, dtype=torch.uint8)  # the view below keeps it alive
    start = -raw.data_ptr() % HUGE_PAGE
    _advise(raw.data_ptr() + start, size - size % HUGE_PAGE, _MADV_HUGEPAGE)  # refused: plain pages
    return raw[start : start + size].view(dtype).view(shape)


def on_huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of a CPU tensor on huge pages (see ``huge_page_empty``), or the tensor itself when small."""
    if tensor.numel() * tensor.element_size() < SMALLEST:
        return tensor
    copy = huge_page_empty(tuple(tensor.shape), tensor.dtype)
    copy.copy_(tensor)
    return copy
