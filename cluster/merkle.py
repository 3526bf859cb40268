"""Merkle trees over one replica's keys, kept up to date on every write (anti-entropy's index).

Dynamo §4.7 keeps one Merkle tree per key range a node holds, so two replicas compare a range by
exchanging a root and descend only into subtrees that differ. Here there is one tree per
(keyspace, ring range) (`Ring.ranges()`: one range per vnode, whose replicas are one preference
list). Rules:
- A leaf is a bucket of the range, by the key's ring token: leaf = (token - start - 1) * L // width.
- A key contributes H(key, digest of its stored clock), 64 bits; a node's hash is the XOR of every
  contribution under it (Cassandra's repair trees XOR row hashes too). XOR lets a write replace
  its old contribution in O(depth): no tree is ever rebuilt by scanning, except once from the
  store at start-up (`load`).
- The index keeps each key's digest (by leaf), so a differing leaf's keys are listed without
  touching the store, and the purge guard has the digest at hand. Listings go by leaf, then key.
- A tree that does not exist hashes to 0 everywhere, like an empty one.

Pure: no I/O; the node driver feeds it from `Replica`'s save hook, through the anti-entropy core,
which records saves and applies them here in a batch just before it reads (cluster/anti_entropy.py).
"""

import hashlib
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from hashlib import blake2b

from cluster.frozen import frozen
from cluster.ring import TOKEN_SPACE, Ring, TokenRange, key_token

DIGEST_BYTES = 16


def clock_digest(encoded: bytes) -> bytes:
    """The digest of a stored (encoded) sibling set; its hex is what /v1/replica shows."""
    return hashlib.sha256(encoded).digest()[:DIGEST_BYTES]


# blake2b(digest_size=8, person=b"titra.merkle") before any input: copying it is about half the
# cost of building the same hasher from keyword arguments, twice per changed key.
_ENTRY_HASHER = blake2b(digest_size=8, person=b"titra.merkle")


def entry_hash(skey: bytes, digest: bytes) -> int:
    """One key's contribution to its leaf: blake2b-64(digest + skey), personalised. The digest
    has a fixed size, so no two (key, digest) pairs feed the hash the same bytes."""
    assert len(digest) == DIGEST_BYTES
    hasher = _ENTRY_HASHER.copy()
    hasher.update(digest)
    hasher.update(skey)
    return int.from_bytes(hasher.digest(), "big")


def keyspace_of(skey: bytes) -> str:
    """The keyspace of a scoped key (keyspace NUL key)."""
    keyspace, sep, _ = skey.partition(b"\x00")
    assert sep, "a scoped key names its keyspace"
    return keyspace.decode()


@frozen
class KeyDiff:
    """Our keys of some leaves against a peer's (skey -> digest)."""

    equal: dict[bytes, bytes]  # same digest on both
    differ: dict[bytes, bytes]  # both hold it, with different digests (ours)
    only_theirs: list[bytes]
    only_ours: dict[bytes, bytes]


def diff_entries(ours: dict[bytes, bytes], theirs: dict[bytes, bytes]) -> KeyDiff:
    equal: dict[bytes, bytes] = {}
    differ: dict[bytes, bytes] = {}
    only_theirs: list[bytes] = []
    for skey, digest in theirs.items():
        have = ours.get(skey)
        if have is None:
            only_theirs.append(skey)
        elif have == digest:
            equal[skey] = digest
        else:
            differ[skey] = have
    only_ours = {skey: digest for skey, digest in ours.items() if skey not in theirs}
    return KeyDiff(equal, differ, only_theirs, only_ours)


@dataclass
class MerkleTree:
    """A complete binary tree of 2**depth leaves in heap order: node (level l, position i) sits
    at index 2**l - 1 + i; its children are (l + 1, 2i) and (l + 1, 2i + 1)."""

    depth: int
    hashes: "array[int]" = field(init=False)
    leaves: dict[int, dict[bytes, bytes]] = field(default_factory=dict)  # leaf -> {skey: digest}
    keys: int = 0

    def __post_init__(self) -> None:
        self.hashes = array("Q", bytes(8 * ((2 << self.depth) - 1)))

    def hash_at(self, level: int, position: int) -> int:
        assert 0 <= level <= self.depth and 0 <= position < 1 << level
        return self.hashes[(1 << level) - 1 + position]

    @property
    def root(self) -> int:
        return self.hashes[0]

    def set(self, leaf: int, skey: bytes, digest: bytes | None) -> None:
        """Record `skey`'s new digest (None: the key is gone), in O(depth)."""
        bucket = self.leaves.get(leaf)
        old = None if bucket is None else bucket.get(skey)
        if old == digest:
            return
        delta = 0
        if old is not None:
            delta ^= entry_hash(skey, old)
            assert bucket is not None
            del bucket[skey]
            self.keys -= 1
            if not bucket:
                del self.leaves[leaf]
        if digest is not None:
            delta ^= entry_hash(skey, digest)
            self.leaves.setdefault(leaf, {})[skey] = digest
            self.keys += 1
        hashes = self.hashes
        if self.depth <= _PATH_DEPTH_MAX:
            for index in _path(self.depth)[leaf]:
                hashes[index] ^= delta
            return
        index = (1 << self.depth) - 1 + leaf
        while True:
            hashes[index] ^= delta
            if index == 0:
                break
            index = (index - 1) // 2

    def entries(self, leaves: list[int]) -> dict[bytes, bytes]:
        """{skey: digest} of the keys in these leaves, by leaf then key: what an exchange lists
        and pushes depends on the keys held, not on the order they were written or applied in."""
        found: dict[bytes, bytes] = {}
        for leaf in sorted(leaves):
            bucket = self.leaves.get(leaf)
            if bucket:
                found.update(sorted(bucket.items()))
        return found


_PATHS: dict[int, list[tuple[int, ...]]] = {}
# Deeper trees (up to merkle_depth_max) walk up by arithmetic: their paths would take megabytes.
_PATH_DEPTH_MAX = 12


def _path(depth: int) -> list[tuple[int, ...]]:
    """For each leaf of a tree of `depth`, the heap indices from the leaf up to the root: every
    changed key walks one, so they are computed once per depth (2**16 leaves at most)."""
    paths = _PATHS.get(depth)
    if paths is None:
        paths = []
        for leaf in range(1 << depth):
            index, path = (1 << depth) - 1 + leaf, [(1 << depth) - 1 + leaf]
            while index:
                index = (index - 1) // 2
                path.append(index)
            paths.append(tuple(path))
        _PATHS[depth] = paths
    return paths


def descendants(position: int, levels: int) -> range:
    """Positions, `levels` below, of the nodes under `position`."""
    return range(position << levels, (position + 1) << levels)


def rebuilt(tree: MerkleTree) -> MerkleTree:
    """The same keys inserted into a fresh tree (tests compare it with the incremental one)."""
    fresh = MerkleTree(tree.depth)
    for leaf, bucket in tree.leaves.items():
        for skey, digest in bucket.items():
            fresh.set(leaf, skey, digest)
    return fresh


class MerkleIndex:
    """Every key this replica stores, as one Merkle tree per (keyspace, ring range)."""

    def __init__(self, ring: Ring, depth: int) -> None:
        assert 1 <= depth <= 16, "2**16 leaves per range is plenty; deeper trees only cost memory"
        self.ring = ring
        self.depth = depth
        self.ranges: list[TokenRange] = ring.ranges()
        self._ends = [r.end for r in self.ranges]
        self._starts_widths = [(r.start, r.width()) for r in self.ranges]  # for `locate`, per save
        self._trees: dict[tuple[str, int], MerkleTree] = {}

    def locate(self, skey: bytes) -> tuple[int, int]:
        """(range index, leaf) of a scoped key."""
        token = key_token(skey)
        index = bisect_left(self._ends, token) % len(self._ends)
        start, width = self._starts_widths[index]
        offset = (token - start - 1) % TOKEN_SPACE
        return index, (offset << self.depth) // width

    def range_index(self, end: int) -> int | None:
        """The index of the range ending at token `end`, if this ring has one."""
        index = bisect_left(self._ends, end)
        return index if index < len(self._ends) and self._ends[index] == end else None

    def tree(self, keyspace: str, range_index: int) -> MerkleTree | None:
        return self._trees.get((keyspace, range_index))

    def root(self, keyspace: str, range_index: int) -> int:
        tree = self._trees.get((keyspace, range_index))
        return 0 if tree is None else tree.root

    def hash_at(self, keyspace: str, range_index: int, level: int, position: int) -> int:
        tree = self._trees.get((keyspace, range_index))
        return 0 if tree is None else tree.hash_at(level, position)

    def entries(self, keyspace: str, range_index: int, leaves: list[int]) -> dict[bytes, bytes]:
        """{skey: digest} in these leaves of the range; no leaves: the whole range."""
        tree = self._trees.get((keyspace, range_index))
        if tree is None:
            return {}
        valid = [leaf for leaf in leaves if 0 <= leaf < 1 << self.depth]
        return tree.entries(valid if leaves else list(tree.leaves))

    def size(self, keyspace: str, range_index: int | None) -> int:
        """Keys in the range (0 for a range this ring does not have)."""
        tree = None if range_index is None else self._trees.get((keyspace, range_index))
        return 0 if tree is None else tree.keys

    def differing_roots(self, keyspace: str, roots: tuple[tuple[int, int], ...]) -> tuple[list[int], list[int]]:
        """A peer's (range end, root) pairs against ours: (indices of equal ranges, differing ends)."""
        equal: list[int] = []
        differing: list[int] = []
        for end, root in roots:
            index = self.range_index(end)
            if index is not None and self.root(keyspace, index) == root:
                equal.append(index)
            else:
                differing.append(end)
        return equal, differing

    def differing_hashes(
        self, keyspace: str, end: int, level: int, hashes: tuple[tuple[int, int], ...]
    ) -> tuple[int, ...]:
        """A peer's (position, hash) pairs at one level of a range against ours: the positions
        that differ (all of them if the range or level is not ours: nothing can be skipped)."""
        index = self.range_index(end)
        if index is None or not 0 <= level <= self.depth:
            return tuple(position for position, _ in hashes)
        width = 1 << level
        return tuple(p for p, h in hashes if not 0 <= p < width or self.hash_at(keyspace, index, level, p) != h)

    def digest_of(self, skey: bytes) -> bytes | None:
        index, leaf = self.locate(skey)
        tree = self._trees.get((keyspace_of(skey), index))
        return None if tree is None else tree.leaves.get(leaf, {}).get(skey)

    def update(self, skey: bytes, digest: bytes | None) -> int:
        """A write (or, with None, a delete) of `skey` on this replica; returns its range index."""
        index, leaf = self.locate(skey)
        where = (keyspace_of(skey), index)
        tree = self._trees.get(where)
        if tree is None:
            if digest is None:
                return index
            tree = self._trees[where] = MerkleTree(self.depth)
        tree.set(leaf, skey, digest)
        return index

    def load(self, skey: bytes, digest: bytes) -> None:
        """Start-up: a key read from the store, unless a write recorded it meanwhile (newer)."""
        if self.digest_of(skey) is None:
            self.update(skey, digest)

    def keys(self) -> int:
        return sum(tree.keys for tree in self._trees.values())

    def trees(self) -> int:
        return len(self._trees)

    def with_ring(self, ring: Ring) -> "MerkleIndex":
        """The same keys bucketed for a new ring (membership changed), from memory."""
        fresh = MerkleIndex(ring, self.depth)
        for tree in self._trees.values():
            for bucket in tree.leaves.values():
                for skey, digest in bucket.items():
                    fresh.update(skey, digest)
        return fresh
