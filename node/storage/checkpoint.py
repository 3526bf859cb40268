"""Checkpoints: a snapshot of the whole state tagged with the LSN it includes.

Written atomically, the way every careful store does it: a temporary file, fsync, rename over
the final name, fsync of the directory. The file is a run of framed chunks (the WAL framing, so
every chunk is checksummed) and a trailer that carries the record count, so a checkpoint cut
short is never mistaken for a complete one. Restart = newest checkpoint + the WAL after its LSN.
"""


import msgpack

from cluster.frozen import frozen
from cluster.store import Record, StoreError
from node.storage.disk import Disk, join
from node.storage.framing import RecordType, encode_frame, scan_frames

CHECKPOINT_SUFFIX = ".ckpt"
TEMP_SUFFIX = ".tmp"


class CheckpointCorrupt(StoreError):
    code = "checkpoint_corrupt"


@frozen
class LoadedCheckpoint:
    lsn: int
    path: str
    items: list[tuple[bytes, Record]]


def checkpoint_name(lsn: int) -> str:
    return f"{lsn:016x}{CHECKPOINT_SUFFIX}"


def list_checkpoints(disk: Disk, directory: str) -> list[int]:
    lsns = []
    for name in disk.listdir(directory):
        if name.endswith(CHECKPOINT_SUFFIX) and len(name) == 16 + len(CHECKPOINT_SUFFIX):
            try:
                lsns.append(int(name[:16], 16))
            except ValueError:
                continue
    return sorted(lsns)


def write_checkpoint(
    disk: Disk, directory: str, lsn: int, items: list[tuple[bytes, Record]], chunk_records: int
) -> str:
    """Write the checkpoint of state `items` at `lsn` atomically; returns its path."""
    final = join(directory, checkpoint_name(lsn))
    temp = final + TEMP_SUFFIX
    handle = disk.open_truncate(temp)
    try:
        for start in range(0, len(items), chunk_records):
            chunk = [
                (key, rec.value, rec.content_type, rec.meta, rec.version)
                for key, rec in items[start : start + chunk_records]
            ]
            payload = msgpack.packb(chunk, use_bin_type=True)
            handle.write(encode_frame(lsn, RecordType.CHECKPOINT_CHUNK, payload))
        trailer = msgpack.packb([len(items)])
        handle.write(encode_frame(lsn, RecordType.CHECKPOINT_END, trailer))
        handle.sync()
    finally:
        handle.close()
    disk.rename(temp, final)
    disk.sync_dir(directory)
    return final


def load_checkpoint(disk: Disk, directory: str, lsn: int) -> LoadedCheckpoint:
    path = join(directory, checkpoint_name(lsn))
    buf = disk.read(path)
    scan = scan_frames(buf)
    if scan.defect is not None:
        raise CheckpointCorrupt(
            f"checkpoint {path} is damaged at offset {scan.valid_bytes} ({scan.defect.value}); "
            "it cannot be used, and the WAL before it was already removed"
        )
    items: list[tuple[bytes, Record]] = []
    count: int | None = None
    # Most records share a few content types: keep one string object per type (memory per key).
    content_types: dict[str, str] = {}
    for frame in scan.frames:
        if frame.lsn != lsn:
            raise CheckpointCorrupt(f"checkpoint {path} holds a chunk of LSN {frame.lsn}, expected {lsn}")
        if count is not None:
            raise CheckpointCorrupt(f"checkpoint {path} has data after its trailer (offset {frame.offset})")
        if frame.rtype == RecordType.CHECKPOINT_CHUNK:
            for key, value, ctype, meta, version in msgpack.unpackb(frame.payload, raw=False, use_list=False):
                items.append((key, Record(value, content_types.setdefault(ctype, ctype), meta, version)))
        elif frame.rtype == RecordType.CHECKPOINT_END:
            (count,) = msgpack.unpackb(frame.payload)
        else:
            raise CheckpointCorrupt(f"checkpoint {path} holds a record of type {frame.rtype}")
    if count is None:
        raise CheckpointCorrupt(f"checkpoint {path} has no trailer: it was cut short")
    if count != len(items):
        raise CheckpointCorrupt(f"checkpoint {path} trailer says {count} records, found {len(items)}")
    return LoadedCheckpoint(lsn, path, items)


def remove_old_checkpoints(disk: Disk, directory: str, keep_lsn: int) -> None:
    """Drop checkpoints older than `keep_lsn` and leftover temporary files."""
    for name in disk.listdir(directory):
        if name.endswith(TEMP_SUFFIX):
            disk.remove(join(directory, name))
    for old in list_checkpoints(disk, directory):
        if old < keep_lsn:
            disk.remove(join(directory, checkpoint_name(old)))
    disk.sync_dir(directory)
