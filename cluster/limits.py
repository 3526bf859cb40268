"""Every limit, timeout and default of Titra, in one place.

TigerBeetle's TIGER_STYLE: put a limit on everything, and assert the relations between limits at
import so that a bad edit fails at once rather than in production. docs/limits.md mirrors this
file for users; `titra limits` prints the values in force.

Units go last in every name (`_bytes`, `_ms`, `_s`, `_count`).
"""

from dataclasses import asdict

from cluster.frozen import frozen

KIB = 1024
MIB = 1024 * KIB


@frozen
class StoreLimits:
    """Limits of one node's local store (node/storage), enforced with typed errors."""

    # Keys are bytes. Riak and Cassandra allow 64 KiB keys; short keys keep the ordered index small.
    key_bytes_max: int = 1 * KIB
    # A stored value is a key's whole sibling set (see RequestDefaults.sibling_set_bytes_max).
    value_bytes_max: int = 8 * MIB
    # Opaque metadata owned by the cluster layer (version vectors, tombstone marks).
    meta_bytes_max: int = 64 * KIB
    content_type_bytes_max: int = 255
    # One transaction: operations and total bytes of its writes (keys + values + metadata).
    transaction_ops_max: int = 10_000
    transaction_bytes_max: int = 16 * MIB
    savepoints_max: int = 64
    # Scans are paginated, never unbounded.
    scan_page_default: int = 100
    scan_page_max: int = 1_000


@frozen
class StoreDefaults:
    """Tunable defaults of the store; every one can be overridden by `StoreConfig`."""

    # One WAL segment; rotation starts a new file once this size is passed.
    wal_segment_bytes: int = 64 * MIB
    # Under `async` durability a commit returns after write(2); a background fdatasync runs at
    # least this often, so a power loss loses at most about this much acknowledged work.
    async_flush_interval_ms: int = 100
    # A lock request that waits longer than this fails with LockTimeout.
    lock_timeout_ms: int = 5_000
    # A checkpoint is taken when this much WAL accumulated since the last one...
    checkpoint_wal_bytes: int = 256 * MIB
    # ...or this long passed with any new commit.
    checkpoint_interval_s: int = 300
    # Records per framed chunk of a checkpoint file (bounds memory when loading).
    checkpoint_chunk_records: int = 8_192


STORE_LIMITS = StoreLimits()
STORE_DEFAULTS = StoreDefaults()

# Relations between limits, checked at import.
assert STORE_LIMITS.value_bytes_max + STORE_LIMITS.key_bytes_max + STORE_LIMITS.meta_bytes_max <= (
    STORE_LIMITS.transaction_bytes_max
), "a single maximal write must fit in one transaction"
assert STORE_LIMITS.transaction_bytes_max < STORE_DEFAULTS.wal_segment_bytes, (
    "one commit record must fit in one WAL segment"
)
assert 0 < STORE_LIMITS.scan_page_default <= STORE_LIMITS.scan_page_max
assert STORE_DEFAULTS.checkpoint_chunk_records > 0
assert STORE_DEFAULTS.async_flush_interval_ms > 0
assert STORE_DEFAULTS.lock_timeout_ms > 0


@frozen
class ClockDefaults:
    """Hybrid logical clocks (cluster.hlc) and causal contexts (cluster.dvv)."""

    # HLC stays within the clock offset of physical time (Kulkarni et al. 2014); NTP keeps nodes
    # within a few ms, and 500 ms (CockroachDB's default) tolerates an NTP step without
    # letting one bad clock drag every node's timestamps far into the future.
    max_offset_ms: int = 500
    # The logical counter fits 32 bits; past this the clock carries into the next millisecond.
    hlc_logical_max: int = 0xFFFF_FFFF
    # Node ids are short names; bounds what a decoder accepts from the wire.
    node_id_bytes_max: int = 255
    # Nodes named in one decoded version vector or clock (departed nodes stay in causal history).
    clock_entries_max: int = 1_024
    # Sibling values in one decoded clock (Riak's max_siblings default is 100).
    siblings_max: int = 100
    # Decoded sibling sets a replica keeps per process, most recently written or read first: a
    # replicated write reads its key's clock back before merging, and decoding our own stored
    # bytes again was a tenth of a node's CPU. About 2 KB each at one 256-byte sibling.
    decoded_clocks_cached: int = 4_096
    # ...and at most this many bytes of them (stored size), since a decoded set holds its own
    # copy of every value: 4,096 keys of 1 MiB would otherwise pin 4 GiB. A set over 1/16 of it
    # is not kept at all (decoding a large set costs little next to copying its values anyway).
    decoded_clocks_bytes_max: int = 16 * 1024 * 1024


@frozen
class RingDefaults:
    """The consistent-hash ring (cluster.ring)."""

    # Virtual nodes per node: load spread is about 1/sqrt(vnodes) (12% at 64); Cassandra 4.0 cut
    # its default from 256 to 16 because every extra vnode adds ranges to repair.
    vnodes_per_node: int = 64
    vnodes_per_node_max: int = 1_024
    # Full-membership gossip (Dynamo) is meant for clusters of hundreds of nodes, not thousands.
    nodes_max: int = 512


CLOCK_DEFAULTS = ClockDefaults()
RING_DEFAULTS = RingDefaults()

assert CLOCK_DEFAULTS.max_offset_ms > 0
assert CLOCK_DEFAULTS.hlc_logical_max > 0
assert RING_DEFAULTS.nodes_max <= CLOCK_DEFAULTS.clock_entries_max, (
    "a version vector must be able to name every node of a full cluster"
)
assert 0 < RING_DEFAULTS.vnodes_per_node <= RING_DEFAULTS.vnodes_per_node_max


@frozen
class RequestDefaults:
    """Client requests at the HTTP edge and their coordination (node/http, node/runtime)."""

    # A client key (URL path segment, UTF-8) and value (request body). etcd's default request
    # limit is 1.5 MiB; Riak warns above 1 MiB objects.
    key_bytes_max: int = 512
    value_bytes_max: int = 1 * MIB
    content_type_bytes_max: int = 255
    keyspace_name_bytes_max: int = 64
    keyspaces_max: int = 1_024
    replicas_default: int = 3
    replicas_max: int = 9
    # All siblings of one key together (values + overhead); past it a write is a 409.
    sibling_set_bytes_max: int = 4 * MIB
    request_timeout_ms_default: int = 5_000
    request_timeout_ms_max: int = 60_000
    # Keys remembered in one causal context token, and the token's size.
    causal_context_keys_max: int = 64
    context_token_bytes_max: int = 16 * KIB
    # Idempotency-Key: how long an outcome is kept, how many are kept, and the key's length.
    idempotency_ttl_s: int = 600
    idempotency_entries_max: int = 100_000
    idempotency_key_bytes_max: int = 128
    # Listing keys: a page.
    list_page_default: int = 100
    list_page_max: int = 1_000
    # A keyspace definition body ({"n": 3, "resolution": "siblings"}): a few dozen bytes in
    # practice; bounded so the JSON parser never sees a large or deeply nested document.
    keyspace_body_bytes_max: int = 4 * KIB
    # HTTP request heads, the same on both front doors of the client port (node/http/edge.py's
    # fast path, aiohttp behind it): the request line (aiohttp's default), one header line (room
    # for a maximal context token) and the number of header lines (aiohttp's default).
    request_line_bytes_max: int = 8_190
    request_header_bytes_max: int = 20 * KIB
    request_headers_max: int = 128
    # The fast path looks for the end of a head this far; a longer one goes to aiohttp.
    edge_head_bytes_max: int = 64 * KIB
    # A client connection that sent nothing for this long while no request of it is being
    # answered is closed (aiohttp's keepalive_timeout; both paths of the client port use it).
    client_idle_timeout_s: int = 75
    # The client port's listen backlog (aiohttp's TCPSite default), and how long a stopping node
    # lets requests in flight finish (the longest request timeout).
    client_backlog: int = 128
    client_shutdown_s: int = 60


@frozen
class PeerDefaults:
    """The peer transport between nodes (node/transport)."""

    connect_timeout_ms: int = 1_000
    # A lost connection is retried at this interval, doubling up to the maximum.
    reconnect_interval_ms: int = 100
    reconnect_interval_ms_max: int = 2_000
    # Messages to one peer go out as one frame per event-loop tick, at most this many per frame.
    batch_messages_max: int = 1_024
    frame_bytes_max: int = 64 * MIB
    # Messages queued for a peer that is not connected; past this the oldest are dropped (the
    # rounds that sent them time out and report an unknown outcome, never a failure).
    queue_messages_max: int = 100_000
    # The listener reads the HTTP/1.1 upgrade request before it knows who sent it, so its size is
    # bounded: ours is about 200 bytes plus the secret; browsers and curl send well under 8 KiB.
    handshake_head_bytes_max: int = 8 * KIB
    # A connection not upgraded by then is closed: a silent or trickling client (slowloris) cannot
    # hold listener sockets, and a refused client has this long to read its answer and close.
    handshake_timeout_ms: int = 2_000
    # Dead links (a host gone, a cut network) are found by the kernel instead of a ping from Python
    # every second: TCP keepalive probes a connection silent for keepalive_idle_s, and
    # TCP_USER_TIMEOUT closes one whose data or probes stay unacknowledged for unacked_timeout_ms
    # (5 s either way). A hung process still acknowledges; the failure detector convicts it.
    keepalive_idle_s: int = 1
    keepalive_interval_s: int = 1
    keepalive_probes_count: int = 4
    unacked_timeout_ms: int = 5_000


REQUEST_DEFAULTS = RequestDefaults()
PEER_DEFAULTS = PeerDefaults()

assert REQUEST_DEFAULTS.value_bytes_max <= REQUEST_DEFAULTS.sibling_set_bytes_max
assert REQUEST_DEFAULTS.sibling_set_bytes_max * 3 // 2 <= STORE_LIMITS.value_bytes_max, (
    "a full sibling set, encoded, must fit in one stored value"
)
assert REQUEST_DEFAULTS.key_bytes_max + REQUEST_DEFAULTS.keyspace_name_bytes_max + 1 <= STORE_LIMITS.key_bytes_max
assert 0 < REQUEST_DEFAULTS.request_timeout_ms_default <= REQUEST_DEFAULTS.request_timeout_ms_max
assert REQUEST_DEFAULTS.replicas_default <= REQUEST_DEFAULTS.replicas_max
assert REQUEST_DEFAULTS.list_page_max <= STORE_LIMITS.scan_page_max
assert REQUEST_DEFAULTS.request_header_bytes_max > REQUEST_DEFAULTS.context_token_bytes_max + 64, (
    "a header line must hold a maximal context token"
)
assert REQUEST_DEFAULTS.edge_head_bytes_max > 2 * REQUEST_DEFAULTS.request_header_bytes_max, (
    "the fast path must see a head that holds a maximal context token and an If-Match"
)
assert REQUEST_DEFAULTS.client_idle_timeout_s > 0 and REQUEST_DEFAULTS.client_backlog > 0
assert REQUEST_DEFAULTS.client_shutdown_s * 1000 >= REQUEST_DEFAULTS.request_timeout_ms_max
assert PEER_DEFAULTS.frame_bytes_max >= 2 * STORE_LIMITS.value_bytes_max
assert PEER_DEFAULTS.frame_bytes_max < 2**32, "a frame's length travels in 4 bytes"
assert PEER_DEFAULTS.connect_timeout_ms <= PEER_DEFAULTS.handshake_timeout_ms, (
    "a listener must give a connecting peer at least as long as the peer itself waits"
)
assert PEER_DEFAULTS.handshake_head_bytes_max >= CLOCK_DEFAULTS.node_id_bytes_max + 1 * KIB, (
    "our own upgrade request (a maximal node id, an address, a secret) must fit in a head"
)
assert (
    1_000 * (PEER_DEFAULTS.keepalive_idle_s + PEER_DEFAULTS.keepalive_interval_s * PEER_DEFAULTS.keepalive_probes_count)
    <= PEER_DEFAULTS.unacked_timeout_ms
), "a silent dead link must be found no later than a busy one"


@frozen
class ClientDefaults:
    """The Python client and the `titra` command (cluster/client.py, cluster/local.py)."""

    # A write is retried with the same Idempotency-Key after a lost connection, a 503 or a 504;
    # a read only after a lost connection. A 4xx is never retried.
    write_retries_max: int = 3
    read_retries_max: int = 2
    # Backoff before a retry: full jitter over a doubling cap (Brooker, "Exponential Backoff
    # and Jitter"), so that clients retrying after one failure do not arrive together.
    retry_backoff_ms: int = 50
    retry_backoff_ms_max: int = 1_000
    connect_timeout_ms: int = 1_000
    # The client waits this long past the server's own timeout_ms, so that the server's 504
    # (which says how many replicas acknowledged) arrives before the client gives up blind.
    timeout_slack_ms: int = 1_000
    # Endpoints one client fails over between.
    endpoints_max: int = 64
    # A response body the client reads: a full sibling set as base64 JSON, with headroom.
    response_bytes_max: int = 8 * MIB
    # `titra local`: nodes on one machine; peer ports sit this far above the client ports, so
    # the two ranges cannot overlap while nodes <= the offset.
    local_nodes_max: int = 100
    local_peer_port_offset: int = 100
    # `titra local up` waits this long for every node's /health/ready, asking this often.
    local_ready_timeout_ms: int = 30_000
    local_poll_interval_ms: int = 100
    # `titra local down` gives nodes this long to exit after SIGTERM before SIGKILL.
    local_stop_timeout_ms: int = 10_000


CLIENT_DEFAULTS = ClientDefaults()

assert CLIENT_DEFAULTS.write_retries_max >= 0 and CLIENT_DEFAULTS.read_retries_max >= 0
assert 0 < CLIENT_DEFAULTS.retry_backoff_ms <= CLIENT_DEFAULTS.retry_backoff_ms_max
assert CLIENT_DEFAULTS.connect_timeout_ms < REQUEST_DEFAULTS.request_timeout_ms_default
assert CLIENT_DEFAULTS.response_bytes_max >= REQUEST_DEFAULTS.sibling_set_bytes_max * 4 // 3 + 64 * KIB, (
    "a full sibling set, base64-encoded in JSON, must fit in one response the client reads"
)
assert CLIENT_DEFAULTS.local_nodes_max <= CLIENT_DEFAULTS.local_peer_port_offset
assert 0 < CLIENT_DEFAULTS.local_poll_interval_ms < CLIENT_DEFAULTS.local_ready_timeout_ms
assert CLIENT_DEFAULTS.local_stop_timeout_ms > 0


@frozen
class BenchDefaults:
    """`titra bench cluster`: Titra against etcd, both driven by wrk (cluster/bench_cluster.py)."""

    duration_s_default: int = 10
    duration_s_max: int = 600
    # Rounds of the whole set of data points; each point reports the middle round (by rate) of each
    # system and every round's ratio. More than one round tames the run-to-run spread of a shared
    # machine (etcd's put rate has moved by ±15% between runs here).
    rounds_default: int = 1
    rounds_max: int = 10
    # Connections (clients) of one data point, across all nodes of a cluster.
    clients_max: int = 1_024
    value_bytes: int = 256
    # The load picks keys at random from this many, all written in the preload; each key is one
    # string constant in wrk's Lua script, and LuaJIT allows 65,536 constants per function.
    key_space_count: int = 1_000
    # Requests in flight during the preload (the whole key space, once, into each system).
    preload_concurrency: int = 32
    # wrk gives up on a request after this long (its default, 2 s, is below Titra's own 5 s
    # request timeout, so a slow write would be counted as a socket timeout, not Titra's 504).
    wrk_timeout_ms: int = 10_000
    # Client and peer ports of both clusters come from one block found free in this range,
    # below Linux's ephemeral range (32768..), where wrk's own connections get their ports.
    port_range_first: int = 20_000
    port_range_last: int = 32_000
    port_search_attempts: int = 50
    etcd_ready_timeout_ms: int = 30_000
    # A leader stepping down may take a few election timeouts before it exits after SIGTERM.
    etcd_stop_timeout_ms: int = 10_000
    poll_interval_ms: int = 100
    # `etcd --version`, `wrk -v` and the nodes' interpreter asked for its version, each.
    tool_version_timeout_s: int = 10


BENCH_DEFAULTS = BenchDefaults()

assert 0 < BENCH_DEFAULTS.duration_s_default <= BENCH_DEFAULTS.duration_s_max
assert 0 < BENCH_DEFAULTS.rounds_default <= BENCH_DEFAULTS.rounds_max
assert 0 < BENCH_DEFAULTS.value_bytes <= REQUEST_DEFAULTS.value_bytes_max
assert 0 < BENCH_DEFAULTS.key_space_count <= 30_000, "two Lua string constants per key must fit in 65,536"
assert BENCH_DEFAULTS.wrk_timeout_ms > REQUEST_DEFAULTS.request_timeout_ms_default, (
    "wrk must wait long enough to see Titra's own timeout answer (504)"
)
assert BENCH_DEFAULTS.port_range_last + 2 * CLIENT_DEFAULTS.local_peer_port_offset < 32_768, (
    "benchmark ports (client block + peer block) must stay below the ephemeral port range"
)
assert 0 < BENCH_DEFAULTS.poll_interval_ms < BENCH_DEFAULTS.etcd_ready_timeout_ms


@frozen
class MembershipDefaults:
    """Gossip membership and phi-accrual failure detection (cluster/membership.py, cluster/failure_detector.py)."""

    # Each node bumps its heartbeat and gossips this often. Cassandra gossips every 1 s; Titra's
    # clusters are small (ring nodes_max), so a quarter of that buys conviction in ~4.6 s instead of
    # ~18 s, for a digest of at most nodes_max entries (~40 bytes each) per message.
    gossip_interval_ms: int = 250
    # Peers gossiped to per round (push-pull): news reaches every node in O(log N) rounds.
    gossip_fanout: int = 3
    # Members one node tracks, learned by gossip included.
    members_max: int = 512
    # Phi thresholds (Hayashibara et al. 2004). Cassandra's phi_convict_threshold defaults to 8:
    # with exponential inter-arrivals, silence of 8 * ln 10 = 18.4 mean intervals.
    phi_suspect: int = 5
    phi_convict: int = 8
    # Inter-arrival samples kept per peer (Cassandra's window: 1,000).
    arrival_window_count: int = 1_000
    # A new window's first sample (Cassandra's fd_initial_value_ms: two gossip intervals), so a
    # peer just met is judged by the nominal cadence, not by a single lucky interval.
    bootstrap_interval_ms: int = 500
    # Longer intervals are not recorded (Cassandra's fd_max_interval_ms): a pause or partition does
    # not make the peer slower to convict for the next thousand heartbeats.
    arrival_interval_ms_max: int = 2_000
    # Floor of the mean interval: a burst of arrivals cannot make phi jump.
    arrival_mean_ms_min: int = 250


MEMBERSHIP_DEFAULTS = MembershipDefaults()

assert 0 < MEMBERSHIP_DEFAULTS.gossip_interval_ms <= MEMBERSHIP_DEFAULTS.arrival_mean_ms_min, (
    "heartbeats are produced once per gossip interval: a mean below it is an artefact of bursts"
)
assert 0 < MEMBERSHIP_DEFAULTS.gossip_fanout < MEMBERSHIP_DEFAULTS.members_max
assert MEMBERSHIP_DEFAULTS.members_max <= RING_DEFAULTS.nodes_max, "gossip may not track more nodes than a ring holds"
assert 0 < MEMBERSHIP_DEFAULTS.phi_suspect < MEMBERSHIP_DEFAULTS.phi_convict
assert MEMBERSHIP_DEFAULTS.arrival_window_count > 0
assert MEMBERSHIP_DEFAULTS.gossip_interval_ms <= MEMBERSHIP_DEFAULTS.bootstrap_interval_ms, (
    "a peer just met must get at least one gossip interval of grace"
)
assert MEMBERSHIP_DEFAULTS.bootstrap_interval_ms <= MEMBERSHIP_DEFAULTS.arrival_interval_ms_max


@frozen
class AntiEntropyDefaults:
    """Anti-entropy with Merkle trees and tombstone purging (cluster/merkle.py, cluster/anti_entropy.py,
    cluster/tombstones.py); every one can be overridden per node (TITRA_AE_* environment variables)."""

    # Pause between two passes (a pass: one exchange per keyspace and peer sharing ranges, back
    # to back). A pass over equal replicas costs one message of range roots per keyspace and peer,
    # so it can run often: Riak's AAE exchanges a partition every few seconds; Cassandra's repair
    # is scheduled by the operator. Short enough that replicas converge within seconds of a heal.
    interval_ms: int = 2_000
    # Leaves per (keyspace, ring range) tree are 2**depth (Cassandra's repair trees go to depth 20
    # for a whole range; ours are per vnode range, 192 of them in a 3-node cluster).
    merkle_depth: int = 10
    merkle_depth_max: int = 16
    # Tree levels descended per round trip: 2**4 child hashes per differing node and message.
    levels_per_exchange: int = 4
    # Ranges whose roots travel in one message.
    ranges_per_exchange_max: int = 1_024
    # (key, digest) pairs in one key-exchange message; whole leaves go together, so one leaf of a
    # very large range may pass it.
    keys_per_message_max: int = 2_000
    # A differing range with at most this many keys on both sides together skips the descent and
    # sends all its keys at once: cheaper than the round trips of a descent.
    whole_range_keys_max: int = 64
    # Bytes per second that exchanges and the clocks they push may use (Cassandra throttles
    # streaming; an unthrottled repair competes with client writes for the disk and the network).
    rate_bytes_per_s: int = 4 * MIB
    # An exchange whose peer does not answer for this long is abandoned (and retried next pass).
    session_timeout_ms: int = 5_000
    # How often the driver ticks the pure core.
    tick_ms: int = 50
    # A tombstone is purged only once every replica holds it and this long has passed since it
    # was written (Cassandra's gc_grace_seconds default: 10 days).
    tombstone_grace_ms: int = 10 * 24 * 3_600_000
    # Tombstones purged per tick, so a purge wave does not stall the node.
    purge_batch_max: int = 100
    # Saves recorded but not yet applied to the Merkle trees (one entry per key, the latest wins):
    # hot keys are written many times between two reads of the trees, so each key is hashed once
    # when a reader needs it. An entry references the stored bytes the memtable holds anyway
    # (~150 bytes of its own); applying a full backlog takes ~7 ms of CPU (~6.5 us a key), the
    # longest the save that fills it waits. 0 applies every save at once.
    pending_saves_max: int = 1_024


@frozen
class HintDefaults:
    """Hinted handoff (Dynamo §4.6; cluster/hints.py, node/hints.py); overridable with TITRA_HINT_*."""

    # A hint older than this is dropped; anti-entropy repairs what it carried. Cassandra's
    # max_hint_window is 3 hours.
    ttl_ms: int = 3 * 3_600_000
    # The backlog one node holds, in hints and bytes; past it new hints are refused and counted.
    backlog_count_max: int = 100_000
    backlog_bytes_max: int = 256 * MIB
    # Replay throttle (Cassandra's hinted_handoff_throttle: 1 MiB/s) and hints in flight at once.
    replay_rate_bytes_per_s: int = 1 * MIB
    replay_in_flight_max: int = 64
    # A delivery not acknowledged in this long is sent again.
    replay_ack_timeout_ms: int = 10_000
    tick_ms: int = 100


ANTI_ENTROPY_DEFAULTS = AntiEntropyDefaults()
HINT_DEFAULTS = HintDefaults()

assert 1 <= ANTI_ENTROPY_DEFAULTS.merkle_depth <= ANTI_ENTROPY_DEFAULTS.merkle_depth_max <= 16
assert 1 <= ANTI_ENTROPY_DEFAULTS.levels_per_exchange <= ANTI_ENTROPY_DEFAULTS.merkle_depth
assert 0 <= ANTI_ENTROPY_DEFAULTS.whole_range_keys_max <= ANTI_ENTROPY_DEFAULTS.keys_per_message_max
assert ANTI_ENTROPY_DEFAULTS.rate_bytes_per_s > 0 and ANTI_ENTROPY_DEFAULTS.tick_ms > 0
assert HINT_DEFAULTS.ttl_ms + CLOCK_DEFAULTS.max_offset_ms < ANTI_ENTROPY_DEFAULTS.tombstone_grace_ms, (
    "a hint must expire before the tombstones written after it may be purged, or it resurrects data"
)
assert HINT_DEFAULTS.backlog_bytes_max >= STORE_LIMITS.value_bytes_max, "one maximal hint must fit in the backlog"
assert 0 < HINT_DEFAULTS.replay_in_flight_max <= PEER_DEFAULTS.queue_messages_max
assert HINT_DEFAULTS.replay_rate_bytes_per_s > 0 and HINT_DEFAULTS.tick_ms > 0


@frozen
class ProcessDefaults:
    """How a titra-node process runs Python: its event loop and its garbage collector (node/server.py)."""

    # uvloop (libuv, in C) runs the node's event loop when it is installed, as it is with Titra's
    # dependencies; `titra-node serve --event-loop asyncio` picks the standard library's loop.
    # Measured on the quorum-write benchmark: ~5% less CPU per request, ~14% with the GC below.
    event_loop: str = "uvloop"
    # CPython collects its youngest generation every 700 net allocations by default; a replicated
    # write allocates thousands of short-lived objects (frames, futures, messages), so the default
    # ran a collection several times per request. A full collection scans every object the node
    # holds (the memtable's records among them) and a write seldom makes a reference cycle, so
    # the older generations run 2x and 10x less often than CPython's 10 and 10 (and CPython
    # still waits for 25% new long-lived objects before a full one).
    gc_young_allocations_count: int = 20_000
    gc_middle_per_young_count: int = 20
    gc_old_per_middle_count: int = 100


PROCESS_DEFAULTS = ProcessDefaults()
assert PROCESS_DEFAULTS.event_loop in ("uvloop", "asyncio")
assert PROCESS_DEFAULTS.gc_young_allocations_count >= 700, "below CPython's own default only adds collections"
assert PROCESS_DEFAULTS.gc_middle_per_young_count > 0 and PROCESS_DEFAULTS.gc_old_per_middle_count > 0


def all_limits() -> dict[str, dict[str, int | str]]:
    """Every limit and default, by group, for `titra limits` and the docs."""
    return {
        "store_limits": asdict(STORE_LIMITS),
        "store_defaults": asdict(STORE_DEFAULTS),
        "clock_defaults": asdict(CLOCK_DEFAULTS),
        "ring_defaults": asdict(RING_DEFAULTS),
        "request_defaults": asdict(REQUEST_DEFAULTS),
        "peer_defaults": asdict(PEER_DEFAULTS),
        "client_defaults": asdict(CLIENT_DEFAULTS),
        "bench_defaults": asdict(BENCH_DEFAULTS),
        "membership_defaults": asdict(MEMBERSHIP_DEFAULTS),
        "anti_entropy_defaults": asdict(ANTI_ENTROPY_DEFAULTS),
        "hint_defaults": asdict(HINT_DEFAULTS),
        "process_defaults": asdict(PROCESS_DEFAULTS),
    }


def limits_markdown() -> str:
    """docs/limits.md's tables, generated from the dataclasses above (a test keeps them equal)."""
    lines: list[str] = []
    for group, values in all_limits().items():
        instance = globals()[group.upper()]
        doc = " ".join((type(instance).__doc__ or "").split())
        lines += [f"## `{group}`", "", doc, "", "| name | value |", "|---|---|"]
        lines += [
            f"| `{name}` | {value:_} |" if isinstance(value, int) else f"| `{name}` | {value} |"
            for name, value in values.items()
        ]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(limits_markdown())
