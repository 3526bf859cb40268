"""Background work of a node's drivers: spawned tasks that are kept until done and whose errors
are logged, never lost ("Task exception was never retrieved")."""

import asyncio
import logging
from collections.abc import Awaitable


def spawn(tasks: set["asyncio.Task[None]"], work: Awaitable[None], log: logging.Logger, what: str) -> None:
    """Run `work` as a task held in `tasks` (so close() can cancel it) until it finishes."""

    async def run() -> None:
        try:
            await work
        except Exception:
            log.exception("%s failed", what)

    task = asyncio.create_task(run())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
