"""Process-wide memory tuning for payloads that travel inline: glibc's malloc and
transparent huge pages.

Moving a payload through gRPC allocates and frees megabyte-sized buffers for
every message, and a large get fills one fresh buffer. Both cost page faults,
not copies, and page faults cost more than the copy itself on a large payload
(figures in docs/performance.md). This is process tuning, not part of the
contract, so it lives with the client, whose inline gets need both; the server
calls ``keep_freed_memory`` from here too, for the same buffers on its side.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_MADV_HUGEPAGE = 14  # from linux/mman.h
_HUGE_PAGE = 2 << 20
_PAGE = 4096
# Fresh buffers at least this large are backed by huge pages (numpy's threshold too).
HUGE_PAGE_MIN_SIZE = 4 << 20

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of returning it to the kernel.

    Every payload that travels inline allocates megabyte-sized buffers;
    returned to the kernel each time, they page-fault back in on the next
    call. Setting both thresholds also stops glibc from moving them on its
    own. Allocations above 32 MiB are still mapped afresh, and up to 256 MiB
    of freed heap is kept.
    """
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is None:
        return  # not glibc: nothing to tune
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 256 << 20)


def back_with_huge_pages(address: int, size: int) -> None:
    """Ask the kernel to back the not yet touched buffer at ``address`` with 2 MiB
    pages, so that filling it costs one page fault per 2 MiB instead of per 4 KiB.

    For fresh buffers of HUGE_PAGE_MIN_SIZE or more that are about to be filled
    (numpy already does this for its own arrays). Only the whole huge pages
    inside the buffer are advised; where the kernel does not offer
    transparent huge pages this changes nothing.
    """
    madvise = getattr(_libc, "madvise", None)
    if madvise is None or size < HUGE_PAGE_MIN_SIZE:
        return
    start = -(-address // _HUGE_PAGE) * _HUGE_PAGE
    end = (address + size) // _PAGE * _PAGE
    if end - start < _HUGE_PAGE:
        return
    if madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_HUGEPAGE) != 0:
        log.debug("madvise(MADV_HUGEPAGE) refused: errno %d", ctypes.get_errno())
