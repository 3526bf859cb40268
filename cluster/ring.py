"""The consistent-hash ring: which nodes hold a key.

Dynamo (DeCandia et al. 2007, §4.2-4.3): keys and nodes hash onto one circle; a key's replicas are
the first `n` DISTINCT nodes met walking clockwise from it (its preference list). Each node sits at
`vnodes_per_node` points (virtual nodes, as in Cassandra), so load evens out and a node that joins
or leaves trades keys with many nodes rather than with one neighbour.

Rules:
- Points are 64-bit integers from blake2b, never Python's `hash()` (salted per process), so every
  node, every process and every run computes the same ring.
- The vnode at token `t` owns the range (previous token, t]; the lowest token's range wraps past
  2**64. On the (negligible) collision of two tokens, the node that sorts first keeps the token.
- Adding a node only moves keys to it; removing one only moves its own keys (about 1/N of them).
- A `Ring` is an immutable value, equal to another with the same nodes and vnode count;
  membership changes build a new one.
"""

from bisect import bisect_left
from dataclasses import field
from hashlib import blake2b

from cluster.frozen import frozen
from cluster.limits import RING_DEFAULTS

TOKEN_SPACE = 2**64


class RingError(ValueError):
    """A ring was asked for with bad membership or arguments (an operator or configuration error)."""

    code = "bad_ring"


# blake2b(digest_size=8, person=b"titra.key") before any input: a copy costs about half as much
# as building the hasher from keyword arguments, and every write places its key (on the
# coordinator for the preference list, on each replica for the anti-entropy index).
_KEY_HASHER = blake2b(digest_size=8, person=b"titra.key")


def key_token(key: bytes) -> int:
    """The key's point on the ring. `person` separates key points from vnode points."""
    hasher = _KEY_HASHER.copy()
    hasher.update(key)
    return int.from_bytes(hasher.digest(), "big")


def vnode_token(node_id: str, index: int) -> int:
    name = node_id.encode("utf-8", "surrogatepass")
    # Length-prefixed, so ('ab', 1) and ('a', ...) can never feed the hash the same bytes.
    data = len(name).to_bytes(4, "big") + name + index.to_bytes(4, "big")
    return int.from_bytes(blake2b(data, digest_size=8, person=b"titra.vnode").digest(), "big")


@frozen
class TokenRange:
    """The points p with start < p <= end, wrapping past 2**64 when start > end; start == end is
    the whole ring (a ring with a single vnode)."""

    start: int
    end: int

    def contains(self, token: int) -> bool:
        if self.start < self.end:
            return self.start < token <= self.end
        if self.start > self.end:
            return token > self.start or token <= self.end
        return True

    def width(self) -> int:
        """How many points the range holds."""
        return (self.end - self.start) % TOKEN_SPACE or TOKEN_SPACE


@frozen
class Ring:
    """Consistent-hash ring over `nodes`, each at `vnodes_per_node` points."""

    nodes: frozenset[str]
    vnodes_per_node: int = RING_DEFAULTS.vnodes_per_node
    # Sorted vnode tokens, and the node at each; derived from the two fields above.
    _tokens: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _owners: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.nodes:
            raise RingError("a ring needs at least one node")
        if len(self.nodes) > RING_DEFAULTS.nodes_max:
            raise RingError(f"{len(self.nodes)} nodes; the limit is {RING_DEFAULTS.nodes_max}")
        vnodes_max = RING_DEFAULTS.vnodes_per_node_max
        if not 1 <= self.vnodes_per_node <= vnodes_max:
            raise RingError(f"vnodes_per_node is {self.vnodes_per_node}; it must be in 1..{vnodes_max}")
        for node in self.nodes:
            if not isinstance(node, str) or not node:
                raise RingError(f"node ids must be non-empty strings, not {node!r}")
        vnodes = range(self.vnodes_per_node)
        points = sorted((vnode_token(node, i), node) for node in self.nodes for i in vnodes)
        kept = [point for i, point in enumerate(points) if i == 0 or points[i - 1][0] != point[0]]
        object.__setattr__(self, "_tokens", tuple(token for token, _ in kept))
        object.__setattr__(self, "_owners", tuple(node for _, node in kept))

    def with_node(self, node_id: str) -> "Ring":
        return Ring(self.nodes | {node_id}, self.vnodes_per_node)

    def without_node(self, node_id: str) -> "Ring":
        return Ring(self.nodes - {node_id}, self.vnodes_per_node)

    def preference_list(self, key: bytes, n: int) -> list[str]:
        """The `n` distinct nodes that hold `key`, coordinator first; fewer if the ring is smaller."""
        return self._walk(self._index_of(key_token(key)), n)

    def owner(self, key: bytes) -> str:
        """The first node of the key's preference list."""
        return self._owners[self._index_of(key_token(key))]

    def ranges(self) -> list[TokenRange]:
        """One range per vnode, in ring order; together they cover every point exactly once."""
        tokens = self._tokens
        return [TokenRange(tokens[i - 1], tokens[i]) for i in range(len(tokens))]

    def owners_of_range(self, token_range: TokenRange, n: int) -> list[str]:
        """The preference list shared by every key in `token_range`, one of `ranges()`."""
        index = bisect_left(self._tokens, token_range.end)
        if index == len(self._tokens) or self._tokens[index] != token_range.end:
            raise RingError(f"{token_range} is not a range of this ring")
        return self._walk(index, n)

    def ranges_of(self, node_id: str, n: int) -> list[TokenRange]:
        """The ranges whose keys `node_id` replicates at replication factor `n`: what it must hold,
        and so what anti-entropy compares (Dynamo §4.7 keeps one Merkle tree per range)."""
        return [r for i, r in enumerate(self.ranges()) if node_id in self._walk(i, n)]

    def ownership(self) -> dict[str, float]:
        """Each node's share of the ring as primary (Cassandra's 'Owns'); the shares sum to 1."""
        shares = dict.fromkeys(sorted(self.nodes), 0)
        for index, token_range in enumerate(self.ranges()):
            shares[self._owners[index]] += token_range.width()
        return {node: width / TOKEN_SPACE for node, width in shares.items()}

    def _index_of(self, token: int) -> int:
        # The first vnode at or after the point, wrapping to the lowest token.
        return bisect_left(self._tokens, token) % len(self._tokens)

    def _walk(self, start: int, n: int) -> list[str]:
        if n < 1:
            raise RingError(f"a preference list has at least one node, not {n}")
        wanted = min(n, len(self.nodes))
        found: list[str] = []
        for step in range(len(self._owners)):
            owner = self._owners[(start + step) % len(self._owners)]
            if owner not in found:
                found.append(owner)
                if len(found) == wanted:
                    break
        return found
