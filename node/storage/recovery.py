"""Start-up recovery: newest checkpoint, then the WAL after it, with an explicit damage policy.

Bitcask's and LevelDB's rule, made strict:
- A record cut short at the very end of the log, with no valid record after it, is a torn tail:
  the crash interrupted its write, so it was never acknowledged under `fsync`. It is truncated
  and reported.
- A record that fails its checksum (or breaks the LSN sequence) with valid records AFTER it is
  damage in the middle: acknowledged data may be lost. Start-up stops with an error naming the
  file, offset and LSN, unless the operator passes the explicit repair flag, which truncates the
  log there and reports how many records were dropped.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.frozen import frozen
from cluster.store import StoreError
from node.storage.checkpoint import LoadedCheckpoint, list_checkpoints, load_checkpoint
from node.storage.disk import Disk, join
from node.storage.framing import Frame, RecordType, next_valid_frame, scan_frames
from node.storage.ops import PayloadDecodeError, WriteOp, decode_commit
from node.storage.wal import parse_segment_name, segment_name

WAL_DIR = "wal"
CHECKPOINT_DIR = "checkpoint"


class WalCorruption(StoreError):
    code = "wal_corruption"

    def __init__(self, path: str, offset: int, lsn: int, reason: str, records_dropped: int) -> None:
        super().__init__(
            f"WAL damaged in the middle of the log: {path} at offset {offset} (record LSN {lsn}): {reason}; "
            f"{records_dropped} record(s) from there on would be lost. This is not a torn tail, so start-up "
            "stops. To truncate the log at that point and drop them, start again with the repair flag "
            "(titra-node recover --repair)."
        )
        self.path = path
        self.offset = offset
        self.lsn = lsn
        self.records_dropped = records_dropped


@frozen
class TornTail:
    path: str
    offset: int
    bytes_dropped: int
    defect: str


@frozen
class WalRepair:
    path: str
    offset: int
    lsn: int
    reason: str
    records_dropped: int
    segments_removed: list[str]


@dataclass
class RecoveryReport:
    checkpoint_lsn: int = 0
    checkpoint_path: str | None = None
    checkpoint_records: int = 0
    records_replayed: int = 0
    last_lsn: int = 0
    segments: list[int] = field(default_factory=list)
    torn_tail: TornTail | None = None
    repair: WalRepair | None = None


@frozen
class _Damage:
    segment_index: int
    offset: int
    lsn: int
    reason: str


def recover(
    disk: Disk,
    data_dir: str,
    repair: bool,
    load: Callable[[LoadedCheckpoint], None],
    apply: Callable[[int, list[WriteOp]], None],
) -> RecoveryReport:
    """Rebuild the state through `load` (checkpoint) and `apply` (each committed transaction)."""
    wal_dir, ckpt_dir = join(data_dir, WAL_DIR), join(data_dir, CHECKPOINT_DIR)
    for directory in (data_dir, wal_dir, ckpt_dir):
        disk.makedirs(directory)
    report = RecoveryReport()
    checkpoints = list_checkpoints(disk, ckpt_dir)
    if checkpoints:
        loaded = load_checkpoint(disk, ckpt_dir, checkpoints[-1])
        load(loaded)
        report.checkpoint_lsn, report.checkpoint_path = loaded.lsn, loaded.path
        report.checkpoint_records = len(loaded.items)
    segments = sorted(lsn for name in disk.listdir(wal_dir) if (lsn := parse_segment_name(name)) is not None)
    last = report.checkpoint_lsn
    buffers: list[bytes] = []
    for index, first in enumerate(segments):
        path = join(wal_dir, segment_name(first))
        buf = disk.read(path)
        buffers.append(buf)
        scan = scan_frames(buf)
        for frame in scan.frames:
            problem = _sequence_problem(frame, last, report.checkpoint_lsn)
            if problem is not None:
                damage = _Damage(index, frame.offset, frame.lsn, problem)
                return _handle_damage(disk, wal_dir, segments, buffers, damage, repair, report, last)
            if frame.lsn <= report.checkpoint_lsn:
                continue
            try:
                apply(frame.lsn, decode_commit(frame.payload))
            except PayloadDecodeError as exc:
                damage = _Damage(index, frame.offset, frame.lsn, str(exc))
                return _handle_damage(disk, wal_dir, segments, buffers, damage, repair, report, last)
            last = frame.lsn
            report.records_replayed += 1
        if scan.defect is not None:
            damage = _Damage(index, scan.valid_bytes, last + 1, scan.defect.value)
            return _handle_damage(disk, wal_dir, segments, buffers, damage, repair, report, last)
    report.last_lsn = last
    report.segments = segments
    return report


def _sequence_problem(frame: Frame, last: int, checkpoint_lsn: int) -> str | None:
    if frame.rtype != RecordType.COMMIT:
        return f"record of type {frame.rtype} does not belong in the WAL"
    if frame.lsn <= checkpoint_lsn:
        return None
    if frame.lsn != last + 1:
        return f"LSN {frame.lsn} follows {last}: the log has a gap or a stale record"
    return None


def _records_after(segments_bufs: list[bytes], index: int, offset: int, lsn_min: int) -> int:
    """Count valid records from `offset` of segment `index` onwards (walking over damage)."""
    count = 0
    buf = segments_bufs[index]
    pos = offset
    while (frame := next_valid_frame(buf, pos, lsn_min)) is not None:
        count += 1
        pos = frame.end
    return count


def _handle_damage(
    disk: Disk,
    wal_dir: str,
    segments: list[int],
    buffers: list[bytes],
    damage: _Damage,
    repair: bool,
    report: RecoveryReport,
    last: int,
) -> RecoveryReport:
    # Read the rest of the log to learn whether valid records follow the damage.
    for first in segments[len(buffers) :]:
        buffers.append(disk.read(join(wal_dir, segment_name(first))))
    following = _records_after(buffers, damage.segment_index, damage.offset + 1, last + 1)
    for later in buffers[damage.segment_index + 1 :]:
        following += len(scan_frames(later).frames)
    path = join(wal_dir, segment_name(segments[damage.segment_index]))
    kept_segments = segments[: damage.segment_index + 1]
    if following == 0:
        size = len(buffers[damage.segment_index])
        disk.truncate(path, damage.offset)
        report.torn_tail = TornTail(path, damage.offset, size - damage.offset, damage.reason)
    elif not repair:
        raise WalCorruption(path, damage.offset, damage.lsn, damage.reason, following + 1)
    else:
        disk.truncate(path, damage.offset)
        removed = [join(wal_dir, segment_name(s)) for s in segments[damage.segment_index + 1 :]]
        for later_path in removed:
            disk.remove(later_path)
        disk.sync_dir(wal_dir)
        report.repair = WalRepair(path, damage.offset, damage.lsn, damage.reason, following + 1, removed)
    # Empty later segments (possible after a torn tail) are harmless; keep the writer's list exact.
    if report.torn_tail is not None:
        for s in segments[damage.segment_index + 1 :]:
            disk.remove(join(wal_dir, segment_name(s)))
        disk.sync_dir(wal_dir)
    report.last_lsn = last
    report.segments = kept_segments
    return report
