"""`python -m tidal_dev` (or `tidal-dev`): the developer's tools, not part of the product.

The local GPU cluster (`cluster up|down|status|build`), the demo, and the simulated engines the cluster's pods
run (`sim-server`, `sim-runtime`). The Makefile calls these; a user types `make up`, `make demo`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _dev_cluster(args: argparse.Namespace) -> int:
    from .cluster import binaries
    from .cluster.cluster import DevCluster
    from .cluster.processes import ComponentError

    if args.action == "build":
        print(binaries.ensure_binaries().directory)
        return 0
    cluster = DevCluster(Path(args.state_dir), Path(args.nodes) if args.nodes else None,
                         scrape_interval=args.scrape_interval)
    if args.action == "up":
        from .cluster import stack
        try:
            info = stack.up(Path(args.state_dir), Path(args.nodes) if args.nodes else None, args.scrape_interval) \
                if args.with_tidal else cluster.up()
        except (ComponentError, binaries.BuildError, TimeoutError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"""
The local GPU cluster is up{' with Tidal (operator and gateway)' if args.with_tidal else ''}.
  export KUBECONFIG={info.kubeconfig}
  export PATH={info.binaries_dir}:$PATH      # kubectl and helm matching the server
  kubectl get nodes -L tidal.dev/pool,nvidia.com/gpu.product
  Prometheus: {info.prometheus_url}""")
        if args.with_tidal:
            print(f"""  Gateway (OpenAI API): {info.extra['gateway_url']}/v1   operator: {info.extra['operator_url']}
  Playground: {info.extra['playground_url']} (paste the API key)
  API key: in {Path(args.state_dir).resolve() / 'state.json'} (api_key), e.g.
    curl {info.extra['gateway_url']}/v1/models -H "Authorization: Bearer $(python3 -c 'import json; print(json.load(open(\"{Path(args.state_dir).resolve() / 'state.json'}\"))[\"api_key\"])')"
  kubectl apply -f examples/demo-scale-to-zero.yaml   # then ask for model "llama-3.1-8b"
  Stop it with: make down""")
        else:
            print("  Stop it with: make cluster-down")
        return 0
    if args.action == "down":
        from .cluster import stack
        stack.down(Path(args.state_dir))
        return 0
    status = cluster.status()
    print(json.dumps(status, indent=2))
    return 0 if status["running"] else 3


def _sim_server(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses

    from tidal.simulate.latency import LatencyModel
    from .simserver.runtime import serve_engine
    from .simserver.podspec import EngineSpec

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(LatencyModel)
                 if getattr(args, f.name, None) is not None}
    latency = LatencyModel(**overrides)
    models = tuple(args.model)
    from .simserver.registry import simulated
    if args.engine not in simulated():
        print(f"--engine {args.engine!r}: not a simulated engine; known: {', '.join(sorted(simulated()))}",
              file=sys.stderr)
        return 2
    spec = EngineSpec(args.engine, models, args.served_model_name, args.port, args.metrics_port, latency)

    async def serve():
        _, runners = await serve_engine(spec, args.host)
        ports = ", ".join(str(address[1]) for runner in runners for address in runner.addresses)
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
    parser = argparse.ArgumentParser(prog="tidal-dev", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("cluster", help="a local Kubernetes control plane with simulated GPU node pools")
    dev.add_argument("action", choices=["up", "down", "status", "build"])
    dev.add_argument("--state-dir", default=str(Path.cwd() / ".tidal"),
                     help="where the cluster keeps its data, logs and kubeconfig (default: ./.tidal)")
    dev.add_argument("--nodes", help="node pool description (default: the built-in nodepools.yaml)")
    dev.add_argument("--scrape-interval", default="2s", help="Prometheus scrape interval (default 2s)")
    dev.add_argument("--with-tidal", action="store_true",
                     help="up: also start Tidal's operator and gateway (API keys on, a bootstrap key made) and "
                          "record their URLs and the key in state.json")
    dev.set_defaults(func=_dev_cluster)

    demo = sub.add_parser("demo", help="the local cluster, the operator and an example model (make demo)")
    demo.add_argument("action", choices=["up", "down"])
    demo.add_argument("--state-dir", default=str(Path.cwd() / ".tidal"))
    demo.add_argument("--short", action="store_true", help="a one-minute slice of the trace (for tests)")
    demo.add_argument("--down-at-end", action="store_true", help="stop everything when the demo ends")
    demo.add_argument("--trace", help="request trace to replay (default: ../shared/traces/azure-llm-2023-code.csv)")
    demo.set_defaults(func=lambda a: __import__("tidal_dev.demo", fromlist=["main"]).main(
        a.action, a.state_dir, a.short, a.down_at_end, a.trace))

    sim = sub.add_parser("sim-server", help="run one simulated vLLM or Triton server (no GPU needed)")
    sim.add_argument("--engine", default="vllm", help="the simulated engine (vllm, triton, ...)")
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
                                                 "of the local cluster (started by `tidal-dev cluster up`)")
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
