"""cluster.frozen: value classes compare, hash and order by their fields, hold no __dict__, and
are read-only to the type checker (the guard CI relies on instead of a run-time error)."""

from pathlib import Path

import pytest
from mypy import api as mypy_api

from cluster.frozen import frozen
from cluster.hlc import Timestamp


@frozen
class Point:
    x: int
    y: int = 0


@frozen(order=True)
class Ranked:
    rank: int
    name: str


def test_equality_and_hash_follow_the_fields() -> None:
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(2, 1)
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert len({Point(1), Point(1), Point(2)}) == 2


def test_order_is_field_order_when_asked() -> None:
    assert Ranked(1, "b") < Ranked(2, "a") < Ranked(2, "b")
    assert sorted([Timestamp(5, 0, "b"), Timestamp(5, 0, "a"), Timestamp(4, 9, "z")])[0] == Timestamp(4, 9, "z")
    with pytest.raises(TypeError):
        _ = Point(1) < Point(2)  # type: ignore[operator]


def test_slots_and_no_instance_dict() -> None:
    assert Point.__slots__ == ("x", "y")
    assert not hasattr(Point(1), "__dict__")


def test_the_type_checker_refuses_assignment(tmp_path: Path) -> None:
    source = tmp_path / "assign.py"
    source.write_text(
        "from cluster.hlc import Timestamp\n"
        "stamp = Timestamp(1, 2, 'n1')\n"
        "stamp.logical = 3\n"
        "print(stamp < Timestamp(1, 3, 'n1'))\n"
    )
    out, _err, status = mypy_api.run(["--strict", "--no-incremental", "--follow-imports=silent", str(source)])
    assert status == 1, out
    assert 'Property "logical" defined in "Timestamp" is read-only' in out
    assert "assign.py:3:" in out and "assign.py:4:" not in out
