"""Network faults inside the node containers: iptables partitions and netem delay/loss, verified.

Edge module (docker exec). Idea from Jepsen's `jepsen.net/iptables`: DROP every packet from and to
the cut peers' addresses, on INPUT and OUTPUT, so connections that are already open are cut too
(a REJECT or a listen-port rule would only stop new ones). Rules live in one chain of our own,
TITRA-CHAOS, so a heal removes exactly what we added. A cut is not believed until it is seen:
- from inside each cut node, a TCP connect to every cut peer's port 7170 must fail within a second,
  and to every other peer it must succeed (the shape is exact, not "the network is down");
- every node's /v1/status must come to show the cut peers as not connected (the open titra-peer/1
  connections died; they were up before the cut), within a deadline;
- on heal, the DROP counters say how many packets were dropped, and the same probes must show
  every link back: TCP connects succeed and every node is connected to every peer again.
"""

import json
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chaos.compose import Cluster, DockerError, wait_until
from chaos.schedule import NETEM_DELAY_MS, NETEM_LOSS_PERCENT, Fault

CHAIN = "TITRA-CHAOS"
PEER_PORT = 7170
PROBE_TIMEOUT_S = 1.0
CUT_SEEN_TIMEOUT_S = 20.0  # TCP keepalive and TCP_USER_TIMEOUT (~5 s) must close the dead links by then
HEAL_SEEN_TIMEOUT_S = 30.0  # reconnects back off to 2 s

# Runs inside a node container: try a TCP connect to each address, print {ip: "ok" | error}.
_PROBE = """
import json, socket, sys
out = {}
for ip in sys.argv[3:]:
    try:
        socket.create_connection((ip, int(sys.argv[1])), timeout=float(sys.argv[2])).close()
        out[ip] = "ok"
    except OSError as exc:
        out[ip] = type(exc).__name__
print(json.dumps(out))
"""


def _sh(cluster: Cluster, node: str, script: str) -> str:
    result = cluster.exec(node, ["sh", "-c", script])
    if result.returncode != 0:
        raise DockerError(f"{node}: `{script}` exited {result.returncode}: {result.stderr.strip()[-500:]}")
    return result.stdout


def _parallel(nodes: Iterable[str], work: Any) -> dict[str, Any]:
    nodes = list(nodes)
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        return dict(zip(nodes, pool.map(work, nodes), strict=True))


def _chain_script(rules: list[str]) -> str:
    """Create (or empty) our chain, hook it first on INPUT and OUTPUT, then add `rules` to it."""
    setup = [
        f"iptables -N {CHAIN} 2>/dev/null || iptables -F {CHAIN}",
        f"iptables -C INPUT -j {CHAIN} 2>/dev/null || iptables -I INPUT 1 -j {CHAIN}",
        f"iptables -C OUTPUT -j {CHAIN} 2>/dev/null || iptables -I OUTPUT 1 -j {CHAIN}",
    ]
    return " && ".join(setup + [f"iptables -A {CHAIN} {rule}" for rule in rules])


def probe(cluster: Cluster, node: str, ips: list[str]) -> dict[str, str]:
    """From inside `node`: ip -> "ok" if a TCP connect to its peer port succeeded, else the error."""
    if not ips:
        return {}
    result = cluster.exec(
        node, ["python3", "-c", _PROBE, str(PEER_PORT), str(PROBE_TIMEOUT_S), *ips], timeout_s=10 + len(ips)
    )
    if result.returncode != 0:
        raise DockerError(f"{node}: connect probe failed: {result.stderr.strip()[-500:]}")
    parsed: dict[str, str] = json.loads(result.stdout)
    return parsed


def _links_down(cluster: Cluster, fault: Fault) -> bool:
    for node in cluster.node_ids:
        view = cluster.peers_connected(node)
        if view is None or any(view.get(peer, True) for peer in fault.cut_peers(node)):
            return False
    return True


def partition(cluster: Cluster, fault: Fault) -> dict[str, Any]:
    """Apply `fault`'s cuts, then verify them; returns the evidence for the nemesis event."""
    ips = {node: cluster.ip(node) for node in cluster.node_ids}
    before = {node: cluster.peers_connected(node) for node in cluster.node_ids}

    def cut(node: str) -> list[str]:
        peers = [ips[p] for p in fault.cut_peers(node)]
        if peers:
            _sh(cluster, node, _chain_script([f"{d} {ip} -j DROP" for ip in peers for d in ("-s", "-d")]))
        return peers

    applied = _parallel(cluster.node_ids, cut)
    applied_at = time.monotonic()
    evidence: dict[str, Any] = {
        "ips": ips,
        "dropped_addresses": {node: peers for node, peers in applied.items() if peers},
        "peers_connected_before": before,
    }

    def check(node: str) -> dict[str, str]:
        return probe(cluster, node, [ips[p] for p in cluster.node_ids if p != node])

    probes = _parallel(cluster.node_ids, check)
    wrong = [
        f"{node}->{peer}: {probes[node][ips[peer]]}"
        for node in cluster.node_ids
        for peer in cluster.node_ids
        if peer != node and (probes[node][ips[peer]] == "ok") == (peer in fault.cut_peers(node))
    ]
    evidence["tcp_probe"] = {node: {p: probes[node][ips[p]] for p in cluster.node_ids if p != node} for node in probes}
    evidence["tcp_probe_as_planned"] = not wrong
    if wrong:
        evidence["tcp_probe_unexpected"] = wrong
    try:
        wait_until(
            "every cut peer shows as not connected in /v1/status",
            lambda: _links_down(cluster, fault),
            CUT_SEEN_TIMEOUT_S,
        )
        evidence["status_saw_cut_after_s"] = round(time.monotonic() - applied_at, 3)  # since the rules were in place
    except TimeoutError as error:
        evidence["status_saw_cut_after_s"] = None
        evidence["status_error"] = str(error)
    evidence["peers_connected_after"] = {node: cluster.peers_connected(node) for node in cluster.node_ids}
    evidence["members_after"] = {node: cluster.members(node) for node in cluster.node_ids}  # gossip's view
    evidence["verified"] = not wrong and evidence["status_saw_cut_after_s"] is not None
    return evidence


def _dropped_packets(cluster: Cluster, node: str) -> int | None:
    result = cluster.exec(node, ["iptables", "-L", CHAIN, "-v", "-n", "-x"])
    if result.returncode != 0:
        return None  # no chain: nothing was cut on this node
    return sum(int(line.split()[0]) for line in result.stdout.splitlines()[2:] if line.split())


def heal_network(cluster: Cluster) -> dict[str, Any]:
    """Remove our chain and any netem qdisc on every running node, then verify every link is back."""
    running = [node for node in cluster.node_ids if cluster.state(node).startswith("running")]

    def clear(node: str) -> int | None:
        dropped = _dropped_packets(cluster, node)
        script = (
            f"iptables -D INPUT -j {CHAIN} 2>/dev/null; iptables -D OUTPUT -j {CHAIN} 2>/dev/null; "
            f"iptables -F {CHAIN} 2>/dev/null; iptables -X {CHAIN} 2>/dev/null; "
            "tc qdisc del dev eth0 root 2>/dev/null; "
            f"! iptables -L {CHAIN} -n >/dev/null 2>&1 && ! tc qdisc show dev eth0 | grep -q netem"
        )
        _sh(cluster, node, script)
        return dropped

    # How the failure detector saw the fault, just before it ends (phi accrual convicts in seconds).
    members = {node: cluster.members(node) for node in running}
    dropped = _parallel(running, clear)
    evidence: dict[str, Any] = {
        "members_before_heal": members,
        "dropped_packets": {n: d for n, d in dropped.items() if d is not None},
    }
    if len(running) == len(cluster.node_ids):
        ips = {node: cluster.ip(node) for node in cluster.node_ids}
        probes = _parallel(cluster.node_ids, lambda n: probe(cluster, n, [ips[p] for p in cluster.node_ids if p != n]))
        evidence["tcp_probe_all_ok"] = all(v == "ok" for result in probes.values() for v in result.values())
        try:
            evidence["status_all_connected_after_s"] = round(
                wait_until("every node is connected to every peer", cluster.fully_connected, HEAL_SEEN_TIMEOUT_S), 3
            )
        except TimeoutError as error:
            evidence["status_all_connected_after_s"] = None
            evidence["status_error"] = str(error)
        evidence["verified"] = evidence["tcp_probe_all_ok"] and evidence["status_all_connected_after_s"] is not None
    else:
        evidence["verified"] = False
        evidence["not_running"] = sorted(set(cluster.node_ids) - set(running))
    return evidence


def netem(cluster: Cluster, node: str) -> dict[str, Any]:
    """Delay and lose `node`'s outgoing packets (tc netem, as Jepsen's `jepsen.net` does). Kernels
    without sch_netem get the loss alone, from iptables' `statistic` match, and the event says so."""
    command = f"tc qdisc add dev eth0 root netem delay {NETEM_DELAY_MS}ms loss {NETEM_LOSS_PERCENT}%"
    result = cluster.exec(node, ["sh", "-c", command])
    if result.returncode == 0:
        shown = _sh(cluster, node, "tc qdisc show dev eth0")
        return {
            "method": command,
            "delay_applied": True,
            "loss_applied": True,
            "qdisc": shown.strip(),
            "verified": "netem" in shown,
        }
    probability = NETEM_LOSS_PERCENT / 100
    _sh(cluster, node, _chain_script([f"-o eth0 -m statistic --mode random --probability {probability} -j DROP"]))
    listed = _sh(cluster, node, f"iptables -S {CHAIN}")
    return {
        "method": f"iptables -A {CHAIN} -o eth0 -m statistic --mode random --probability {probability} -j DROP",
        "delay_applied": False,
        "loss_applied": True,
        "why": f"`{command}` failed ({result.stderr.strip()}): this kernel has no sch_netem, so no delay",
        "rules": listed.strip().splitlines(),
        "verified": "statistic" in listed,
    }
