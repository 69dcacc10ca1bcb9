"""The client's copy-and-checksum of payloads bound for shared memory."""

from __future__ import annotations

import itertools
import os

import crc32c
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from improv_store.client.checksum import PARALLEL_MIN, copy_and_checksum, crc32c_combine


@given(st.binary(max_size=4096), st.binary(max_size=4096))
def test_combined_crcs_are_the_crc_of_the_joined_bytes(first: bytes, second: bytes) -> None:
    combined = crc32c_combine(crc32c.crc32c(first), crc32c.crc32c(second), len(second))
    assert combined == crc32c.crc32c(first + second)


def test_combining_past_long_pieces() -> None:
    """Exact for a 1 MiB piece; beyond 4 GiB (lengths that use the top of the table of
    powers, too long to checksum here) joining is at least consistent: (a + b) + c
    gives what a + (b + c) gives."""
    head = crc32c.crc32c(b"frame header")
    zeros = bytes((1 << 20) + 1)
    assert crc32c_combine(head, crc32c.crc32c(zeros), len(zeros)) == crc32c.crc32c(zeros, head)
    a, b, c = (crc32c.crc32c(os.urandom(n)) for n in (10, 20, 30))
    for long in ((3 << 30) + 17, (1 << 40) + 5):
        left = crc32c_combine(crc32c_combine(a, b, long), c, long)
        assert left == crc32c_combine(a, crc32c_combine(b, c, long), 2 * long)


def test_large_payloads_in_several_parts_are_copied_and_checksummed_on_two_cores() -> None:
    """Above PARALLEL_MIN the halves are done by two threads; the result is the same as a
    plain copy and one CRC, whatever the parts' boundaries."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, PARALLEL_MIN + 12345, dtype=np.uint8).tobytes()
    view = memoryview(data)
    for cuts in ([], [7], [len(data) // 2], [100, len(data) // 2 + 3, len(data) - 1]):
        bounds = [0, *cuts, len(data)]
        parts = [view[start:end] for start, end in itertools.pairwise(bounds)]
        target = bytearray(len(data))
        assert copy_and_checksum(parts, memoryview(target)) == crc32c.crc32c(data)
        assert target == data
    small = bytearray(100)
    assert copy_and_checksum([view[:60], view[60:100]], memoryview(small)) == crc32c.crc32c(
        data[:100]
    )
    assert small == data[:100]
