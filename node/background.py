"""Background work of a node's drivers: spawned tasks that are kept until done and whose errors
are logged, never lost ("Task exception was never retrieved")."""

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import Any


class Spawner:
    """Runs coroutines as tasks held in `tasks` (so a driver's close() can cancel them) until
    they finish. The error is logged from a done callback rather than by a wrapping coroutine: a
    replica spawns one task per replicated write, and the extra frame showed in profiles. The
    callback is made once per spawner, and the loop cached (get_running_loop() is a getpid(2)
    system call on CPython 3.11)."""

    def __init__(self, tasks: set["asyncio.Task[None]"], log: logging.Logger, what: str) -> None:
        self.tasks = tasks
        self._finished = functools.partial(_finished, tasks, log, what)
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, work: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._finished)


def _finished(tasks: set["asyncio.Task[None]"], log: logging.Logger, what: str, task: "asyncio.Task[None]") -> None:
    tasks.discard(task)
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("%s failed", what, exc_info=error)
