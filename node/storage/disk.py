"""The one disk abstraction every file access of the store goes through.

As Bitcask funnels its file calls through one small module, the store never calls `os` itself:
`OsDisk` is the real thing, `SimDisk` keeps files in memory and models what a power loss does
(writes not yet fsynced are lost, or kept only as a torn prefix; directory entries not yet made
durable by a directory fsync vanish) and can flip bits or fail an fsync, so tests can inject
exactly the faults the recovery code claims to handle. The calls are synchronous: the WAL runs
them on its own writer thread, never on the event loop.
"""

import os
import threading
from dataclasses import dataclass, field
from typing import Protocol


class FileHandle(Protocol):
    def write(self, data: bytes) -> None: ...

    def sync(self) -> None:
        """Make everything written so far durable (fdatasync)."""
        ...

    def close(self) -> None: ...


class Disk(Protocol):
    def makedirs(self, path: str) -> None: ...

    def listdir(self, path: str) -> list[str]: ...

    def exists(self, path: str) -> bool: ...

    def size(self, path: str) -> int: ...

    def read(self, path: str, offset: int = 0, length: int = -1) -> bytes: ...

    def open_append(self, path: str) -> FileHandle:
        """Open for appending, creating the file if missing."""
        ...

    def open_truncate(self, path: str) -> FileHandle:
        """Create or empty the file and open it for writing."""
        ...

    def truncate(self, path: str, size: int) -> None:
        """Cut the file to `size` bytes and make that durable."""
        ...

    def rename(self, src: str, dst: str) -> None: ...

    def remove(self, path: str) -> None: ...

    def sync_dir(self, path: str) -> None:
        """Make creations, renames and removals in directory `path` durable."""
        ...


def join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p)


# ---------------------------------------------------------------------------------------------


class _OsFile:
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class OsDisk:
    """The real file system."""

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def read(self, path: str, offset: int = 0, length: int = -1) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def open_append(self, path: str) -> FileHandle:
        return _OsFile(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))

    def open_truncate(self, path: str) -> FileHandle:
        return _OsFile(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))

    def truncate(self, path: str, size: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------


@dataclass
class _SimInode:
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""


class _SimFile:
    __slots__ = ("_closed", "_disk", "_inode")

    def __init__(self, disk: "SimDisk", inode: _SimInode) -> None:
        self._disk = disk
        self._inode = inode
        self._closed = False

    def write(self, data: bytes) -> None:
        with self._disk.lock:
            assert not self._closed, "write to a closed file"
            self._inode.data += data

    def sync(self) -> None:
        with self._disk.lock:
            if self._disk.fail_next_sync:
                self._disk.fail_next_sync = False
                raise OSError(5, "injected fsync failure (EIO)")
            self._inode.durable = bytes(self._inode.data)

    def close(self) -> None:
        self._closed = True


class SimDisk:
    """An in-memory disk with power-loss semantics for tests.

    `crash(keep_unsynced)` models a power loss: every file returns to its last synced content,
    plus, for files only appended to since, the first `keep_unsynced(n)` of the n unsynced bytes
    (a torn write); the namespace returns to what the last directory syncs made durable.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._names: dict[str, _SimInode] = {}
        self._durable_names: dict[str, _SimInode] = {}
        self._dirs: set[str] = set()
        self.fail_next_sync = False
        self.sync_count = 0

    @staticmethod
    def _parent(path: str) -> str:
        return path.rsplit("/", 1)[0] if "/" in path else ""

    def _inode(self, path: str) -> _SimInode:
        try:
            return self._names[path]
        except KeyError:
            raise FileNotFoundError(2, "No such file", path) from None

    def makedirs(self, path: str) -> None:
        with self.lock:
            self._dirs.add(path)

    def listdir(self, path: str) -> list[str]:
        with self.lock:
            prefix = path.rstrip("/") + "/"
            return sorted(p[len(prefix) :] for p in self._names if p.startswith(prefix) and "/" not in p[len(prefix) :])

    def exists(self, path: str) -> bool:
        with self.lock:
            return path in self._names or path in self._dirs

    def size(self, path: str) -> int:
        with self.lock:
            return len(self._inode(path).data)

    def read(self, path: str, offset: int = 0, length: int = -1) -> bytes:
        with self.lock:
            data = self._inode(path).data
            end = len(data) if length < 0 else offset + length
            return bytes(data[offset:end])

    def open_append(self, path: str) -> FileHandle:
        with self.lock:
            inode = self._names.setdefault(path, _SimInode())
            return _SimFile(self, inode)

    def open_truncate(self, path: str) -> FileHandle:
        with self.lock:
            inode = _SimInode()
            self._names[path] = inode
            return _SimFile(self, inode)

    def truncate(self, path: str, size: int) -> None:
        with self.lock:
            inode = self._inode(path)
            del inode.data[size:]
            inode.durable = bytes(inode.data)

    def rename(self, src: str, dst: str) -> None:
        with self.lock:
            self._names[dst] = self._inode(src)
            del self._names[src]

    def remove(self, path: str) -> None:
        with self.lock:
            self._inode(path)
            del self._names[path]

    def sync_dir(self, path: str) -> None:
        with self.lock:
            self.sync_count += 1
            for name in [p for p in self._durable_names if self._parent(p) == path]:
                del self._durable_names[name]
            for name, inode in self._names.items():
                if self._parent(name) == path:
                    self._durable_names[name] = inode

    # --- fault injection -------------------------------------------------------------------

    def crash(self, keep_unsynced: "KeepUnsynced | None" = None) -> None:
        """Power loss. By default every unsynced byte is lost."""
        with self.lock:
            inodes = {id(i): i for i in [*self._names.values(), *self._durable_names.values()]}
            for inode in inodes.values():
                self._lose_unsynced(inode, keep_unsynced)
            self._names = dict(self._durable_names)

    @staticmethod
    def _lose_unsynced(inode: _SimInode, keep_unsynced: "KeepUnsynced | None") -> None:
        data, durable = inode.data, inode.durable
        if len(data) > len(durable) and data.startswith(durable) and keep_unsynced is not None:
            kept = keep_unsynced(len(data) - len(durable))
            inode.data = bytearray(data[: len(durable) + kept])
        else:
            inode.data = bytearray(durable)
        inode.durable = bytes(inode.data)

    def flip_bit(self, path: str, offset: int, bit: int = 0) -> None:
        """Silent media corruption of one durable bit."""
        with self.lock:
            inode = self._inode(path)
            inode.data[offset] ^= 1 << bit
            durable = bytearray(inode.durable)
            if offset < len(durable):
                durable[offset] ^= 1 << bit
                inode.durable = bytes(durable)


class KeepUnsynced(Protocol):
    def __call__(self, unsynced_bytes: int) -> int: ...
