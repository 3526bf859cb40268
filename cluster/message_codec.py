"""The peer message codec: an encoder and a decoder compiled once per message class from its hints.

Pure; cluster/messages.py holds the messages and their tags and calls `fields_encoder` and
`fields_decoder` once per class at import. Rules:
- A value goes on the wire as the list of its fields in declaration order (a message's list starts
  with its tag); a tuple field is a list; a nested dataclass is its own list, or its `to_wire()`.
- Decoding checks the arity and the exact primitive type of every field (a bool is never an
  integer) and raises MessageDecodeError naming the field (`ReplicaMerge.key must be bytes`); a
  hand-written `from_wire` signals a bad value by ValueError.
- Walking the type hints of every message cost ~8% of a node's CPU under write load, so all the
  work on hints happens at import: an encoder is an attrgetter of the fields plus converters for
  the fields that are not their own wire form, a decoder is per-field checkers plus, for classes
  of primitive fields, a fast path (one lookup of the exact types of the items). A field type the
  codec cannot carry fails at import.
"""

import dataclasses
import itertools
import operator
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Union, get_type_hints


class MessageDecodeError(ValueError):
    code = "bad_message"


Checker = Callable[[Any], Any]  # returns the decoded value, or raises MessageDecodeError
Converter = Callable[[Any], Any]  # a value to its wire form
Encoder = Callable[[Any], list[Any]]  # a value to its list of fields in wire form

SEQUENCES = (list, tuple)  # an array: a list from msgpack, a tuple on an in-process wire
_PRIMITIVES = (int, bool, str, bytes, type(None))
_SIGNATURES_MAX = 16  # exact-type combinations a fast path may accept (unions multiply them)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _exact_types(hint: Any) -> tuple[type, ...] | None:
    """The Python types msgpack yields for a primitive hint, or None when it is not primitive."""
    if _is_union(hint):
        options = [_exact_types(option) for option in typing.get_args(hint)]
        return None if None in options else tuple(kind for kinds in options if kinds for kind in kinds)
    return (hint,) if hint in _PRIMITIVES else None


def _signatures(hints: list[Any]) -> frozenset[tuple[type, ...]] | None:
    """Every tuple of exact item types the hints accept as they are, if all are primitive."""
    per_item = [_exact_types(hint) for hint in hints]
    if any(kinds is None for kinds in per_item):
        return None
    combos = frozenset(itertools.product(*(kinds for kinds in per_item if kinds)))
    return combos if len(combos) <= _SIGNATURES_MAX else None


def _fields(cls: type) -> tuple[tuple[str, ...], list[Any]]:
    hints = get_type_hints(cls)
    names = tuple(f.name for f in dataclasses.fields(cls))
    return names, [hints[name] for name in names]


def fields_decoder(cls: type, where: str) -> Checker:
    """Build `cls` from the list of its field values, every one checked against its hint."""
    names, hints = _fields(cls)
    checkers = tuple(_checker(hint, f"{where}.{name}") for name, hint in zip(names, hints, strict=True))
    arity = len(checkers)

    def checked(items: Sequence[Any]) -> Any:
        if len(items) != arity:
            raise MessageDecodeError(f"{where} has {len(items)} fields, expected {arity}")
        return cls(*[check(item) for check, item in zip(checkers, items, strict=True)])

    signatures = _signatures(hints)
    if signatures is None:
        return checked

    def fast(items: Sequence[Any]) -> Any:
        # Exact types only; anything else (a subclass, a wrong type) goes through the checkers.
        if tuple(map(type, items)) in signatures:
            return cls(*items)
        return checked(items)

    return fast


def _checker(hint: Any, where: str) -> Checker:
    """A decoder for one value of type `hint`; errors name the field as `where`."""
    if _is_union(hint):
        return _union_checker(hint, where)
    if typing.get_origin(hint) is tuple:
        return _tuple_checker(typing.get_args(hint), where)
    if _is_dataclass_type(hint):
        return _dataclass_checker(hint, where)
    if hint is type(None):
        message = f"{where} must be null"
        kinds: Any = type(None)
    elif hint is bool:
        message, kinds = f"{where} must be a boolean", bool
    elif hint is int:
        message, kinds = f"{where} must be an integer", int
    elif hint in (str, bytes):
        message, kinds = f"{where} must be {hint.__name__}", hint
    else:
        raise TypeError(f"{where}: no wire codec for {hint}")
    refused = bool if hint is int else ()  # bool is a subclass of int, never an integer here

    def check_primitive(value: Any) -> Any:
        if isinstance(value, kinds) and not isinstance(value, refused):
            return value
        raise MessageDecodeError(message)

    return check_primitive


def _union_checker(hint: Any, where: str) -> Checker:
    options = tuple(_checker(option, where) for option in typing.get_args(hint))
    exact = _exact_types(hint) or ()

    def check_union(value: Any) -> Any:
        if type(value) in exact:
            return value
        for option in options:  # the first option that accepts the value, as typing reads a union
            try:
                return option(value)
            except MessageDecodeError:
                continue
        raise MessageDecodeError(f"{where}: {type(value).__name__} matches none of {hint}")

    return check_union


def _tuple_checker(args: tuple[Any, ...], where: str) -> Checker:
    if len(args) == 2 and args[1] is Ellipsis:
        item = _checker(args[0], f"{where}[]")
        exact = frozenset(_exact_types(args[0]) or ())

        def check_variadic(value: Any) -> Any:
            if not isinstance(value, SEQUENCES):
                raise MessageDecodeError(f"{where} must be a list")
            if exact and exact.issuperset(map(type, value)):
                return tuple(value)
            return tuple(map(item, value))

        return check_variadic

    items = tuple(_checker(arg, f"{where}[]") for arg in args)
    signatures = _signatures(list(args)) or frozenset()

    def check_fixed(value: Any) -> Any:
        if not isinstance(value, SEQUENCES):
            raise MessageDecodeError(f"{where} must be a list")
        if tuple(map(type, value)) in signatures:
            return tuple(value)
        if len(value) != len(items):
            raise MessageDecodeError(f"{where} must have {len(items)} items")
        return tuple([check(v) for check, v in zip(items, value, strict=True)])

    return check_fixed


def _dataclass_checker(cls: type, where: str) -> Checker:
    from_wire = getattr(cls, "from_wire", None)
    decode_fields = None if from_wire is not None else fields_decoder(cls, where)

    def check_dataclass(value: Any) -> Any:
        if not isinstance(value, SEQUENCES):
            raise MessageDecodeError(f"{where} must be a list")
        if decode_fields is not None:
            return decode_fields(value)
        try:  # a hand-written codec (GossipEntry, VersionVector) signals a bad value by ValueError
            return from_wire(list(value))  # type: ignore[misc]
        except ValueError as exc:
            raise MessageDecodeError(f"{where}: {exc}") from exc

    return check_dataclass


def fields_encoder(cls: type, tag: int | None) -> Encoder:
    """`[tag, field, field, ...]` (no tag for a nested value), each field in its wire form."""
    names, hints = _fields(cls)
    get_fields: Callable[[Any], tuple[Any, ...]]
    if len(names) == 1:
        name = names[0]
        get_fields = lambda obj: (getattr(obj, name),)  # noqa: E731 (attrgetter of one name gives no tuple)
    else:
        get_fields = operator.attrgetter(*names)
    converters = tuple(_converter(hint) for hint in hints)
    head = [] if tag is None else [tag]
    if not any(converters):  # every field is its own wire form: the hot replication messages
        if tag is None:
            return lambda obj: list(get_fields(obj))
        return lambda obj: [tag, *get_fields(obj)]

    def encode_fields(obj: Any) -> list[Any]:
        values = get_fields(obj)
        return [*head, *[v if convert is None else convert(v) for convert, v in zip(converters, values, strict=True)]]

    return encode_fields


def _converter(hint: Any) -> Converter | None:
    """How a value of type `hint` goes on the wire; None: as it is."""
    if _is_union(hint):
        options = [(typing.get_origin(o) or o, c) for o in typing.get_args(hint) if (c := _converter(o))]
        if not options:
            return None

        def convert_union(value: Any) -> Any:
            for kind, convert in options:
                if isinstance(value, kind):
                    return convert(value)
            return value

        return convert_union
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            item = _converter(args[0])
            return list if item is None else lambda value: [item(v) for v in value]
        items = [_converter(arg) for arg in args]
        if not any(items):
            return list
        return lambda value: [v if convert is None else convert(v) for convert, v in zip(items, value, strict=True)]
    if _is_dataclass_type(hint):
        return operator.methodcaller("to_wire") if hasattr(hint, "to_wire") else fields_encoder(hint, None)
    return None
