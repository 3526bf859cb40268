"""The nemesis: carries out a schedule's faults against the compose cluster, from the host.

Edge module (docker CLI). Jepsen's nemeses (jepsen.nemesis): partitions (chaos/netfault.py),
`kill` (SIGKILL the container, later start it: a crash with the disk kept), `pause` (docker pause
freezes the processes, as Jepsen's SIGSTOP "hammer-time"), `netem` (delay and loss). Rules:
- Every fault's start and stop becomes one history event, type "nemesis", f "start" / "stop",
  timed when the fault took effect; its value says what was done and the evidence that it held.
- A stop (heal) waits until every node is ready and connected to every peer again, with a
  deadline, so the next fault starts from a healthy cluster; a heal that was not seen says so.
- `heal_all` undoes every kind of fault whatever the state: it is what the runner calls last.
"""

import time
from collections.abc import Callable
from typing import Any

from chaos.compose import Cluster, DockerError, wait_until
from chaos.history import Event
from chaos.netfault import heal_network, netem, partition
from chaos.schedule import Fault, Step

NEMESIS_PROCESS = -1
HEALTHY_TIMEOUT_S = 90.0
STATE_TIMEOUT_S = 15.0


class Nemesis:
    def __init__(self, cluster: Cluster, now_ns: Callable[[], int]) -> None:
        self.cluster = cluster
        self.now_ns = now_ns  # the run's clock: ns since its start
        self.events: list[Event] = []
        self._op_id = 0

    def _record(self, f: str, time_ns: int, value: dict[str, Any], error: str = "") -> Event:
        event = Event("nemesis", NEMESIS_PROCESS, self._op_id, f, "", value, time_ns, error=error)
        self._op_id += 1
        self.events.append(event)
        return event

    def execute(self, step: Step) -> Event:
        """Carry out one step; a fault that could not be applied is recorded with its error."""
        value = step.fault.describe()
        value["scheduled_at_s"] = step.at_s
        time_ns = self.now_ns()
        try:
            if step.action == "start":
                time_ns, evidence = self._start(step.fault)
            else:
                time_ns, evidence = self._stop(step.fault)
        except (DockerError, TimeoutError, OSError) as error:
            return self._record(step.action, time_ns, {**value, "verified": False}, f"{type(error).__name__}: {error}")
        # The evidence under its own key: what was done and what showed that it held.
        verified = bool(evidence.pop("verified", False))
        return self._record(step.action, time_ns, {**value, "verified": verified, "evidence": evidence})

    def _wait_state(self, node: str, wanted: str) -> float:
        return wait_until(f"{node} is {wanted}", lambda: self.cluster.state(node).startswith(wanted), STATE_TIMEOUT_S)

    def _peers_see_down(self, node: str) -> float | None:
        """Seconds until every other node's /v1/status shows `node` not connected; None if never."""
        others = [other for other in self.cluster.node_ids if other != node]

        def down_everywhere() -> bool:
            views = [self.cluster.peers_connected(other) for other in others]
            return all(view is not None and not view.get(node, True) for view in views)

        try:
            return round(wait_until(f"the other nodes see {node} down", down_everywhere, STATE_TIMEOUT_S), 3)
        except TimeoutError:
            return None

    def _start(self, fault: Fault) -> tuple[int, dict[str, Any]]:
        cluster = self.cluster
        if fault.kind == "partition":
            if not fault.cuts:
                return self.now_ns(), {"verified": True, "applied": False}
            time_ns = self.now_ns()
            return time_ns, partition(cluster, fault)
        node = fault.targets[0]
        if fault.kind == "kill":
            time_ns = self.now_ns()
            cluster.docker("kill", node, "-s", "KILL")
            self._wait_state(node, "exited")
            code = cluster.inspect(node, "{{.State.ExitCode}}")
            seen = self._peers_see_down(node)
            return time_ns, {"exit_code": int(code), "peers_saw_it_down_after_s": seen, "verified": code == "137"}
        if fault.kind == "pause":
            time_ns = self.now_ns()
            cluster.docker("pause", node)
            self._wait_state(node, "paused")
            seen = self._peers_see_down(node)
            return time_ns, {"state": cluster.state(node), "peers_saw_it_down_after_s": seen, "verified": True}
        time_ns = self.now_ns()
        return time_ns, netem(cluster, node)

    def _stop(self, fault: Fault) -> tuple[int, dict[str, Any]]:
        cluster = self.cluster
        evidence: dict[str, Any] = {}
        time_ns = self.now_ns()
        if fault.kind == "kill":
            cluster.docker("start", fault.targets[0])
        elif fault.kind == "pause":
            cluster.docker("unpause", fault.targets[0])
        else:
            network = heal_network(cluster)
            evidence["network"] = network
        evidence["healthy_after_s"] = round(cluster.wait_healthy(HEALTHY_TIMEOUT_S), 3)
        network_ok = evidence.get("network", {}).get("verified", True)
        evidence["verified"] = bool(network_ok)
        return time_ns, evidence

    def heal_all(self) -> Event:
        """Undo everything: unpause, start what is stopped, clear the network; wait until healthy."""
        cluster = self.cluster
        time_ns = self.now_ns()
        actions: list[str] = []
        try:
            for node in cluster.node_ids:
                state = cluster.state(node)
                if state.startswith("paused"):
                    cluster.docker("unpause", node)
                    actions.append(f"unpause {node}")
                elif not state.startswith("running"):
                    cluster.docker("start", node)
                    actions.append(f"start {node}")
            for node in cluster.node_ids:
                self._wait_state(node, "running")
            network = heal_network(cluster)
            healthy_s = cluster.wait_healthy(HEALTHY_TIMEOUT_S)
        except (DockerError, TimeoutError, OSError) as error:
            value = {"kind": "heal-all", "verified": False, "evidence": {"actions": actions}}
            return self._record("stop", time_ns, value, f"{type(error).__name__}: {error}")
        evidence = {"actions": actions, "network": network, "healthy_after_s": round(healthy_s, 3)}
        value = {"kind": "heal-all", "verified": bool(network.get("verified")), "evidence": evidence}
        return self._record("stop", time_ns, value)


def run_schedule(nemesis: Nemesis, steps: list[Step], start_monotonic: float, quiet_min_s: float = 1.0) -> None:
    """Each step at its planned time. A step that comes due while the previous one is still being
    carried out (verifying a cut, waiting for health) runs late, and shifts the rest by as much;
    after a heal there are always `quiet_min_s` of calm before the next fault."""
    lag_s = 0.0
    ready_at = start_monotonic
    for step in steps:
        due = max(start_monotonic + step.at_s + lag_s, ready_at)
        time.sleep(max(0.0, due - time.monotonic()))  # the schedule's own pace, not a wait for a state
        lag_s = due - (start_monotonic + step.at_s)
        nemesis.execute(step)
        ready_at = time.monotonic() + (quiet_min_s if step.action == "stop" else 0.0)
