"""Copy a payload into shared memory and return its CRC32C, on two cores when it is large.

The checksum travels with the seal (SealRequest.crc32c), so the server need not
read the region again. Copying and checksumming are both memory-bound, so from
``PARALLEL_MIN`` a second thread copies and checksums the first half while the
caller does the second, and the halves' CRCs are combined (the CRC of two
pieces joined follows from theirs and the second's length). There is one
hand-off per payload, not one per chunk, because each hand-off costs a thread
wake-up and many of them cost more than the overlap saves. The figures are in
docs/performance.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import crc32c
import numpy as np

# Smaller payloads are copied by the caller alone: the hand-off would cost more than it saves.
PARALLEL_MIN = 16 << 20

_POLYNOMIAL = 0x82F63B78  # Castagnoli, bit-reversed


def copy_and_checksum(parts: Sequence[memoryview], target: memoryview) -> int:
    """Copy ``parts`` into ``target`` (exactly their total size); return its CRC32C."""
    size = len(target)
    if size < PARALLEL_MIN:
        return _copy_then_checksum(parts, target)
    half = size // 2
    first, second = _split(parts, half)
    first_crc = _worker().submit(_copy_then_checksum, first, target[:half])
    second_crc = _copy_then_checksum(second, target[half:])
    return crc32c_combine(first_crc.result(), second_crc, size - half)


def crc32c_combine(first: int, second: int, second_length: int) -> int:
    """The CRC32C of two byte strings joined, from each one's CRC32C (zlib's method)."""
    return _multiply(_x_to_the_8n(second_length), first) ^ second


def _copy_then_checksum(parts: Sequence[memoryview], target: memoryview) -> int:
    """Copy with numpy, which releases the GIL (a memoryview assignment holds it)."""
    offset = 0
    for part in parts:
        np.copyto(np.frombuffer(target, np.uint8, len(part), offset), np.frombuffer(part, np.uint8))
        offset += len(part)
    return crc32c.crc32c(target)


def _split(parts: Sequence[memoryview], at: int) -> tuple[list[memoryview], list[memoryview]]:
    """``parts`` as two lists of views: the first ``at`` bytes, and the rest."""
    before: list[memoryview] = []
    after: list[memoryview] = []
    for part in parts:
        room = max(at, 0)
        if room >= len(part):
            before.append(part)
        elif room > 0:
            before.append(part[:room])
            after.append(part[room:])
        else:
            after.append(part)
        at -= len(part)
    return before, after


@functools.cache
def _worker() -> ThreadPoolExecutor:
    """The thread that copies and checksums the first half of large payloads."""
    return ThreadPoolExecutor(1, thread_name_prefix="improv-store-copy")


# -- arithmetic modulo the CRC polynomial, on bit-reversed 32-bit polynomials ------------


def _multiply(a: int, b: int) -> int:
    """a(x) * b(x) modulo the polynomial."""
    product = 0
    bit = 1 << 31
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLYNOMIAL if b & 1 else b >> 1
    return product


def _powers_of_two() -> list[int]:
    """x^(2^k) modulo the polynomial for k in 0..66 (x^1 is 1 << 30, bit-reversed):
    enough for any length below 2^64 bytes."""
    powers = [1 << 30]
    for _ in range(66):
        powers.append(_multiply(powers[-1], powers[-1]))
    return powers


_X_TO_2_TO_THE = _powers_of_two()


def _x_to_the_8n(length: int) -> int:
    """x^(8 * length): shifts a CRC past ``length`` bytes of zeros."""
    power = 1 << 31  # x^0
    k = 3  # 8 * length = length * 2^3
    while length:
        if length & 1:
            power = _multiply(_X_TO_2_TO_THE[k], power)
        length >>= 1
        k += 1
    return power
