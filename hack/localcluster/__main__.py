"""Command line of the local cluster: build, up, down, status."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from localcluster import cluster
from localcluster.processes import StartupError, Supervisor


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", type=Path, default=cluster.DEFAULT_STATE,
                        help="folder holding certificates, data, logs and pids "
                             "(default: %(default)s)")
    parser = argparse.ArgumentParser(prog="localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or find cached) binaries; print their folder")
    up = sub.add_parser("up", parents=[common],
                        help="start the control plane and wait until it is ready")
    up.add_argument("--nodes", type=int, default=1, help="kwok nodes to register")
    down = sub.add_parser("down", parents=[common], help="stop every process the cluster started")
    down.add_argument("--purge", action="store_true", help="also delete the state folder")
    sub.add_parser("status", parents=[common],
                   help="print the components and whether they run, as JSON")
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            print(cluster.build_binaries())
        elif args.command == "up":
            print(cluster.up(args.state, nodes=args.nodes).kubeconfig)
        elif args.command == "down":
            cluster.down(args.state, purge=args.purge)
        else:
            return _status(args.state)
    except (StartupError, RuntimeError) as error:
        print(f"localcluster: {error}", file=sys.stderr)
        return 1
    return 0


def _status(state: Path) -> int:
    found = cluster.load(state.resolve())
    if found is None:
        print(json.dumps({"state": str(state), "up": False}))
        return 1
    sup = Supervisor(found.state)
    report = {
        "state": str(found.state),
        "server": found.server,
        "kubeconfig": str(found.kubeconfig),
        "up": cluster.healthy(found),
        "components": {name: {"pid": sup.pid(name), "running": sup.running(name)}
                       for name in cluster.COMPONENTS},
    }
    print(json.dumps(report, indent=2))
    return 0 if report["up"] else 1


if __name__ == "__main__":
    sys.exit(main())
