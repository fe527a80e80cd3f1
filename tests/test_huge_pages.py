"""Large weights on 2 MiB pages (engine.huge_pages): aligned, filled as asked, and backed by huge
pages where the kernel's transparent huge pages take advice."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from engine.huge_pages import HUGE_PAGE, SMALLEST, huge_page_empty, on_huge_pages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _anon_huge_kib() -> int:
    return int(re.search(r"AnonHugePages:\s+(\d+) kB", Path("/proc/self/smaps_rollup").read_text()).group(1))


def test_a_large_copy_is_aligned_equal_and_small_tensors_stay_as_they_are() -> None:
    source = torch.randn(SMALLEST // 2 + 3, dtype=torch.float32).bfloat16()  # just over SMALLEST bytes
    copy = on_huge_pages(source)
    assert copy.data_ptr() % HUGE_PAGE == 0 and torch.equal(copy, source)
    small = torch.ones(10)
    assert on_huge_pages(small) is small


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages here")
def test_the_memory_is_backed_by_huge_pages() -> None:
    before = _anon_huge_kib()
    tensor = huge_page_empty((64, HUGE_PAGE // 2), torch.bfloat16)  # 64 MiB
    tensor.fill_(1)
    assert _anon_huge_kib() - before >= 32 * 1024  # at least half of it (the OS may be short of huge pages)
