"""`titra-chaos`: fault injection, workloads, checkers and the simulator (the front door of `chaos/`).

The nemeses, workloads and checkers arrive with the docker-compose cluster; until then this
command only reports its version (see README, "Status").
"""

import argparse
import sys
from importlib.metadata import version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="titra-chaos",
        description="Titra chaos testing. Not built yet: the nemeses, workloads and checkers come with "
        "the docker-compose cluster (see the README's Status section).",
    )
    parser.add_argument("--version", action="version", version=f"titra-chaos {version('titra')}")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("titra-chaos: no chaos commands are built yet; see the README's Status section", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
