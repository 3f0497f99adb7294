"""A rendered engine container run as a real process on this machine: the exact argv the operator
rendered, with only what a pod has and a laptop does not mapped — the model directory, the listen address
(the pod's IP instead of 0.0.0.0) and the port — and the container's environment plus what the CPU builds
need. Used by the tests that claim what an engine does (tools/engines/ installs the engines)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
VLLM_ENV_SCRIPT = REPO / "tools" / "engines" / "vllm-cpu.sh"


@dataclass(frozen=True)
class RealCommand:
    argv: list[str]
    env: dict[str, str]


def _set_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """Replace `flag value` or `flag=value` in argv (the flag must be there: the render put it)."""
    out, i, found = [], 0, False
    while i < len(argv):
        if argv[i] == flag and i + 1 < len(argv):
            out += [flag, value]
            i, found = i + 2, True
            continue
        if argv[i].startswith(flag + "="):
            out.append(f"{flag}={value}")
            found = True
        else:
            out.append(argv[i])
        i += 1
    if not found:
        raise ValueError(f"{flag} is not in the rendered command {argv}")
    return out


def vllm_command(container: dict, model_dir: Path, host: str, port: int, workdir: Path,
                 vllm_bin: Path) -> RealCommand:
    """`vllm serve <path in the pod> ...` -> the same with the local model directory, host and port."""
    argv = [*container["command"], *container.get("args", [])]
    if argv[:2] != ["vllm", "serve"] or len(argv) < 3:
        raise ValueError(f"not a rendered `vllm serve <model>` command: {argv}")
    argv = [*argv[:2], str(model_dir), *argv[3:]]
    argv = _set_flag(_set_flag(argv, "--host", host), "--port", str(port))
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    env.update({
        "PATH": f"{vllm_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", str(workdir)),
        "VLLM_HOST_IP": host,  # else its internal queue binds the machine's external interface
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache on the CPU build
        "TMPDIR": str(workdir),  # vllm_dist_* and torchinductor_* files stay with the test
    })
    return RealCommand([str(vllm_bin / "vllm"), *argv[1:]], env)


TRITON_SCRIPT = REPO / "tools" / "engines" / "tritonserver.sh"


def triton_command(container: dict, repository: Path, host: str, ports: dict[str, int], backends: Path) -> RealCommand:
    """`tritonserver --model-repository=<in the pod> ...` -> the local repository, listening on host and the
    given http/grpc/metrics ports; plus what this machine needs: the python backend's directory and no GPU
    metrics (there is no GPU)."""
    argv = [*container["command"], *container.get("args", [])]
    if argv[:1] != ["tritonserver"]:
        raise ValueError(f"not a rendered tritonserver command: {argv}")
    argv = _set_flag(argv, "--model-repository", str(repository))
    for kind, port in ports.items():
        argv = _set_flag(argv, f"--{kind}-port", str(port))
    argv += [f"--{kind}-address={host}" for kind in ports] + [f"--backend-directory={backends}",
                                                               "--allow-gpu-metrics=false"]
    return RealCommand([str(TRITON_SCRIPT), *argv[1:]], dict(os.environ))
