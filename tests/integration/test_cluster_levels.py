"""Each consistency level's promise, on a real 3-process cluster on 127.0.0.1.

Every response these tests receive is also checked against the OpenAPI document the nodes serve.
"""

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.integration.harness import LocalCluster, until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_openapi import Recorded, conformance_problems

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


class Http:
    """A recording HTTP client: every response is kept for the OpenAPI conformance check."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.recorded: list[Recorded] = []

    async def request(
        self, method: str, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        async with self.session.request(method, url, data=data, headers=headers or {}) as resp:
            body = await resp.read()
            hdrs = {k: v for k, v in resp.headers.items()}
            path = url.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]
            self.recorded.append(Recorded(method, "/" + path, resp.status, hdrs, body))
            return resp.status, hdrs, body

    def problems(self) -> list[str]:
        return [p for r in self.recorded for p in conformance_problems(r)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("cluster"), 3)
    try:
        await c.start()
        yield c
    finally:
        await c.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        client = Http(session)
        yield client
        assert client.problems() == [], "responses that do not conform to the OpenAPI document"


def kv(cluster: LocalCluster, node: str, key: str, query: str = "", keyspace: str = "default") -> str:
    return f"{cluster.node(node).url}/v1/kv/{keyspace}/{key}" + (f"?{query}" if query else "")


async def test_quorum_write_survives_killing_one_replica(cluster: LocalCluster, http: Http) -> None:
    status, headers, _ = await http.request("PUT", kv(cluster, "n1", "survivor", "consistency=quorum"), data=b"v1")
    assert status == 204 and len(headers["Titra-Replicas"].split(",")) >= 2
    await cluster.kill("n2")
    try:
        for node in ("n1", "n3"):
            status, _, body = await http.request("GET", kv(cluster, node, "survivor", "consistency=quorum"))
            assert (status, body) == (200, b"v1")
    finally:
        await cluster.restart("n2")
        await cluster.wait_connected()


async def test_concurrent_writes_without_context_give_300_with_both(cluster: LocalCluster, http: Http) -> None:
    await asyncio.gather(
        http.request(
            "PUT", kv(cluster, "n1", "both", "consistency=all"), data=b"a", headers={"Content-Type": "text/a"}
        ),
        http.request(
            "PUT", kv(cluster, "n2", "both", "consistency=all"), data=b"b", headers={"Content-Type": "text/b"}
        ),
    )
    status, headers, body = await http.request(
        "GET", kv(cluster, "n3", "both", "consistency=all"), headers={"Accept": "multipart/mixed"}
    )
    assert status == 300 and headers["Content-Type"].startswith("multipart/mixed")
    assert b"text/a" in body and b"text/b" in body
    status, _, _ = await http.request(
        "PUT",
        kv(cluster, "n3", "both", "consistency=all"),
        data=b"ab",
        headers={"Titra-Context": headers["Titra-Context"]},
    )
    assert status == 204
    status, _, body = await http.request("GET", kv(cluster, "n1", "both", "consistency=all"))
    assert (status, body) == (200, b"ab")


async def test_lww_keyspace_keeps_the_later_write(cluster: LocalCluster, http: Http) -> None:
    url = f"{cluster.node('n1').url}/v1/keyspaces/latest"
    status, _, _ = await http.request(
        "PUT", url, data=b'{"n": 3, "resolution": "lww"}', headers={"Content-Type": "application/json"}
    )
    assert status in (200, 201)
    await http.request("PUT", kv(cluster, "n1", "k", "consistency=all", "latest"), data=b"earlier")
    await http.request("PUT", kv(cluster, "n2", "k", "consistency=all", "latest"), data=b"later")
    for node in ("n1", "n2", "n3"):
        status, _, body = await http.request("GET", kv(cluster, node, "k", "consistency=all", "latest"))
        assert (status, body) == (200, b"later")


async def test_causal_read_through_another_node_sees_the_sessions_write(cluster: LocalCluster, http: Http) -> None:
    session: dict[str, str] = {}  # the session sends back the context it was given
    for round_ in range(5):
        status, headers, _ = await http.request(
            "PUT", kv(cluster, "n1", "mine", "consistency=causal"), data=b"%d" % round_, headers=session
        )
        assert status == 204
        token = headers["Titra-Context"]
        session = {"Titra-Context": token}
        status, _, body = await http.request(
            "GET", kv(cluster, "n3", "mine", "consistency=causal"), headers={"Titra-Context": token}
        )
        assert (status, body) == (200, b"%d" % round_)


async def test_503_when_too_few_replicas_before_the_write_and_nothing_is_written(
    cluster: LocalCluster, http: Http
) -> None:
    await cluster.kill("n2")
    await cluster.kill("n3")
    try:
        await until(lambda: _unreachable(cluster, "n1", {"n2", "n3"}), "n1 sees n2 and n3 down")
        status, _, body = await http.request("PUT", kv(cluster, "n1", "never", "consistency=quorum"), data=b"x")
        assert status == 503 and b"not_written" in body
    finally:
        await cluster.restart("n2")
        await cluster.restart("n3")
        await cluster.wait_connected()
    status, _, _ = await http.request("GET", kv(cluster, "n2", "never", "consistency=all"))
    assert status == 404


async def _unreachable(cluster: LocalCluster, node: str, others: set[str]) -> bool:
    async with aiohttp.ClientSession() as session, session.get(f"{cluster.node(node).url}/v1/status") as resp:
        peers: dict[str, Any] = (await resp.json())["peers"]
    return all(not peers[o]["connected"] for o in others)


async def test_504_when_a_replica_stops_answering_mid_write_and_the_outcome_is_unknown(
    cluster: LocalCluster, http: Http
) -> None:
    n3 = cluster.node("n3").process
    assert n3 is not None
    n3.send_signal(signal.SIGSTOP)  # connected, but it never answers
    try:
        status, _, body = await http.request(
            "PUT", kv(cluster, "n1", "paused", "consistency=all&timeout_ms=300"), data=b"x"
        )
        assert status == 504
        assert b'"acknowledged": 2' in body.replace(b'"acknowledged":2', b'"acknowledged": 2')
        assert b'"required": 3' in body.replace(b'"required":3', b'"required": 3')
    finally:
        n3.send_signal(signal.SIGCONT)
    await cluster.wait_connected()
    # Unknown, not failed: the write did happen on the replicas that acknowledged.
    status, _, body = await http.request("GET", kv(cluster, "n2", "paused", "consistency=quorum"))
    assert (status, body) == (200, b"x")


async def test_idempotency_key_returns_the_first_outcome_and_refuses_another_request(
    cluster: LocalCluster, http: Http
) -> None:
    headers = {"Idempotency-Key": "op-42"}
    first = await http.request("PUT", kv(cluster, "n1", "once"), data=b"v", headers=headers)
    again = await http.request("PUT", kv(cluster, "n2", "once"), data=b"v", headers=headers)
    assert first[0] == again[0] == 204
    assert first[1]["Titra-Timestamp"] == again[1]["Titra-Timestamp"]
    assert first[1]["Titra-Context"] == again[1]["Titra-Context"]
    other = await http.request("PUT", kv(cluster, "n3", "once"), data=b"different", headers=headers)
    assert other[0] == 422
    status, _, body = await http.request("GET", kv(cluster, "n3", "once", "consistency=all"))
    assert (status, body) == (200, b"v")  # one write, no sibling from the retry


BAD_REQUESTS: list[tuple[str, str, dict[str, str], bytes, int]] = [
    ("PUT", "/v1/kv/default/k?consistency=strong", {}, b"x", 400),
    ("PUT", "/v1/kv/default/k?consistency=quorum&w=4", {}, b"x", 400),
    ("PUT", "/v1/kv/default/k?w=0", {}, b"x", 400),
    ("PUT", "/v1/kv/default/k?r=x", {}, b"x", 400),
    ("PUT", "/v1/kv/default/k?timeout_ms=0", {}, b"x", 400),
    ("PUT", "/v1/kv/default/k?timeout_ms=999999999", {}, b"x", 400),
    ("PUT", "/v1/kv/default/k?durability=never", {}, b"x", 400),
    ("PUT", "/v1/kv/default/k?colour=red", {}, b"x", 400),
    ("PUT", "/v1/kv/Bad_Name/k", {}, b"x", 400),
    ("PUT", "/v1/kv/_system/k", {}, b"x", 400),
    ("PUT", "/v1/kv/nosuchks/k", {}, b"x", 404),
    ("PUT", "/v1/kv/default/" + "k" * 600, {}, b"x", 413),
    ("PUT", "/v1/kv/default/k", {}, b"v" * (1024 * 1024 + 1), 413),
    ("PUT", "/v1/kv/default/k", {"Titra-Context": "not-a-token"}, b"x", 400),
    ("PUT", "/v1/kv/default/k", {"If-None-Match": "abc"}, b"x", 400),
    ("PUT", "/v1/kv/default/k", {"Content-Type": "no slash"}, b"x", 400),
    ("PUT", "/v1/kv/default/k", {"Idempotency-Key": "x" * 500}, b"x", 400),
    ("PUT", "/v1/keyspaces/newks", {"Content-Type": "text/plain"}, b'{"n": 3}', 415),
    ("PUT", "/v1/keyspaces/newks", {"Content-Type": "application/json"}, b'{"n": 99}', 400),
    ("PUT", "/v1/keyspaces/newks", {"Content-Type": "application/json"}, b"{not json", 400),
    ("GET", "/v1/kv/default?limit=0", {}, b"", 400),
    ("GET", "/v1/kv/default?limit=100000", {}, b"", 400),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "expected"), BAD_REQUESTS)
async def test_bad_input_gets_the_right_4xx_naming_the_problem_and_writes_nothing(
    cluster: LocalCluster, http: Http, method: str, path: str, headers: dict[str, str], body: bytes, expected: int
) -> None:
    status, resp_headers, resp_body = await http.request(
        method, cluster.node("n1").url + path, data=body or None, headers=headers
    )
    assert status == expected, resp_body[:300]
    assert resp_headers["Content-Type"].startswith("application/json")
    assert b'"code"' in resp_body and b'"message"' in resp_body
    status, _, listing = await http.request("GET", f"{cluster.node('n2').url}/v1/kv/default?prefix=k&limit=1000")
    assert status == 200 and b'"k"' not in listing and b'"kkkk' not in listing
    status, _, _ = await http.request("GET", f"{cluster.node('n3').url}/v1/keyspaces/newks")
    assert status == 404


async def test_replica_digests_are_identical_after_a_write_at_all(cluster: LocalCluster, http: Http) -> None:
    url = f"{cluster.node('n1').url}/v1/keyspaces/digests"
    await http.request("PUT", url, data=b'{"n": 3}', headers={"Content-Type": "application/json"})
    await http.request("PUT", kv(cluster, "n1", "digest-me", "consistency=all", "digests"), data=b"x")
    pages = []
    for node in ("n1", "n2", "n3"):
        status, _, body = await http.request("GET", f"{cluster.node(node).url}/v1/replica/digests?limit=1000")
        assert status == 200, body
        pages.append(json.loads(body)["entries"])
    assert pages[0] == pages[1] == pages[2]
    assert [key for key, _ in pages[0]] == ["digest-me"]
