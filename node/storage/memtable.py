"""The committed state of the store: an ordered map of key -> Record, in memory.

Pure. It holds only committed writes, applied in log order (see docs/storage.md, "Visibility"),
so a reader that does not lock still never sees an uncommitted or rolled-back write. Keys are
kept sorted (a B+tree-like sorted list), so prefix and range scans are ordered and paginated.
"""

from collections.abc import Iterator

from sortedcontainers import SortedDict

from cluster.store import Record
from node.storage.ops import Delete, Put, WriteOp


class Memtable:
    def __init__(self) -> None:
        self._records: SortedDict = SortedDict()
        # Most keys share a handful of content types; keep one string object per type.
        self._content_types: dict[str, str] = {}
        self.last_lsn = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: bytes) -> Record | None:
        got: Record | None = self._records.get(key)
        return got

    def apply(self, lsn: int, ops: list[WriteOp]) -> None:
        """Apply one committed transaction. LSNs must arrive in order, without gaps."""
        assert lsn == self.last_lsn + 1, f"commit {lsn} applied after {self.last_lsn}"
        for op in ops:
            if isinstance(op, Put):
                ctype = self._content_types.setdefault(op.content_type, op.content_type)
                self._records[op.key] = Record(op.value, ctype, op.meta, lsn)
            else:
                assert isinstance(op, Delete)
                self._records.pop(op.key, None)
        self.last_lsn = lsn

    def skip(self, lsn: int) -> None:
        """Advance past an LSN that carries no writes to the state (e.g. a checkpoint marker)."""
        assert lsn == self.last_lsn + 1
        self.last_lsn = lsn

    def keys_in(self, lo: bytes, hi: bytes | None, after: bytes | None) -> Iterator[bytes]:
        """Keys k with lo <= k < hi (no upper bound when hi is None), strictly after `after`."""
        if after is not None and after >= lo:
            it: Iterator[bytes] = self._records.irange(after, hi, inclusive=(False, False))
        else:
            it = self._records.irange(lo, hi, inclusive=(True, False))
        return it

    def snapshot(self) -> tuple[int, list[tuple[bytes, Record]]]:
        """A consistent copy (records are immutable, so a shallow copy suffices)."""
        return self.last_lsn, list(self._records.items())

    def load(self, lsn: int, items: list[tuple[bytes, Record]]) -> None:
        """Replace the state with a checkpoint's (items sorted by key)."""
        for _, record in items:
            self._content_types.setdefault(record.content_type, record.content_type)
        self._records = SortedDict(items)
        self.last_lsn = lsn
