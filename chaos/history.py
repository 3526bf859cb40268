"""Histories: every client operation and every fault, as recorded during a chaos run.

Pure (no clock, no files: callers pass times and text). The model is Jepsen's: a client
operation is an `invoke` event followed by exactly one completion: `ok` (it happened), `fail`
(it surely did not happen) or `info` (unknown: it may or may not have happened, e.g. a 504 or a
lost connection). Nemesis events mark fault windows. A history is stored as JSON lines, one
event per line, in the order the recorder saw them.
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, field
from typing import Any, Literal

from cluster.frozen import frozen

EventType = Literal["invoke", "ok", "fail", "info", "nemesis"]
Outcome = Literal["ok", "fail", "info"]


@frozen
class Event:
    type: EventType
    process: int  # the client (session) that issued it; -1 for the nemesis
    op_id: int  # pairs an invoke with its completion
    f: str  # "write" | "read" | "add" | "read_set" | ... ; for nemesis: "start" | "stop"
    key: str = ""
    value: Any = None  # written value (invoke), read value(s) (ok read), fault description (nemesis)
    time_ns: int = 0  # monotonic, relative to the start of the run
    node: str = ""  # the node the client talked to
    level: str = ""  # consistency level requested
    receipt: dict[str, str] = field(default_factory=dict)
    error: str = ""


@frozen
class Operation:
    """An invoke paired with its completion. `complete_ns` is None when the run ended first
    (treated as unknown)."""

    process: int
    op_id: int
    f: str
    key: str
    value_in: Any
    value_out: Any
    outcome: Outcome
    invoke_ns: int
    complete_ns: int | None
    node: str
    level: str
    error: str = ""

    @property
    def unknown(self) -> bool:
        return self.outcome == "info"


def to_jsonl(events: Iterable[Event]) -> str:
    return "".join(json.dumps(asdict(e), separators=(",", ":")) + "\n" for e in events)


def from_jsonl(text: str) -> list[Event]:
    events = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(Event(**json.loads(line)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"history line {number} is not an event: {exc}") from exc
    return events


def operations(events: Iterable[Event]) -> list[Operation]:
    """Pair invocations with completions, in invocation order."""
    open_ops: dict[tuple[int, int], Event] = {}
    done: list[Operation] = []
    order: list[tuple[int, int]] = []
    completions: dict[tuple[int, int], Event] = {}
    for event in events:
        ident = (event.process, event.op_id)
        if event.type == "invoke":
            if ident in open_ops:
                raise ValueError(f"operation {ident} invoked twice")
            open_ops[ident] = event
            order.append(ident)
        elif event.type in ("ok", "fail", "info"):
            if ident not in open_ops or ident in completions:
                raise ValueError(f"completion of operation {ident} without a pending invoke")
            completions[ident] = event
    for ident in order:
        invoke = open_ops[ident]
        end = completions.get(ident)
        outcome: Outcome = "info" if end is None else end.type  # type: ignore[assignment]
        done.append(
            Operation(
                invoke.process,
                invoke.op_id,
                invoke.f,
                invoke.key,
                invoke.value,
                None if end is None else end.value,
                outcome,
                invoke.time_ns,
                None if end is None else end.time_ns,
                invoke.node,
                invoke.level,
                "" if end is None else end.error,
            )
        )
    return done


def nemesis_windows(events: Iterable[Event]) -> list[tuple[int, int | None, Any]]:
    """Fault windows as (start_ns, stop_ns or None if never healed, description)."""
    windows: list[tuple[int, int | None, Any]] = []
    open_start: tuple[int, Any] | None = None
    for event in events:
        if event.type != "nemesis":
            continue
        if event.f == "start":
            open_start = (event.time_ns, event.value)
        elif event.f == "stop" and open_start is not None:
            windows.append((open_start[0], event.time_ns, open_start[1]))
            open_start = None
    if open_start is not None:
        windows.append((open_start[0], None, open_start[1]))
    return windows


def by_key(ops: Iterable[Operation]) -> Iterator[tuple[str, list[Operation]]]:
    groups: dict[str, list[Operation]] = {}
    for op in ops:
        groups.setdefault(op.key, []).append(op)
    yield from sorted(groups.items())
