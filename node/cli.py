"""`titra-node`: run and operate one Titra node (the front door of `node/`)."""

import argparse
import asyncio
import json
import sys

from cluster.store import StoreError
from node.bench import add_bench_arguments, run_bench
from node.bench_repair import add_bench_repair_arguments, run_bench_repair
from node.server import add_serve_arguments, run_serve
from node.storage import StoreConfig, WalStore


def _recover(args: argparse.Namespace) -> int:
    """Open the store (running recovery), print what recovery found and did, close it."""

    async def run() -> dict[str, object]:
        store = await WalStore.open(args.data_dir, StoreConfig(repair_wal=args.repair))
        try:
            report = store.stats.recovery
            return {
                "data_dir": args.data_dir,
                "keys": len(store.memtable),
                "last_lsn": store.memtable.last_lsn,
                "checkpoint_lsn": report.checkpoint_lsn,
                "checkpoint_records": report.checkpoint_records,
                "records_replayed": report.records_replayed,
                "torn_tail": None if report.torn_tail is None else vars_of(report.torn_tail),
                "repair": None if report.repair is None else vars_of(report.repair),
                "open_seconds": round(store.stats.open_seconds, 3),
            }
        finally:
            await store.close()

    try:
        result = asyncio.run(run())
    except StoreError as exc:
        print(f"titra-node: {exc.code}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:<20} {value}")
    return 0


def vars_of(obj: object) -> dict[str, object]:
    return {name: getattr(obj, name) for name in obj.__slots__}  # type: ignore[attr-defined]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="titra-node", description="Run and operate one Titra node.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a node: the store, the peer transport and the HTTP API")
    add_serve_arguments(serve)
    serve.set_defaults(func=run_serve)
    bench = sub.add_parser("bench", help="benchmark the local store against SQLite")
    add_bench_arguments(bench)
    bench.set_defaults(func=run_bench)
    bench_repair = sub.add_parser("bench-repair", help="benchmark anti-entropy: repair cost and write throughput")
    add_bench_repair_arguments(bench_repair)
    bench_repair.set_defaults(func=run_bench_repair)
    recover = sub.add_parser("recover", help="run start-up recovery on a data directory and report")
    recover.add_argument("--data-dir", required=True, help="the node's data directory")
    recover.add_argument(
        "--repair",
        action="store_true",
        help="truncate the WAL at damage in the middle of the log (drops the records after it)",
    )
    recover.add_argument("--json", action="store_true", help="print JSON")
    recover.set_defaults(func=_recover)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
