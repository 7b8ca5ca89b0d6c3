"""Writing layer files for the tests, and damaging them."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from pageserver.layers.block_file import LayerSummary
from pageserver.layers.delta import DeltaEntry, DeltaLayerWriter
from pageserver.layers.image import ImageLayerWriter
from pageserver.layers.names import KEY_SPACE_END

TENANT = "0123456789abcdef0123456789abcdef"
TIMELINE = "fedcba9876543210fedcba9876543210"
LSN_END = 1 << 40


def write_delta(
    path: Path,
    entries: Iterable[DeltaEntry],
    *,
    key_start: int = 0,
    key_end: int = KEY_SPACE_END,
    lsn_start: int = 0,
    lsn_end: int = LSN_END,
    target_block_bytes: int = 256,
) -> LayerSummary:
    writer = DeltaLayerWriter(
        path,
        tenant_id=TENANT,
        timeline_id=TIMELINE,
        key_start=key_start,
        key_end=key_end,
        lsn_start=lsn_start,
        lsn_end=lsn_end,
        target_block_bytes=target_block_bytes,
    )
    with writer:
        for e in entries:
            writer.put(e.key, e.lsn, e.value, e.will_init)
        return writer.finish()


def write_image(
    path: Path,
    entries: Iterable[tuple[int, bytes]],
    *,
    key_start: int = 0,
    key_end: int = KEY_SPACE_END,
    lsn: int = 100,
    target_block_bytes: int = 256,
) -> LayerSummary:
    writer = ImageLayerWriter(
        path,
        tenant_id=TENANT,
        timeline_id=TIMELINE,
        key_start=key_start,
        key_end=key_end,
        lsn=lsn,
        target_block_bytes=target_block_bytes,
    )
    with writer:
        for key, value in entries:
            writer.put(key, value)
        return writer.finish()


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte of the file in place (offset < 0 counts from the end)."""
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_SET if offset >= 0 else os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def run_in_threads(work: Callable[[int], None], count: int) -> None:
    """Run work(0) .. work(count - 1) at once, each in its own thread; re-raise
    the first failure."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
