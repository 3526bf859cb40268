"""The session checker: read-your-writes and monotonic reads, per client session.

Idea from Terry et al. 1994, "Session guarantees for weakly consistent replicated data" (Bayou).
Pure. A session is a client `process`; its operations are taken in invocation order.

Operations: `f == "write"` (a unique value per write in `value_in`), `f == "delete"`, and
`f == "read"` (`value_out`: the list of values read, siblings possible; [] or None: not found).
Only ok reads are checked; fail and info reads are skipped. Other `f`s are ignored.

Definitions (real time; "u is older than s" is what the history proves about two values of a key):
- u is older than a write or delete X when the write of u completed ok before X was invoked.
  Unknown (info) writes, and values no write produced, are never older: they may be concurrent.
- A delete D may explain "not found" after a write X when D did not fail, D was invoked before
  the read completed, and D is not known to precede X (not: D ok and completed before X invoked).
- A read R regresses past a write X of v (in what it misses) when v is not in R and either R is
  empty with no delete that may explain it, or every value in R is older than X. It regresses past
  a delete X when R is non-empty and every value in R is older than X.

Rules:
- Read-your-writes: a read regresses past the session's latest write or delete of that key that
  completed ok before the read was invoked. (Earlier own writes are implied: an older value is
  older than every later write too.)
- Monotonic reads: a read regresses past the write of some value the session read from that key
  in an earlier ok read (completed before this read was invoked). Only the newest such values are
  kept: regressing past an older value implies regressing past a newer one, so nothing is missed.
- Monotonic writes and writes-follow-reads are not checked: with siblings, a write without a
  context legitimately coexists with older ones, so real time alone cannot prove them violated.
- Counts: `sessions`, `reads_checked`, `ryw_violations`, `monotonic_read_violations` (a read can
  count in both). valid = no violation; None when no ok read was checked.
"""

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from chaos.checkers.common import EXAMPLES_MAX, describe, more, read_values, value_token
from chaos.history import Operation
from chaos.verdict import CheckResult

_REGISTER_FS = ("write", "delete", "read")


@dataclass(slots=True)
class _Writes:
    """Every write and delete of the history (fail ones excluded), indexed for the checks."""

    by_value: dict[tuple[str, Hashable], Operation] = field(default_factory=dict)
    deletes: dict[str, list[Operation]] = field(default_factory=dict)

    def older(self, key: str, value: Hashable, than: Operation) -> bool:
        write = self.by_value.get((key, value))
        return (
            write is not None
            and write.outcome == "ok"
            and write.complete_ns is not None
            and write.complete_ns < than.invoke_ns
        )

    def delete_may_explain_absence(self, read: Operation, after: Operation) -> bool:
        read_done_ns = read.complete_ns if read.complete_ns is not None else float("inf")
        for delete in self.deletes.get(read.key, []):
            known_before = (
                delete.outcome == "ok" and delete.complete_ns is not None and delete.complete_ns < after.invoke_ns
            )
            if delete.invoke_ns < read_done_ns and not known_before:
                return True
        return False

    def regresses(self, read: Operation, seen: tuple[Hashable, ...], past: Operation) -> bool:
        if past.f == "delete":
            return bool(seen) and all(self.older(read.key, u, past) for u in seen)
        if value_token(past.value_in) in seen:
            return False
        if not seen:
            return not self.delete_may_explain_absence(read, past)
        return all(self.older(read.key, u, past) for u in seen)


def check_sessions(ops: Sequence[Operation]) -> CheckResult:
    writes = _Writes()
    sessions: dict[int, list[Operation]] = {}
    for op in ops:
        if op.f not in _REGISTER_FS:
            continue
        sessions.setdefault(op.process, []).append(op)
        if op.outcome == "fail":
            continue
        if op.f == "write":
            writes.by_value.setdefault((op.key, value_token(op.value_in)), op)
        elif op.f == "delete":
            writes.deletes.setdefault(op.key, []).append(op)

    reads_checked = 0
    ryw: list[str] = []
    monotonic: list[str] = []
    for session_ops in sessions.values():
        session = _Session(writes)
        for op in sorted(session_ops, key=lambda op: op.invoke_ns):
            session.catch_up(op.invoke_ns)
            if op.f == "read" and op.outcome == "ok":
                reads_checked += 1
                seen = read_values(op.value_out)
                own = session.own_latest.get(op.key)
                if own is not None and writes.regresses(op, seen, own):
                    ryw.append(f"read-your-writes: {describe(op)} after its own {describe(own)}")
                for value, (earlier, write) in session.frontier.get(op.key, {}).items():
                    if value not in seen and writes.regresses(op, seen, write):
                        what = f"{describe(op)} after {describe(earlier)} (that value's {describe(write)})"
                        monotonic.append(f"monotonic reads: {what}")
                        break
            session.pending.append(op)

    counts: dict[str, int | float] = {
        "sessions": len(sessions),
        "reads_checked": reads_checked,
        "ryw_violations": len(ryw),
        "monotonic_read_violations": len(monotonic),
    }
    if reads_checked == 0:
        return CheckResult("session", None, counts, ["no ok read to check"])
    half = EXAMPLES_MAX // 2
    examples = more(ryw[:half], len(ryw), "read-your-writes violations")
    examples += more(monotonic[:half], len(monotonic), "monotonic-read violations")
    return CheckResult("session", not ryw and not monotonic, counts, examples)


@dataclass(slots=True)
class _Session:
    """What one session has done so far, for the checks of its next read."""

    writes: _Writes
    own_latest: dict[str, Operation] = field(default_factory=dict)  # key -> latest own ok write or delete
    # key -> value -> (the read that saw it, its write), keeping only the values no other seen value
    # is newer than: a read that regresses past an older value regresses past the newer one too.
    frontier: dict[str, dict[Hashable, tuple[Operation, Operation]]] = field(default_factory=dict)
    pending: list[Operation] = field(default_factory=list)  # issued, not yet known complete

    def catch_up(self, now_ns: int) -> None:
        """Take in the session's operations that completed before `now_ns`."""
        done = [op for op in self.pending if _completed_before(op, now_ns)]
        self.pending = [op for op in self.pending if not _completed_before(op, now_ns)]
        for op in done:
            if op.outcome != "ok":
                continue
            if op.f in ("write", "delete"):
                latest = self.own_latest.get(op.key)
                if latest is None or (latest.complete_ns or 0) < (op.complete_ns or 0):
                    self.own_latest[op.key] = op
            elif op.f == "read":
                self._saw(op)

    def _saw(self, read: Operation) -> None:
        frontier = self.frontier.setdefault(read.key, {})
        for value in read_values(read.value_out):
            write = self.writes.by_value.get((read.key, value))
            if write is not None and value not in frontier:
                frontier[value] = (read, write)
        for value in [v for v in frontier if any(self.writes.older(read.key, v, w) for _, w in frontier.values())]:
            del frontier[value]


def _completed_before(op: Operation, time_ns: int) -> bool:
    return op.complete_ns is not None and op.complete_ns < time_ns
