"""WAL and checkpoint framing: every record is length, CRC32C, LSN, type, payload.

Pure: bytes in, frames out. As in Bitcask and LevelDB's log format, each record carries its own
checksum, so recovery can tell a torn tail (a record cut short by a crash) from damage in the
middle of the log (a complete-looking record whose checksum fails with valid records after it).

Frame layout (little endian):
    u32 payload length | u32 crc32c(lsn, type, payload) | u64 lsn | u8 type | payload
"""

import enum
import struct

from crc32c import crc32c

from cluster.frozen import frozen
from cluster.limits import STORE_LIMITS

HEADER = struct.Struct("<IIQB")
HEADER_BYTES = HEADER.size
_CHECKED = struct.Struct("<QB")  # the header fields the checksum covers

# The largest payload a well-formed frame can carry: one maximal transaction plus encoding slack.
PAYLOAD_BYTES_MAX = STORE_LIMITS.transaction_bytes_max + STORE_LIMITS.transaction_ops_max * 64


class RecordType(enum.IntEnum):
    COMMIT = 1  # one transaction's writes, applied atomically
    CHECKPOINT_CHUNK = 2  # a chunk of a checkpoint file's key/record pairs
    CHECKPOINT_END = 3  # the trailer of a checkpoint file: the number of records


def checksum(lsn: int, rtype: int, payload: bytes) -> int:
    return int(crc32c(payload, crc32c(_CHECKED.pack(lsn, rtype))))


def encode_frame(lsn: int, rtype: int, payload: bytes) -> bytes:
    assert len(payload) <= PAYLOAD_BYTES_MAX, "payload over the frame limit"
    return HEADER.pack(len(payload), checksum(lsn, rtype, payload), lsn, rtype) + payload


@frozen
class Frame:
    offset: int
    lsn: int
    rtype: int
    payload: bytes

    @property
    def end(self) -> int:
        return self.offset + HEADER_BYTES + len(self.payload)


class FrameDefect(enum.Enum):
    INCOMPLETE = "incomplete"  # the buffer ends inside the header or the payload
    BAD_LENGTH = "bad_length"  # the length field exceeds any valid record
    BAD_CHECKSUM = "bad_checksum"
    BAD_TYPE = "bad_type"


def read_frame(buf: bytes | memoryview, offset: int) -> Frame | FrameDefect:
    """Decode the frame at `offset`, or say why there is no valid frame there."""
    if offset + HEADER_BYTES > len(buf):
        return FrameDefect.INCOMPLETE
    length, crc, lsn, rtype = HEADER.unpack_from(buf, offset)
    if length > PAYLOAD_BYTES_MAX:
        return FrameDefect.BAD_LENGTH
    start = offset + HEADER_BYTES
    if start + length > len(buf):
        return FrameDefect.INCOMPLETE
    payload = bytes(buf[start : start + length])
    if checksum(lsn, rtype, payload) != crc:
        return FrameDefect.BAD_CHECKSUM
    if rtype not in RecordType._value2member_map_:
        return FrameDefect.BAD_TYPE
    return Frame(offset, lsn, rtype, payload)


@frozen
class FrameScan:
    """The valid frames at the start of a buffer, and where and why the valid prefix ends."""

    frames: list[Frame]
    valid_bytes: int
    defect: FrameDefect | None  # None when the whole buffer was valid frames


def scan_frames(buf: bytes | memoryview) -> FrameScan:
    frames: list[Frame] = []
    offset = 0
    while offset < len(buf):
        got = read_frame(buf, offset)
        if isinstance(got, FrameDefect):
            return FrameScan(frames, offset, got)
        frames.append(got)
        offset = got.end
    return FrameScan(frames, offset, None)


def next_valid_frame(buf: bytes | memoryview, offset: int, lsn_min: int) -> Frame | None:
    """The first valid frame at or after `offset` (byte by byte) whose LSN is at least `lsn_min`.

    Used only after a defect: if one exists the damage is in the middle of the log (valid records
    follow it), otherwise the defect is a torn tail. Checking the LSN avoids mistaking stale bytes
    of an earlier record for a later one.
    """
    for start in range(offset, len(buf) - HEADER_BYTES + 1):
        got = read_frame(buf, start)
        if isinstance(got, Frame) and got.lsn >= lsn_min:
            return got
    return None
