"""A virtual-time asyncio event loop: the real node runtime runs unchanged, single-threaded, in
simulated seconds.

FoundationDB's simulator and TigerBeetle's VOPR run the real code against a fake clock; this is that
idea for asyncio. Rules:
- `time()` is virtual seconds since the loop was made. Nothing here reads a real clock.
- The selector never blocks and never does I/O: when no callback is ready, `select(timeout)` moves
  the clock forward by `timeout`, i.e. to the earliest timer (`asyncio.sleep`, `wait_for`
  deadlines, `call_later`). So an idle second costs nothing, and a busy one costs only its callbacks.
- Nothing ready and no timer is a deadlock: raised as `SimDeadlock`, never waited out.
- No threads: `run_in_executor` is refused, since a thread pool's timing is outside the simulation.
- Tasks are attributed to an *owner* (a node incarnation) through a context variable, in creation
  order, so a simulated crash cancels exactly that node's tasks, in the same order in every run
  (`asyncio.all_tasks` is a WeakSet, whose order depends on memory addresses).
"""

import asyncio
import contextvars
import selectors
from collections.abc import Callable, Coroutine, Generator, Mapping
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple, Unpack

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# The node incarnation (any hashable token) on whose behalf the current code runs; None: the harness.
OWNER: contextvars.ContextVar[object | None] = contextvars.ContextVar("titra_sim_owner", default=None)


class SimDeadlock(RuntimeError):
    """The loop has no ready callback and no timer: whatever is awaited can never happen."""


class _VirtualSelector(selectors.BaseSelector):
    """Registers nothing and waits for nothing: a wait is a jump of the virtual clock."""

    def __init__(self, loop: "VirtualTimeLoop") -> None:
        self._loop = loop
        self._map: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        raise NotImplementedError("the simulated loop does no I/O: use the simulated network")

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        raise KeyError(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimDeadlock("nothing is ready and no timer is set: the simulation can make no progress")
        if timeout > 0:
            self._loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map


class VirtualTimeLoop(asyncio.BaseEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._now_s = 0.0
        self._selector = _VirtualSelector(self)
        # Timers due within this much of `now` fire together (a jump lands within a float ulp).
        self._clock_resolution = 1e-9
        self._owned: dict[object, dict[asyncio.Task[Any], None]] = {}
        self._dead: set[object] = set()  # owners whose tasks were cancelled: nothing of theirs may run

    def time(self) -> float:
        return self._now_s

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "virtual time never goes backwards"
        self._now_s += seconds

    # --- what BaseEventLoop leaves to its subclasses -------------------------------------------

    def _process_events(self, event_list: list[Any]) -> None:
        assert not event_list

    def _write_to_self(self) -> None:
        """`call_soon_threadsafe` wakes a blocked selector; ours never blocks."""

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[Unpack[Ts]], T], *args: *Ts
    ) -> "asyncio.Future[T]":
        raise RuntimeError("no threads in the simulation: their timing would make runs unrepeatable")

    # --- tasks by owner ---------------------------------------------------------------------------

    def create_task(
        self,
        coro: Generator[Any, None, T] | Coroutine[Any, Any, T],
        *,
        name: object = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        task = super().create_task(coro, name=name, context=context)
        owner = context.get(OWNER) if context is not None else OWNER.get()
        if owner in self._dead:
            task.cancel()  # a crashed incarnation starts nothing new (e.g. from a `finally`)
        elif owner is not None:
            tasks = self._owned.setdefault(owner, {})
            tasks[task] = None
            task.add_done_callback(lambda done: tasks.pop(done, None))
        return task

    def cancel_owned(self, owner: object) -> int:
        """Cancel every unfinished task of `owner`, oldest first, and any it starts later; how many
        were cancelled."""
        self._dead.add(owner)
        tasks = self._owned.pop(owner, {})
        for task in list(tasks):
            task.cancel()
        return len(tasks)

    def owned(self, owner: object) -> int:
        return len(self._owned.get(owner, {}))


def context_of(owner: object) -> contextvars.Context:
    """A context in which `owner` owns the tasks created (pass it to `create_task`, `Context.run`)."""
    ctx = contextvars.copy_context()
    ctx.run(OWNER.set, owner)
    return ctx
