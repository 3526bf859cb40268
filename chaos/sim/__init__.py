"""Deterministic simulation of a Titra cluster (project issue #5).

FoundationDB's simulator and TigerBeetle's VOPR, for Titra: the real `NodeRuntime`s run on a
virtual-time event loop (`loop`), talk over a seeded in-memory network (`network`) whose faults
are one frozen dataclass (`faults.FaultOptions`), crash and restart over surviving in-memory
stores (`cluster`), and after a final heal must satisfy the invariants (`invariants`). One seed
drives everything; a failing seed prints the `titra-chaos sim --seed N --options '...'` command
that replays it exactly (`run`).
"""
