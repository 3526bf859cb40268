"""A SimDisk whose fsyncs wait at a gate the test opens: a commit written to the log stays in
flight (with the writer thread, not yet acknowledged or applied) for as long as a test needs.
Shared by the WAL writer and store fast-path tests."""

import threading

from node.storage.disk import FileHandle, SimDisk

GATE_TIMEOUT_S = 10  # a writer thread held at a gate a failing test never opened gives up


class _GatedFile:
    def __init__(self, disk: "GatedDisk", inner: FileHandle) -> None:
        self._disk = disk
        self._inner = inner

    def write(self, data: bytes) -> None:
        self._inner.write(data)

    def sync(self) -> None:
        self._disk.sync_reached.set()
        assert self._disk.sync_gate.wait(GATE_TIMEOUT_S), "the test never opened the fsync gate"
        self._inner.sync()

    def close(self) -> None:
        self._inner.close()


class GatedDisk(SimDisk):
    """Fsyncs wait while `sync_gate` is clear; `sync_reached` is set once one is waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.sync_gate = threading.Event()
        self.sync_gate.set()
        self.sync_reached = threading.Event()

    def hold_syncs(self) -> None:
        self.sync_reached.clear()
        self.sync_gate.clear()

    def open_append(self, path: str) -> FileHandle:
        return _GatedFile(self, super().open_append(path))
