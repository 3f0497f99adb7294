"""`make image`: Tidal's container image as an OCI image layout at out/image/, without a container engine.

  1. A Debian root filesystem with Python from `mmdebstrap --variant=extract` (packages unpacked, no
     package manager, no shell scripts run): cached under ~/.cache/tidal/image/, keyed by its inputs.
  2. The project's wheel and its locked dependencies (tools/image/requirements.lock; `--lock` rewrites it)
     installed with pip into Debian's dist-packages, binary wheels only.
  3. User 65532, entrypoint `tidal`, the org.opencontainers.image.* labels, an SPDX SBOM inside
     (/usr/share/doc/tidal/sbom.spdx.json) and beside the layout (out/image.spdx.json).
  4. One gzipped layer with every timestamp set to the last commit's (SOURCE_DATE_EPOCH): the same inputs
     give the same digest.

It prints the digest and the size. Run as root (mmdebstrap unpacks with the packages' owners).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oci  # noqa: E402
import sbom  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LOCK = Path(__file__).resolve().parent / "requirements.lock"
SUITE = "bookworm"  # Debian 12: Python 3.11, the version the wheels are built for
DEBIAN = ["python3-minimal", "libpython3.11-stdlib", "ca-certificates", "tzdata", "netbase", "base-files"]
SITE = "usr/lib/python3/dist-packages"
UID = 65532
SOURCE = "https://github.com/tidal-dev/tidal"


def step(message: str) -> None:
    print(f"--- {message}", flush=True)


def project_version() -> str:
    import tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def build_epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH") or git("log", "-1", "--format=%ct"))


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "tidal" / "image"


def debian_base() -> tuple[Path, str]:
    """The Debian part, cached: (tar of the root filesystem, dpkg-deb fields of every package in it)."""
    mm = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    key = hashlib.sha256(json.dumps([SUITE, DEBIAN, mm]).encode()).hexdigest()[:16]
    tar, fields = cache_dir() / f"debian-{SUITE}-{key}.tar", cache_dir() / f"debian-{SUITE}-{key}.packages"
    if tar.exists() and fields.exists():
        step(f"Debian {SUITE} base: cached ({tar})")
        return tar, fields.read_text()
    step(f"Debian {SUITE} base: mmdebstrap {' '.join(DEBIAN)} (about 20 s)")
    cache_dir().mkdir(parents=True, exist_ok=True)
    partial = tar.with_suffix(".partial")
    record = f'for f in "$1"/var/cache/apt/archives/*.deb; do dpkg-deb -f "$f" Package Version Architecture Source; ' \
             f'echo; done > {fields}'
    subprocess.run(["mmdebstrap", "--quiet", "--variant=extract", f"--include={','.join(DEBIAN)}",
                    "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
                    f"--extract-hook={record}", "--format=tar", SUITE, str(partial)],
                   check=True, env={**os.environ, "SOURCE_DATE_EPOCH": "0"})
    partial.rename(tar)
    return tar, fields.read_text()


def write_lock() -> None:
    """Resolve the project's runtime dependencies (binary wheels for CPython 3.11 on x86_64) into the lock."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--only-binary=:all:", "--python-version=3.11", "--platform=manylinux2014_x86_64",
                        "--platform=manylinux_2_28_x86_64", "--target", tmp, "--report", str(report), str(REPO)],
                       check=True)
        pins = sorted(f"{i['metadata']['name'].lower()}=={i['metadata']['version']}"
                      for i in json.loads(report.read_text())["install"] if i["metadata"]["name"] != "tidal")
    LOCK.write_text("# The image's Python dependencies: `python tools/image/build.py --lock` rewrites this file.\n"
                    + "\n".join(pins) + "\n")
    print(f"wrote {LOCK} ({len(pins)} packages)")


def install_python(root: Path, work: Path) -> None:
    step("the project's wheel and its locked dependencies (pip, binary wheels only)")
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(build_epoch())}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(work), str(REPO)],
                   check=True, env=env)
    wheel = next(work.glob("tidal-*.whl"))
    site = root / SITE
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                    "--only-binary=:all:", "--python-version=3.11", "--platform=manylinux2014_x86_64",
                    "--platform=manylinux_2_28_x86_64", "--target", str(site), "--requirement", str(LOCK),
                    str(wheel)], check=True, env=env)
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with this machine's interpreter path
    for record in site.glob("*.dist-info/RECORD"):  # hashes of files pip wrote, incl. the deleted scripts
        record.unlink()
    for name in ("INSTALLER", "direct_url.json"):  # direct_url.json names the temporary wheel's path
        for written in site.glob(f"*.dist-info/{name}"):
            written.unlink()


def finish(root: Path) -> None:
    """The user, the entrypoint, the CA bundle, and nothing that records the build machine."""
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                     f"nonroot:x:{UID}:{UID}:nonroot:/home/nonroot:/usr/sbin/nologin\n")
    (root / "etc/group").write_text(f"root:x:0:\nnonroot:x:{UID}:\n")
    home = root / "home/nonroot"
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, UID, UID)
    entry = root / "usr/local/bin/tidal"
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text("#!/usr/bin/python3\nimport sys\nfrom tidal.cli import main\nsys.exit(main())\n")
    entry.chmod(0o755)
    # update-ca-certificates (a maintainer script, not run by an extract) would write this bundle.
    certs = sorted((root / "usr/share/ca-certificates").rglob("*.crt"))
    bundle = root / "etc/ssl/certs/ca-certificates.crt"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_bytes(b"".join(c.read_bytes() for c in certs))
    for leftover in ("var/cache/apt", "var/lib/apt/lists", "var/log", "var/cache/debconf"):
        shutil.rmtree(root / leftover, ignore_errors=True)
    (root / "tmp").chmod(0o1777)


def build(out: Path) -> dict:
    started = time.monotonic()
    version, epoch = project_version(), build_epoch()
    base, packages = debian_base()
    with tempfile.TemporaryDirectory(prefix="tidal-image-") as tmp:
        root, work = Path(tmp) / "rootfs", Path(tmp) / "work"
        root.mkdir()
        work.mkdir()
        with tarfile.open(base) as tar:
            tar.extractall(root, numeric_owner=True, filter="fully_trusted")
        install_python(root, work)
        finish(root)
        document = sbom.spdx("tidal", version, epoch, sbom.debian_packages(packages),
                             sbom.python_distributions(root / SITE))
        text = json.dumps(document, indent=1, sort_keys=True) + "\n"
        (root / "usr/share/doc/tidal").mkdir(parents=True, exist_ok=True)
        (root / "usr/share/doc/tidal/sbom.spdx.json").write_text(text)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
        revision = git("rev-parse", "HEAD")
        labels = {
            "org.opencontainers.image.title": "tidal",
            "org.opencontainers.image.description": "Kubernetes operator and gateway that scale vLLM, Triton "
                                                    "and SGLang model servers between zero and N replicas",
            "org.opencontainers.image.version": version, "org.opencontainers.image.revision": revision,
            "org.opencontainers.image.created": created, "org.opencontainers.image.source": SOURCE,
            "org.opencontainers.image.licenses": "Apache-2.0",
        }
        config = {"architecture": "amd64", "os": "linux", "created": created,
                  "config": {"User": f"{UID}:{UID}", "Entrypoint": ["tidal"], "WorkingDir": "/home/nonroot",
                             "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1",
                                     "PYTHONUNBUFFERED=1"],
                             "Labels": labels},
                  "history": [{"created": created, "created_by": "tools/image/build.py"}]}
        step("writing the OCI image layout (one layer, fixed timestamps)")
        result = oci.write_layout(out, root, config, version, epoch, labels)
        rootfs_bytes = sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    (out.parent / f"{out.name}.spdx.json").write_text(text)
    result.update(tag=version, rootfs_bytes=rootfs_bytes, seconds=round(time.monotonic() - started, 1),
                  layout=str(out), packages=len(document["packages"]))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "out" / "image"), help="OCI image layout directory")
    parser.add_argument("--lock", action="store_true", help="rewrite requirements.lock and stop")
    args = parser.parse_args()
    if args.lock:
        write_lock()
        return 0
    if os.geteuid() != 0:
        print("error: the image build unpacks Debian packages with their owners: run it as root", file=sys.stderr)
        return 2
    for tool in ("mmdebstrap", "dpkg-deb"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed (apt-get install mmdebstrap)", file=sys.stderr)
            return 2
    result = build(Path(args.out).resolve())
    print(json.dumps(result, indent=1))
    print(f"image {result['layout']}:{result['tag']} digest {result['digest']}; "
          f"{result['layer_bytes'] / 1e6:.1f} MB compressed, {result['rootfs_bytes'] / 1e6:.1f} MB unpacked; "
          f"{result['packages']} packages in the SBOM ({args.out}.spdx.json); {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
