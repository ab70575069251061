"""Stable routing of customers to key groups.

Key groups, not customers, are the bytewax keys (DESIGN.md): a fixed number
of them, each holding a table of its customers. The hash must give the same
group in every process and on every run, so it is CRC-32 of the UTF-8 bytes,
never Python's salted ``hash()``.
"""

from __future__ import annotations

import zlib

DEFAULT_KEY_GROUPS = 64


def key_group(tenant: str, customer_id: str, key_groups: int) -> int:
    """Return the key group (0 to ``key_groups - 1``) of a customer."""
    data = f"{tenant}\x1f{customer_id}".encode()
    return zlib.crc32(data) % key_groups


def key_group_name(index: int) -> str:
    """Return the bytewax key (a string) of key group `index`."""
    return f"kg{index:04d}"
