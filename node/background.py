"""Background work of a node's drivers: spawned tasks that are kept until done and whose errors
are logged, never lost ("Task exception was never retrieved")."""

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import Any


def spawn(
    tasks: set["asyncio.Task[None]"],
    work: Coroutine[Any, Any, None],
    log: logging.Logger,
    what: str,
    loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Run `work` as a task held in `tasks` (so close() can cancel it) until it finishes.
    `loop`: the running loop, when the caller has it cached (asyncio.get_running_loop() is a
    getpid(2) system call on CPython 3.11).

    The error is logged from a done callback rather than by a wrapping coroutine: a replica
    spawns one of these per replicated write, and the extra frame showed in profiles."""
    task = (loop or asyncio.get_running_loop()).create_task(work)
    tasks.add(task)
    task.add_done_callback(functools.partial(_finished, tasks, log, what))


def _finished(tasks: set["asyncio.Task[None]"], log: logging.Logger, what: str, task: "asyncio.Task[None]") -> None:
    tasks.discard(task)
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("%s failed", what, exc_info=error)


class Spawner:
    """`spawn` bound to one task set, logger and label: the done callback is made once, not per
    task (a replica spawns one task per replicated write it merges)."""

    def __init__(self, tasks: set["asyncio.Task[None]"], log: logging.Logger, what: str) -> None:
        self.tasks = tasks
        self._finished = functools.partial(_finished, tasks, log, what)
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, work: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():  # cached: get_running_loop() is a getpid(2) on 3.11
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._finished)
