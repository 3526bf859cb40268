"""`@frozen`: the project's immutable value classes, frozen for the type checker, cheap to build.

A `@dataclass(frozen=True)` instance is built through `object.__setattr__`, one call per field:
on CPython 3.11 a five-field frozen dataclass takes about three times as long to construct as the
same class unfrozen, and a replicated write builds dozens of them (clocks, siblings, timestamps,
messages, store operations), which showed as 6% of a quorum write's CPU. `@frozen` makes a plain
slots dataclass with field equality and a field hash (`unsafe_hash`, the hash a frozen dataclass
gets), and declares it frozen to the type checker through PEP 681's `dataclass_transform`:
`mypy --strict`, which CI runs on every module, refuses any assignment to a field. What is lost
is the run-time `FrozenInstanceError`, which only code that mypy rejects could reach.
(attrs offers the same split: `@frozen` there still guards at run time; here the check is static.)
"""

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")


@overload
def frozen(cls: type[T], /) -> type[T]: ...


@overload
def frozen(*, order: bool = False) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def frozen(cls: type[T] | None = None, /, *, order: bool = False) -> Any:
    """`@frozen` or `@frozen(order=True)` on a class body, as `@dataclass(frozen=True, slots=True)`."""

    def build(body: type[T]) -> type[T]:
        return dataclasses.dataclass(body, slots=True, eq=True, order=order, unsafe_hash=True)

    return build if cls is None else build(cls)
