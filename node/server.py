"""`titra-node serve`: open the store, start the transport and the runtime, serve HTTP.

Two listeners, as Cassandra separates its native and storage ports: the client API (published
to users) and the peer endpoint (cluster traffic only; it requires the cluster secret).
"""

import argparse
import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable

from aiohttp import web

from cluster.frozen import frozen
from cluster.hlc import HybridClock
from cluster.limits import PROCESS_DEFAULTS, REQUEST_DEFAULTS
from cluster.messages import GossipAck, GossipSyn, Message
from cluster.replica import Replica
from cluster.tombstones import RepairSettings
from node.anti_entropy import repair_settings_from_env
from node.http.app import build_client_app
from node.http.edge import ClientEdge, aiohttp_limits
from node.membership import MembershipDriver
from node.runtime import NodeRuntime
from node.storage import StoreConfig, WalStore
from node.transport import PeerTransport

log = logging.getLogger("titra.node")

SECRET_ENV = "TITRA_CLUSTER_SECRET"
DEFAULT_REPAIR = RepairSettings()


class ConfigError(ValueError):
    pass


@frozen
class NodeConfig:
    node_id: str
    listen: tuple[str, int]
    peer_listen: tuple[str, int]
    peers: dict[str, str]  # node id -> host:port of its peer listener (self included)
    data_dir: str
    secret: str
    repair_wal: bool = False
    seeds: tuple[str, ...] = ()  # peer listeners HOST:PORT to gossip with first (node ids not needed)
    repair: RepairSettings = DEFAULT_REPAIR  # anti-entropy and hints: TITRA_AE_* / TITRA_HINT_* env


def _address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must be HOST:PORT, not {text!r}")
    return host, int(port)


def parse_peers(text: str) -> dict[str, str]:
    peers: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node_id, sep, address = item.partition("=")
        if not sep or not node_id:
            raise ConfigError(f"--peers entries must be ID=HOST:PORT, not {item!r}")
        _address(address, f"peer {node_id}")
        peers[node_id] = address
    return peers


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    secret = os.environ.get(SECRET_ENV, "")
    if args.cluster_secret_file:
        with open(args.cluster_secret_file, encoding="utf-8") as f:
            secret = f.read().strip()
    if len(secret) < 16:
        raise ConfigError(
            f"the cluster secret (env {SECRET_ENV} or --cluster-secret-file) must be at least 16 characters"
        )
    peers = parse_peers(args.peers)
    if args.node_id not in peers:
        peers[args.node_id] = args.peer_listen
    return NodeConfig(
        args.node_id,
        _address(args.listen, "--listen"),
        _address(args.peer_listen, "--peer-listen"),
        peers,
        args.data_dir,
        secret,
        args.repair_wal,
        tuple(_parse_seeds(args.seeds)),
        _repair_settings(),
    )


def _repair_settings() -> RepairSettings:
    try:
        return repair_settings_from_env(os.environ)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _parse_seeds(text: str) -> list[str]:
    seeds = [part.strip() for part in text.split(",") if part.strip()]
    for seed in seeds:
        _address(seed, "--seeds entry")
    return seeds


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node-id", required=True, help="this node's id (stable across restarts)")
    parser.add_argument("--listen", default="127.0.0.1:7070", help="client API address HOST:PORT")
    parser.add_argument("--peer-listen", default="127.0.0.1:7170", help="peer endpoint address HOST:PORT")
    parser.add_argument("--peers", default="", help="all nodes: ID=HOST:PEERPORT,... (this node may be included)")
    parser.add_argument(
        "--seeds",
        default="",
        help="peer listeners HOST:PEERPORT,... to join through gossip (--peers count as seeds and define the ring)",
    )
    parser.add_argument("--data-dir", required=True, help="where the store keeps its files")
    parser.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        default=PROCESS_DEFAULTS.event_loop,
        help="uvloop (when installed; the default) or the standard library's asyncio loop",
    )
    parser.add_argument(
        "--cluster-secret-file", default="", help=f"file holding the cluster secret (else env {SECRET_ENV})"
    )
    parser.add_argument(
        "--repair-wal", action="store_true", help="truncate the WAL at damage in its middle (drops records)"
    )
    parser.add_argument("--log-level", default="INFO")


async def serve(config: NodeConfig) -> None:
    store = await WalStore.open(config.data_dir, StoreConfig(repair_wal=config.repair_wal))
    # What recovery built (the memtable, the modules) lives as long as the process: keep the
    # cyclic collector from scanning it again and again (CPython's gc.freeze, made for this),
    # after a collection, so no garbage of the recovery is frozen with it.
    gc.collect()
    gc.freeze()
    replica = Replica(config.node_id, store, HybridClock(config.node_id))
    runtime: NodeRuntime | None = None
    members: MembershipDriver | None = None

    def deliver(sender: str, message: Message) -> None:
        assert runtime is not None and members is not None
        if isinstance(message, GossipSyn | GossipAck):
            members.on_message(sender, message)
        else:
            runtime.on_message(sender, message)

    def connected(node_id: str) -> None:
        assert members is not None
        members.on_connected(node_id)

    # Gossip lets a node join through a seed without being in the others' --peers: admit it.
    transport = PeerTransport(
        config.node_id, config.peers, config.secret, deliver, admit_unknown_peers=True, on_connected=connected
    )
    members = MembershipDriver(
        config.node_id, config.peers[config.node_id], config.peers, list(config.seeds), store, transport
    )
    runtime = NodeRuntime(
        config.node_id, sorted(config.peers), replica, transport, config.secret.encode(), members, config.repair
    )
    client_app = build_client_app(runtime, repair_status=runtime.repair_status)
    client_runner = web.AppRunner(client_app, access_log=None, **aiohttp_limits(REQUEST_DEFAULTS))
    await client_runner.setup()
    assert client_runner.server is not None
    # The client port: the edge's fast path for plain KV reads and writes, aiohttp for the rest.
    edge = ClientEdge(client_app, client_runner.server)
    client_server: asyncio.Server | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await transport.listen(*config.peer_listen)
        await transport.start()
        await members.start()
        await runtime.start()
        client_server = await loop.create_server(edge, *config.listen, backlog=REQUEST_DEFAULTS.client_backlog)
        log.info(
            "node %s serving clients on %s:%d, peers on %s:%d", config.node_id, *config.listen, *config.peer_listen
        )
        await stop.wait()
    finally:
        log.info("node %s stopping", config.node_id)
        if client_server is not None:
            client_server.close()
        await edge.close(REQUEST_DEFAULTS.client_shutdown_s)
        await client_runner.cleanup()
        await runtime.close()
        await members.close()
        await transport.close()  # its listener and the connections peers opened to it too
        await store.close()


def run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except (ConfigError, OSError) as exc:
        print(f"titra-node: {exc}")
        return 2
    tune_gc()
    with asyncio.Runner(loop_factory=loop_factory(args.event_loop)) as runner:
        runner.run(serve(config))
    return 0


def tune_gc() -> None:
    """Collect the young generation less often than CPython's default (limits.py says why)."""
    gc.set_threshold(
        PROCESS_DEFAULTS.gc_young_allocations_count,
        PROCESS_DEFAULTS.gc_middle_per_young_count,
        PROCESS_DEFAULTS.gc_old_per_middle_count,
    )


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `name` asks for; None is asyncio's own. uvloop falls back to it, with a
    warning, where it is not installed (it is a dependency, but not built for every platform)."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed: running on asyncio's own event loop")
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
