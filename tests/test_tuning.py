"""Process-wide memory tuning (improv_store.client.tuning): each case runs in a fresh
interpreter, because what it changes is the whole process's allocator."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_FAULTS = """
import resource

def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
"""


def _run(code: str) -> int:
    """The integer the snippet prints last."""
    result = subprocess.run(
        [sys.executable, "-c", _FAULTS + textwrap.dedent(code)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return int(result.stdout.split()[-1])


_CHURN = """
import numpy as np
{setup}

def one_message_burst() -> None:
    held = [np.empty(1 << 20, dtype=np.uint8) for _ in range(8)]
    for buffer in held:
        buffer[::4096] = 1  # touch every page

for _ in range(5):  # settle: glibc moves its own thresholds on the first frees
    one_message_burst()
before = minor_faults()
for _ in range(50):
    one_message_burst()
print(minor_faults() - before)
"""


def test_kept_memory_is_reused_without_page_faults() -> None:
    """Bursts of megabyte buffers allocated and freed, as a stream of inline chunks
    makes: with the tuning they come back from the heap already mapped; without
    it glibc trims them back to the kernel and every page faults in again."""
    tuned = _run(_CHURN.format(setup="from improv_store.client.tuning import keep_freed_memory\n"
                                     "keep_freed_memory()"))
    untuned = _run(_CHURN.format(setup=""))
    pages_per_burst = (8 << 20) // 4096
    assert tuned < pages_per_burst  # 50 bursts, fewer faults than one burst's pages
    assert untuned > 10 * pages_per_burst


def _transparent_huge_pages() -> str:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    text = path.read_text() if path.exists() else "[never]"
    return text[text.index("[") + 1 : text.index("]")]


@pytest.mark.skipif(_transparent_huge_pages() == "never", reason="no transparent huge pages")
def test_a_large_raw_payload_fills_with_huge_pages() -> None:
    """A 64 MiB bytes object to be filled by a streamed get: 16,384 small pages, but
    only a few dozen faults once it is backed by huge pages."""
    faults = _run("""
        import numpy as np
        from improv_store.client import codec
        from improv_store.v1 import store_pb2 as pb
        size = 64 << 20
        source = np.ones(size, dtype=np.uint8)
        before = minor_faults()
        payload, target = codec.fillable(size, pb.ENCODING_RAW)
        np.copyto(target, source)
        assert isinstance(payload, bytes) and payload[-1] == 1
        print(minor_faults() - before)
    """)
    assert faults < 1000


def test_huge_pages_are_not_asked_for_small_or_unaligned_spans() -> None:
    """Below HUGE_PAGE_MIN_SIZE, or where no whole 2 MiB page fits, nothing is advised
    (and nothing fails)."""
    _run("""
        import ctypes
        from improv_store.client.tuning import back_with_huge_pages
        buffer = ctypes.create_string_buffer(8 << 20)
        back_with_huge_pages(ctypes.addressof(buffer), 1 << 20)
        back_with_huge_pages(ctypes.addressof(buffer) + 4096, (2 << 20) - 8192)
        back_with_huge_pages(ctypes.addressof(buffer), 8 << 20)
        print(0)
    """)
