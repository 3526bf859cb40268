"""The set checker: did every acknowledged add survive, and nothing else appear?

Idea from Jepsen's set checker (jepsen.checker/set): add unique elements, read the set at the end.
Pure. Independent of how the workload stores the set: only `f` and the values matter, never `key`.

Rules:
- An add is an operation with `f == "add"`; its element is `value_in`. Elements are meant to be
  unique; if one is added more than once, its outcome is the strongest of its adds (ok, then info,
  then fail). `attempted` counts distinct elements.
- The final reads are the `f == "read_set"` operations with outcome ok, invoked after the last add
  was invoked (earlier set reads are ignored). Each carries the elements it saw in `value_out`
  (a list; None means empty). The checker uses the union of the final reads, and reports each
  final read that misses part of that union (`reads_incomplete`: replicas that disagree).
- `lost`: ok adds absent from the union that completed before the last final read was invoked.
  An ok add absent from the union that completed later may have landed after every read: it is
  counted as `unverified`, not lost.
- `unexpected`: elements in the union that no add attempted.
- `recovered`: info (unknown) adds present in the union: they did happen.
- `failed_but_present`: fail adds present in the union. `fail` promises the add surely did not
  happen, so this is a violation too.
- valid = lost == 0 and unexpected == 0 and failed_but_present == 0; None when there is no final read.
"""

from collections.abc import Hashable, Sequence

from chaos.checkers.common import EXAMPLES_MAX, describe, format_ns, more, read_values, value_token
from chaos.history import Operation
from chaos.verdict import CheckResult

_STRENGTH = {"fail": 0, "info": 1, "ok": 2}


def check_set(ops: Sequence[Operation]) -> CheckResult:
    adds: dict[Hashable, Operation] = {}  # element -> its strongest add
    last_add_invoke_ns = -1
    for op in ops:
        if op.f != "add":
            continue
        element = value_token(op.value_in)
        known = adds.get(element)
        if known is None or _STRENGTH[op.outcome] > _STRENGTH[known.outcome]:
            adds[element] = op
        last_add_invoke_ns = max(last_add_invoke_ns, op.invoke_ns)
    set_reads = [op for op in ops if op.f == "read_set" and op.outcome == "ok"]
    final_reads = [op for op in set_reads if op.invoke_ns > last_add_invoke_ns]
    by_outcome = {outcome: {e for e, op in adds.items() if op.outcome == outcome} for outcome in _STRENGTH}
    counts: dict[str, int | float] = {
        "attempted": len(adds),
        "acknowledged": len(by_outcome["ok"]),
        "unknown": len(by_outcome["info"]),
        "failed": len(by_outcome["fail"]),
        "reads": len(final_reads),
    }
    if not final_reads:
        why = f"{len(set_reads)} ok read_set before the last add, none after" if set_reads else "no ok read_set"
        return CheckResult("set", None, counts, [f"no final read ({why}): cannot tell lost elements from present ones"])

    seen_by_read = [set(read_values(op.value_out)) for op in final_reads]
    union: set[Hashable] = set().union(*seen_by_read)
    last_read_invoke_ns = max(op.invoke_ns for op in final_reads)
    absent_ok = sorted(by_outcome["ok"] - union, key=repr)
    lost = [e for e in absent_ok if _completed_before(adds[e], last_read_invoke_ns)]
    unverified = [e for e in absent_ok if not _completed_before(adds[e], last_read_invoke_ns)]
    unexpected = sorted(union - adds.keys(), key=repr)
    recovered = by_outcome["info"] & union
    failed_but_present = sorted(by_outcome["fail"] & union, key=repr)
    incomplete = [(op, union - seen) for op, seen in zip(final_reads, seen_by_read, strict=True) if union - seen]
    counts |= {
        "lost": len(lost),
        "unexpected": len(unexpected),
        "recovered": len(recovered),
        "failed_but_present": len(failed_but_present),
        "unverified": len(unverified),
        "reads_incomplete": len(incomplete),
    }

    examples: list[str] = []
    examples += more([f"lost: {describe(adds[e])}, absent from every final read" for e in lost[:3]], len(lost), "lost")
    examples += more(
        [f"unexpected: {e!r} was read but never added" for e in unexpected[:3]], len(unexpected), "unexpected"
    )
    examples += more(
        [f"failed but present: {describe(adds[e])}, yet {e!r} was read" for e in failed_but_present[:3]],
        len(failed_but_present),
        "failed but present",
    )
    for read, missing in incomplete[:3]:
        shown = sorted(missing, key=repr)[:5]
        examples.append(
            f"final read by p{read.process} via {read.node or '?'} at {format_ns(read.invoke_ns)} ms misses "
            f"{len(missing)} of the {len(union)} elements of the union, e.g. {shown}"
        )
    valid = not lost and not unexpected and not failed_but_present
    return CheckResult("set", valid, counts, examples[:EXAMPLES_MAX])


def _completed_before(op: Operation, time_ns: int) -> bool:
    return op.complete_ns is not None and op.complete_ns < time_ns
