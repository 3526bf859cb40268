"""The convergence checker (chaos.checkers.convergence): after the heal, every node must end up
with the same key -> digest map."""

from chaos.checkers import check_convergence

MS = 1_000_000
HEAL_NS = 100 * MS
SAME = {"a": "d1", "b": "d2"}


def test_converged_at_the_first_identical_snapshot() -> None:
    snapshots = [
        (HEAL_NS + 50 * MS, {"n1": SAME, "n2": SAME, "n3": {"a": "d1"}}),
        (HEAL_NS + 250 * MS, {"n1": SAME, "n2": SAME, "n3": SAME}),
        (HEAL_NS + 500 * MS, {"n1": SAME, "n2": SAME, "n3": SAME}),
    ]
    result = check_convergence(snapshots, HEAL_NS)
    assert result.valid is True
    assert result.counts["time_to_converge_ms"] == 250.0
    assert (result.counts["nodes"], result.counts["keys"], result.counts["differing_keys"]) == (3, 2, 0)


def test_snapshots_are_taken_in_time_order() -> None:
    late = (HEAL_NS + 300 * MS, {"n1": SAME, "n2": SAME})
    early = (HEAL_NS + 10 * MS, {"n1": SAME, "n2": {}})
    assert check_convergence([late, early], HEAL_NS).counts["time_to_converge_ms"] == 300.0


def test_never_converged_reports_differing_keys() -> None:
    snapshots = [
        (HEAL_NS + 50 * MS, {"n1": SAME, "n2": {"a": "d1"}, "n3": SAME}),
        (HEAL_NS + 900 * MS, {"n1": SAME, "n2": {"a": "d1", "b": "old"}, "n3": SAME}),
    ]
    result = check_convergence(snapshots, HEAL_NS)
    assert result.valid is False and result.verdict == "violated"
    assert result.counts["differing_keys"] == 1 and "time_to_converge_ms" not in result.counts
    assert result.examples == [
        "never converged; last snapshot at 900.000 ms after the heal",
        "key 'b': n2 has 'old' (n1, n3 have 'd2')",
    ]


def test_a_key_missing_on_one_node_differs() -> None:
    result = check_convergence([(HEAL_NS, {"n1": SAME, "n2": {"a": "d1"}})], HEAL_NS)
    assert result.valid is False
    assert "key 'b': n2 has '<absent>' (n1 has 'd2')" in result.examples


def test_a_node_unreachable_in_the_last_snapshot_has_not_converged() -> None:
    snapshots = [(HEAL_NS + 10 * MS, {"n1": SAME, "n2": {}, "n3": SAME}), (HEAL_NS + 20 * MS, {"n1": SAME, "n3": SAME})]
    result = check_convergence(snapshots, HEAL_NS)
    assert result.valid is False
    assert result.counts["unreachable_nodes"] == 1 and result.counts["differing_keys"] == 0
    assert "unreachable at the last snapshot: n2" in result.examples


def test_snapshots_before_the_heal_are_ignored() -> None:
    result = check_convergence([(HEAL_NS - 1, {"n1": SAME, "n2": SAME})], HEAL_NS)
    assert result.valid is None
    assert result.counts["snapshots_ignored"] == 1
    before_and_after = [(HEAL_NS - 1, {"n1": SAME, "n2": SAME}), (HEAL_NS + MS, {"n1": SAME, "n2": {}})]
    assert check_convergence(before_and_after, HEAL_NS).valid is False


def test_no_node_in_any_snapshot_is_unknown() -> None:
    assert check_convergence([(HEAL_NS, {})], HEAL_NS).valid is None
