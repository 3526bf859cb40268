"""Small helpers shared by the checkers: hashable value tokens, read results, op descriptions.

Pure. Values in a history arrive as JSON (ints, strings, lists): a checker compares them as
hashable tokens, and a read's `value_out` is a list of sibling values, or [] / None for "not found".
"""

from collections.abc import Hashable
from typing import Any

from chaos.history import Operation

EXAMPLES_MAX = 8  # a handful of examples per result: the report shows them all


def value_token(value: Any) -> Hashable:
    """A hashable stand-in for a JSON value (lists become tuples, dicts sorted item tuples)."""
    if isinstance(value, list | tuple):
        return tuple(value_token(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((str(name), value_token(item)) for name, item in value.items()))
    if isinstance(value, Hashable):
        return value
    return repr(value)


def read_values(value_out: Any) -> tuple[Hashable, ...]:
    """The values a read returned: () for not found, one per sibling otherwise. A bare value
    (not a list) is taken as a single value."""
    if value_out is None:
        return ()
    if isinstance(value_out, list | tuple):
        return tuple(value_token(item) for item in value_out)
    return (value_token(value_out),)


def format_ns(time_ns: int | float | None) -> str:
    if time_ns is None or time_ns == float("inf"):
        return "?"
    return f"{time_ns / 1e6:.3f}"


def describe(op: Operation) -> str:
    """One line: who did what, on which key, with what outcome, when (ms) and through which node."""
    if op.f in ("read", "read_set"):
        what = f"{op.f} {op.key!r} -> {op.value_out!r}"
    elif op.f == "delete":
        what = f"delete {op.key!r}"
    else:
        what = f"{op.f} {op.key!r} {op.value_in!r}"
    where = f" via {op.node}" if op.node else ""
    level = f" @{op.level}" if op.level else ""
    error = f" ({op.error})" if op.error else ""
    interval = f"[{format_ns(op.invoke_ns)}..{format_ns(op.complete_ns)} ms]"
    return f"p{op.process} {what} {op.outcome}{error} {interval}{where}{level}"


def more(examples: list[str], total: int, what: str) -> list[str]:
    """Cap a list of examples, saying how many were left out."""
    if total <= len(examples):
        return examples
    return [*examples, f"... and {total - len(examples)} more {what}"]
