"""The linearizability checker for read/write registers, one key at a time.

Idea from Wing & Gong 1993 and Lowe 2017 (search with memoized configurations), with Horn &
Kroening 2015 ("Faster linearizability checking via P-compositionality", Porcupine) for checking
each key on its own. Pure.

Model: each key is a register, initially absent. `write` sets it to `value_in`, `delete` sets it to
absent, `read` returns it. Rules:
- Every operation takes effect at one instant within [invoke_ns, complete_ns]; an operation that
  completed before another was invoked (complete < invoke, strictly) takes effect first.
- `ok` operations took effect. `fail` operations did not: they are dropped. `info` (unknown)
  writes and deletes may or may not have taken effect: they may be placed anywhere after their
  invocation (complete = +infinity) or left out. An `info` read has no effect: it is dropped.
  An `info` write whose value nobody read is dropped too: placing it can never help a read.
  The values nobody read are one state for the search: no read can tell them apart.
- A read's `value_out` is a list: exactly one value v reads v; [] or None reads absent; two or
  more values (siblings) can never be linearizable: the key is violating (`sibling_reads`).
- Search: depth-first over configurations (set of placed operations as a bitmask, register
  value), memoized so that no configuration is explored twice. The candidates next are the
  unplaced operations invoked before every unplaced operation's completion. A read that is
  possible now is placed at once, without branching: placing it early only loosens constraints.
  Success when every ok operation is placed.
- Budget: a key whose search visits more than `max_states` configurations is undecided.
- valid: False if any key is violating (a violation is proved whatever the undecided keys hold),
  else None if any key is undecided, else True.
- Witness of a violating key: a minimal (no operation can be removed) inconsistent subset found by
  removing chunks of operations (removing a write also removes the reads of its value), plus the
  operation the full search got stuck at.
"""

from collections.abc import Hashable, Iterator, Sequence

from chaos.checkers.common import EXAMPLES_MAX, describe, more, read_values, value_token
from chaos.history import Operation, by_key
from chaos.verdict import CheckResult
from cluster.frozen import frozen

MAX_STATES_DEFAULT = 200_000
WITNESS_SHOWN_MAX = 10  # a witness is usually 2-4 operations; a long one was cut short by the budget
_INFINITY = float("inf")


class _Absent:
    """The register's value before any write and after a delete."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT = _Absent()


class _Unread:
    """Stands for every value that no read returned: as states they are all alike (no read matches
    them), so merging them shrinks the search."""

    def __repr__(self) -> str:
        return "<unread>"


UNREAD = _Unread()


@frozen
class _Step:
    """One operation of a key's history as the search sees it."""

    op: Operation
    writes: bool  # write or delete: sets the register to `value`; else a read that must see `value`
    value: Hashable
    invoke_ns: int
    complete_ns: float  # +infinity for an unknown write
    required: bool  # ok: must be placed


@frozen
class _Search:
    valid: bool | None
    states: int
    stuck: _Step | None = None  # the operation nothing could place before, at the deepest dead end
    placed: int = 0  # how many operations were placed at that dead end


@frozen
class _KeyVerdict:
    valid: bool | None
    states: int
    sibling_reads: int
    witness: str = ""


def check_linearizable(ops: Sequence[Operation], max_states: int = MAX_STATES_DEFAULT) -> CheckResult:
    assert max_states > 0
    register_ops = [op for op in ops if op.f in ("write", "delete", "read")]
    verdicts = {key: _check_key(key_ops, max_states) for key, key_ops in by_key(register_ops)}
    violating = sorted(key for key, verdict in verdicts.items() if verdict.valid is False)
    undecided = sorted(key for key, verdict in verdicts.items() if verdict.valid is None)
    counts: dict[str, int | float] = {
        "keys": len(verdicts),
        "keys_linearizable": sum(1 for verdict in verdicts.values() if verdict.valid),
        "keys_violating": len(violating),
        "undecided_keys": len(undecided),
        "ops": len(register_ops),
        "sibling_reads": sum(verdict.sibling_reads for verdict in verdicts.values()),
        "states_explored": sum(verdict.states for verdict in verdicts.values()),
    }
    examples = more([verdicts[key].witness for key in violating[: EXAMPLES_MAX - 2]], len(violating), "violating keys")
    if undecided:
        shown = ", ".join(repr(key) for key in undecided[:5])
        examples.append(f"undecided after {max_states} states: {shown}{' ...' if len(undecided) > 5 else ''}")
    valid = False if violating else (None if undecided else True)
    return CheckResult("linearizable", valid, counts, examples)


def _check_key(ops: list[Operation], max_states: int) -> _KeyVerdict:
    key = ops[0].key
    siblings = [op for op in ops if op.f == "read" and op.outcome == "ok" and len(read_values(op.value_out)) > 1]
    if siblings:
        return _KeyVerdict(
            False, 0, len(siblings), f"key {key!r}: siblings, never linearizable: {describe(siblings[0])}"
        )
    steps = _steps(ops)
    impossible = _read_without_a_write(steps)
    if impossible is not None:
        return _KeyVerdict(
            False, 0, 0, f"key {key!r}: {describe(impossible.op)} reads a value that no write invoked before it wrote"
        )
    outcome = _search(steps, max_states)
    if outcome.valid is not False:
        return _KeyVerdict(outcome.valid, outcome.states, 0)
    witness = _shrink(steps, max_states)
    stuck = outcome.stuck
    where = f"stuck after placing {outcome.placed} ops at {describe(stuck.op)}; " if stuck is not None else ""
    shown = "; ".join(describe(step.op) for step in witness[:WITNESS_SHOWN_MAX])
    if len(witness) > WITNESS_SHOWN_MAX:
        shown += f"; ... and {len(witness) - WITNESS_SHOWN_MAX} more"
    return _KeyVerdict(
        False, outcome.states, 0, f"key {key!r}: not linearizable; {where}{len(witness)} ops conflict: {shown}"
    )


def _steps(ops: list[Operation]) -> list[_Step]:
    """The operations the search must consider, in invocation order (see the module rules)."""
    read_tokens = {value for op in ops if op.f == "read" and op.outcome == "ok" for value in read_values(op.value_out)}
    steps = []
    for op in sorted(ops, key=lambda op: op.invoke_ns):
        unknown = op.outcome == "info" or op.complete_ns is None
        if op.outcome == "fail" or (unknown and op.f == "read"):
            continue
        if op.f == "write":
            value = value_token(op.value_in)
            if value not in read_tokens:
                if unknown:
                    continue
                value = UNREAD
        elif op.f == "delete":
            value = ABSENT
        else:
            seen = read_values(op.value_out)
            value = seen[0] if seen else ABSENT
        complete_ns: float = _INFINITY if unknown or op.complete_ns is None else op.complete_ns
        assert op.invoke_ns <= complete_ns, f"operation completes before it is invoked: {op}"
        steps.append(_Step(op, op.f != "read", value, op.invoke_ns, complete_ns, not unknown))
    return steps


def _read_without_a_write(steps: list[_Step]) -> _Step | None:
    """A read of a value that no write invoked before the read completed could have written."""
    first_written_ns: dict[Hashable, int] = {}
    for step in steps:
        if step.writes:
            first_written_ns.setdefault(step.value, step.invoke_ns)
    for step in steps:
        if not step.writes and step.value is not ABSENT:
            written_ns = first_written_ns.get(step.value)
            if written_ns is None or written_ns > step.complete_ns:
                return step
    return None


def _search(steps: list[_Step], max_states: int) -> _Search:
    """Depth-first search for a linearization of `steps` (invocation order), memoized."""
    count = len(steps)
    invokes = [step.invoke_ns for step in steps]
    completes = [step.complete_ns for step in steps]
    writes = [step.writes for step in steps]
    values = [step.value for step in steps]
    required = sum(1 << i for i, step in enumerate(steps) if step.required)

    def successors(mask: int, state: Hashable) -> list[tuple[int, Hashable]]:
        found: list[tuple[int, Hashable]] = []
        earliest_complete = _INFINITY  # of the unplaced operations before i: nothing after it may go first
        i = (~mask & (mask + 1)).bit_length() - 1  # the first unplaced operation
        while i < count:
            if not mask >> i & 1:
                if invokes[i] > earliest_complete:
                    break
                if writes[i]:
                    found.append((i, values[i]))
                elif values[i] == state:
                    return [(i, state)]  # a read possible now goes now: no branching needed
                earliest_complete = min(earliest_complete, completes[i])
            i += 1
        return found

    start: tuple[int, Hashable] = (0, ABSENT)
    seen = {start}
    stack: list[tuple[int, Iterator[tuple[int, Hashable]]]] = [(0, iter(successors(0, ABSENT)))]
    deepest = (-1, 0)  # (ops placed, mask) of the deepest dead end
    while stack:
        mask, pending = stack[-1]
        if mask & required == required:
            return _Search(True, len(seen))
        for i, after in pending:
            configuration = (mask | 1 << i, after)
            if configuration in seen:
                continue
            if len(seen) >= max_states:
                return _Search(None, len(seen))
            seen.add(configuration)
            stack.append((configuration[0], iter(successors(*configuration))))
            break
        else:
            stack.pop()
            deepest = max(deepest, (mask.bit_count(), mask))
    placed, mask = deepest
    unplaced = [step for i, step in enumerate(steps) if step.required and not mask >> i & 1]
    stuck = min(unplaced, key=lambda step: step.complete_ns) if unplaced else None
    return _Search(False, len(seen), stuck, placed)


def _shrink(steps: list[_Step], max_states: int) -> list[_Step]:
    """A 1-minimal inconsistent subset of `steps`, removing ever smaller chunks (delta debugging)."""
    budget = [max_states]  # shared by every trial, so shrinking costs at most one more search

    def inconsistent(trial: list[_Step]) -> bool:
        if budget[0] <= 0:
            return False
        outcome = _search(trial, budget[0])
        budget[0] -= outcome.states
        return outcome.valid is False

    kept = steps
    chunk = max(1, len(kept) // 2)
    while True:
        start = 0
        while start < len(kept):
            trial = _without(kept, kept[start : start + chunk])
            if trial and inconsistent(trial):
                kept = trial
            else:
                start += chunk
        if chunk == 1:
            return kept
        chunk //= 2


def _without(steps: list[_Step], removed: list[_Step]) -> list[_Step]:
    """`steps` less `removed`, and less the reads of any removed write's value."""
    gone = {id(step) for step in removed}
    unwritten = {step.value for step in removed if step.writes and step.value is not ABSENT}
    return [s for s in steps if id(s) not in gone and (s.writes or s.value not in unwritten)]
