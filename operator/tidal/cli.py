"""The `tidal` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _run_operator(args: argparse.Namespace) -> int:
    import dataclasses
    import logging
    import os

    if args.kubeconfig:
        # For kopf's own login; the kubernetes package reads it when first imported, so set it first.
        os.environ["KUBECONFIG"] = args.kubeconfig
    import kopf

    from .controller import handlers
    from .render.settings import ModelCacheSettings, NetworkPolicySettings, RenderSettings

    handlers.CONFIG.kubeconfig = args.kubeconfig
    handlers.CONFIG.resync_seconds = args.resync_seconds
    handlers.CONFIG.prometheus_url = args.prometheus_url
    handlers.CONFIG.service_label = args.service_label
    handlers.CONFIG.autoscale_interval_s = args.autoscale_interval
    handlers.CONFIG.metrics_grace_s = args.metrics_grace
    handlers.CONFIG.http_port = args.http_port
    handlers.CONFIG.http_host = args.http_host
    if args.wake_auth == "tokenreview":
        handlers.CONFIG.wake_callers = args.wake_caller or [
            f"{os.environ.get('POD_NAMESPACE') or 'tidal-system'}/tidal-activator"]
    if args.scaling_defaults:
        handlers.CONFIG.scaling_defaults = _scaling_defaults(args.scaling_defaults)
    policy = None
    if args.network_policy == "on":
        try:
            policy = NetworkPolicySettings(args.gateway_namespace, _labels(args.gateway_pod_labels),
                                           args.prometheus_namespace, _labels(args.prometheus_pod_labels))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    cache = None
    if args.model_cache_root:
        from .modelcache.fetch import parse_bytes
        try:
            parse_bytes(args.model_cache_budget)
        except ValueError:
            print(f"error: --model-cache-budget {args.model_cache_budget!r}: use bytes or a quantity like 500Gi",
                  file=sys.stderr)
            return 2
        cache = ModelCacheSettings(args.model_cache_root, args.model_cache_budget,
                                   args.model_cache_image or ModelCacheSettings().image)
    handlers.CONFIG.render = dataclasses.replace(RenderSettings(), pool_label=args.pool_label,
                                                 startup_budget_seconds=args.startup_budget_seconds,
                                                 network_policy=policy, model_cache=cache)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # kopf logs every handler call at INFO; our own decisions are what matter
        logging.getLogger("kopf").setLevel(logging.WARNING)
        # The Kubernetes client retries each request 3 times, each retry a warning; our own line says
        # how the request ended.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    def run(stop_flag=None):
        handlers.CONFIG.stop_flag = stop_flag
        kopf.run(clusterwide=not args.namespace, namespaces=args.namespace or (), standalone=True, stop_flag=stop_flag,
                 liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None)
    if not args.leader_elect:
        run()
        return 0
    from .controller.leadership import run_as_leader
    return run_as_leader(run, args)


def _labels(text: str) -> dict[str, str]:
    """'a=b,c=d' -> {'a': 'b', 'c': 'd'}: a pod label selector given on the command line."""
    out = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise ValueError(f"pod labels {text!r}: use name=value[,name=value]")
        out[name] = value
    if not out:
        raise ValueError("pod labels: at least one name=value is needed (an empty selector would admit every pod)")
    return out


def _scaling_defaults(text: str) -> dict:
    """--scaling-defaults '{"idleSecondsBeforeZero": 600}': checked at start-up, not at first use."""
    from pydantic import ValidationError

    from .api.v1alpha1 import Scaling
    try:
        defaults = json.loads(text)
        Scaling.model_validate(defaults)
    except (ValueError, ValidationError) as err:
        raise SystemExit(f"error: --scaling-defaults {text!r} is not a valid spec.scaling object: {err}")
    return defaults


def _activator(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import os

    from .gateway.call import Limits
    from .gateway.main import Static, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    static = Static(capacity=args.static_capacity, routing=args.static_routing,
                    prefix_chars=args.static_prefix_characters)
    for item in args.static_endpoint or []:
        try:
            svc, addr = item.split("=", 1)
            ns, name = svc.split("/", 1)
            name, _, served = name.partition("@")
            host, port = addr.rsplit(":", 1)
            static.add_endpoint((ns, name), served or name, host, int(port))
        except ValueError:
            print(f"error: --static-endpoint {item!r}: use namespace/name[@served-name]=host:port", file=sys.stderr)
            return 2
    for item in args.static_adapter or []:
        svc, _, adapter = item.partition("=")
        ns, _, name = svc.partition("/")
        if not (ns and name and adapter) or (ns, name) not in static.endpoints:
            print(f"error: --static-adapter {item!r}: use namespace/name=adapter, for a --static-endpoint's service",
                  file=sys.stderr)
            return 2
        static.adapters.setdefault((ns, name), []).append(adapter)
    for item in args.static_api_key or []:
        name, _, token = item.partition("=")
        if not name or len(token) < 16:
            print("error: --static-api-key: use NAME=TOKEN with a token of at least 16 characters", file=sys.stderr)
            return 2
        static.add_key(name, token)
    limits = Limits(max_pending=args.max_pending, hold_timeout_s=args.hold_timeout,
                    keepalive_s=args.stream_keepalive, load_report_s=args.load_report_interval)
    key_namespace = None if args.api_keys == "off" else (args.api_key_namespace or os.environ.get("POD_NAMESPACE")
                                                         or "tidal-system")
    try:
        import uvloop  # a faster event loop; the gateway's cost per request is mostly the loop's
        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(serve(args.kubeconfig, args.operator_url, args.host, args.port, args.metrics_port, limits,
                          static if static.endpoints else None, args.namespace, args.drain_seconds, key_namespace,
                          args.playground == "on", args.prometheus_url, args.batch_storage, args.batch_concurrency,
                          args.wake_token_file, args.limit_share))
    except KeyboardInterrupt:
        pass
    return 0


def _usage(args: argparse.Namespace) -> int:
    from .usage_report import fetch, summarise, table

    urls = args.gateway_metrics_url
    if not urls:
        try:
            urls = [json.loads((Path(args.state_dir) / "state.json").read_text())["gateway_metrics_url"]]
        except (OSError, ValueError, KeyError):
            print(f"error: no --gateway-metrics-url, and no gateway in {Path(args.state_dir) / 'state.json'} "
                  "(start one with `make up`)", file=sys.stderr)
            return 2
    try:
        print(table(summarise(fetch(urls))))
    except OSError as err:
        print(f"error: cannot read the gateway's metrics ({err})", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from .simulate.command import add_simulate
    add_simulate(sub)
    from .modelcache.fetch import add_fetch_model
    add_fetch_model(sub)

    act = sub.add_parser("activator", help="the request gateway: routes to ready replicas, holds requests "
                                           "for a service at zero and wakes it")
    act.add_argument("--kubeconfig", help="default: in-cluster config, then $KUBECONFIG")
    act.add_argument("--operator-url", help="the operator's HTTP endpoint (tidal run --http-port), for wake-ups")
    act.add_argument("--host", default="0.0.0.0")
    act.add_argument("--port", type=int, default=8080)
    act.add_argument("--metrics-port", type=int, default=9090, help="/metrics and /healthz")
    act.add_argument("--max-pending", type=int, default=1000, help="requests held per service at zero; then 429")
    act.add_argument("--hold-timeout", type=float, default=300.0, help="seconds a request is held; then 503")
    act.add_argument("--load-report-interval", type=float, default=1.0, metavar="SECONDS",
                     help="tell the operator this often what the gateway sees of each busy service (in flight, "
                          "held, arrivals, request time): the autoscaler's fast signal; 0: never")
    act.add_argument("--stream-keepalive", type=float, default=15.0,
                     help="a held request that asked for a stream gets its answer begun after this many seconds, "
                          "and an SSE comment line every this many seconds until a replica takes it (so proxies that "
                          "cut silent connections do not)")
    act.add_argument("--drain-seconds", type=float, default=5.0,
                     help="on SIGTERM, keep serving (closing connections after each answer) this long before "
                          "refusing new connections; then wait for requests in flight")
    act.add_argument("--namespace", action="append",
                     help="route only to services in these namespaces (repeat); default: all namespaces")
    act.add_argument("--api-keys", choices=["secrets", "off"], default="secrets",
                     help="secrets (default): every request needs 'Authorization: Bearer <key>', keys are Secrets "
                          "labelled tidal.dev/api-key=true; off: no authentication, for a trusted mesh only")
    act.add_argument("--api-key-namespace", help="namespace of the API-key Secrets (default: $POD_NAMESPACE, "
                                                 "else tidal-system)")
    act.add_argument("--playground", choices=["on", "off"], default="on",
                     help="serve the playground page at /playground/ (default on; it uses the API with the key the "
                          "user types)")
    act.add_argument("--prometheus-url", help="for the playground's last-hour pictures of each model")
    act.add_argument("--batch-storage", "--batch-dir", dest="batch_storage",
                     default=os.environ.get("TIDAL_BATCH_STORAGE") or os.environ.get("TIDAL_BATCH_DIR"),
                     help="serve /v1/files and /v1/batches, keeping files and batch progress in this directory (a "
                          "PersistentVolume in a cluster) or S3-compatible bucket (s3://bucket[/prefix]; endpoint "
                          "and credentials from the AWS_* variables); default $TIDAL_BATCH_STORAGE; unset: those "
                          "APIs are off")
    act.add_argument("--batch-concurrency", type=int, default=16,
                     help="batch requests in flight at once, all batches together, for models whose capacity "
                          "is not known (where it is, batches take the places online requests leave free)")
    act.add_argument("--wake-token-file", default=os.environ.get("TIDAL_WAKE_TOKEN_FILE"),
                     help="a file holding the token the gateway presents on wake-up calls (its ServiceAccount's, "
                          "audience tidal.dev/wake; read again each minute); default: $TIDAL_WAKE_TOKEN_FILE, else "
                          "the chart's projected token when in such a pod")
    act.add_argument("--limit-share", type=int, default=1, metavar="REPLICAS",
                     help="gateway replicas behind one Service: each admits 1/REPLICAS of every key's requests and "
                          "tokens per minute, so together they never admit more than the key's limit (the chart "
                          "sets activator.replicas)")
    act.add_argument("--static-api-key", action="append", metavar="NAME=TOKEN",
                     help="with --static-endpoint (no cluster): an API key, for benchmarks and trying a client")
    act.add_argument("--static-capacity", type=int,
                     help="with --static-endpoint: requests each endpoint holds at most (its engine's batch)")
    act.add_argument("--static-routing", choices=["least-loaded", "prefix"], default="least-loaded",
                     help="with --static-endpoint: how requests spread over a service's endpoints (as "
                          "spec.routing.policy)")
    act.add_argument("--static-prefix-characters", type=int, default=2048,
                     help="with --static-routing prefix: the leading characters that pick the endpoint (as "
                          "spec.routing.prefixCharacters)")
    act.add_argument("--static-endpoint", action="append",
                     help="namespace/name=host:port: a fixed upstream instead of watching the cluster")
    act.add_argument("--static-adapter", action="append", metavar="NAMESPACE/NAME=ADAPTER",
                     help="with --static-endpoint: a LoRA adapter that service's endpoints serve (as spec.adapters)")
    act.set_defaults(func=_activator)

    usage = sub.add_parser("usage", help="tokens and requests per API key and model, from the gateway's counters")
    usage.add_argument("--gateway-metrics-url", action="append",
                       help="a gateway's metrics endpoint (repeat for every replica); default: the local stack's")
    usage.add_argument("--state-dir", default=str(Path.cwd() / ".tidal"))
    usage.set_defaults(func=_usage)
    run = sub.add_parser("run", help="run the operator (kopf) against the current kubeconfig or in-cluster")
    run.add_argument("--kubeconfig", help="default: in-cluster config, then $KUBECONFIG / ~/.kube/config")
    run.add_argument("--namespace", action="append", help="watch only these namespaces (repeat); "
                                                          "default: all namespaces")
    run.add_argument("--pool-label", default="tidal.dev/pool", help="node label naming a node pool")
    run.add_argument("--startup-budget-seconds", type=int, default=1800,
                     help="how long a replica may take to load its model before Kubernetes restarts it")
    run.add_argument("--model-cache-root", help="fetch s3://, hf:// and gs:// models once per node into this directory "
                                                "on the node (a hostPath); default: once per replica, into the pod")
    run.add_argument("--model-cache-budget", default="500Gi", help="bytes the cache may hold per node")
    run.add_argument("--model-cache-image", help="the image whose `tidal fetch-model` fills the cache "
                                                 "(Tidal's own; the chart passes its image)")
    run.add_argument("--resync-seconds", type=float, default=30.0, help="re-check every service this often")
    run.add_argument("--prometheus-url", help="Prometheus to read queue depth from; without it, no autoscaling")
    run.add_argument("--service-label", default="tidal_dev_inferenceservice",
                     help="label carrying the InferenceService name on scraped series")
    run.add_argument("--autoscale-interval", type=float, default=2.0, help="seconds between autoscaling ticks")
    run.add_argument("--metrics-grace", type=float, default=30.0,
                     help="seconds a service's series may be missing (new pods not scraped yet) before "
                          "ScalingActive turns False; replicas are held meanwhile")
    run.add_argument("--http-port", type=int, help="serve /healthz, /metrics and the activator's /v1/wake here")
    run.add_argument("--http-host", default="0.0.0.0")
    run.add_argument("--wake-auth", choices=["tokenreview", "off"], default="tokenreview",
                     help="tokenreview (default): /v1/wake answers only callers presenting a token of an allowed "
                          "ServiceAccount for the audience tidal.dev/wake, checked with a TokenReview; off: anyone "
                          "who can reach the port may start GPUs")
    run.add_argument("--wake-caller", action="append", metavar="NAMESPACE/NAME",
                     help="a ServiceAccount whose tokens may call /v1/wake (repeat); default: the gateway's, "
                          "$POD_NAMESPACE/tidal-activator (tidal-system when unset)")
    run.add_argument("--health-port", type=int, help="kopf's own liveness endpoint on this port")
    run.add_argument("--scaling-defaults", help="JSON object of spec.scaling fields used where an "
                                                "InferenceService leaves them out, e.g. '{\"idleSecondsBeforeZero\": 600}'")
    run.add_argument("--leader-elect", action="store_true",
                     help="run several replicas: only the holder of a Lease acts, the others stand by")
    run.add_argument("--leader-election-namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                     help="namespace of the Lease (default: $POD_NAMESPACE, else default)")
    run.add_argument("--leader-election-id", default="tidal-operator", help="name of the Lease")
    run.add_argument("--lease-duration", type=float, default=15.0,
                     help="seconds a standby waits on an unrenewed Lease before taking over")
    run.add_argument("--network-policy", choices=["on", "off"], default="on",
                     help="render a NetworkPolicy per service that admits only the gateway and Prometheus to its "
                          "engines (default on; enforced where the cluster's network plugin enforces them)")
    run.add_argument("--gateway-namespace", default=os.environ.get("POD_NAMESPACE", "tidal-system"),
                     help="namespace of the gateway (activator) pods, for the NetworkPolicies")
    run.add_argument("--gateway-pod-labels", default="app.kubernetes.io/name=tidal-activator",
                     help="labels of the gateway pods, name=value[,name=value]")
    run.add_argument("--prometheus-namespace", default="monitoring", help="namespace of the Prometheus pods")
    run.add_argument("--prometheus-pod-labels", default="app.kubernetes.io/name=prometheus",
                     help="labels of the Prometheus pods, name=value[,name=value]")
    run.add_argument("--verbose", action="store_true")
    run.set_defaults(func=_run_operator)

    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
