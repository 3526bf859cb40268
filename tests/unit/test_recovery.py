"""Start-up recovery: torn tails are truncated, damage in the middle stops start-up (or is repaired
on request), a damaged checkpoint is refused, and restart = checkpoint + WAL tail.

Scripts on SimDisk (its `flip_bit` and `truncate` are the injected faults); the `titra-node
recover` tests run the real command on a real directory.
"""

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster.store import Record
from node.storage import StoreConfig, WalStore
from node.storage.checkpoint import CheckpointCorrupt, checkpoint_name
from node.storage.disk import Disk, OsDisk, SimDisk, join
from node.storage.framing import HEADER_BYTES, Frame, RecordType, encode_frame, scan_frames
from node.storage.ops import Put, encode_commit
from node.storage.recovery import CHECKPOINT_DIR, WAL_DIR, WalCorruption
from node.storage.wal import segment_name

DATA_DIR = "node1"
WAL = join(DATA_DIR, WAL_DIR)
CKPT = join(DATA_DIR, CHECKPOINT_DIR)


async def write_commits(disk: Disk, count: int, config: StoreConfig | None = None, data_dir: str = DATA_DIR) -> None:
    """Commits 1..count, each putting key kNNN = vNNN; closes the store cleanly."""
    store = await WalStore.open(data_dir, config, disk=disk)
    for n in range(1, count + 1):
        assert await store.put(f"k{n:03d}".encode(), f"v{n:03d}".encode()) == n
    await store.close()


def wal_frames(disk: Disk, data_dir: str = DATA_DIR) -> list[tuple[str, Frame]]:
    """Every frame of the WAL, in order, with the path of its segment."""
    wal_dir = join(data_dir, WAL_DIR)
    out: list[tuple[str, Frame]] = []
    for name in disk.listdir(wal_dir):
        path = join(wal_dir, name)
        out.extend((path, frame) for frame in scan_frames(disk.read(path)).frames)
    return out


async def keys_of(store: WalStore) -> list[bytes]:
    page = await store.scan(limit=1_000)
    assert page.cursor is None
    return [k for k, _ in page.items]


def expected_keys(count: int) -> list[bytes]:
    return [f"k{n:03d}".encode() for n in range(1, count + 1)]


# --- torn tails ----------------------------------------------------------------------------


TailDamage = Callable[[SimDisk, str, Frame], None]


def _cut_last_record(disk: SimDisk, path: str, last: Frame) -> None:
    disk.truncate(path, last.end - 3)


def _append(data: bytes) -> TailDamage:
    def append(disk: SimDisk, path: str, _last: Frame) -> None:
        handle = disk.open_append(path)
        handle.write(data)
        handle.sync()
        handle.close()

    return append


PARTIAL_FRAME = encode_frame(11, RecordType.COMMIT, encode_commit([Put(b"k011", b"v011", "t", b"")]))


@pytest.mark.parametrize(
    ("damage", "commits_kept", "tail_bytes"),
    [
        pytest.param(_cut_last_record, 9, None, id="last-record-cut-short"),
        pytest.param(_append(b"\x07" * 11), 10, 11, id="garbage-appended"),
        pytest.param(_append(PARTIAL_FRAME[: HEADER_BYTES - 2]), 10, HEADER_BYTES - 2, id="partial-header"),
        pytest.param(_append(PARTIAL_FRAME[:-4]), 10, len(PARTIAL_FRAME) - 4, id="partial-frame"),
    ],
)
async def test_torn_tail_is_truncated_and_reported(
    damage: TailDamage, commits_kept: int, tail_bytes: int | None
) -> None:
    disk = SimDisk()
    await write_commits(disk, 10)
    path, last = wal_frames(disk)[-1]
    damage(disk, path, last)
    damaged_size = disk.size(path)

    store = await WalStore.open(DATA_DIR, disk=disk)
    try:
        torn = store.stats.recovery.torn_tail
        assert torn is not None, "the torn tail went unreported"
        kept_bytes = last.end if commits_kept == 10 else last.offset
        assert (torn.path, torn.offset) == (path, kept_bytes)
        assert torn.bytes_dropped == damaged_size - kept_bytes
        if tail_bytes is not None:
            assert torn.bytes_dropped == tail_bytes
        assert disk.size(path) == kept_bytes, "the torn tail was not cut off the file"
        assert store.stats.recovery.repair is None
        assert await keys_of(store) == expected_keys(commits_kept)
        # The log continues right after the last whole record.
        assert await store.put(b"next", b"1") == commits_kept + 1
    finally:
        await store.close()

    store = await WalStore.open(DATA_DIR, disk=disk)
    try:
        assert store.stats.recovery.torn_tail is None, "a clean log was reported torn"
        assert await keys_of(store) == [*expected_keys(commits_kept), b"next"]
    finally:
        await store.close()


# --- damage in the middle ------------------------------------------------------------------

# Where in a frame the flipped bit lands: every header field and the payload.
FLIP_SPOTS = {"length": 2, "crc": 5, "lsn": 9, "type": 16, "payload": HEADER_BYTES + 3}


@pytest.mark.parametrize("spot", FLIP_SPOTS)
async def test_bit_flip_in_the_middle_stops_start_up_naming_file_offset_and_lsn(spot: str) -> None:
    disk = SimDisk()
    await write_commits(disk, 10)
    path, damaged = wal_frames(disk)[3]  # LSN 4; LSNs 5..10 follow it
    size = disk.size(path)
    disk.flip_bit(path, damaged.offset + FLIP_SPOTS[spot], bit=6)

    with pytest.raises(WalCorruption) as caught:
        await WalStore.open(DATA_DIR, disk=disk)
    error = caught.value
    assert (error.path, error.offset, error.lsn, error.records_dropped) == (path, damaged.offset, 4, 7)
    message = str(error)
    assert path in message
    assert f"offset {damaged.offset}" in message
    assert "LSN 4" in message
    assert disk.size(path) == size, "a refused start-up changed the log"


async def test_repair_truncates_at_the_damage_and_reports_the_records_dropped() -> None:
    disk = SimDisk()
    await write_commits(disk, 10)
    path, damaged = wal_frames(disk)[3]
    disk.flip_bit(path, damaged.offset + HEADER_BYTES + 3)

    store = await WalStore.open(DATA_DIR, StoreConfig(repair_wal=True), disk=disk)
    try:
        repair = store.stats.recovery.repair
        assert repair is not None
        assert (repair.path, repair.offset, repair.lsn, repair.records_dropped) == (path, damaged.offset, 4, 7)
        assert repair.segments_removed == []
        assert disk.size(path) == damaged.offset
        assert await keys_of(store) == expected_keys(3)
        assert await store.put(b"after-repair", b"1") == 4
    finally:
        await store.close()
    # Once repaired, the log is clean: a normal start needs no flag.
    store = await WalStore.open(DATA_DIR, disk=disk)
    try:
        assert store.stats.recovery.repair is None and store.stats.recovery.torn_tail is None
        assert await keys_of(store) == [b"after-repair", *expected_keys(3)]
    finally:
        await store.close()


async def test_damage_at_the_end_of_a_segment_with_later_segments_is_not_a_torn_tail() -> None:
    disk = SimDisk()
    await write_commits(disk, 30, StoreConfig(wal_segment_bytes=200))
    segments = disk.listdir(WAL)
    assert len(segments) >= 3, f"the segment size did not force rotation: {segments}"
    frames = wal_frames(disk)
    first_segment = join(WAL, segments[0])
    in_first = [f for p, f in frames if p == first_segment]
    damaged = in_first[-1]
    disk.flip_bit(first_segment, damaged.offset + HEADER_BYTES)
    dropped = 30 - damaged.lsn + 1

    with pytest.raises(WalCorruption) as caught:
        await WalStore.open(DATA_DIR, disk=disk)
    assert (caught.value.path, caught.value.lsn, caught.value.records_dropped) == (
        first_segment,
        damaged.lsn,
        dropped,
    )

    store = await WalStore.open(DATA_DIR, StoreConfig(repair_wal=True), disk=disk)
    try:
        repair = store.stats.recovery.repair
        assert repair is not None and repair.records_dropped == dropped
        assert repair.segments_removed == [join(WAL, s) for s in segments[1:]]
        assert disk.listdir(WAL) == segments[:1]
        assert await keys_of(store) == expected_keys(damaged.lsn - 1)
    finally:
        await store.close()


# --- checkpoints -----------------------------------------------------------------------------


async def test_bit_flip_in_a_checkpoint_names_the_file() -> None:
    disk = SimDisk()
    store = await WalStore.open(DATA_DIR, disk=disk)
    for n in range(1, 6):
        await store.put(f"k{n:03d}".encode(), b"v")
    lsn = await store.checkpoint()
    await store.close()
    path = join(CKPT, checkpoint_name(lsn))
    disk.flip_bit(path, HEADER_BYTES + 4)

    with pytest.raises(CheckpointCorrupt, match=path):
        await WalStore.open(DATA_DIR, disk=disk)


async def test_restart_is_the_checkpoint_plus_the_wal_after_it() -> None:
    disk = SimDisk()
    store = await WalStore.open(DATA_DIR, StoreConfig(checkpoint_chunk_records=3), disk=disk)
    model: dict[bytes, Record] = {}
    for n in range(10):
        key = f"k{n:03d}".encode()
        model[key] = Record(b"before", version=await store.put(key, b"before"))
    checkpoint_lsn = await store.checkpoint()
    assert checkpoint_lsn == 10
    model[b"k001"] = Record(b"after", version=await store.put(b"k001", b"after"))
    assert await store.delete(b"k002")
    del model[b"k002"]
    tx = store.begin()
    await tx.put(b"new-1", b"n1")
    await tx.put(b"new-2", b"n2")
    lsn = await tx.commit()
    assert lsn == 13
    model[b"new-1"], model[b"new-2"] = Record(b"n1", version=lsn), Record(b"n2", version=lsn)
    await store.close()

    store = await WalStore.open(DATA_DIR, disk=disk)
    try:
        report = store.stats.recovery
        assert report.checkpoint_lsn == 10
        assert report.checkpoint_path == join(CKPT, checkpoint_name(10))
        assert report.checkpoint_records == 10
        assert report.records_replayed == 3
        assert report.last_lsn == store.memtable.last_lsn == 13
        assert dict((await store.scan(limit=100)).items) == model
    finally:
        await store.close()


async def test_rotation_and_checkpoint_drop_the_segments_it_covers() -> None:
    disk = SimDisk()
    store = await WalStore.open(DATA_DIR, StoreConfig(wal_segment_bytes=256), disk=disk)
    try:
        for n in range(1, 41):
            await store.put(f"k{n:03d}".encode(), b"x" * 20)
        before = disk.listdir(WAL)
        assert len(before) >= 4, f"no rotation at 256 bytes per segment: {before}"
        assert before[0] == segment_name(1)

        assert await store.checkpoint() == 40
        # Everything up to LSN 40 is in the checkpoint: only the new, empty segment remains.
        assert disk.listdir(WAL) == [segment_name(41)]
        assert disk.listdir(CKPT) == [checkpoint_name(40)]

        for n in range(41, 61):
            await store.put(f"k{n:03d}".encode(), b"x" * 20)
        assert await store.checkpoint() == 60
        assert disk.listdir(WAL) == [segment_name(61)]
        assert disk.listdir(CKPT) == [checkpoint_name(60)], "the older checkpoint was kept"
    finally:
        await store.close()
    store = await WalStore.open(DATA_DIR, disk=disk)
    try:
        assert store.stats.recovery.checkpoint_lsn == 60
        assert store.stats.recovery.records_replayed == 0
        assert await keys_of(store) == expected_keys(60)
    finally:
        await store.close()


# --- titra-node recover ----------------------------------------------------------------------


def _flip_on_os_disk(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x40]))


def _damaged_os_wal(tmp_path: Path) -> tuple[str, str, Frame]:
    data_dir = str(tmp_path / "node")
    asyncio.run(write_commits(OsDisk(), 10, data_dir=data_dir))
    path, damaged = wal_frames(OsDisk(), data_dir)[3]
    _flip_on_os_disk(path, damaged.offset + HEADER_BYTES + 3)
    return data_dir, path, damaged


def test_recover_command_reports_damage_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import main

    data_dir, path, damaged = _damaged_os_wal(tmp_path)
    assert main(["recover", "--data-dir", data_dir]) == 1
    err = capsys.readouterr().err
    assert "wal_corruption" in err
    assert path in err and f"offset {damaged.offset}" in err and "LSN 4" in err
    assert "--repair" in err, "the message does not say how to repair"


def test_recover_command_repairs_with_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import main

    data_dir, path, damaged = _damaged_os_wal(tmp_path)
    assert main(["recover", "--data-dir", data_dir, "--repair", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["repair"]["path"] == path
    assert report["repair"]["offset"] == damaged.offset
    assert report["repair"]["lsn"] == 4
    assert report["repair"]["records_dropped"] == 7
    assert (report["keys"], report["last_lsn"]) == (3, 3)

    # A second run finds a clean log.
    assert main(["recover", "--data-dir", data_dir, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["repair"] is None and report["torn_tail"] is None and report["keys"] == 3


def test_recover_command_reports_a_torn_tail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import main

    data_dir = str(tmp_path / "node")
    asyncio.run(write_commits(OsDisk(), 5, data_dir=data_dir))
    path, last = wal_frames(OsDisk(), data_dir)[-1]
    OsDisk().truncate(path, last.end - 1)
    assert main(["recover", "--data-dir", data_dir, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["torn_tail"]["offset"] == last.offset
    assert report["torn_tail"]["bytes_dropped"] == last.end - 1 - last.offset
    assert (report["keys"], report["records_replayed"]) == (4, 4)
