"""`titra`: the client and admin command (the front door of `cluster/`)."""

import argparse
import json
import sys
from importlib.metadata import version

from cluster.limits import all_limits


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="titra", description="Titra client and admin.")
    parser.add_argument("--version", action="version", version=f"titra {version('titra')}")
    sub = parser.add_subparsers(dest="command", required=True)
    limits = sub.add_parser("limits", help="print every limit, timeout and default in force")
    limits.add_argument("--json", action="store_true", help="print JSON")
    limits.set_defaults(func=_limits)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
