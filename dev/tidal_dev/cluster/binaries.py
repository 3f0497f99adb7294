"""Build the control-plane binaries from the Go module proxy and cache them by version.

Everything is compiled from one wrapper module (tools/clusterbins) so that the
packages etcd, kwok, helm and Kubernetes share compile once: a cold build of all
six binaries on 2 cores takes tens of minutes, a warm one is a directory lookup.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..repo import repo_root

KUBERNETES_VERSION = "v1.36.3"
# The commit date of the Kubernetes tag, used as buildDate so that two builds of
# the same versions stamp the same /version answer.
KUBERNETES_BUILD_DATE = "2026-07-22T18:07:38Z"
ETCD_VERSION = "v3.6.8"  # the version Kubernetes 1.36 pins
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.21.4"

# binary name -> Go main package inside the wrapper module's graph
PACKAGES = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "etcd": "go.etcd.io/etcd/server/v3",
    "kwok": "sigs.k8s.io/kwok/cmd/kwok",
    "helm": "helm.sh/helm/v3/cmd/helm",
    # The machine's kubectl may be several minors older than the server (out of
    # the supported skew); this one matches it and costs little on top.
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}



class BuildError(RuntimeError):
    """A binary could not be built; the message names it and carries the log tail."""


@dataclass(frozen=True)
class Binaries:
    directory: Path

    def path(self, name: str) -> str:
        return str(self.directory / name)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tidal" / "bin"


def cache_key() -> str:
    # The stamps are part of what is built: a change to them must not reuse binaries built without it.
    stamps = hashlib.sha256(version_ldflags().encode()).hexdigest()[:8]
    return (
        f"k8s-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}"
        f"_helm-{HELM_VERSION}_{stamps}"
    )


def binaries_dir() -> Path:
    return cache_root() / cache_key()


def version_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    stamps = {
        "gitVersion": KUBERNETES_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": KUBERNETES_BUILD_DATE,
    }
    flags = [f"-X k8s.io/component-base/version.{k}={v}" for k, v in stamps.items()]
    # client-go carries its own copy of the version variables (used in User-Agent).
    flags += [f"-X k8s.io/client-go/pkg/version.{k}={v}" for k, v in stamps.items()]
    flags.append(f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}")
    # helm's default Kubernetes version (for `helm template` and `helm lint` without a cluster) is that
    # of the client-go it is built with; the official build stamps it, else it says v1.20 and refuses
    # charts that require a newer Kubernetes. Ours is built against the v0.36 staging modules: 1.36.
    for package in ("pkg/chartutil", "pkg/lint/rules"):
        flags += [f"-X helm.sh/helm/v3/{package}.k8sVersionMajor={major}",
                  f"-X helm.sh/helm/v3/{package}.k8sVersionMinor={minor}"]
    return "-s -w " + " ".join(flags)


def missing_binaries(directory: Path) -> list[str]:
    return [name for name in PACKAGES if not (directory / name).is_file()]


def ensure_binaries(log=print) -> Binaries:
    """Return the cached binaries, building the missing ones first."""
    directory = binaries_dir()
    missing = missing_binaries(directory)
    if not missing:
        return Binaries(directory)
    if shutil.which("go") is None:
        raise BuildError("cannot build the control plane: the `go` toolchain is not on PATH")
    log(f"building {', '.join(missing)} into {directory} (cold: about 12 min on 2 cores, downloads included)")
    started = time.monotonic()
    _go_build(missing, directory, log)
    log(f"cold build of {', '.join(missing)} took {time.monotonic() - started:.0f} s")
    return Binaries(directory)


def _go_build(names: list[str], directory: Path, log) -> None:
    staging = directory.with_name(directory.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    log_path = staging / "build.log"
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly -buildvcs=false")
    cmd = ["go", "build", "-v", "-trimpath", f"-ldflags={version_ldflags()}", "-o", str(staging) + "/"]
    cmd += [PACKAGES[n] for n in names]
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=repo_root() / "tools" / "clusterbins", env=env, stdout=out, stderr=subprocess.STDOUT)
        _report_progress(proc, log_path, log)
    if proc.returncode != 0:
        raise BuildError(f"go build of {', '.join(names)} failed (exit {proc.returncode}); "
                         f"full log: {log_path}\n{_tail(log_path)}")
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        built = staging / ("server" if name == "etcd" else name)
        os.replace(built, directory / name)


def _report_progress(proc: subprocess.Popen, log_path: Path, log) -> None:
    """`go build -v` prints one line per package compiled; report the count every 30 s."""
    stop = threading.Event()

    def report():
        while not stop.wait(30):
            try:
                count = sum(1 for _ in open(log_path))
            except OSError:
                count = 0
            log(f"  ... {count} packages compiled so far")

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        proc.wait()
    finally:
        stop.set()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "".join(open(path, errors="replace").readlines()[-lines:])
    except OSError:
        return "(no log)"


def main() -> None:
    try:
        bins = ensure_binaries()
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(bins.directory)


if __name__ == "__main__":
    main()
