"""The `tidal` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _dev_cluster(args: argparse.Namespace) -> int:
    from .devcluster import binaries
    from .devcluster.cluster import DevCluster
    from .devcluster.processes import ComponentError

    if args.action == "build":
        print(binaries.ensure_binaries().directory)
        return 0
    cluster = DevCluster(Path(args.state_dir), Path(args.nodes) if args.nodes else None,
                         scrape_interval=args.scrape_interval)
    if args.action == "up":
        try:
            info = cluster.up()
        except (ComponentError, binaries.BuildError, TimeoutError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"""
The local GPU cluster is up.
  export KUBECONFIG={info.kubeconfig}
  export PATH={info.binaries_dir}:$PATH      # kubectl and helm matching the server
  kubectl get nodes -L tidal.dev/pool,nvidia.com/gpu.product
  Prometheus: {info.prometheus_url}
  Stop it with: make cluster-down""")
        return 0
    if args.action == "down":
        cluster.down()
        return 0
    status = cluster.status()
    print(json.dumps(status, indent=2))
    return 0 if status["running"] else 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev-cluster", help="a local Kubernetes control plane with simulated GPU node pools")
    dev.add_argument("action", choices=["up", "down", "status", "build"])
    dev.add_argument("--state-dir", default=str(Path.cwd() / ".tidal"),
                     help="where the cluster keeps its data, logs and kubeconfig (default: ./.tidal)")
    dev.add_argument("--nodes", help="node pool description (default: the built-in nodepools.yaml)")
    dev.add_argument("--scrape-interval", default="2s", help="Prometheus scrape interval (default 2s)")
    dev.set_defaults(func=_dev_cluster)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
