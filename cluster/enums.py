"""Enum members looked up by value without the Enum call.

On CPython 3.11 `Level("quorum")` goes through EnumType.__call__ and Enum.__new__, several
microseconds, and a replicated write converted a handful of wire strings that way (level,
resolution, durability, outcome status). `by_value(Level)` is a dict lookup; a value that is not
a member still goes through the Enum call, for its ValueError naming the value.
"""

import enum
from collections.abc import Callable
from typing import TypeVar

E = TypeVar("E", bound=enum.Enum)


def by_value(cls: type[E]) -> Callable[[object], E]:
    members: dict[object, E] = {member.value: member for member in cls}

    def lookup(value: object) -> E:
        found = members.get(value)
        return found if found is not None else cls(value)

    return lookup
