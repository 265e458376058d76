"""`python -m tests.harness up|down|status`: the local environment behind `make dev-up`/`make dev-down`.

GEOPIN_DEV_DIR overrides where the state goes (default: .dev/ in the repository root).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tests.harness import devenv
from tests.harness.globalrouter import DEFAULT_FAILOVER_DELAY
from tests.harness.names import NamesError
from tests.harness.registries import DEFAULT_REGIONS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness", description=__doc__)
    parser.add_argument("--dir", type=Path, default=None, help="state directory (default: $GEOPIN_DEV_DIR or .dev)")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the control plane and the ACR-shaped registry replicas, detached")
    up.add_argument("--regions", default=",".join(DEFAULT_REGIONS), help="registry replicas, comma-separated")
    up.add_argument(
        "--nodes",
        type=int,
        default=int(os.environ.get("GEOPIN_NODES", "1")),
        metavar="N",
        help="real nodes, containerd + kubelet (default: $GEOPIN_NODES or 1); 0: fake Node objects only",
    )
    up.add_argument(
        "--node-regions",
        default="eastus,eastus,eastus",
        help="topology.kubernetes.io/region of the nodes, comma-separated (cycled over --nodes)",
    )
    up.add_argument(
        "--global-failover-delay",
        type=float,
        default=DEFAULT_FAILOVER_DELAY,
        metavar="SECONDS",
        help="seconds the emulated global endpoint keeps routing to a dead replica "
        f"(default {DEFAULT_FAILOVER_DELAY:g})",
    )
    up.add_argument(
        "--apiserver-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra kube-apiserver flag, e.g. --apiserver-arg=--feature-gates=Foo=true (repeatable)",
    )
    commands.add_parser("down", help="stop everything `up` started and remove the state directory")
    commands.add_parser("status", help="show what `up` started and whether it still runs")
    args = parser.parse_args(argv)
    dev_dir: Path = args.dir or devenv.dev_dir_from_env()

    if args.command == "up":
        try:
            devenv.up(
                dev_dir,
                regions=[r for r in args.regions.split(",") if r],
                node_regions=[r for r in args.node_regions.split(",") if r],
                extra_apiserver_args=args.apiserver_arg,
                global_failover_delay=args.global_failover_delay,
                nodes=args.nodes,
            )
        except NamesError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except devenv.DevEnvError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0
    if args.command == "down":
        devenv.down(dev_dir)
        return 0
    return 0 if devenv.status(dev_dir) else 1


if __name__ == "__main__":
    sys.exit(main())
