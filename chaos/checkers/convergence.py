"""The convergence checker: once faults heal, do all replicas end up holding the same data?

Idea from Dynamo's anti-entropy (DeCandia et al. 2007): eventual consistency promises convergence
after the last fault, and comparing per-node Merkle digests of replicas is how you see it.
Pure.

Input: `snapshots`, a list of `(time_ns, {node_id: {key: digest}})` taken after the final heal at
`heal_ns`, each giving every reachable node's own replica (key -> digest of the stored clock,
tombstones included), e.g. from `GET /v1/replica/{keyspace}`.

Rules:
- The nodes are every node id seen in any snapshot; a node missing from a snapshot was
  unreachable then, and a snapshot with an unreachable node has not converged.
- Snapshots are taken in time order; those taken before `heal_ns` are ignored (`snapshots_ignored`).
- Converged at the first snapshot where every node is present with exactly the same key -> digest
  map (a key absent on one node and present on another differs). Later snapshots are not consulted.
- Counts: `nodes`, `keys` (keys of the deciding snapshot: the converged one, or the last),
  `differing_keys` (among the reachable nodes; 0 when converged), `unreachable_nodes` (at the
  deciding snapshot), `snapshots`, and `time_to_converge_ms` (from `heal_ns`; only when converged).
- valid = converged; None when there is no snapshot at or after the heal, or no node in any.
- Examples name a few differing keys, with the nodes whose digest is not the most common one.
"""

from collections import Counter
from collections.abc import Mapping, Sequence

from chaos.checkers.common import EXAMPLES_MAX, more
from chaos.verdict import CheckResult

Snapshot = tuple[int, Mapping[str, Mapping[str, str]]]
_ABSENT = "<absent>"


def check_convergence(snapshots: Sequence[Snapshot], heal_ns: int) -> CheckResult:
    ordered = sorted(snapshots, key=lambda snapshot: snapshot[0])
    nodes = sorted({node for _, replicas in ordered for node in replicas})
    after = [snapshot for snapshot in ordered if snapshot[0] >= heal_ns]
    counts: dict[str, int | float] = {
        "nodes": len(nodes),
        "snapshots": len(after),
        "snapshots_ignored": len(ordered) - len(after),
    }
    if not after:
        return CheckResult(
            "convergence", None, counts, [f"no snapshot taken at or after the heal ({len(ordered)} before)"]
        )
    if not nodes:
        return CheckResult("convergence", None, counts, ["no node answered any snapshot"])
    for time_ns, replicas in after:
        if _converged(nodes, replicas):
            counts |= {
                "keys": len(replicas[nodes[0]]),
                "differing_keys": 0,
                "unreachable_nodes": 0,
                "time_to_converge_ms": (time_ns - heal_ns) / 1e6,
            }
            return CheckResult("convergence", True, counts)

    time_ns, replicas = after[-1]
    unreachable = [node for node in nodes if node not in replicas]
    keys = sorted({key for replica in replicas.values() for key in replica})
    reachable = [node for node in nodes if node in replicas]
    differing = [key for key in keys if len({replicas[node].get(key, _ABSENT) for node in reachable}) > 1]
    counts |= {"keys": len(keys), "differing_keys": len(differing), "unreachable_nodes": len(unreachable)}
    examples = [f"never converged; last snapshot at {(time_ns - heal_ns) / 1e6:.3f} ms after the heal"]
    if unreachable:
        examples.append(f"unreachable at the last snapshot: {', '.join(unreachable)}")
    shown = [_explain(replicas, reachable, key) for key in differing[: EXAMPLES_MAX - len(examples) - 1]]
    examples += more(shown, len(differing), "differing keys")
    return CheckResult("convergence", False, counts, examples)


def _converged(nodes: list[str], replicas: Mapping[str, Mapping[str, str]]) -> bool:
    if any(node not in replicas for node in nodes):
        return False
    return all(replicas[node] == replicas[nodes[0]] for node in nodes)


def _explain(replicas: Mapping[str, Mapping[str, str]], nodes: list[str], key: str) -> str:
    """`key 'k': n3 has <absent> (n1, n2 have 'ab12')`: the odd nodes out against the most common digest."""
    digests = {node: replicas[node].get(key, _ABSENT) for node in nodes}
    common, _ = Counter(digests.values()).most_common(1)[0]
    odd = ", ".join(f"{node} has {digest!r}" for node, digest in digests.items() if digest != common)
    agreeing = ", ".join(node for node, digest in digests.items() if digest == common)
    return f"key {key!r}: {odd} ({agreeing} {'has' if ',' not in agreeing else 'have'} {common!r})"
