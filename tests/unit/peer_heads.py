"""The titra-peer/1 upgrade request as a peer writes it, for the tests that play a peer by hand
(test_peer_wire.py on the parsing, test_transport.py over sockets); None leaves a header out."""

from node.peer_wire import NODE_ID_HEADER, PEER_PATH, PEER_PROTOCOL


def upgrade_head(
    node_id: str | None = "a",
    secret: str | bytes | None = None,
    *,
    method: str = "GET",
    path: str = PEER_PATH,
    version: str = "HTTP/1.1",
    upgrade: str | None = PEER_PROTOCOL,
    extra: tuple[str, ...] = (),
) -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1:7170"]
    if upgrade is not None:
        lines += ["Connection: Upgrade", f"Upgrade: {upgrade}"]
    if secret is not None:
        lines.append(f"Authorization: Bearer {secret.decode() if isinstance(secret, bytes) else secret}")
    if node_id is not None:
        lines.append(f"{NODE_ID_HEADER}: {node_id}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
