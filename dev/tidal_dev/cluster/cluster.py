"""The local Kubernetes control plane with simulated GPU node pools.

`tidal-dev cluster up` starts, on free loopback ports: etcd, a secure
kube-apiserver with RBAC, kube-controller-manager, kube-scheduler, the KWOK
controller (simulated kubelets) and Prometheus; then creates the simulated nodes
and waits until they are Ready. Everything it makes lives in one state
directory, so `down` can find and stop it all.
"""

from __future__ import annotations

import json
import shutil
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import binaries as bins
from .bootstrap import SIM_RUNTIME_USER, create_infra_rbac, create_nodes
from .kubeconfig import write_kubeconfig
from .nodes import ClusterDescription, cluster_octet, load_description
from .pki import CertificateAuthority, service_account_keypair
from .processes import Component, ComponentError, http_ok, pid_alive, rss_bytes, start, stop_pid
from .prometheus_config import prometheus_config
from .stages import stages

SERVICE_CIDR = "10.96.0.0/16"
# Order of start; `down` stops in reverse.
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "prometheus",
              "sim-runtime"]


@dataclass
class ClusterInfo:
    state_dir: Path
    kubeconfig: Path
    api_server: str
    prometheus_url: str
    binaries_dir: Path
    pids: dict[str, int]
    ports: dict[str, dict[str, int]]
    # What `make up` adds on top of the cluster (operator_url, gateway_url, api_key, ...), kept as written.
    extra: dict = field(default_factory=dict)

    KNOWN = ("kubeconfig", "api_server", "prometheus_url", "binaries_dir", "pids", "ports")

    def to_json(self) -> dict:
        return {"kubeconfig": str(self.kubeconfig), "api_server": self.api_server,
                "prometheus_url": self.prometheus_url, "binaries_dir": str(self.binaries_dir),
                "pids": self.pids, "ports": self.ports, **self.extra}

    @classmethod
    def from_json(cls, state_dir: Path, raw: dict) -> "ClusterInfo":
        return cls(state_dir, Path(raw["kubeconfig"]), raw["api_server"], raw["prometheus_url"],
                   Path(raw["binaries_dir"]), {k: int(v) for k, v in raw["pids"].items()}, raw.get("ports", {}),
                   {k: v for k, v in raw.items() if k not in cls.KNOWN})

    def kubectl(self) -> str:
        return str(self.binaries_dir / "kubectl")


AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""


class DevCluster:
    def __init__(self, state_dir: Path, nodes_file: Path | None = None,
                 scrape_interval: str = "2s", log=print, audit: bool = False):
        self.state_dir = Path(state_dir).resolve()
        self.description: ClusterDescription = load_description(nodes_file)
        self.scrape_interval = scrape_interval
        # With audit on, the apiserver logs every request made by a service account (who, verb,
        # resource, response code) to logs/audit.log: how the tests check the chart's RBAC.
        self.audit = audit
        self.log = log
        self.state_file = self.state_dir / "state.json"
        self.kubeconfig_path = self.state_dir / "kubeconfig"

    @property
    def audit_log_path(self) -> Path:
        return self.state_dir / "logs" / "audit.log"

    def _audit_flags(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.state_dir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        return ["--audit-policy-file", str(policy), "--audit-log-path", str(self.audit_log_path),
                "--audit-log-format", "json", "--audit-log-mode", "blocking"]

    # ---- state -------------------------------------------------------------------------------
    def info(self) -> ClusterInfo | None:
        try:
            return ClusterInfo.from_json(self.state_dir, json.loads(self.state_file.read_text()))
        except (OSError, ValueError, KeyError):
            return None

    def save(self, info: ClusterInfo) -> None:
        """state.json, readable by its owner only: with `make up` it holds an API key."""
        self.state_file.touch(mode=0o600)
        self.state_file.write_text(json.dumps(info.to_json(), indent=2))

    def running(self) -> bool:
        info = self.info()
        return bool(info) and all(pid_alive(pid) for pid in info.pids.values())

    # ---- up ----------------------------------------------------------------------------------
    def up(self) -> ClusterInfo:
        if self.running():
            self.log(f"cluster already running (state in {self.state_dir})")
            return self.info()
        if self.state_dir.exists():
            # A stale state directory (a crash, a reboot): stop leftovers, start clean.
            self.log(f"cleaning stale state in {self.state_dir}")
            self.down(quiet=True)
        started = time.monotonic()
        binaries = bins.ensure_binaries(self.log)
        for sub in ("pki", "logs", "etcd", "prometheus", "targets"):
            (self.state_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        components = self._components(binaries)
        launched: list[Component] = []
        try:
            for group in (["etcd"], ["kube-apiserver"],
                          ["kube-controller-manager", "kube-scheduler", "kwok", "prometheus", "sim-runtime"]):
                self._start_group([components[n] for n in group])
                launched += [components[n] for n in group]
                if group == ["etcd"]:
                    self._etcd_port = components["etcd"].port_numbers["client"]
                if group == ["kube-apiserver"]:
                    self._write_after_apiserver(components["kube-apiserver"].port_numbers["secure"])
            info = ClusterInfo(self.state_dir, self.kubeconfig_path, self._api_server,
                               f"http://127.0.0.1:{components['prometheus'].port_numbers['web']}",
                               binaries.directory, {c.name: c.pid for c in launched},
                               {c.name: c.port_numbers for c in launched})
            self.save(info)
            create_nodes(info.kubeconfig, self.description, self.log, octet=cluster_octet(str(self.state_dir)))
        except BaseException:
            for component in reversed(launched):
                if component.pid:
                    stop_pid(component.pid)
            self.state_file.unlink(missing_ok=True)
            raise
        self.log(f"cluster up in {time.monotonic() - started:.1f} s")
        return info

    def _start_group(self, group: list[Component]) -> None:
        log_dir = self.state_dir / "logs"
        with ThreadPoolExecutor(len(group)) as pool:
            futures = [(c, pool.submit(start, c, log_dir)) for c in group]
            errors = []
            for component, future in futures:
                try:
                    future.result()
                    self.log(f"  {component.name} up (pid {component.pid}, ports {component.port_numbers})")
                except ComponentError as err:
                    errors.append(err)
        if errors:
            for component in group:
                if component.pid and pid_alive(component.pid):
                    stop_pid(component.pid)
            raise errors[0]

    # ---- components --------------------------------------------------------------------------
    def _components(self, binaries: bins.Binaries, regenerate: bool = True) -> dict[str, Component]:
        s = self.state_dir
        pki = s / "pki"
        ca = CertificateAuthority(pki)
        sa_key, sa_pub = service_account_keypair(pki)
        self._ca = ca
        serving = ca.paths("apiserver")
        if regenerate:
            serving = ca.server_cert("apiserver", ["127.0.0.1", "10.96.0.1"],
                                     ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"])
            self._clients = {
                "admin": ca.client_cert("admin", "tidal-admin", "system:masters"),
                "controller-manager": ca.client_cert("controller-manager", "system:kube-controller-manager"),
                "scheduler": ca.client_cert("scheduler", "system:kube-scheduler"),
                # KWOK plays every node's kubelet; it is cluster infrastructure, not a subject under test.
                "kwok": ca.client_cert("kwok", "tidal-kwok", "system:masters"),
                "sim-runtime": ca.client_cert("sim-runtime", SIM_RUNTIME_USER),
            }
        kwok_config = s / "kwok.yaml"
        if regenerate:
            kwok_config.write_text(yaml.safe_dump_all(
                stages(self.description.cold_start, self.description.terminate_delay), sort_keys=False))
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        verified = ssl.create_default_context(cafile=str(ca.cert_path))
        verified.load_cert_chain(str(ca.paths("admin").cert), str(ca.paths("admin").key))

        def kubeconfig(user):
            return str(s / f"{user}.kubeconfig")

        return {
            "etcd": Component(
                "etcd",
                lambda p: [binaries.path("etcd"), "--name", "tidal", "--data-dir", str(s / "etcd"),
                           "--listen-client-urls", f"http://127.0.0.1:{p['client']}",
                           "--advertise-client-urls", f"http://127.0.0.1:{p['client']}",
                           "--listen-peer-urls", f"http://127.0.0.1:{p['peer']}",
                           "--initial-advertise-peer-urls", f"http://127.0.0.1:{p['peer']}",
                           "--initial-cluster", f"tidal=http://127.0.0.1:{p['peer']}",
                           # A throw-away test store: durability is not worth an fsync per write.
                           "--unsafe-no-fsync", "--log-level", "warn"],
                ["client", "peer"],
                lambda p: http_ok(f"http://127.0.0.1:{p['client']}/health", expect=b'"true"')),
            "kube-apiserver": Component(
                "kube-apiserver",
                lambda p: [binaries.path("kube-apiserver"),
                           "--etcd-servers", f"http://127.0.0.1:{self._etcd_port}",
                           "--bind-address", "127.0.0.1", "--secure-port", str(p["secure"]),
                           # No default route here, so the apiserver cannot guess its address.
                           "--advertise-address", "127.0.0.1",
                           # The `kubernetes` Endpoints object may not hold a loopback address.
                           "--endpoint-reconciler-type", "none",
                           "--tls-cert-file", str(serving.cert), "--tls-private-key-file", str(serving.key),
                           "--client-ca-file", str(ca.cert_path),
                           "--authorization-mode", "Node,RBAC",
                           "--service-account-key-file", str(sa_pub),
                           "--service-account-signing-key-file", str(sa_key),
                           "--service-account-issuer", "https://kubernetes.default.svc",
                           "--service-cluster-ip-range", SERVICE_CIDR,
                           "--allow-privileged=true", "--profiling=false", "--v", "1",
                           *self._audit_flags()],
                ["secure"],
                lambda p: http_ok(f"https://127.0.0.1:{p['secure']}/readyz", verified),
                startup_timeout=90),
            "kube-controller-manager": Component(
                "kube-controller-manager",
                lambda p: [binaries.path("kube-controller-manager"),
                           "--kubeconfig", kubeconfig("controller-manager"),
                           "--bind-address", "127.0.0.1", "--secure-port", str(p["secure"]),
                           "--leader-elect=false", "--use-service-account-credentials=true",
                           "--service-account-private-key-file", str(sa_key),
                           "--root-ca-file", str(ca.cert_path),
                           "--service-cluster-ip-range", SERVICE_CIDR,
                           "--cluster-name", "tidal-dev", "--profiling=false", "--v", "1"],
                ["secure"],
                lambda p: http_ok(f"https://127.0.0.1:{p['secure']}/healthz", insecure)),
            "kube-scheduler": Component(
                "kube-scheduler",
                lambda p: [binaries.path("kube-scheduler"), "--kubeconfig", kubeconfig("scheduler"),
                           "--bind-address", "127.0.0.1", "--secure-port", str(p["secure"]),
                           "--leader-elect=false", "--profiling=false", "--v", "1"],
                ["secure"],
                lambda p: http_ok(f"https://127.0.0.1:{p['secure']}/healthz", insecure)),
            "kwok": Component(
                "kwok",
                lambda p: [binaries.path("kwok"), "--kubeconfig", kubeconfig("kwok"),
                           "--config", str(kwok_config),
                           "--manage-nodes-with-label-selector", "tidal.dev/simulated-node=true",
                           "--node-lease-duration-seconds", "40",
                           "--server-address", f"127.0.0.1:{p['http']}"],
                ["http"],
                lambda p: http_ok(f"http://127.0.0.1:{p['http']}/healthz")),
            "prometheus": Component(
                "prometheus",
                lambda p: [shutil.which("prometheus") or "prometheus",
                           "--config.file", str(s / "prometheus.yml"),
                           "--storage.tsdb.path", str(s / "prometheus"),
                           "--storage.tsdb.retention.time", "6h",
                           "--web.listen-address", f"127.0.0.1:{p['web']}",
                           "--web.enable-lifecycle", "--log.level", "warn"],
                ["web"],
                lambda p: http_ok(f"http://127.0.0.1:{p['web']}/-/ready")),
            "sim-runtime": Component(
                "sim-runtime",
                lambda p: [sys.executable, "-m", "tidal_dev", "sim-runtime",
                           "--kubeconfig", kubeconfig("sim-runtime"), "--health-port", str(p["health"]),
                           "--targets-file", str(s / "targets" / "pods.json")],
                ["health"],
                lambda p: http_ok(f"http://127.0.0.1:{p['health']}/healthz")),
        }

    def _write_after_apiserver(self, port: int) -> None:
        """Kubeconfigs and the Prometheus config need the apiserver's port."""
        self._api_server = f"https://127.0.0.1:{port}"
        ca = self._ca.cert_path
        users = {"admin": "tidal-admin", "controller-manager": "system:kube-controller-manager",
                 "scheduler": "system:kube-scheduler", "kwok": "tidal-kwok", "sim-runtime": SIM_RUNTIME_USER}
        for key, user in users.items():
            write_kubeconfig(self.state_dir / f"{key}.kubeconfig", self._api_server, ca, self._clients[key], user)
        shutil.copy(self.state_dir / "admin.kubeconfig", self.kubeconfig_path)
        create_infra_rbac(self.kubeconfig_path)
        config = prometheus_config(self.state_dir / "targets", self.scrape_interval)
        (self.state_dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    # ---- one component (fault tests restart Prometheus, the apiserver, etcd) -------------------
    def stop_component(self, name: str) -> None:
        info = self.info()
        if info and name in info.pids and pid_alive(info.pids[name]):
            stop_pid(info.pids[name])

    def start_component(self, name: str) -> None:
        """Start a stopped component again, on the same ports and with the same data."""
        info = self.info()
        if info is None:
            raise RuntimeError(f"no cluster in {self.state_dir}")
        if pid_alive(info.pids.get(name, 0) or 0):
            return
        components = self._components(bins.Binaries(info.binaries_dir), regenerate=False)
        self._etcd_port = info.ports["etcd"]["client"]
        start(components[name], self.state_dir / "logs", fixed_ports=info.ports[name])
        info.pids[name] = components[name].pid
        self.save(info)

    # ---- down / status -----------------------------------------------------------------------
    def down(self, quiet: bool = False) -> None:
        info = self.info()
        pids = dict(info.pids) if info else {}
        pids.update(self._orphans())
        for name in reversed(COMPONENTS):
            if name in pids and pid_alive(pids[name]):
                stop_pid(pids[name])
                if not quiet:
                    self.log(f"  stopped {name} (pid {pids[name]})")
        for sub in ("etcd", "prometheus", "targets", "pki"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        for f in self.state_dir.glob("*.kubeconfig"):
            f.unlink()
        for name in ("state.json", "kubeconfig", "kwok.yaml", "prometheus.yml"):
            (self.state_dir / name).unlink(missing_ok=True)
        if not quiet:
            self.log("cluster down")

    def _orphans(self) -> dict[str, int]:
        """Processes started from this state directory that state.json does not know about."""
        found = {}
        marker = str(self.state_dir)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(marker.encode() in a for a in argv) and argv[0]:
                words = {Path(a.decode(errors="replace")).name for a in argv}
                for name in COMPONENTS:
                    if name in words:
                        found[name] = int(proc.name)
        return found

    def status(self) -> dict:
        info = self.info()
        if not info:
            return {"running": False, "state_dir": str(self.state_dir)}
        components = {name: {"pid": pid, "alive": pid_alive(pid), "rss_mib": round(rss_bytes(pid) / 2**20, 1)}
                      for name, pid in info.pids.items()}
        return {"running": all(c["alive"] for c in components.values()),
                "state_dir": str(self.state_dir), **info.to_json(), "components": components,
                "total_rss_mib": round(sum(c["rss_mib"] for c in components.values()), 1)}
