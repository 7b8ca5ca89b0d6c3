"""The pageserver's key space.

A key is a u64: `rel << 32 | blkno` for a page. Block number 0xFFFFFFFF never
holds a page (the walservice rejects it: a relation has at most 2^32-1 blocks),
so `rel << 32 | 0xFFFFFFFF` is the relation's *metadata key*, whose values are
RelState (exists, nblocks). Keys of one relation are contiguous and its
metadata key sorts after its pages.
"""

from __future__ import annotations

from typing import NewType

Key = NewType("Key", int)

META_BLKNO = 0xFFFFFFFF
KEY_SPACE_END = Key(1 << 64)  # exclusive end of the whole key space (one past the last u64)


def page_key(rel: int, blkno: int) -> Key:
    return Key(rel << 32 | blkno)


def rel_meta_key(rel: int) -> Key:
    return Key(rel << 32 | META_BLKNO)


def key_rel(key: Key) -> int:
    return key >> 32


def key_blkno(key: Key) -> int:
    return key & 0xFFFFFFFF


def is_meta_key(key: Key) -> bool:
    return key & 0xFFFFFFFF == META_BLKNO


def rel_key_range(rel: int) -> tuple[Key, Key]:
    """[start, end) of every key of one relation (pages and metadata)."""
    return Key(rel << 32), Key((rel + 1) << 32)
