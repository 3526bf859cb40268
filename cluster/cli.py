"""`titra`: the client and admin command (the front door of `cluster/`).

Each KV command is one session of `cluster.client.Client`: `--context` seeds its causal context
and every answer prints the receipt with the new one, to pass to the next command. Exit codes
keep "surely not written" (4) apart from "outcome unknown" (5); see EXIT_CODES.
"""

import argparse
import base64
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

from cluster import bench_cluster, local
from cluster.client import (
    DEFAULT_ENDPOINT,
    OCTET_STREAM,
    Client,
    OutcomeUnknown,
    Receipt,
    Sibling,
    TitraError,
    Unavailable,
    WriteResult,
)
from cluster.limits import CLIENT_DEFAULTS, REQUEST_DEFAULTS, all_limits

ENDPOINT_ENV = "TITRA_ENDPOINT"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_OUTCOME_UNKNOWN = 0, 1, 2, 3, 4, 5
EXIT_CODES = """exit status:
  0  done
  1  refused by the server (4xx: nothing was written) or failed locally
  2  usage error
  3  get: the key has no value
  4  unavailable: no answer, or 503; surely not written
  5  outcome unknown (504, or the connection was lost): the write may or may not have happened"""
TEXT_PLAIN = "text/plain; charset=utf-8"


class UsageError(Exception):
    """Arguments argparse accepted but that do not make a request (exit status 2)."""


def _limits(args: argparse.Namespace) -> int:
    groups = all_limits()
    if args.json:
        print(json.dumps(groups))
        return 0
    for group, values in groups.items():
        print(group)
        for name, value in values.items():
            print(f"  {name:<32} {value}")
    return 0


def _rows(rows: Sequence[tuple[str, object]]) -> None:
    for name, value in rows:
        print(f"{name:<16} {value}")


def _receipt_rows(receipt: Receipt) -> list[tuple[str, object]]:
    return [
        ("context", receipt.context or "-"),
        ("requested", receipt.requested or "-"),
        ("achieved", receipt.achieved or "-"),
        ("replicas", ",".join(receipt.replicas) or "-"),
        ("fallbacks", ",".join(receipt.fallbacks) or "-"),
        ("timestamp", receipt.timestamp or "-"),
        ("coordinator", receipt.coordinator or "-"),
    ]


def _text(value: bytes) -> str | None:
    """The value as text when it is printable UTF-8, else None."""
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return None
    return text if all(ch.isprintable() or ch in "\n\t" for ch in text) else None


def _sibling_json(sibling: Sibling) -> dict[str, Any]:
    return {
        "value": _text(sibling.value),
        "value_base64": base64.b64encode(sibling.value).decode(),
        "content_type": sibling.content_type,
        "timestamp": sibling.timestamp,
    }


def _read_value(args: argparse.Namespace) -> tuple[bytes, str]:
    if (args.file is None) == (args.value is None):
        raise UsageError("put takes one of VALUE, - (standard input) or --file F")
    limit = REQUEST_DEFAULTS.value_bytes_max
    if args.file is not None:
        with Path(args.file).open("rb") as source:
            value, content_type = source.read(limit + 1), OCTET_STREAM
    elif args.value == "-":
        value, content_type = sys.stdin.buffer.read(limit + 1), OCTET_STREAM
    else:
        value, content_type = args.value.encode(), TEXT_PLAIN
    # Read at most one byte past the limit: enough to know, without holding an unbounded input.
    if len(value) > limit:
        raise UsageError(f"the value is over value_bytes_max ({limit} bytes)")
    return value, args.content_type or content_type


def _show_write(args: argparse.Namespace, result: WriteResult) -> int:
    if args.json:
        out = {"ok": True, "idempotency_key": result.idempotency_key, "attempts": result.attempts}
        print(json.dumps({**out, "receipt": asdict(result.receipt)}))
    else:
        _rows([("ok", "yes"), ("idempotency-key", result.idempotency_key), ("attempts", result.attempts)])
        _rows(_receipt_rows(result.receipt))
    return EXIT_OK


def _put(args: argparse.Namespace, client: Client) -> int:
    value, content_type = _read_value(args)
    result = client.put(
        args.keyspace,
        args.key,
        value,
        content_type,
        consistency=args.consistency,
        w=args.w,
        timeout_ms=args.timeout_ms,
        durability=args.durability,
        if_match=args.if_match,
        if_none_match=args.if_none_match,
        idempotency_key=args.idempotency_key,
    )
    return _show_write(args, result)


def _delete(args: argparse.Namespace, client: Client) -> int:
    result = client.delete(
        args.keyspace,
        args.key,
        consistency=args.consistency,
        w=args.w,
        timeout_ms=args.timeout_ms,
        durability=args.durability,
        if_match=args.if_match,
        idempotency_key=args.idempotency_key,
    )
    return _show_write(args, result)


def _get(args: argparse.Namespace, client: Client) -> int:
    result = client.get(args.keyspace, args.key, consistency=args.consistency, r=args.r, timeout_ms=args.timeout_ms)
    status = EXIT_OK if result.found else EXIT_NOT_FOUND
    if args.json:
        siblings = [_sibling_json(sibling) for sibling in result.siblings]
        print(json.dumps({"found": result.found, "siblings": siblings, "receipt": asdict(result.receipt)}))
    elif args.raw:
        if len(result.siblings) > 1:
            raise UsageError(f"{len(result.siblings)} siblings: --raw prints one value; read without it")
        sys.stdout.flush()
        sys.stdout.buffer.write(result.value or b"")
        sys.stdout.buffer.flush()
    else:
        rows: list[tuple[str, object]] = [("found", "yes" if result.found else "no")]
        many = len(result.siblings) > 1
        if many:
            rows.append(("siblings", len(result.siblings)))
        for number, sibling in enumerate(result.siblings, start=1):
            mark = f"[{number}] " if many else ""
            shown = _text(sibling.value)
            value = shown if shown is not None else "base64:" + base64.b64encode(sibling.value).decode()
            rows += [(f"{mark}value", value), (f"{mark}content-type", sibling.content_type)]
            rows.append((f"{mark}timestamp", sibling.timestamp or "-"))
        _rows(rows + _receipt_rows(result.receipt))
    return status


def _ls(args: argparse.Namespace, client: Client) -> int:
    if args.all:
        keys, cursor = list(client.iter_keys(args.keyspace, args.prefix, args.limit)), None
    else:
        page = client.list_keys(args.keyspace, args.prefix, args.limit, args.cursor)
        keys, cursor = list(page.keys), page.cursor
    if args.json:
        print(json.dumps({"keys": keys, "cursor": cursor}))
        return EXIT_OK
    for key in keys:
        print(key)
    if cursor is not None:
        print(f"(more: --cursor {shlex.quote(cursor)}, or --all)", file=sys.stderr)
    return EXIT_OK


def _print_tree(value: object, depth: int = 0) -> None:
    """A status document as indented rows, with lists of objects as tables."""
    pad = "  " * depth
    if isinstance(value, dict):
        for name, item in value.items():
            if isinstance(item, dict | list) and item:
                print(f"{pad}{name}")
                _print_tree(item, depth + 1)
            else:
                print(f"{pad}{name:<{max(1, 24 - len(pad))}} {json.dumps(item) if item in ([], {}) else item}")
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        columns = list(dict.fromkeys(column for item in value for column in item))
        table = [columns, *([_cell(item.get(column, "")) for column in columns] for item in value)]
        widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
        for row in table:
            print(pad + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    elif isinstance(value, list):
        for item in value:
            print(f"{pad}- {item}")
    else:
        print(f"{pad}{value}")


def _cell(value: object) -> str:
    """A table cell: `-` for no value (a member's own `last_seen_ms_ago`, say)."""
    return "-" if value is None else str(value)


def _status(args: argparse.Namespace, client: Client) -> int:
    """The node's status document; `membership.members` prints as a table, one row per member with
    its status (alive / suspect / down, by the phi-accrual detector) and phi."""
    document = client.status()
    if args.json:
        print(json.dumps(document))
    else:
        _print_tree(document)
    return EXIT_OK


def _keyspace_create(args: argparse.Namespace, client: Client) -> int:
    keyspace = client.create_keyspace(args.name, args.n, args.resolution)
    if args.json:
        print(json.dumps(asdict(keyspace)))
    else:
        what = "created" if keyspace.created else "exists with this definition:"
        print(f"{what} keyspace {keyspace.name} n={keyspace.n} resolution={keyspace.resolution}")
    return EXIT_OK


def _local_up(args: argparse.Namespace) -> int:
    try:
        started = local.up(Path(args.data_dir), args.nodes, args.base_port)
    except local.LocalClusterError as exc:
        print(f"titra: local up: {exc}", file=sys.stderr)
        return EXIT_ERROR
    nodes = [
        {"node_id": node.node_id, "pid": pid, "endpoint": node.endpoint, "peer_port": node.peer_port}
        for node, pid in started
    ]
    if args.json:
        print(json.dumps({"data_dir": str(Path(args.data_dir).resolve()), "nodes": nodes}))
    else:
        _print_tree(nodes)
        print(f"export {ENDPOINT_ENV}={','.join(node.endpoint for node, _ in started)}")
    return EXIT_OK


def _local_down(args: argparse.Namespace) -> int:
    stopped = local.down(Path(args.data_dir))
    if args.json:
        print(json.dumps({"stopped": stopped.pids, "killed": list(stopped.killed)}))
        return EXIT_OK
    if not stopped.pids:
        print(f"no nodes running in {args.data_dir}")
    for node_id, pid in stopped.pids.items():
        print(f"stopped {node_id} (pid {pid}{', SIGKILL' if node_id in stopped.killed else ''})")
    return EXIT_OK


def _report(args: argparse.Namespace, error: TitraError) -> int:
    extra = "".join(f" {name}={value}" for name, value in error.details.items())
    print(f"titra: {error.code} ({error.status or 'no answer'}): {error.message}{extra}", file=sys.stderr)
    if getattr(args, "json", False):
        body = {"status": error.status, "code": error.code, "message": error.message, **error.details}
        print(json.dumps({"error": body}))
    if isinstance(error, OutcomeUnknown):
        return EXIT_OUTCOME_UNKNOWN
    return EXIT_UNAVAILABLE if isinstance(error, Unavailable) else EXIT_ERROR


def _endpoints(args: argparse.Namespace) -> list[str]:
    specs = args.endpoint or [os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT]
    return [endpoint.strip() for spec in specs for endpoint in spec.split(",") if endpoint.strip()]


Remote = Callable[[argparse.Namespace, Client], int]


def _remote_parents() -> dict[str, argparse.ArgumentParser]:
    """Option groups shared by the commands that talk to a node."""
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument(
        "--endpoint",
        action="append",
        help=f"node URL; repeat or comma-separate to fail over (default ${ENDPOINT_ENV} or {DEFAULT_ENDPOINT})",
    )
    remote.add_argument("--context", help="a Titra-Context token from an earlier answer (for causal, If-Match...)")
    remote.add_argument("--json", action="store_true", help="print JSON")
    level = argparse.ArgumentParser(add_help=False)
    level.add_argument("--consistency", choices=("one", "quorum", "all", "causal"), help="default: quorum")
    level.add_argument("--timeout-ms", type=int, help=f"default {REQUEST_DEFAULTS.request_timeout_ms_default}")
    write = argparse.ArgumentParser(add_help=False)
    write.add_argument("--w", type=int, help="acknowledgements to wait for (overrides the level's)")
    write.add_argument("--durability", choices=("fsync", "async"), help="default: fsync")
    write.add_argument("--if-match", metavar="CONTEXT", help="write only if the key is still at this context")
    write.add_argument("--idempotency-key", help="default: a new UUID, kept across this command's retries")
    key = argparse.ArgumentParser(add_help=False)
    key.add_argument("keyspace")
    key.add_argument("key")
    return {"remote": remote, "level": level, "write": write, "key": key}


def _add_remote_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    shared = _remote_parents()
    key, level, write = shared["key"], shared["level"], shared["write"]

    def command(
        name: str, func: Remote, parents: list[argparse.ArgumentParser], summary: str
    ) -> argparse.ArgumentParser:
        found = sub.add_parser(
            name,
            parents=[*parents, shared["remote"]],
            help=summary,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        found.set_defaults(func=func, remote=True)
        return found

    put = command("put", _put, [key, level, write], "write a value")
    put.add_argument("value", nargs="?", help="the value; - reads standard input")
    put.add_argument("--file", help="read the value from this file")
    put.add_argument("--content-type", help=f"default {TEXT_PLAIN} for VALUE, else {OCTET_STREAM}")
    put.add_argument("--if-none-match", action="store_true", help="write only if the key has no live value")
    get = command("get", _get, [key, level], "read a value (or its siblings)")
    get.add_argument("--r", type=int, help="answers to wait for (overrides the level's)")
    get.add_argument("--raw", action="store_true", help="print only the value's bytes")
    command("delete", _delete, [key, level, write], "delete a key (write a tombstone)")
    ls = command("ls", _ls, [], "list keys in order")
    ls.add_argument("keyspace")
    ls.add_argument("--prefix", default="")
    ls.add_argument("--limit", type=int, help=f"keys per page (default {REQUEST_DEFAULTS.list_page_default})")
    pages = ls.add_mutually_exclusive_group()
    pages.add_argument("--cursor", help="continue after a previous page")
    pages.add_argument("--all", action="store_true", help="every page")
    command("status", _status, [], "this node, the ring, the peers")
    keyspace = sub.add_parser("keyspace", help="keyspaces").add_subparsers(dest="keyspace_command", required=True)
    create = keyspace.add_parser("create", parents=[shared["remote"]], help="create a keyspace (idempotent)")
    create.add_argument("name")
    create.add_argument("--n", type=int, default=REQUEST_DEFAULTS.replicas_default, help="replicas per key")
    create.add_argument("--resolution", choices=("siblings", "lww"), default="siblings")
    create.set_defaults(func=_keyspace_create, remote=True)


def _add_local_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    cluster = sub.add_parser("local", help="a cluster of titra-node processes on 127.0.0.1, for development")
    actions = cluster.add_subparsers(dest="local_command", required=True)
    offset = CLIENT_DEFAULTS.local_peer_port_offset
    up = actions.add_parser(
        "up",
        help="start the nodes; returns when all are ready",
        description=f"Node nI serves clients on 127.0.0.1:P+I-1 and peers on 127.0.0.1:P+{offset}+I-1 "
        "(P = --base-port); it keeps its data in D/nI, its pid in D/nI.pid and its log in D/nI.log. "
        "The cluster secret is made once in D/cluster.secret (mode 0600) and given to the nodes in "
        f"${local.SECRET_ENV}. ${local.NODE_COMMAND_ENV}, if set, replaces the titra-node command.",
    )
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--base-port", type=int, default=7070, help="P: the first client port")
    up.add_argument("--data-dir", required=True, help="D")
    up.add_argument("--json", action="store_true", help="print JSON")
    up.set_defaults(func=_local_up)
    down = actions.add_parser("down", help="stop the nodes: SIGTERM, then SIGKILL after a deadline")
    down.add_argument("--data-dir", required=True)
    down.add_argument("--json", action="store_true", help="print JSON")
    down.set_defaults(func=_local_down)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="titra",
        description="Titra client and admin.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"titra {version('titra')}")
    sub = parser.add_subparsers(dest="command", required=True)
    limits = sub.add_parser("limits", help="print every limit, timeout and default in force")
    limits.add_argument("--json", action="store_true", help="print JSON")
    limits.set_defaults(func=_limits)
    _add_remote_commands(sub)
    _add_local_commands(sub)
    bench_cluster.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not getattr(args, "remote", False):
            code: int = args.func(args)
            return code
        with Client(_endpoints(args), context=args.context) as client:
            code = args.func(args, client)
            return code
    except TitraError as error:
        return _report(args, error)
    except (UsageError, ValueError) as exc:
        print(f"titra: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader (`| head`) went away: say nothing more, and keep the interpreter's final
        # flush of stdout from failing again (the recipe in Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as exc:
        print(f"titra: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
