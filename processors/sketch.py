"""A small HyperLogLog: distinct counts in constant memory once exact sets get too big.

Deterministic (blake2b hashing, no randomness), JSON-able (a list of ints), and
~6.5% standard error with 256 registers, which is plenty for "how many distinct
users support this group's feedback" past a few thousand users.
"""

from __future__ import annotations

import hashlib
import math

REGISTERS = 256
_INDEX_BITS = 8


def new_sketch() -> list[int]:
    return [0] * REGISTERS


def add(sketch: list[int], item: str) -> None:
    """Record ``item`` in the sketch (in place)."""
    value = int.from_bytes(hashlib.blake2b(item.encode(), digest_size=8).digest(), "big")
    index = value >> (64 - _INDEX_BITS)
    rest = value & ((1 << (64 - _INDEX_BITS)) - 1)
    rank = (64 - _INDEX_BITS) - rest.bit_length() + 1
    if rank > sketch[index]:
        sketch[index] = rank


def estimate(sketch: list[int]) -> int:
    """Estimated number of distinct items added."""
    m = len(sketch)
    alpha = 0.7213 / (1 + 1.079 / m)
    raw = alpha * m * m / sum(2.0**-r for r in sketch)
    zeros = sketch.count(0)
    if raw <= 2.5 * m and zeros:
        return round(m * math.log(m / zeros))  # linear counting for small ranges
    return round(raw)
