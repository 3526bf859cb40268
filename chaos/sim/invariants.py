"""What every simulated run must show once the faults are healed. Pure: data in, `CheckResult`s out.

Inputs: the run's history (`chaos.history` events; each write's receipt names its dot, each
delete's the version vector it covered), each node's stored clocks read straight off its disk
after the quiet period, and the key's replicas. "Covered" is DVV coverage (Preguiça, Almeida et
al.): a version vector covers dot (i, c) when its counter for i is >= c.

Rules (N = replicas per key; strong = a write or delete at `quorum` or `all`):
- convergence: every replica of every key stores the same decoded clock (a key absent on one
  replica and present on another differs). Dynamo's eventual consistency, checked directly.
- acknowledged_writes: every strong ok write is in the final state (the sync of the replicas'
  clocks): its dot is covered, and the value is still there under that dot, or it was superseded:
  gone, with some later write or delete of the key (not failed) that can have done it. A dot the
  final clock does not cover is a lost write.
- no_resurrection: no live value in the final state has a dot covered by a strong ok delete.
- quorum_intersection (Dynamo's R + W > N): an ok read whose R plus an earlier-completed ok write's
  W exceeds N returns a version covering that write's dot, and none of the values an
  earlier-completed such delete covered. A sloppy write whose W counted hints (receipt `sloppy`)
  promises no intersection with the replicas and is left out.
- causal_sessions: an ok `causal` read covers every write of its own session to that key that had
  completed with a version (the session's context carried it).
- A tombstone purge forgets the dots it covered, so where purging is on, "lost" and "missed"
  above are excused when a later delete of the key (not failed) was invoked at least the purge
  delay (grace period less clock skew) earlier: counted as `purged`, not as violations.
- hints_drained: no hinted-handoff backlog after the quiet period (undecided without hints).
- runtime_errors: the runtime raised nothing but injected faults into a client call.
"""

from collections.abc import Mapping, Sequence

from chaos.checkers.common import EXAMPLES_MAX, describe, more
from chaos.history import Event, Operation, operations
from chaos.verdict import CheckResult
from cluster import dvv
from cluster.dvv import ClockDecodeError, Dot, DVVSet, VersionVector
from cluster.frozen import frozen
from cluster.siblings import Sibling, decode_clock

STRONG_LEVELS = ("quorum", "all")
_WRITES = ("write", "delete")


def format_dot(node: str, counter: int) -> str:
    return f"{node}:{counter}"


def parse_dot(text: str) -> Dot:
    node, _, counter = text.rpartition(":")
    return Dot(node, int(counter))


def format_vv(version: VersionVector) -> str:
    return ",".join(f"{node}={counter}" for node, counter in version.counters)


def parse_vv(text: str) -> VersionVector:
    pairs = (item.rpartition("=") for item in text.split(",") if item)
    return VersionVector.of({node: int(counter) for node, _, counter in pairs})


def covers(version: VersionVector, dot: Dot) -> bool:
    return version.get(dot.node) >= dot.counter


def describe_clock(clock: DVVSet[Sibling] | None) -> str:
    """`n1=3[p0-5,p1-2] n2=1[]`: counters and live values (a tombstone shows as `-`)."""
    if clock is None:
        return "<absent>"
    parts = []
    for entry in clock.entries:
        values = ",".join("-" if s.deleted else s.value.decode(errors="replace") for s in entry.values)
        parts.append(f"{entry.node}={entry.counter}[{values}]")
    return " ".join(parts) or "<empty>"


@frozen
class FinalState:
    """The replicas after the quiet period."""

    stored: Mapping[str, Mapping[bytes, bytes]]  # node -> key -> encoded clock, off its disk
    owners: Mapping[bytes, Sequence[str]]  # key -> its replicas (preference list)
    replicas_per_key: int  # N
    hint_backlog: Mapping[str, int] | None = None  # node -> hints pending; None: no hinted handoff
    checked_ns: int = 0  # when the replicas were read (history time)
    # How long after a delete its key may have been purged (tombstone grace, less clock skew);
    # None: no purging in this run.
    purge_after_ns: int | None = None


def check_run(events: Sequence[Event], final: FinalState, unexpected: Sequence[str] = ()) -> list[CheckResult]:
    ops = operations(events)
    receipts = {(e.process, e.op_id): e.receipt for e in events if e.type in ("ok", "fail", "info")}
    decoded, undecodable = _decode(final.stored)
    merged = _merged(decoded)
    purges = Purges(ops, final.purge_after_ns)
    return [
        check_convergence(decoded, final.owners, undecodable),
        check_acknowledged_writes(ops, receipts, merged, purges, final.checked_ns),
        check_no_resurrection(ops, receipts, merged),
        check_quorum_intersection(ops, receipts, final.replicas_per_key, purges),
        check_causal_sessions(ops, receipts, purges),
        check_hints_drained(final.hint_backlog),
        CheckResult(
            "runtime_errors",
            not unexpected,
            {"errors": len(unexpected)},
            more(list(unexpected[:4]), len(unexpected), "errors"),
        ),
    ]


Clocks = Mapping[str, Mapping[bytes, DVVSet[Sibling]]]
Receipts = Mapping[tuple[int, int], Mapping[str, str]]


class Purges:
    """When a tombstone purge may explain a write's dot being unknown: a later delete of the key
    (not failed) was invoked at least the grace period before (cluster/tombstones.py)."""

    def __init__(self, ops: Sequence[Operation], purge_after_ns: int | None) -> None:
        self.purge_after_ns = purge_after_ns
        self.deletes: dict[str, list[Operation]] = {}
        for op in ops:
            if op.f == "delete" and op.outcome != "fail":
                self.deletes.setdefault(op.key, []).append(op)

    def may_explain(self, write: Operation, by_ns: int | None) -> bool:
        if self.purge_after_ns is None or by_ns is None:
            return False
        after = self.purge_after_ns
        return any(
            d.invoke_ns > write.invoke_ns and d.invoke_ns + after <= by_ns for d in self.deletes.get(write.key, [])
        )


def check_convergence(
    decoded: Clocks, owners: Mapping[bytes, Sequence[str]], undecodable: Sequence[str] = ()
) -> CheckResult:
    keys = sorted({key for clocks in decoded.values() for key in clocks})
    differing: list[str] = []
    for key in keys:
        replicas = owners.get(key, sorted(decoded))
        clocks = {node: decoded.get(node, {}).get(key) for node in replicas}
        if len(set(clocks.values())) > 1:
            shown = "; ".join(f"{node} has {describe_clock(clock)}" for node, clock in clocks.items())
            differing.append(f"key {key.decode(errors='replace')!r}: {shown}")
    problems = [*undecodable, *differing]
    counts: dict[str, int | float] = {"keys": len(keys), "differing_keys": len(differing)}
    return CheckResult("convergence", not problems, counts, more(problems[:EXAMPLES_MAX], len(problems), "keys"))


def check_acknowledged_writes(
    ops: Sequence[Operation],
    receipts: Receipts,
    merged: Mapping[str, DVVSet[Sibling]],
    purges: Purges | None = None,
    checked_ns: int | None = None,
) -> CheckResult:
    checked = superseded = purged = 0
    problems: list[str] = []
    for op in ops:
        if op.f != "write" or op.outcome != "ok" or op.level not in STRONG_LEVELS:
            continue
        checked += 1
        dot = parse_dot(receipts[(op.process, op.op_id)]["dot"])
        state = merged.get(op.key)
        if state is None or not covers(dvv.join(state), dot):
            if purges is not None and purges.may_explain(op, checked_ns):
                purged += 1
                continue
            problems.append(f"lost: {describe(op)} (dot {dot.node}:{dot.counter}; final {describe_clock(state)})")
            continue
        at_dot = [s for d, s in dvv.dotted_values(state) if d == dot]
        if at_dot:
            if at_dot[0].value.decode(errors="replace") != op.value_in:
                problems.append(f"dot {dot.node}:{dot.counter} holds {at_dot[0].value!r}, not: {describe(op)}")
            continue
        superseded += 1
        if not any(_may_supersede(other, op) for other in ops):
            problems.append(f"vanished with no later write or delete: {describe(op)} (final {describe_clock(state)})")
    counts: dict[str, int | float] = {
        "checked": checked,
        "superseded": superseded,
        "purged": purged,
        "violations": len(problems),
    }
    return CheckResult(
        "acknowledged_writes", not problems, counts, more(problems[:EXAMPLES_MAX], len(problems), "writes")
    )


def check_no_resurrection(
    ops: Sequence[Operation], receipts: Receipts, merged: Mapping[str, DVVSet[Sibling]]
) -> CheckResult:
    deletes = _strong_deletes(ops, receipts)
    problems: list[str] = []
    for key, state in sorted(merged.items()):
        for dot, sibling in dvv.dotted_values(state):
            if sibling.deleted:
                continue
            for op, cover in deletes.get(key, []):
                if covers(cover, dot):
                    value = sibling.value.decode(errors="replace")
                    problems.append(f"{value!r} (dot {dot.node}:{dot.counter}) is live again after {describe(op)}")
    counts: dict[str, int | float] = {
        "deletes": sum(len(d) for d in deletes.values()),
        "resurrected": len(problems),
    }
    return CheckResult("no_resurrection", not problems, counts, more(problems[:EXAMPLES_MAX], len(problems), "values"))


def check_quorum_intersection(
    ops: Sequence[Operation], receipts: Receipts, n: int, purges: Purges | None = None
) -> CheckResult:
    value_dots = {
        (op.key, op.value_in): parse_dot(receipts[(op.process, op.op_id)]["dot"])
        for op in ops
        if op.f == "write" and "dot" in receipts.get((op.process, op.op_id), {})
    }
    writes: dict[str, list[Operation]] = {}
    for op in ops:
        if op.f in _WRITES and op.outcome == "ok":
            writes.setdefault(op.key, []).append(op)
    checked = 0
    problems: list[str] = []
    for read in ops:
        receipt = receipts.get((read.process, read.op_id), {})
        if read.f != "read" or read.outcome != "ok" or "version" not in receipt:
            continue
        version, r = parse_vv(receipt["version"]), int(receipt["required"])
        returned = {value: value_dots.get((read.key, value)) for value in read.value_out or []}
        for write in writes.get(read.key, []):
            got = receipts[(write.process, write.op_id)]
            if write.complete_ns is None or write.complete_ns >= read.invoke_ns or int(got["required"]) + r <= n:
                continue
            if "sloppy" in got:
                continue
            checked += 1
            if write.f == "write" and not covers(version, parse_dot(got["dot"])):
                if purges is not None and purges.may_explain(write, read.complete_ns):
                    continue
                problems.append(f"{describe(read)} misses earlier {describe(write)}")
            elif write.f == "delete":
                cover = parse_vv(got["cover"])
                for value, dot in returned.items():
                    if dot is not None and covers(cover, dot):
                        problems.append(f"{describe(read)} returns {value!r} deleted by earlier {describe(write)}")
    counts: dict[str, int | float] = {"pairs_checked": checked, "violations": len(problems)}
    return CheckResult(
        "quorum_intersection", not problems, counts, more(problems[:EXAMPLES_MAX], len(problems), "reads")
    )


def check_causal_sessions(ops: Sequence[Operation], receipts: Receipts, purges: Purges | None = None) -> CheckResult:
    own: dict[tuple[int, str], list[tuple[Operation, Dot]]] = {}
    for op in ops:
        got = receipts.get((op.process, op.op_id), {})
        if op.f in _WRITES and op.complete_ns is not None and "dot" in got:
            own.setdefault((op.process, op.key), []).append((op, parse_dot(got["dot"])))
    checked = 0
    problems: list[str] = []
    for read in ops:
        got = receipts.get((read.process, read.op_id), {})
        if read.f != "read" or read.outcome != "ok" or read.level != "causal" or "version" not in got:
            continue
        version = parse_vv(got["version"])
        for write, dot in own.get((read.process, read.key), []):
            if write.complete_ns is not None and write.complete_ns < read.invoke_ns:
                checked += 1
                if not covers(version, dot) and not (
                    purges is not None and purges.may_explain(write, read.complete_ns)
                ):
                    problems.append(f"{describe(read)} misses its session's {describe(write)}")
    counts: dict[str, int | float] = {"pairs_checked": checked, "violations": len(problems)}
    return CheckResult("causal_sessions", not problems, counts, more(problems[:EXAMPLES_MAX], len(problems), "reads"))


def check_hints_drained(backlog: Mapping[str, int] | None) -> CheckResult:
    if backlog is None:
        return CheckResult("hints_drained", None, {}, ["the runtime has no hinted handoff"])
    pending = {node: count for node, count in sorted(backlog.items()) if count}
    examples = [f"{node} still holds {count} hints" for node, count in pending.items()]
    return CheckResult("hints_drained", not pending, {"hints": sum(pending.values())}, examples)


# --- helpers ----------------------------------------------------------------------------------


def _decode(stored: Mapping[str, Mapping[bytes, bytes]]) -> tuple[dict[str, dict[bytes, DVVSet[Sibling]]], list[str]]:
    decoded: dict[str, dict[bytes, DVVSet[Sibling]]] = {}
    undecodable: list[str] = []
    for node, records in sorted(stored.items()):
        decoded[node] = {}
        for key, raw in records.items():
            try:
                decoded[node][key] = decode_clock(raw)
            except ClockDecodeError as exc:
                undecodable.append(f"{node} stores an undecodable clock under {key!r}: {exc}")
    return decoded, undecodable


def _merged(decoded: Clocks) -> dict[str, DVVSet[Sibling]]:
    """Per key (as the history names it), the sync of every replica's clock."""
    merged: dict[str, DVVSet[Sibling]] = {}
    for clocks in decoded.values():
        for key, clock in clocks.items():
            name = key.decode(errors="replace")
            merged[name] = clock if name not in merged else dvv.sync(merged[name], clock)
    return merged


def _may_supersede(other: Operation, write: Operation) -> bool:
    return (
        other.key == write.key
        and other.f in _WRITES
        and other.outcome != "fail"
        and (other.process, other.op_id) != (write.process, write.op_id)
        and other.invoke_ns > write.invoke_ns
    )


def _strong_deletes(ops: Sequence[Operation], receipts: Receipts) -> dict[str, list[tuple[Operation, VersionVector]]]:
    out: dict[str, list[tuple[Operation, VersionVector]]] = {}
    for op in ops:
        if op.f == "delete" and op.outcome == "ok" and op.level in STRONG_LEVELS:
            out.setdefault(op.key, []).append((op, parse_vv(receipts[(op.process, op.op_id)]["cover"])))
    return out
