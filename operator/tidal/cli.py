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


def _sim_server(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses

    from aiohttp import web

    from .simserver.latency import LatencyModel
    from .simserver.runtime import serve_engine
    from .simserver.podspec import EngineSpec

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(LatencyModel)
                 if getattr(args, f.name, None) is not None}
    latency = LatencyModel(**overrides)
    models = tuple(args.model)
    spec = EngineSpec(args.engine, models, args.served_model_name, args.port,
                      args.metrics_port if args.engine == "triton" else None, latency)

    async def serve():
        await serve_engine(spec, args.host)
        ports = f"{args.port}" + (f", metrics on {args.metrics_port}" if spec.metrics_port else "")
        print(f"simulated {args.engine} serving {', '.join(models)} on {args.host}:{ports} ({latency})", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


def _sim_runtime(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from .simserver.runtime import run_runtime

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run_runtime(args.kubeconfig, args.health_port, args.targets_file))
    except KeyboardInterrupt:
        pass
    return 0


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

    sim = sub.add_parser("sim-server", help="run one simulated vLLM or Triton server (no GPU needed)")
    sim.add_argument("--engine", choices=["vllm", "triton"], default="vllm")
    sim.add_argument("--model", action="append", default=None,
                     help="model name (repeat for several Triton models)")
    sim.add_argument("--served-model-name")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8000)
    sim.add_argument("--metrics-port", type=int, default=8002, help="Triton's metrics port")
    sim.add_argument("--max-concurrency", dest="max_concurrency", type=int)
    sim.add_argument("--prefill-s-per-token", dest="prefill_s_per_token", type=float)
    sim.add_argument("--decode-s-per-token", dest="decode_s_per_token", type=float)
    sim.add_argument("--overhead-s", dest="overhead_s", type=float)
    sim.set_defaults(func=_sim_server)

    runtime = sub.add_parser("sim-runtime", help="serve a simulated engine for every Running engine pod "
                                                 "of the local cluster (started by dev-cluster up)")
    runtime.add_argument("--kubeconfig", required=True)
    runtime.add_argument("--health-port", type=int)
    runtime.add_argument("--targets-file", help="write Prometheus file-discovery targets for annotated pods here")
    runtime.set_defaults(func=_sim_runtime)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "model", "") is None:
        args.model = ["meta-llama/Llama-3.1-8B-Instruct"]
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
