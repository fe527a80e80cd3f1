"""Large weights on 2 MiB pages (engine.huge_pages): aligned, filled as asked, and advised onto huge
pages where the kernel's transparent huge pages take advice."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from engine.huge_pages import HUGE_PAGE, SMALLEST, huge_page_empty, on_huge_pages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _vm_flags(address: int) -> list[str]:
    """The kernel's flags for the mapping holding ``address`` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            low, high = (int(part, 16) for part in line.split()[0].split("-"))
            inside = low <= address < high
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_a_large_copy_is_aligned_equal_and_small_tensors_stay_as_they_are() -> None:
    source = torch.randn(SMALLEST // 2 + 3, dtype=torch.float32).bfloat16()  # just over SMALLEST bytes
    copy = on_huge_pages(source)
    assert copy.data_ptr() % HUGE_PAGE == 0 and torch.equal(copy, source)
    small = torch.ones(10)
    assert on_huge_pages(small) is small


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages here")
def test_the_memory_is_advised_onto_huge_pages() -> None:
    """The advice is ours to give and shows in the mapping's flags ("hg"); whether the kernel finds free
    2 MiB pages at that moment is not (a fragmented machine serves 4 KiB pages, only slower)."""
    tensor = huge_page_empty((64, HUGE_PAGE // 2), torch.bfloat16)  # 64 MiB
    tensor.fill_(1)
    assert "hg" in _vm_flags(tensor.data_ptr())
    assert "hg" not in _vm_flags(torch.empty(64, HUGE_PAGE // 2, dtype=torch.bfloat16).data_ptr())
