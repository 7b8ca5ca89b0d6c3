"""Stopping a component's background asyncio tasks.

Stopping is not an error: a task that was cancelled, or that had already
failed (and logged it), ends quietly here.
"""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    """Cancel `task` (if it still runs) and wait until it has ended."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping: the task logged its own failure
        pass
